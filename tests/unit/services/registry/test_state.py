"""The registry state and the records each change writes (pure: no Kafka)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from undertow.schemas.codec import AvroCodec
from undertow.services.registry.state import (
    EXPERIMENT_PREFIX,
    RegistryError,
    RegistryState,
    assign_variant,
    known_good,
    label_prompt,
    promote_model,
    push_model,
    push_prompt,
    retire_model,
    rollback_model,
    rollback_prompt,
    start_experiment,
    stop_experiment,
)

CODEC = AvroCodec()


def apply(state: RegistryState, records: list[dict[str, Any]]) -> RegistryState:
    """Fold records as a reader of the topic would: through the Avro codec."""
    for r in records:
        state.apply(CODEC.decode(CODEC.encode("registry_record", r), "registry_record").record)
    return state


def models(*adapters: str | None) -> RegistryState:
    """A model 'support' with one version per adapter, each promoted in turn."""
    state = RegistryState()
    for i, adapter in enumerate(adapters):
        now = 1_000 * (i + 1)
        apply(state, push_model(state, "support", base_model="base", adapter_path=adapter, now=now))
        apply(state, promote_model(state, "support", str(i + 1), now=now + 1))
    return state


def test_versions_number_themselves_and_only_one_serves() -> None:
    state = models(None, "/a/v2", "/a/v3")
    assert [v.version for v in state.versions("model", "support")] == ["1", "2", "3"]
    assert [v.status for v in state.versions("model", "support")] == [
        "retired",
        "retired",
        "active",
    ]
    active = state.active_model("support")
    assert active is not None and active.adapter_path == "/a/v3"
    assert active.metadata["previous"] == "2"
    assert promote_model(state, "support", "3", now=9_999) == []  # promoting again: nothing


def test_rollback_returns_to_the_last_superseded_version_and_never_to_a_bad_one() -> None:
    state = models(None, "/a/v2", "/a/v3")
    plan = rollback_model(state, "support", now=10_000, request_id="r1")
    assert (plan.outcome, plan.from_version, plan.to_version) == ("rolled_back", "3", "2")
    apply(state, plan.records)
    v3 = state.get("model", "support", "3")
    assert v3 is not None and v3.metadata["deactivated_reason"] == "rolled_back"
    assert v3.metadata["rolled_back_by"] == "r1"
    assert state.active_model("support").version == "2"  # type: ignore[union-attr]
    # Rolling back again goes to 1, never back to the bad 3.
    again = rollback_model(state, "support", now=11_000)
    assert (again.from_version, again.to_version) == ("2", "1")
    apply(state, again.records)
    assert known_good(state, "support") is None
    last = rollback_model(state, "support", now=12_000)
    assert (last.outcome, last.records) == ("failed", [])
    assert "no known-good version" in last.detail


def test_rollback_is_idempotent_for_the_same_evidence() -> None:
    state = models(None, "/a/v2")
    first = rollback_model(state, "support", now=5_000, expected_version="2", evidence_until=4_000)
    assert first.outcome == "rolled_back"
    apply(state, first.records)
    # The same request again, or another alert about version 2: nothing more happens.
    by_version = rollback_model(state, "support", now=6_000, expected_version="2")
    assert by_version.outcome == "skipped" and "serves version 1, not 2" in by_version.detail
    by_time = rollback_model(state, "support", now=6_000, evidence_until=4_000)
    assert by_time.outcome == "skipped" and "activated after the evidence" in by_time.detail
    assert state.active_model("support").version == "1"  # type: ignore[union-attr]


def test_same_change_from_same_state_writes_the_same_ids() -> None:
    state = models(None, "/a/v2")
    a = rollback_model(state, "support", now=7_000)
    b = rollback_model(state, "support", now=7_000)
    assert [r["event_id"] for r in a.records] == [r["event_id"] for r in b.records]


def test_the_active_version_cannot_be_retired() -> None:
    state = models(None, "/a/v2")
    with pytest.raises(RegistryError, match="is serving"):
        retire_model(state, "support", "2", now=5_000)
    apply(state, retire_model(state, "support", "1", now=5_000))
    assert known_good(state, "support") is None  # retired for good: not a rollback target


def test_unknown_versions_and_bad_names_are_refused() -> None:
    state = models(None)
    with pytest.raises(RegistryError, match=r"no version '7' \(known: \['1'\]\)"):
        promote_model(state, "support", "7", now=1)
    with pytest.raises(RegistryError, match="already has a version '1'"):
        push_model(state, "support", base_model="b", version="1", now=1)
    with pytest.raises(RegistryError, match="cannot be empty, contain '/'"):
        push_model(state, "a/b", base_model="b", now=1)


def prompts() -> RegistryState:
    state = RegistryState()
    apply(state, push_prompt(state, "qa", "Be brief.", labels=["production"], now=1_000))
    apply(state, push_prompt(state, "qa", "Be brief and kind.", now=2_000))
    apply(state, push_prompt(state, "qa", "Answer as {persona}.", labels=["canary"], now=3_000))
    return state


def test_labels_move_and_roll_back_to_their_previous_holder() -> None:
    state = prompts()
    assert state.prompt("qa").version == "1"
    assert state.prompt("qa", label="canary").version == "3"
    apply(state, label_prompt(state, "qa", "2", "production", now=4_000))
    assert state.prompt("qa").version == "2"
    assert "production" not in state.get("prompt", "qa", "1").labels  # type: ignore[union-attr]
    records, previous = rollback_prompt(state, "qa", "production", now=5_000)
    apply(state, records)
    assert previous == "1" and state.prompt("qa").version == "1"
    with pytest.raises(RegistryError, match="no version of prompt 'qa' has the label 'beta'"):
        state.prompt("qa", label="beta")
    with pytest.raises(RegistryError, match="no prompt named 'other'"):
        state.prompt("other")


def test_ab_tests_assign_sticky_variants_in_proportion_to_weights() -> None:
    state = prompts()
    apply(
        state,
        start_experiment(
            state, "qa", "tone", {"a": "1", "b": "2"}, weights={"a": 1, "b": 3}, now=4_000
        ),
    )
    experiment = state.experiment("qa", "production")
    assert experiment is not None and experiment.weights == {"a": 0.25, "b": 0.75}
    counts = Counter(assign_variant(experiment, f"user-{i}") for i in range(20_000))
    assert abs(counts["b"] / 20_000 - 0.75) < 0.015
    assert all(
        assign_variant(experiment, f"user-{i}") == assign_variant(experiment, f"user-{i}")
        for i in range(100)
    )
    # Experiments are not prompt versions.
    assert [v.version for v in state.versions("prompt", "qa")] == ["1", "2", "3"]
    assert state.get("prompt", "qa", EXPERIMENT_PREFIX + "tone") is not None
    with pytest.raises(RegistryError, match="already runs on 'qa'"):
        start_experiment(state, "qa", "tone2", {"a": "1", "b": "3"}, now=5_000)
    apply(state, stop_experiment(state, "tone", now=6_000))
    assert state.experiment("qa", "production") is None
    assert stop_experiment(state, "tone", now=7_000) == []


@pytest.mark.parametrize(
    ("variants", "options", "message"),
    [
        ({"a": "1"}, {}, "at least two variants"),
        ({"a": "1", "b": "9"}, {}, "has no version '9'"),
        ({"a": "1", "b": "2"}, {"weights": {"a": 1}}, "positive weight to each variant"),
        ({"a": "1", "b": "2"}, {"split_by": "tenant"}, "split_by must be one of"),
        ({"a": "1", "b": "2"}, {"control": "c"}, "control 'c' is not one of"),
    ],
)
def test_bad_ab_tests_are_refused(
    variants: dict[str, str], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(RegistryError, match=message):
        start_experiment(prompts(), "qa", "t", variants, now=1, **options)
