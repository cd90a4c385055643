"""The policy processor without a broker: rules that fit the app partitioning, alerts from
scored and drift records, checkpoints that resume incidents (replays skipped), the tick that
resolves them, and dead letters for records it cannot use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from undertow.errors import ConfigError
from undertow.schemas.events import alert
from undertow.streams.policy import RuleSet, load_rules, parse_rules
from undertow.streams.records import SourceRecord
from undertow.streams.roles.policy import (
    INPUT_TYPES,
    PROCESSOR,
    PolicyOutput,
    PolicyProcessor,
    app_record_key,
    check_partitioning,
)
from undertow.streams.state.checkpoint import KeyedStates, decode_checkpoint, encode_checkpoint

from ..policy.fixtures import CODEC, T0, ManualClock, at, drift, encodes, scored

TOPIC = "undertow-policy-apps-repartition"
PARTITION = 1
HERE = f"{TOPIC}:{PARTITION}"  # the origin of a record without an origin header: its own place
APP = "chat"
RULES = load_rules(None)


def source(
    offset: int,
    record: dict[str, Any] | bytes | None,
    key: bytes | None = b"chat",
    origin: tuple[str, int, int] | None = None,
) -> SourceRecord:
    """A record of the repartition topic; dicts are encoded by their shape."""
    if isinstance(record, dict):
        value: bytes | None = CODEC.encode(
            "drift_event" if "detector" in record else "scored_event", record
        )
    else:
        value = record
    return SourceRecord(TOPIC, PARTITION, offset, key, value, origin)


def processor(
    table: dict[bytes, bytes] | None = None,
    clock: ManualClock | None = None,
    rules: RuleSet = RULES,
) -> PolicyProcessor:
    states = KeyedStates({} if table is None else table)
    return PolicyProcessor(rules, states, CODEC, clock or ManualClock())


def checkpoint(p: PolicyProcessor, generation: int, table: dict[bytes, bytes]) -> None:
    """What the worker's checkpoint does: write the changed states, then mark them written."""
    for _, key, value in p.states.checkpoints(generation, p.state_of):
        table[key] = value
    p.states.written(generation)


def injection(seconds: float, score: float = 0.99, kind: Any = "prompt") -> dict[str, Any]:
    return scored(seconds, kind, scores={"injection": score})


def rules_with(rule: dict[str, Any]) -> RuleSet:
    return parse_rules({"rules": [rule]})


# -- partitioning ---------------------------------------------------------------------------


def test_the_shipped_rules_fit_the_app_partitioning() -> None:
    assert check_partitioning(RULES) is None
    assert {r.name for r in RULES.rules} >= {"prompt_injection", "drift_detected"}
    assert processor().rules is RULES


SCORED_RULES = {
    "event": {"kind": "event", "value": "scores.injection", "threshold": 0.8},
    "rate": {"kind": "rate", "value": "scores.toxicity", "event_above": 0.5, "threshold": 0.1},
    "budget": {"kind": "budget", "threshold": 10.0, "window": "1h"},
    "percentile": {"kind": "percentile", "quantile": 0.9, "threshold": 100, "window": "5m"},
}


@pytest.mark.parametrize("kind", sorted(SCORED_RULES))
@pytest.mark.parametrize("group_by", [["environment"], ["environment", "model"], []])
def test_a_scored_rule_not_grouped_by_app_is_refused(kind: str, group_by: list[str]) -> None:
    rules = rules_with({"name": "r", **SCORED_RULES[kind], "group_by": group_by})
    with pytest.raises(ConfigError, match=r"rule 'r' groups by .*group_by must include app$"):
        check_partitioning(rules)
    with pytest.raises(ConfigError):
        processor(rules=rules)


@pytest.mark.parametrize("kind", sorted(SCORED_RULES))
def test_a_scored_rule_grouped_by_app_and_more_passes(kind: str) -> None:
    check_partitioning(
        rules_with({"name": "r", **SCORED_RULES[kind], "group_by": ["model", "app"]})
    )


@pytest.mark.parametrize("group_by", [["stream"], ["model", "stream"], ["environment"], []])
def test_a_drift_rule_without_app_or_segment_is_refused(group_by: list[str]) -> None:
    rules = rules_with({"name": "d", "kind": "drift", "group_by": group_by})
    with pytest.raises(ConfigError, match="group_by must include app or segment"):
        check_partitioning(rules)


@pytest.mark.parametrize("group_by", [["segment"], ["app", "stream"], ["stream", "segment"]])
def test_a_drift_rule_with_app_or_segment_passes(group_by: list[str]) -> None:
    check_partitioning(rules_with({"name": "d", "kind": "drift", "group_by": group_by}))


def test_a_drift_rule_by_default_groups_by_segment_and_passes() -> None:
    check_partitioning(rules_with({"name": "d", "kind": "drift"}))


def test_app_record_key_is_the_app_of_scored_and_drift_records() -> None:
    assert app_record_key(injection(0)) == "chat"
    assert app_record_key(drift(0, segment="app=billing/model=m")) == "billing"
    assert app_record_key({"event_id": "x"}) == ""
    assert app_record_key({"app": None}) == ""


# -- alerts ---------------------------------------------------------------------------------


def test_a_prompt_scored_as_injection_fires_one_alert() -> None:
    record = injection(0)
    p = processor()
    out = p.process([source(0, record)], generation=1)
    assert isinstance(out, PolicyOutput)
    assert (out.events, out.replayed, out.dead_letters) == (1, 0, [])
    (fired,) = out.alerts
    assert (fired["rule"], fired["status"], fired["severity"]) == (
        "prompt_injection",
        "firing",
        "critical",
    )
    assert fired["app"] == APP and fired["environment"] == "production"
    assert fired["evidence"]["last_event_id"] == record["event_id"]
    assert record["event_id"] in fired["evidence"]["example_event_ids"].split(",")
    assert fired["evidence"]["value"] == "0.99"
    encodes(out.alerts)
    assert not p.states.fresh(APP, HERE, 0) and p.states.dirty(1)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(injection(0, score=0.8), id="not-above-threshold"),
        pytest.param(injection(0, kind="completion"), id="not-a-prompt"),
        pytest.param(scored(0, "prompt", scores={}), id="no-score"),
    ],
)
def test_other_scored_events_fire_nothing(record: dict[str, Any]) -> None:
    out = processor().process([source(0, record)], generation=1)
    assert out.events == 1 and out.alerts == [] and out.dead_letters == []


def test_a_detected_drift_event_fires_a_drift_alert() -> None:
    record = drift(10, detected=True, stream="topic_surprise.prompt")
    out = processor().process([source(0, record)], generation=1)
    (fired,) = out.alerts
    assert (fired["rule"], fired["status"], fired["severity"]) == (
        "drift_detected",
        "firing",
        "warning",
    )
    assert fired["app"] == APP
    assert fired["evidence"]["last_drift_event_id"] == record["event_id"]
    assert fired["evidence"]["stream"] == "topic_surprise.prompt"
    encodes(out.alerts)


def test_an_undetected_drift_event_fires_nothing() -> None:
    out = processor().process([source(0, drift(10, detected=False))], generation=1)
    assert out.events == 1 and out.alerts == []


def test_scored_and_drift_records_of_one_batch_fire_in_order() -> None:
    records = [injection(0), scored(1, "completion"), drift(2)]
    out = processor().process([source(i, r) for i, r in enumerate(records)], generation=1)
    assert out.events == 3
    assert [a["rule"] for a in out.alerts] == ["prompt_injection", "drift_detected"]


# -- checkpoints and replays ----------------------------------------------------------------


def test_a_restored_processor_continues_the_incident_and_skips_replays() -> None:
    first, quiet, again = injection(0), scored(30, "prompt"), injection(300)
    records = [source(0, first), source(1, quiet), source(2, again)]
    table: dict[bytes, bytes] = {}
    a = processor(table, ManualClock(at(30)))
    before = a.process(records[:2], generation=1)
    assert [x["status"] for x in before.alerts] == ["firing"]
    writes = a.states.checkpoints(1, a.state_of)
    assert [(p, k) for p, k, _ in writes] == [(PARTITION, b"chat")]
    assert decode_checkpoint(writes[0][2]).origins == {HERE: 1}
    checkpoint(a, 1, table)

    b = processor(table, ManualClock(at(300)))
    out = b.process(records, generation=1)  # replayed from offset 0
    assert (out.replayed, out.events) == (2, 1)
    assert out.alerts == []  # within clear_after of the first: the same incident
    (incident,) = b.engines[APP].incidents()
    assert incident["dedup_key"] == before.alerts[0]["dedup_key"]
    assert incident["count"] == 2

    uninterrupted = processor(None, ManualClock(at(300)))
    assert uninterrupted.process(records, generation=1).alerts == before.alerts
    assert uninterrupted.engines[APP].incidents() == b.engines[APP].incidents()


def test_events_forwarded_twice_by_the_rekey_stage_are_observed_once() -> None:
    scored_0, drift_0 = ("undertow.scored.v1", 0), ("undertow.drift.v1", 2)
    first, other, detected = injection(0), injection(1), drift(2)
    records = [
        source(0, first, origin=(*scored_0, 10)),
        source(1, detected, origin=(*drift_0, 3)),
        source(2, first, origin=(*scored_0, 10)),  # forwarded again: a new offset here
        source(3, other, origin=(*scored_0, 11)),
        source(4, detected, origin=(*drift_0, 3)),
    ]
    p = processor()
    out = p.process(records, generation=1)
    assert (out.events, out.replayed) == (3, 2)
    assert [a["rule"] for a in out.alerts] == ["prompt_injection", "drift_detected"]
    counts = {i["rule"]: i["count"] for i in p.engines[APP].incidents()}
    assert counts == {"prompt_injection": 2, "drift_detected": 1}
    ((_, _, value),) = p.states.checkpoints(1, p.state_of)
    assert decode_checkpoint(value).origins == {
        "undertow.scored.v1:0": 11,
        "undertow.drift.v1:2": 3,
    }


def test_without_a_checkpoint_the_replay_fires_again_with_the_same_ids() -> None:
    records = [source(0, injection(0))]
    fired = processor().process(records, generation=1).alerts
    again = processor().process(records, generation=1).alerts
    assert again == fired and len(fired) == 1


def test_a_new_generation_reloads_the_state_from_the_table() -> None:
    table: dict[bytes, bytes] = {}
    p = processor(table)
    p.process([source(0, injection(0))], generation=1)
    checkpoint(p, 1, table)
    p.process([source(1, injection(60))], generation=1)
    assert p.process([source(1, injection(60))], generation=1).replayed == 1
    out = p.process([source(1, injection(60))], generation=2)
    assert (out.replayed, out.events, out.alerts) == (0, 1, [])
    (incident,) = p.engines[APP].incidents()
    assert incident["count"] == 2  # the checkpoint's hit and this one, not three
    assert p.states.current(APP, 2)


def test_the_tick_resolves_a_quiet_incident_and_marks_its_app_for_checkpoint() -> None:
    table: dict[bytes, bytes] = {}
    clock = ManualClock(at(0))
    p = processor(table, clock)
    fired = p.process([source(0, injection(0)), source(1, injection(60))], generation=1).alerts
    checkpoint(p, 1, table)
    assert p.tick(1, at(120)).alerts == []  # not quiet for long enough
    assert not p.states.dirty(1)
    out = p.tick(1, T0 + timedelta(hours=3))
    (resolved,) = out.alerts
    assert (resolved["rule"], resolved["status"]) == ("prompt_injection", "resolved")
    assert resolved["dedup_key"] == fired[0]["dedup_key"]
    assert resolved["evidence"]["count"] == "2"
    assert resolved["event_time"] == at(60) + timedelta(minutes=15)  # last hit + clear_after
    assert p.states.dirty(1)
    encodes(out.alerts)
    assert p.engines[APP].incidents() == []
    checkpoint(p, 1, table)
    assert p.tick(1, T0 + timedelta(hours=4)).alerts == []
    assert not p.states.dirty(1)  # nothing changed: nothing to write


def test_a_restored_processor_resolves_as_the_uninterrupted_one() -> None:
    table: dict[bytes, bytes] = {}
    records = [source(0, injection(0)), source(1, injection(60))]
    a = processor(table, ManualClock(at(60)))
    a.process(records, generation=1)
    checkpoint(a, 1, table)
    b = processor(table, ManualClock(at(60)))
    b.process(records[:1], generation=1)  # loads the app: its replay is skipped
    later = T0 + timedelta(hours=3)
    assert b.tick(1, later).alerts == a.tick(1, later).alerts != []


def test_the_tick_only_moves_engines_of_the_generation() -> None:
    p = processor()
    p.process([source(0, injection(0))], generation=1)
    assert p.tick(2, T0 + timedelta(hours=3)).alerts == []
    assert [a["status"] for a in p.tick(1, T0 + timedelta(hours=3)).alerts] == ["resolved"]


def test_forget_drops_the_engines_of_other_generations() -> None:
    p = processor()
    p.process([source(0, injection(0))], generation=1)
    p.forget(1)
    assert APP in p.engines
    p.forget(2)
    assert p.engines == {} and p.states.keys(1) == []
    assert p.state_of(APP) is None


def test_an_unrestorable_policy_state_starts_the_app_afresh() -> None:
    table = {b"chat": encode_checkpoint(PARTITION, {HERE: 5}, {"format": "something else"})}
    p = processor(table)
    out = p.process([source(6, injection(0))], generation=1)
    assert out.events == 1 and [a["status"] for a in out.alerts] == ["firing"]
    assert p.states.dirty(1)
    state = p.state_of(APP)
    assert state is not None and state["format"] == "undertow.policy-state/1"


def test_an_unreadable_checkpoint_starts_the_app_afresh() -> None:
    p = processor({b"chat": b"not a checkpoint"})
    out = p.process([source(0, injection(0))], generation=1)
    assert out.events == 1 and len(out.alerts) == 1


# -- dead letters ---------------------------------------------------------------------------


def test_records_it_cannot_use_become_dead_letters_and_the_rest_flow_on() -> None:
    an_alert = alert(
        rule="prompt_injection",
        severity="critical",
        status="firing",
        dedup_key="prompt_injection|app=chat|2026-01-01T00:00:00Z",
        summary="an alert is output, not input",
        app=APP,
        event_time=T0,
    )
    good_scored, good_drift = injection(0), drift(5)
    records = [
        source(0, good_scored),
        source(1, CODEC.encode("alert", an_alert)),
        source(2, b"\x01\x02 not avro"),
        source(3, injection(2) | {"app": "billing"}),
        source(4, injection(3), key=None),
        source(5, None),
        source(6, good_drift),
    ]
    p = processor()
    out = p.process(records, generation=1)
    assert out.events == 2 and out.replayed == 0
    assert [a["rule"] for a in out.alerts] == ["prompt_injection", "drift_detected"]
    letters = {d["source_offset"]: d for d in out.dead_letters}
    expected = {
        1: ("DecodeError", "record type alert; the policy processor takes"),
        2: ("DecodeError", "unknown framing"),
        3: ("DecodeError", "app key 'chat' does not match the record's app"),
        4: ("KeyError", "without an app key"),
        5: ("DecodeError", "tombstone"),
    }
    assert sorted(letters) == sorted(expected)
    for offset, (error_type, reason) in expected.items():
        letter = letters[offset]
        assert letter["error_type"] == error_type
        assert reason in str(letter["reason"]), letter["reason"]
        assert (letter["processor"], letter["source_topic"]) == (PROCESSOR, TOPIC)
        assert (letter["source_partition"], letter["source_offset"]) == (PARTITION, offset)
        CODEC.encode("dead_letter", letter)  # publishable as it is
    assert letters[2]["payload"] == b"\x01\x02 not avro"
    assert " and ".join(INPUT_TYPES) in str(letters[1]["reason"])
    counts = {i["rule"]: i["count"] for i in p.engines[APP].incidents()}
    assert counts == {"prompt_injection": 1, "drift_detected": 1}  # billing's not counted


def test_events_too_late_for_every_rule_or_for_one_are_counted_in_the_output() -> None:
    spend = {"kind": "budget", "threshold": 10, "window": "1m", "group_by": ["app"]}
    quick = {**spend, "name": "quick", "allowed_lateness": "10s"}
    rules = parse_rules({"allowed_lateness": "2m", "rules": [quick, {**spend, "name": "slow"}]})
    p = processor(rules=rules)
    first = p.process([source(0, scored(100))], 1)
    assert (first.events, first.late, first.late_for_rule) == (1, 0, 0)
    # 15 s late: past quick's 10 s, within the file's 2 minutes; then 200 s late: past both
    out = p.process([source(1, scored(85, cost_usd=11.0)), source(2, scored(-100))], 1)
    assert (out.events, out.late, out.late_for_rule) == (2, 1, 1)


def test_events_forwarded_late_by_a_lagging_worker_are_not_dropped_as_late() -> None:
    """Scored partition 1's rekey worker falls 5 minutes of event time behind partition 0's:
    its events come in after the others' and still count (the engine waits for its origin)."""
    both = [source(i, injection(0), origin=("scored", i, 0)) for i in (0, 1)]
    ahead = [source(2 + i, injection(10 * i), origin=("scored", 0, i)) for i in range(1, 31)]
    behind = [source(32 + i, injection(10 * i), origin=("scored", 1, i)) for i in range(1, 31)]
    out = processor().process(both + ahead + behind, generation=1)
    assert (out.events, out.late, out.late_for_rule) == (62, 0, 0)


def test_a_new_app_waits_for_every_scored_partition_before_event_time_moves() -> None:
    """Partition 0's rekey worker forwards 5 minutes of an app's events before partition 1's
    forwards its first: a new engine waits for every origin it was told of."""
    origins = ("scored:0", "scored:1")
    states = KeyedStates({})
    p = PolicyProcessor(RULES, states, CODEC, ManualClock(), origins=origins)
    first = [source(i, injection(10 * i), origin=("scored", 0, i)) for i in range(31)]
    then = [source(31 + i, injection(10 * i), origin=("scored", 1, i)) for i in range(31)]
    out = p.process(first + then, generation=1)
    assert (out.events, out.late) == (62, 0)
