"""Suite-wide collection order: the longest tests first.

``make test`` runs the broker and warehouse lanes on two pytest-xdist workers, each with its
own stack, handing out tests one at a time as a worker frees up. Started first, the long
tests (marked ``@pytest.mark.long(seconds=...)`` with their usual wall time on a 2-core
machine) no longer finish alone at the end while the other worker idles: longest processing
time first. Without xdist the order changes nothing a test may rely on: every test stands
alone.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

# Whether the test's own body failed, for fixtures that gather evidence before teardown.
CALL_FAILED = pytest.StashKey[bool]()


def _expected_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("long")
    return float(marker.kwargs.get("seconds", 60)) if marker else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_expected_seconds, reverse=True)  # stable: the rest keep their order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report
