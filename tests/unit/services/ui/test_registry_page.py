"""The registry page's view (services/ui/registry_page.py)."""

from __future__ import annotations

from typing import Any

from undertow.services.registry.state import (
    RegistryState,
    promote_model,
    push_model,
    push_prompt,
    start_experiment,
)
from undertow.services.ui.registry_page import TEMPLATE_PREVIEW, registry_view


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
