"""The registry page's view and its shared loads (services/ui/registry.py)."""

from __future__ import annotations

import contextlib
from typing import Any

from undertow.services.registry.state import (
    RegistryState,
    promote_model,
    push_model,
    push_prompt,
    start_experiment,
)
from undertow.services.ui.registry import TEMPLATE_PREVIEW, CachedRegistry, registry_view


def build() -> RegistryState:
    state = RegistryState()

    def apply(records: list[dict[str, Any]]) -> None:
        for record in records:
            state.apply(record)

    apply(push_model(state, "support", base_model="smol", now=1))
    apply(promote_model(state, "support", "1", now=2))
    apply(push_model(state, "support", base_model="smol", adapter_path="/a/2", now=3))
    apply(promote_model(state, "support", "2", now=4))
    apply(push_prompt(state, "greet", "Hi {name}", labels=["production"], now=5))
    apply(push_prompt(state, "greet", "x" * (TEMPLATE_PREVIEW + 50), labels=["canary"], now=6))
    apply(start_experiment(state, "greet", "tone", {"a": "1", "b": "2"}, now=7))
    return state


def test_the_view_shows_active_versions_labels_and_tests() -> None:
    view = registry_view(build())
    [model] = view["models"]
    assert model["active_version"] == "2" and model["active_adapter"] == "/a/2"
    statuses = {v["version"]: v["status"] for v in model["versions"]}
    assert statuses["2"] == "active" and statuses["1"] != "active"
    assert next(v for v in model["versions"] if v["version"] == "1")["reason"] == "superseded"
    [prompt] = view["prompts"]
    assert prompt["labels"] == {"canary": "2", "production": "1"}
    long = prompt["versions"][1]["template"]
    assert len(long) == TEMPLATE_PREVIEW + 1 and long.endswith("…")
    [test] = view["experiments"]
    assert (test["test"], test["status"]) == ("tone", "running")
    assert test["variants"] == {"a": "1", "b": "2"}


def test_cached_registry_loads_once_per_ttl_and_retries_after_a_failure() -> None:
    now = [0.0]
    calls: list[float] = []
    fail = [False]

    def load() -> RegistryState:
        calls.append(now[0])
        if fail[0]:
            raise RuntimeError("broker away")
        return RegistryState()

    cached = CachedRegistry(load, ttl_s=5.0, clock=lambda: now[0])
    first = cached()
    now[0] = 4.9
    assert cached() is first and calls == [0.0]
    now[0] = 5.0
    assert cached() is not first and calls == [0.0, 5.0]
    now[0], fail[0] = 11.0, True
    for _ in range(2):  # not cached: each call tries again
        with contextlib.suppress(RuntimeError):
            cached()
    assert calls == [0.0, 5.0, 11.0, 11.0]
    assert cached.loads == 2
