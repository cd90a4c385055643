"""Where the dashboard may listen (services/ui/settings.py)."""

from __future__ import annotations

import pytest

from undertow.services.ui.settings import UISettings, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("dashboard.example.com", False),
    ],
)
def test_only_this_machine_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_defaults_bind_to_loopback_and_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = UISettings()
    assert (default.host, default.port, default.allow_remote) == ("127.0.0.1", 8400, False)
    monkeypatch.setenv("UNDERTOW_UI_PORT", "9001")
    monkeypatch.setenv("UNDERTOW_UI_REFRESH_S", "0.1")
    with pytest.raises(ValueError, match="refresh_s"):
        UISettings()
    monkeypatch.setenv("UNDERTOW_UI_REFRESH_S", "2")
    assert (UISettings().port, UISettings().refresh_s) == (9001, 2.0)
