"""Rules that act: a rate of bad feedback below a bound, and the action requests a firing
alert turns into (streams/policy/actions.py)."""

from __future__ import annotations

from typing import Any

from undertow.schemas.codec import AvroCodec
from undertow.streams.policy import parse_rules
from undertow.streams.policy.actions import action_requests, render

from .fixtures import ManualClock, at, engine, feed, scored

BAD_FEEDBACK: dict[str, Any] = {
    "name": "bad_feedback",
    "kind": "rate",
    "value": "scores.feedback",
    "event_below": 0.5,
    "threshold": 0.3,
    "min_count": 10,
    "window": "5m",
    "step": "10s",
    "filters": {"event_type": "feedback"},
    "group_by": ["app", "environment"],
    "severity": "error",
    "actions": [
        {"type": "rollback", "target": "{app}-model", "parameters": {"why": "{rule} on {app}"}}
    ],
}


def feedback_stream(bad: int, total: int = 20) -> list[dict[str, Any]]:
    """``total`` ratings, one a second; the last ``bad`` are 0, the rest 1 (0.5 is not bad)."""
    return [
        scored(
            t,
            "feedback",
            scores={"feedback": 0.0 if t >= total - bad else (0.5 if t == 0 else 1.0)},
        )
        for t in range(total)
    ] + [scored(70, "feedback", scores={"feedback": 1.0})]  # moves the watermark on


def test_a_rate_below_a_bound_counts_values_strictly_below_it() -> None:
    clock = ManualClock()
    policy = engine([BAD_FEEDBACK], clock)
    alerts = feed(policy, clock, feedback_stream(bad=7))
    [alert] = [a for a in alerts if a["status"] == "firing"]
    evidence = alert["evidence"]
    assert (evidence["hits"], evidence["event_below"]) == ("7", "0.5")
    assert "with feedback below 0.5" in alert["summary"]
    quiet = engine([BAD_FEEDBACK], ManualClock())
    assert feed(quiet, ManualClock(), feedback_stream(bad=6)) == []  # 6/21 under 30%


def test_a_firing_alert_requests_its_actions_once_with_deterministic_ids() -> None:
    clock = ManualClock()
    rules = parse_rules({"rules": [BAD_FEEDBACK]})
    policy = engine([BAD_FEEDBACK], clock)
    alerts = feed(policy, clock, feedback_stream(bad=10))
    firing = [a for a in alerts if a["status"] == "firing"]
    [request] = action_requests(alerts, rules)
    assert (request["action_type"], request["target"], request["phase"]) == (
        "rollback",
        "chat-model",
        "requested",
    )
    parameters = request["parameters"]
    assert parameters["why"] == "bad_feedback on chat"
    assert parameters["alert_event_id"] == str(firing[0]["event_id"])
    assert parameters["window_end"] == firing[0]["evidence"]["window_end"]
    assert request["event_time"] == firing[0]["event_time"]
    # The same alerts again (a replay) request the same thing under the same id.
    assert action_requests(alerts, rules)[0]["event_id"] == request["event_id"]
    AvroCodec().encode("action", request)  # a valid record for the actions topic
    # Escalations and resolutions request nothing.
    later = [{**a, "status": "resolved"} for a in firing]
    escalated = [
        {**a, "evidence": {**a["evidence"], "previous_severity": "warning"}} for a in firing
    ]
    assert action_requests(later + escalated, rules) == []


def test_targets_and_parameters_fill_group_fields_and_keep_unknown_names() -> None:
    fields = {"app": "chat", "attributes.model_version": "2"}
    assert render("{app}:{attributes.model_version}", fields) == "chat:2"
    assert render("{nope} {app}", fields) == "{nope} chat"
    assert at(0).year == 2026
