"""Bearer API key checks."""

from __future__ import annotations

import pytest

from undertow.services.gateway.auth import ApiKeys, bearer_token


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_keys_checked() -> None:
    keys = ApiKeys(["first-key", "second-key"])
    assert keys.enabled
    assert keys.check("Bearer first-key") and keys.check("Bearer second-key")
    for bad in ("Bearer first-ke", "Bearer first-key2", "first-key", None, "Bearer "):
        assert not keys.check(bad)


def test_no_keys_means_open() -> None:
    keys = ApiKeys(["", ""])
    assert not keys.enabled and keys.check(None) and keys.check("Bearer anything")
