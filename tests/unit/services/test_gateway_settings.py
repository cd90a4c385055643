"""GatewaySettings: environment variables, key lists, limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from undertow.services.gateway.settings import GatewaySettings


def test_defaults_are_safe() -> None:
    s = GatewaySettings()
    assert s.host == "127.0.0.1" and s.loopback
    assert s.backend == "local" and s.keys() == ()
    assert s.default_max_tokens <= s.max_tokens


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDERTOW_GATEWAY_API_KEYS", " k1 ,k2,, ")
    monkeypatch.setenv("UNDERTOW_GATEWAY_BACKEND", "openai")
    monkeypatch.setenv("UNDERTOW_GATEWAY_UPSTREAM_API_KEY", "upstream-secret")
    monkeypatch.setenv("UNDERTOW_GATEWAY_HOST", "0.0.0.0")
    monkeypatch.setenv("UNDERTOW_GATEWAY_MAX_TOKENS", "512")
    s = GatewaySettings()
    assert s.keys() == ("k1", "k2")
    assert s.backend == "openai" and not s.loopback and s.max_tokens == 512
    assert "upstream-secret" not in repr(s) and "k1" not in repr(s)


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(backend="vllm")
    with pytest.raises(ValidationError, match="default_max_tokens"):
        GatewaySettings(max_tokens=10, default_max_tokens=20)


def test_frozen() -> None:
    s = GatewaySettings()
    with pytest.raises(ValidationError):
        s.port = 1
