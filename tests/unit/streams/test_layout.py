"""The layout keeps its promises: only the runtime knows Faust, and the pure packages import
no Kafka, ClickHouse or HTTP client, so their logic is tested without any of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STREAMS = Path(__file__).parents[3] / "streams"
ROOT = STREAMS.parent
PURE = ("drift", "policy", "judge", "scoring")
CLIENTS = (
    "faust",
    "mode",
    "aiokafka",
    "kafka",
    "confluent_kafka",
    "clickhouse_connect",
    "chdb",
    "httpx",
    "requests",
    "urllib3",
    "aiohttp",
    "undertow.services.warehouse",
    "undertow.services.bus",
    "undertow.infra",
    "undertow.streams.runtime",
    "undertow.streams.sinks",
)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("package", PURE)
def test_the_pure_packages_import_no_kafka_clickhouse_or_http_client(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((STREAMS / package).rglob("*.py"))
        for module in imports(path)
        if within(module, CLIENTS)
    }
    assert not wrong, f"pure package streams/{package} imports clients: {sorted(wrong)}"


def test_only_the_runtime_imports_faust() -> None:
    folders = ("streams", "services", "undertow", "schemas", "infra", "bench")
    wrong = sorted(
        str(path.relative_to(ROOT))
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if (ROOT / "streams" / "runtime") not in path.parents
        and any(within(m, ("faust", "mode")) for m in imports(path))
    )
    assert not wrong, f"Faust is imported outside streams/runtime: {wrong}"


def test_the_app_that_wires_the_roles_stays_small() -> None:
    lines = len((STREAMS / "app.py").read_text().splitlines())
    assert lines < 400, f"streams/app.py has {lines} lines; roles belong in streams/roles/"
