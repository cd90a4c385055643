"""The policy engine: each rule kind fires exactly when it should, incidents deduplicate,
escalate and resolve with hysteresis, event time (not arrival) drives windows, and a saved
state carries on with identical output. Every alert is checked to encode as an Avro alert."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest

from undertow.streams.policy import (
    PolicyEngine,
    PolicyInputError,
    PolicyStateError,
    load_rules,
    parse_rules,
)
from undertow.streams.policy.sql import literal

from .fixtures import (
    T0,
    ManualClock,
    at,
    by_rule,
    drift,
    engine,
    feed,
    new_id,
    run,
    scenario,
    scored,
)

INJECTION: dict[str, Any] = {
    "name": "inj",
    "kind": "event",
    "value": "scores.injection",
    "threshold": 0.8,
    "severity": "critical",
    "filters": {"event_type": "prompt"},
    "group_by": ["app"],
    "clear_after": "10m",
    "sql": "SELECT 1 WHERE {{ app }} != '' AND {{ score }} = 'injection' AND {{ threshold }} > 0",
}
TOXICITY: dict[str, Any] = {
    "name": "tox",
    "kind": "rate",
    "value": "scores.toxicity",
    "event_above": 0.5,
    "threshold": 0.02,
    "min_count": 50,
    "window": "5m",
    "step": "1m",
    "filters": {"event_type": "completion"},
    "group_by": ["app"],
}


def toxic_stream(
    start: int, stop: int, toxic: Any, *, app: str = "chat", every: int = 1
) -> list[dict[str, Any]]:
    """One completion per ``every`` seconds in [start, stop); ``toxic(t)`` says which."""
    return [
        scored(t, scores={"toxicity": 0.9 if toxic(t) else 0.01}, app=app)
        for t in range(start, stop, every)
    ]


# -- event rules ----------------------------------------------------------------------------


def test_event_rule_fires_strictly_above_the_threshold_on_matching_events() -> None:
    clock = ManualClock()
    policy = engine([INJECTION], clock)
    assert (
        feed(
            policy,
            clock,
            [
                scored(0, "prompt", scores={"injection": 0.8}),  # not above
                scored(1, "completion", scores={"injection": 0.99}),  # filtered out
                scored(2, "prompt", scores={"toxicity": 0.99}),  # no injection score
            ],
        )
        == []
    )
    hit = new_id()
    [alert] = feed(policy, clock, [scored(3, "prompt", scores={"injection": 0.81}, event_id=hit)])
    assert (alert["rule"], alert["severity"], alert["status"]) == ("inj", "critical", "firing")
    assert (alert["app"], alert["environment"], alert["segment"]) == ("chat", "*", "app=chat")
    assert alert["event_time"] == at(3)
    assert alert["dedup_key"] == "inj|app=chat|2026-01-01T00:00:03Z"
    evidence = alert["evidence"]
    assert (evidence["value"], evidence["threshold"], evidence["count"]) == ("0.81", "0.8", "1")
    assert evidence["example_event_ids"] == hit
    assert evidence["event_type"] == "prompt"
    assert alert["sql"] == "SELECT 1 WHERE 'chat' != '' AND 'injection' = 'injection' AND 0.8 > 0"


def test_a_burst_is_one_incident_per_app_resolved_with_its_count() -> None:
    clock = ManualClock()
    policy = engine([{**INJECTION, "max_examples": 3}], clock)
    ids = [new_id() for _ in range(12)]
    burst = [
        scored(10 + 30 * i, "prompt", scores={"injection": 0.9 + i / 200}, event_id=ids[i])
        for i in range(12)
    ]
    other = scored(350, "prompt", app="search", scores={"injection": 0.85})
    alerts = feed(policy, clock, [*burst, other])
    assert [(a["app"], a["status"], a["event_time"]) for a in alerts] == [
        ("chat", "firing", at(10)),
        ("search", "firing", at(350)),
    ]
    key = alerts[0]["dedup_key"]
    # Last hit at 340 s, clear after 10 min: nothing resolves before 940 s of event time.
    assert policy.tick(at(939)) == []
    resolved = policy.tick(at(940))
    assert [(a["app"], a["status"], a["event_time"]) for a in resolved] == [
        ("chat", "resolved", at(940))
    ]
    [done] = resolved
    assert (done["dedup_key"], done["severity"]) == (key, "critical")
    assert done["evidence"]["count"] == "12"
    assert done["evidence"]["peak_value"] == "0.955"
    assert done["evidence"]["example_event_ids"] == ",".join(ids[:3])
    assert (done["evidence"]["first_seen"], done["evidence"]["last_seen"]) == (
        "2026-01-01T00:00:10Z",
        "2026-01-01T00:05:40Z",
    )
    assert [a["status"] for a in policy.tick(at(950))] == ["resolved"]  # search: 350 + 600
    assert policy.incidents() == []
    # A later attempt is a new incident with a new key.
    [again] = feed(policy, clock, [scored(2000, "prompt", scores={"injection": 0.9})])
    assert again["status"] == "firing" and again["dedup_key"] != key


def test_a_gap_of_clear_after_splits_incidents_in_event_time() -> None:
    clock = ManualClock()
    policy = engine([INJECTION], clock, idle_after="1h")
    hits = [scored(t, "prompt", scores={"injection": 0.9}) for t in (0, 599, 1199)]
    alerts = feed(policy, clock, hits)
    # 0 and 599 are less than 10 minutes apart; 1199 is exactly 10 minutes after 599.
    assert [(a["status"], a["event_time"]) for a in alerts] == [
        ("firing", at(0)),
        ("resolved", at(1199)),
        ("firing", at(1199)),
    ]
    assert alerts[0]["dedup_key"] == alerts[1]["dedup_key"] != alerts[2]["dedup_key"]
    assert alerts[1]["evidence"]["count"] == "2"


def test_event_rule_escalates_once_on_count() -> None:
    clock = ManualClock()
    rule = {
        **INJECTION,
        "severity": "error",
        "escalate": [{"severity": "critical", "min_count": 3}],
    }
    policy = engine([rule], clock)
    alerts = feed(policy, clock, [scored(t, "prompt", scores={"injection": 0.9}) for t in range(5)])
    assert list(by_rule(alerts)) == [("inj", "firing", "error"), ("inj", "firing", "critical")]
    assert alerts[1]["event_time"] == at(2)
    assert alerts[1]["dedup_key"] == alerts[0]["dedup_key"]
    assert alerts[1]["evidence"]["previous_severity"] == "error"
    assert alerts[1]["summary"].startswith("inj escalated to critical:")
    [resolved] = policy.tick(at(1000))
    assert (resolved["status"], resolved["severity"], resolved["evidence"]["count"]) == (
        "resolved",
        "critical",
        "5",
    )


def test_event_rule_escalates_on_value() -> None:
    clock = ManualClock()
    rule = {
        **INJECTION,
        "severity": "warning",
        "escalate": [{"severity": "critical", "threshold": 0.95}],
    }
    policy = engine([rule], clock)
    values = [0.9, 0.95, 0.96, 0.99]
    alerts = feed(
        policy, clock, [scored(t, "prompt", scores={"injection": v}) for t, v in enumerate(values)]
    )
    assert [(a["severity"], a["event_time"]) for a in alerts] == [
        ("warning", at(0)),
        ("critical", at(2)),
    ]


def test_min_count_needs_that_many_hits_within_the_window() -> None:
    clock = ManualClock()
    policy = engine([{**INJECTION, "min_count": 3, "window": "1m"}], clock)
    ids = [new_id() for _ in range(4)]
    times = [0, 30, 70, 80]
    hits = [
        scored(t, "prompt", scores={"injection": 0.9}, event_id=i)
        for t, i in zip(times, ids, strict=True)
    ]
    assert feed(policy, clock, hits[:3]) == []  # 0, 30, 70: three hits, but 70 s apart
    [alert] = feed(policy, clock, hits[3:])  # 30, 70, 80
    assert alert["event_time"] == at(80)
    assert alert["dedup_key"].endswith("2026-01-01T00:00:30Z")
    assert alert["evidence"]["count"] == "3"
    assert alert["evidence"]["example_event_ids"] == ",".join(ids[1:])
    # A lone hit of another app waits for company, then expires with nothing kept.
    assert (
        feed(policy, clock, [scored(100, "prompt", app="other", scores={"injection": 0.9})]) == []
    )
    assert policy.state()["rules"]["inj"]["groups"] != {}
    assert [a["status"] for a in policy.tick(at(10_000))] == ["resolved"]
    assert policy.state()["rules"]["inj"]["groups"] == {}


# -- rate rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(("toxic", "fires"), [(2, False), (3, True)])
def test_rate_fires_above_two_percent_not_at_it(toxic: int, fires: bool) -> None:
    clock = ManualClock()
    policy = engine([TOXICITY], clock)
    # A completion every 3 s, so every 5-minute window holds 100; the toxic ones at the end
    # of the first window, and one at exactly 0.5 (not above event_above).
    toxic_at = {297 - 3 * i for i in range(toxic)}
    records = [
        scored(t, scores={"toxicity": 0.9 if t in toxic_at else 0.5 if t == 150 else 0.01})
        for t in range(0, 600, 3)
    ]
    alerts = feed(policy, clock, records)
    if not fires:
        assert alerts == [] and policy.tick(at(10_000)) == []
        return
    [alert] = alerts
    assert (alert["event_time"], alert["severity"]) == (at(300), "warning")
    evidence = alert["evidence"]
    assert (evidence["value"], evidence["count"], evidence["hits"]) == ("0.03", "100", "3")
    assert (evidence["window_start"], evidence["window_end"]) == (
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:05:00Z",
    )
    assert len(evidence["example_event_ids"].split(",")) == 3
    assert "3 of 100 events (3.00%)" in alert["summary"]


def test_rate_needs_min_count_of_events_that_have_the_value() -> None:
    clock = ManualClock()
    policy = engine([TOXICITY], clock)
    one_of_three = [scored(t, scores={"toxicity": 0.9 if t == 0 else 0.01}) for t in (0, 1, 2)]
    unscored = [scored(3 + t) for t in range(100)]  # completions without a toxicity score
    feed(policy, clock, [*one_of_three, *unscored])
    assert policy.tick(at(10_000)) == []


def test_rate_hysteresis_for_and_clear_after() -> None:
    clock = ManualClock()
    rules = [
        {**TOXICITY, "name": "pending", "min_count": 10, "for": "2m", "clear_after": "3m"},
        {**TOXICITY, "name": "at_once", "min_count": 10, "clear_after": "0s"},
    ]
    policy = engine(rules, clock)
    # One completion a second; every 10th toxic (10%) for the first 5 minutes, then none.
    alerts = feed(policy, clock, toxic_stream(0, 1200, lambda t: t < 300 and t % 10 == 0))
    got = [(a["rule"], a["status"], a["event_time"]) for a in alerts]
    # Windows end every minute. [240, 540) holds 6 toxic of 300: 2%, not above, so clear
    # from 540; "pending" held from 60 and fires two minutes on; resolves three minutes on.
    assert got == [
        ("at_once", "firing", at(60)),
        ("pending", "firing", at(180)),
        ("at_once", "resolved", at(540)),
        ("pending", "resolved", at(720)),
    ]
    resolved = alerts[-1]
    assert resolved["evidence"]["fired_at"] == "2026-01-01T00:03:00Z"
    assert resolved["evidence"]["value"] == "0"
    assert resolved["dedup_key"] == alerts[1]["dedup_key"]


def test_rate_escalates_once_and_never_repeats_while_firing() -> None:
    clock = ManualClock()
    rule = {
        **TOXICITY,
        "min_count": 10,
        "clear_after": "1m",
        "escalate": [{"severity": "error", "threshold": 0.1}],
    }
    policy = engine([rule], clock)

    def toxic(t: int) -> bool:  # 5% for 5 minutes, 20% for 5 minutes, then none
        return (t < 300 and t % 20 == 0) or (300 <= t < 600 and t % 5 == 0)

    alerts = feed(policy, clock, toxic_stream(0, 1200, toxic))
    assert [(a["status"], a["severity"], a["event_time"]) for a in alerts] == [
        ("firing", "warning", at(60)),
        ("firing", "error", at(420)),  # [120, 420): 9 + 24 of 300 = 11%
        ("resolved", "error", at(960)),  # clear from 900, for a minute
    ]
    assert len({a["dedup_key"] for a in alerts}) == 1
    assert alerts[1]["evidence"]["previous_severity"] == "warning"
    assert alerts[1]["evidence"]["value"] == "0.11"


def test_clear_threshold_keeps_an_incident_open_in_the_band() -> None:
    clock = ManualClock()
    base = {**TOXICITY, "threshold": 0.05, "min_count": 10, "clear_after": "1m"}
    policy = engine(
        [{**base, "name": "band", "clear_threshold": 0.02}, {**base, "name": "plain"}], clock
    )

    def toxic(t: int) -> bool:  # 10% for 5 minutes, 4% for 10 minutes, then none
        return (t < 300 and t % 10 == 0) or (300 <= t < 900 and t % 25 == 0)

    alerts = feed(policy, clock, toxic_stream(0, 1500, toxic))
    assert [(a["rule"], a["status"], a["event_time"]) for a in alerts] == [
        ("band", "firing", at(60)),
        ("plain", "firing", at(60)),
        ("plain", "resolved", at(660)),  # 4% is not above 5%: clear from 600
        ("band", "resolved", at(1140)),  # but above 2% until [780, 1080)
    ]


# -- budget and percentile rules ------------------------------------------------------------


def test_budget_fires_above_the_budget_per_app_when_time_moves_on() -> None:
    clock = ManualClock()
    rule = {"name": "spend", "kind": "budget", "threshold": 50, "window": "1h", "step": "5m"}
    policy = engine([rule], clock)
    records = []
    for i in range(50):
        records += [scored(10 * i, app="a", cost_usd=1.0), scored(10 * i, app="b", cost_usd=1.0)]
    records.append(scored(500, app="b", cost_usd=0.02))
    records.append(scored(500, app="b", cost_usd=None))  # unpriced: not counted
    assert feed(policy, clock, records) == []  # windows up to 00:05 hold 30 dollars each
    assert policy.tick(at(530)) == []  # quiet for 30 s only: event time stays at 500 s
    [alert] = policy.tick(at(700))  # quiet for 200 s: event time moves to 700 s
    assert (alert["app"], alert["event_time"], alert["severity"]) == ("b", at(600), "warning")
    assert (alert["evidence"]["value"], alert["evidence"]["count"]) == ("50.02", "51")
    assert alert["evidence"]["window"] == "1h"
    assert alert["segment"] == "app=b/environment=production"


@pytest.mark.parametrize(("slow", "fires"), [(5, False), (6, True)])
def test_percentile_p95_per_model(slow: int, fires: bool) -> None:
    clock = ManualClock()
    rule = {
        "name": "p95",
        "kind": "percentile",
        "quantile": 0.95,
        "threshold": 1000,
        "window": "5m",
        "step": "5m",
        "group_by": ["app", "model"],
    }
    policy = engine([rule], clock)
    records = [
        scored(3 * i, model="m1", latency_ms=2000.0 if i < slow else 500.0) for i in range(100)
    ]
    records += [scored(i, model="m3", latency_ms=5000.0) for i in range(19)]  # below min_count
    records.append(scored(300, model="m1"))
    alerts = feed(policy, clock, records) + policy.tick(at(10_000))
    if not fires:  # 95 of 100 at 500 ms: the 95th smallest is 500
        assert alerts == []
        return
    firing, resolved = alerts
    assert (firing["segment"], firing["event_time"]) == ("app=chat/model=m1", at(300))
    assert float(firing["evidence"]["value"]) == pytest.approx(2000, rel=0.01)
    assert firing["evidence"]["quantile"] == "0.95"
    assert resolved["status"] == "resolved"


# -- drift rules ----------------------------------------------------------------------------


def test_drift_rule_fires_on_detections_of_its_stream_and_resolves_when_quiet() -> None:
    clock = ManualClock()
    rule = {
        "name": "emb",
        "kind": "drift",
        "filters": {"stream": "embedding_distance"},
        "clear_after": "30m",
        "escalate": [{"severity": "error", "min_count": 3}],
        "sql": "SELECT {{ segment }}, {{ stream }}, {{ detector }}, {{ statistic }}, "
        "{{ event_ids }}",
    }
    policy = engine([rule], clock)
    examples = [new_id(), new_id()]
    quiet = [drift(0, detected=False), drift(10, stream="toxicity")]
    assert feed(policy, clock, quiet) == []
    alerts = feed(policy, clock, [drift(60, examples=examples), drift(120), drift(180)])
    assert list(by_rule(alerts)) == [("emb", "firing", "warning"), ("emb", "firing", "error")]
    first = alerts[0]
    assert first["segment"] == "app=chat/model=gpt-4o/stream=embedding_distance"
    assert first["app"] == "chat"
    evidence = first["evidence"]
    assert (evidence["stream"], evidence["detector"], evidence["statistic"]) == (
        "embedding_distance",
        "adwin",
        "0.42",
    )
    assert (evidence["baseline_version"], evidence["nearest_topics"]) == ("b1", "refunds")
    assert evidence["example_event_ids"] == ",".join(examples)
    assert first["sql"] == (
        "SELECT 'app=chat/model=gpt-4o', 'embedding_distance', 'adwin', 0.42, " + literal(examples)
    )
    assert policy.tick(at(180 + 30)) == []  # not idle yet
    assert policy.tick(at(180 + 1799)) == []  # idle, but 30 minutes are not over
    [resolved] = policy.tick(at(180 + 1800))
    assert (resolved["status"], resolved["severity"], resolved["event_time"]) == (
        "resolved",
        "error",
        at(1980),
    )
    assert resolved["evidence"]["count"] == "3"


def test_drift_rule_on_a_statistic_without_detection() -> None:
    clock = ManualClock()
    rule = {"name": "stat", "kind": "drift", "require_detected": False, "threshold": 0.5}
    policy = engine([rule], clock)
    assert feed(policy, clock, [drift(0, detected=True, statistic=0.5)]) == []
    [alert] = feed(policy, clock, [drift(1, detected=False, statistic=0.51)])
    assert alert["evidence"]["detected"] == "false"


# -- time -----------------------------------------------------------------------------------


def observe_from(
    policy: PolicyEngine, clock: ManualClock, arrivals: list[tuple[float, str, float]]
) -> list[Any]:
    """Injection prompts (event time, origin, processing time in seconds after T0)."""
    alerts: list[Any] = []
    for when, origin, wall in arrivals:
        clock.now = at(wall)
        alerts += policy.observe_scored(scored(when, "prompt", scores={"injection": 0.9}), origin)
    return alerts


def test_an_origin_that_lags_holds_event_time_back_and_loses_no_event() -> None:
    clock = ManualClock()
    policy = engine([{**INJECTION, "name": "inj"}], clock, allowed_lateness="1m")
    # both partitions in step; then partition 1's worker restarts (40 s without a record),
    # partition 0 runs 5 minutes of event time ahead, and partition 1 catches up
    arrivals = [(0.0, "scored:0", 0.0), (0.0, "scored:1", 0.0)]
    arrivals += [(10.0 * i, "scored:0", i) for i in range(1, 31)]
    observe_from(policy, clock, arrivals)
    assert policy.watermark() == at(0 - 60)  # the slowest origin's latest, less the lateness
    observe_from(policy, clock, [(10.0 * i, "scored:1", 39 + i) for i in range(1, 31)])
    assert policy.metrics["late_events"] == 0
    assert policy.watermark() == at(300 - 60)


def test_an_origin_quiet_for_idle_after_no_longer_holds_event_time_back() -> None:
    clock = ManualClock()
    policy = engine([{**INJECTION, "name": "inj"}], clock, allowed_lateness="1m", idle_after="1m")
    observe_from(policy, clock, [(0, "scored:1", 0), (10, "scored:0", 0)])
    assert policy.watermark() == at(0 - 60)
    observe_from(policy, clock, [(100, "scored:0", 59)])
    assert policy.watermark() == at(0 - 60)  # scored:1 quiet for 59 s: still waited for
    observe_from(policy, clock, [(101, "scored:0", 61)])
    assert policy.watermark() == at(101 - 60)  # quiet for 61 s: no longer
    assert observe_from(policy, clock, [(30, "scored:1", 62)]) == []  # now late
    assert policy.metrics["late_events"] == 1


def test_the_tick_lets_event_time_pass_an_origin_gone_quiet() -> None:
    clock = ManualClock()
    policy = engine([{**INJECTION, "name": "inj"}], clock, allowed_lateness="1m", idle_after="1m")
    observe_from(policy, clock, [(0, "scored:1", 0), (100, "scored:0", 30)])
    assert policy.watermark() == at(-60)
    policy.tick(at(70))  # scored:1 quiet for 70 s, scored:0 for 40 s
    assert policy.watermark() == at(100 - 60)


def test_a_new_engine_waits_for_every_expected_origin_before_event_time_moves() -> None:
    clock = ManualClock()
    policy = engine([{**INJECTION, "name": "inj"}], clock, allowed_lateness="1m")
    policy.expect_origins(["scored:0", "scored:1"])
    # partition 0's worker is quicker off the mark: 5 minutes of event time before partition 1
    observe_from(policy, clock, [(10.0 * i, "scored:0", i) for i in range(31)])
    assert policy.watermark() is None
    observe_from(policy, clock, [(10.0 * i, "scored:1", 31 + i / 2) for i in range(31)])
    assert policy.metrics["late_events"] == 0
    assert policy.watermark() == at(300 - 60)


def test_an_expected_origin_never_heard_from_holds_event_time_for_idle_after_only() -> None:
    clock = ManualClock()
    policy = engine([{**INJECTION, "name": "inj"}], clock, allowed_lateness="1m", idle_after="1m")
    policy.expect_origins(["scored:0", "scored:1"])  # an app with no traffic on partition 1
    observe_from(policy, clock, [(100, "scored:0", 59)])
    assert policy.watermark() is None
    observe_from(policy, clock, [(200, "scored:0", 61)])
    assert policy.watermark() == at(200 - 60)


def test_origins_and_their_lag_survive_a_checkpoint() -> None:
    clock = ManualClock()
    rules = [{**INJECTION, "name": "inj"}]
    policy = engine(rules, clock, allowed_lateness="1m")
    observe_from(policy, clock, [(0, "scored:1", 0), (300, "scored:0", 1)])
    clock.now = at(500)  # the worker that takes over starts long after: every idle timer restarts
    ruleset = parse_rules({"rules": rules, "allowed_lateness": "1m"})
    restored = PolicyEngine.from_state(ruleset, policy.state(), clock)
    assert restored.watermark() == policy.watermark() == at(-60)
    observe_from(restored, clock, [(10, "scored:1", 501)])
    assert restored.metrics["late_events"] == 0  # scored:1 is still waited for
    assert restored.watermark() == at(10 - 60)


def test_a_state_saved_before_origins_were_kept_restores_as_one_origin() -> None:
    clock = ManualClock()
    rules = [{**INJECTION, "name": "inj"}]
    policy = engine(rules, clock, allowed_lateness="1m")
    observe_from(policy, clock, [(100, "", 0)])
    state = policy.state()
    for saved in state["clocks"].values():
        del saved["origins"]
    restored = PolicyEngine.from_state(parse_rules({"rules": rules}), state, clock)
    assert restored.watermark() == policy.watermark() == at(100 - 60)
    assert observe_from(restored, clock, [(30, "scored:0", 1)]) == []  # late, as before
    assert restored.metrics["late_events"] == 1


def test_late_events_within_the_lateness_count_and_older_ones_do_not() -> None:
    rules = [{**INJECTION, "name": "inj"}]
    clock = ManualClock()
    policy = engine(rules, clock, allowed_lateness="1m")
    alerts = feed(
        policy,
        clock,
        [
            scored(1000, "prompt", app="a", scores={"injection": 0.9}),
            scored(939.5, "prompt", app="b", scores={"injection": 0.9}),  # watermark is 940
            scored(940, "prompt", app="c", scores={"injection": 0.9}),
        ],
    )
    assert [a["app"] for a in alerts] == ["a", "c"]
    assert policy.metrics["late_events"] == 1
    assert policy.watermark() == at(940)


def test_a_rule_with_its_own_lateness_evaluates_its_windows_sooner() -> None:
    # Live ratings need not wait for the lateness that replayed traffic needs: the rule with
    # 10 s of its own fires once the window [0, 60) is 10 s old; the other waits 2 minutes.
    clock = ManualClock()
    spend = {"kind": "budget", "threshold": 10, "window": "1m", "group_by": ["app"]}
    rules = [{**spend, "name": "quick", "allowed_lateness": "10s"}, {**spend, "name": "slow"}]
    policy = engine(rules, clock, allowed_lateness="2m")
    alerts = feed(policy, clock, [scored(10, app="a", cost_usd=11.0), scored(70, app="z")])
    assert [(a["rule"], a["status"]) for a in alerts] == [("quick", "firing")]
    assert policy.watermark() == at(-50)  # the engine's: the longest lateness
    alerts = feed(policy, clock, [scored(180, app="z")])
    assert ("slow", "firing") in [(a["rule"], a["status"]) for a in alerts]


def test_an_event_late_for_one_rule_still_counts_for_the_others() -> None:
    clock = ManualClock()
    spend = {"kind": "budget", "threshold": 10, "window": "1m", "group_by": ["app"]}
    rules = [{**spend, "name": "quick", "allowed_lateness": "10s"}, {**spend, "name": "slow"}]
    policy = engine(rules, clock, allowed_lateness="2m")
    feed(policy, clock, [scored(100, app="z")])
    # 85 s: 15 s late, past quick's 10 s, within the engine's 2 minutes
    alerts = feed(policy, clock, [scored(85, app="a", cost_usd=11.0)])
    alerts += policy.tick(at(1000))
    assert {a["rule"] for a in alerts if a["app"] == "a"} == {"slow"}
    assert policy.metrics["late_for_rule"] == 1 and policy.metrics["late_events"] == 0


def test_a_rule_lateness_of_zero_is_its_own_not_the_files() -> None:
    clock = ManualClock()
    rule = {"name": "now", "kind": "budget", "threshold": 10, "window": "1m", "group_by": ["app"]}
    policy = engine([{**rule, "allowed_lateness": 0}], clock, allowed_lateness="2m")
    alerts = feed(policy, clock, [scored(10, app="a", cost_usd=11.0), scored(60, app="z")])
    assert [a["status"] for a in alerts] == ["firing"]


@pytest.mark.parametrize(("newest", "counted"), [(100, False), (80, True)])
def test_a_late_event_joins_its_window_only_while_it_is_open(newest: int, counted: bool) -> None:
    clock = ManualClock()
    rule = {"name": "spend", "kind": "budget", "threshold": 10, "window": "1m", "group_by": ["app"]}
    policy = engine([rule], clock, allowed_lateness="30s")
    feed(policy, clock, [scored(10, app="a", cost_usd=6.0), scored(newest, app="z", cost_usd=0.0)])
    # the watermark is newest - 30 s: 70 s closes [0, 60) without the late $6, 50 s does not
    alerts = feed(policy, clock, [scored(50, app="a", cost_usd=6.0)])
    alerts += policy.tick(at(1000))
    assert policy.metrics["late_events"] == (0 if counted else 1)
    assert [a["status"] for a in alerts if a["app"] == "a"] == (
        ["firing", "resolved"] if counted else []
    )


def test_arrival_pace_does_not_change_the_alerts() -> None:
    """A stream read in real time, as a backlog all at once, or slower than it was written
    (never quiet for idle_after) gives the same alerts: event time drives the windows."""
    records = toxic_stream(0, 1200, lambda t: t < 300 and t % 10 == 0, every=2)
    outputs = []
    for pace in (2, 0, 50):
        clock = ManualClock()
        policy = engine([{**TOXICITY, "min_count": 10}], clock)
        alerts = []
        for i, record in enumerate(records):
            clock.now = T0 + timedelta(seconds=pace * i)
            alerts += policy.observe_scored(record)
            alerts += policy.tick()
        outputs.append(alerts)
    assert outputs[0] == outputs[1] == outputs[2]
    assert [(a["status"], a["event_time"]) for a in outputs[0]] == [
        ("firing", at(60)),
        ("resolved", at(900)),
    ]


def test_tick_without_events_is_harmless() -> None:
    policy = engine([INJECTION, TOXICITY], ManualClock())
    assert policy.tick(at(10**6)) == [] and policy.watermark() is None


def test_an_event_without_a_time_is_refused() -> None:
    policy = engine([INJECTION], ManualClock())
    bad = scored(0, "prompt")
    bad["event_time"] = "2026-01-01T00:00:00Z"
    with pytest.raises(PolicyInputError, match="event_time: expected a datetime"):
        policy.observe_scored(bad)


def test_groups_are_bounded() -> None:
    clock = ManualClock()
    policy = PolicyEngine(parse_rules({"rules": [INJECTION]}), clock, max_groups=2)
    alerts = feed(
        policy,
        clock,
        [scored(0, "prompt", app=f"app{i}", scores={"injection": 0.9}) for i in range(3)],
    )
    assert [a["app"] for a in alerts] == ["app0", "app1"]
    assert policy.metrics["groups_over_limit"] == 1


# -- the default rules, state and ids -------------------------------------------------------


def test_default_rules_on_a_scenario() -> None:
    clock = ManualClock()
    policy = PolicyEngine(load_rules(), clock)
    alerts = run(policy, clock, scenario())
    fired = {a["rule"] for a in alerts if a["status"] == "firing"}
    assert fired == {r.name for r in load_rules().rules}
    incidents: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in alerts:
        incidents[alert["dedup_key"]].append(alert)
    for key, history in incidents.items():
        statuses = [a["status"] for a in history]
        assert statuses[-1] == "resolved" and set(statuses[:-1]) == {"firing"}, key
        ranks = [["info", "warning", "error", "critical"].index(a["severity"]) for a in history]
        assert ranks[:-1] == sorted(set(ranks[:-1])) and ranks[-1] == ranks[-2], key
        assert len({a["trace_id"] for a in history}) == 1
    injection = [a for a in alerts if a["rule"] == "prompt_injection"]
    assert [a["status"] for a in injection] == ["firing", "resolved", "firing", "resolved"]
    assert injection[1]["evidence"]["count"] == "4"  # the burst at minute 3: one incident
    assert policy.incidents() == []
    assert policy.metrics["late_events"] == 0


def test_alert_ids_are_deterministic_and_well_formed() -> None:
    steps = scenario(minutes=20)
    runs = []
    for _ in range(2):
        clock = ManualClock()
        runs.append(run(PolicyEngine(load_rules(), clock), clock, steps))
    assert runs[0] == runs[1]
    ids = [a["event_id"] for a in runs[0]]
    assert len(set(ids)) == len(ids)
    for alert in runs[0]:
        assert re.fullmatch("[0-9a-f]{32}", alert["trace_id"])
        assert re.fullmatch("[0-9a-f]{16}", alert["span_id"])


@pytest.mark.parametrize("split", [0.25, 0.4, 0.6])
def test_state_round_trip_mid_stream_gives_identical_output(split: float) -> None:
    steps = scenario()
    cut = int(len(steps) * split)
    clock = ManualClock()
    whole = PolicyEngine(load_rules(), clock)
    expected = run(whole, clock, steps)

    clock = ManualClock()
    first = PolicyEngine(load_rules(), clock)
    before = run(first, clock, steps[:cut])
    assert first.incidents(), "the cut should fall inside an open incident"
    saved = json.loads(json.dumps(first.state()))  # JSON-compatible, and only that is kept
    assert any(
        group["buckets"] for rule in saved["rules"].values() for group in rule["groups"].values()
    )
    second = PolicyEngine.from_state(load_rules(), saved, clock)
    after = run(second, clock, steps[cut:])
    assert before + after == expected
    # The same windows, incidents and counts; only the idle timer restarted on restore.
    assert second.state()["rules"] == whole.state()["rules"]
    assert second.metrics == whole.metrics


def test_restore_under_edited_rules_keeps_incidents_so_they_resolve() -> None:
    clock = ManualClock()
    rules = [{**TOXICITY, "min_count": 10}, INJECTION]
    policy = engine(rules, clock)
    feed(policy, clock, toxic_stream(0, 200, lambda t: t % 10 == 0))
    feed(policy, clock, [scored(200, "prompt", scores={"injection": 0.9})])
    assert {i["rule"] for i in policy.incidents()} == {"tox", "inj"}
    state = policy.state()

    edited = engine([{**TOXICITY, "min_count": 10, "threshold": 0.03}], clock)
    edited.restore(state)
    assert [i["rule"] for i in edited.incidents()] == ["tox"]
    assert edited.metrics["incidents_dropped"] == 1  # inj is gone
    [resolved] = edited.tick(at(5000))
    assert (resolved["rule"], resolved["status"]) == ("tox", "resolved")


def test_a_worker_taking_over_reads_its_backlog_before_assuming_quiet() -> None:
    clock = ManualClock()
    rules = [{**INJECTION, "name": "inj"}]
    policy = engine(rules, clock, allowed_lateness="1m")
    feed(policy, clock, [scored(100, "prompt")])
    state = json.loads(json.dumps(policy.state()))
    backlog = scored(110, "prompt", scores={"injection": 0.9})

    clock.now = at(400)  # the new worker starts five minutes later
    successor = PolicyEngine.from_state(parse_rules({"rules": rules}), state, clock)
    assert successor.tick() == []
    assert [a["status"] for a in successor.observe_scored(backlog)] == ["firing"]

    # Without the restart, five minutes of quiet would have moved event time past it.
    policy.tick(at(400))
    assert policy.observe_scored(backlog) == [] and policy.metrics["late_events"] == 1


@pytest.mark.parametrize(
    "state",
    [{}, {"format": "undertow.policy-state/0"}, {"format": "undertow.policy-state/1"}, []],
)
def test_a_bad_state_is_refused(state: Any) -> None:
    policy = engine([INJECTION], ManualClock())
    with pytest.raises(PolicyStateError):
        policy.restore(state)
