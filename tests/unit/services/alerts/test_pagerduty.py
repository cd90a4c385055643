"""PagerDuty Events API v2 events (services/alerts/pagerduty.py) and their validator."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import SecretStr

from undertow.services.alerts import SEVERITIES, Notification
from undertow.services.alerts.errors import ChannelError
from undertow.services.alerts.pagerduty import (
    EVENTS_URL,
    SEVERITY_MAP,
    PagerDutyChannel,
    pd_dedup_key,
    pd_severity,
)
from undertow.services.alerts.receiver import validate_pagerduty_event

from .fixtures import ROUTING_KEY, huge_alert, make_alert


@pytest.fixture
def pd() -> PagerDutyChannel:
    return PagerDutyChannel(SecretStr(ROUTING_KEY), client_url="https://undertow.example.com")


def test_a_trigger_carries_the_documented_fields(pd: PagerDutyChannel) -> None:
    alert = make_alert(severity="error")
    event = pd.event(alert)
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "tox:chat"
    payload = event["payload"]
    assert payload["summary"] == alert.summary
    assert payload["source"] == "chat/production"
    assert payload["severity"] == "error"
    assert datetime.fromisoformat(payload["timestamp"]) == alert.event_time
    assert (payload["component"], payload["group"], payload["class"]) == (
        "chat",
        "model=gpt-x/prompt=v3",
        "toxicity_p95 > 0.8",
    )
    details = payload["custom_details"]
    assert {k: details[k] for k in alert.evidence} == dict(alert.evidence)
    assert details["sql"] == alert.sql
    assert details["undertow"]["event_id"] == alert.event_id
    assert event["links"] == [{"href": alert.runbook_url, "text": "Runbook"}]
    assert (event["client"], event["client_url"]) == ("Undertow", "https://undertow.example.com")
    assert validate_pagerduty_event(event, ROUTING_KEY) == []


def test_a_resolve_sends_only_key_action_and_dedup_key(pd: PagerDutyChannel) -> None:
    event = pd.event(make_alert(status="resolved"))
    assert event == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "tox:chat"}
    assert validate_pagerduty_event(event, ROUTING_KEY) == []


@pytest.mark.parametrize("severity", SEVERITIES)
def test_every_severity_maps_onto_pagerdutys(pd: PagerDutyChannel, severity: Any) -> None:
    assert set(SEVERITY_MAP) == set(SEVERITIES)
    event = pd.event(make_alert(severity=severity))
    assert event["payload"]["severity"] == SEVERITY_MAP[severity]
    assert event["payload"]["severity"] in ("critical", "error", "warning", "info")


def test_an_unknown_severity_pages_as_error() -> None:
    assert pd_severity("catastrophic") == "error"
    assert pd_severity("info") == "info"


def test_limits_hold_for_an_alert_far_past_them(pd: PagerDutyChannel) -> None:
    alert = huge_alert()
    event = pd.event(alert)
    assert validate_pagerduty_event(event, ROUTING_KEY) == []
    assert len(event["payload"]["summary"]) == 1024
    assert event["payload"]["summary"].endswith("…")
    assert "\n" not in event["payload"]["summary"]
    assert len(event["dedup_key"]) == 255
    details = event["payload"]["custom_details"]
    assert details["evidence_omitted"] == "200"
    assert len(details["sql"]) == 16 * 1024
    assert all(len(v) <= 4096 for k, v in details.items() if k.startswith("metric_"))
    assert sum(k.startswith("metric_") for k in details) == 100
    assert len(pd.request(alert).body) < 512 * 1024
    assert "links" not in event  # a 3000+ character runbook URL is no web link


def test_long_dedup_keys_shorten_the_same_way_for_trigger_and_resolve(pd: PagerDutyChannel) -> None:
    key = "segment=" + "x" * 400
    trigger = pd.event(make_alert(key=key))["dedup_key"]
    resolve = pd.event(make_alert(key=key, status="resolved"))["dedup_key"]
    assert trigger == resolve == pd_dedup_key(key)
    assert len(trigger) == 255 and trigger.startswith("segment=xxx")
    assert pd_dedup_key(key + "y") != trigger
    assert pd_dedup_key("short") == "short"


def test_evidence_keys_never_overwrite_the_sql_or_undertow_fields(pd: PagerDutyChannel) -> None:
    alert = make_alert(evidence={"sql": "not the query", "undertow": "x", "p95": "0.9"})
    details = pd.event(alert)["payload"]["custom_details"]
    assert details["sql"] == alert.sql
    assert details["evidence.sql"] == "not the query"
    assert details["evidence.undertow"] == "x" and isinstance(details["undertow"], dict)


def test_one_event_per_incident(pd: PagerDutyChannel) -> None:
    same = Notification(
        (make_alert(severity="warning"), make_alert(severity="critical", summary="worse"))
    )
    event = pd.event(same)
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["summary"] == "worse"
    assert event["payload"]["custom_details"]["undertow"]["alerts_in_notification"] == 2
    with pytest.raises(ChannelError, match="one event per dedup key"):
        pd.event(Notification((make_alert(key="a"), make_alert(key="b"))))


def test_the_routing_key_must_have_32_characters() -> None:
    with pytest.raises(ChannelError, match="32 characters, got 31"):
        PagerDutyChannel("k" * 31)
    with pytest.raises(ChannelError, match="https"):
        PagerDutyChannel(ROUTING_KEY, events_url="http://events.example.com/v2/enqueue")
    assert PagerDutyChannel(ROUTING_KEY).events_url == EVENTS_URL


def test_a_400_is_permanent_and_names_pagerdutys_errors(pd: PagerDutyChannel) -> None:
    body = (
        b'{"status":"invalid event","message":"Event object is invalid",'
        b'"errors":["Length of \'routing_key\' is incorrect"]}'
    )
    outcome = pd.outcome(400, {}, body)
    assert outcome.kind == "permanent"
    assert "Event object is invalid" in outcome.reason
    assert "routing_key" in outcome.reason
    assert pd.outcome(202, {}, b'{"status":"success"}').delivered
    throttled = pd.outcome(429, {"Retry-After": "30"}, b"")
    assert (throttled.kind, throttled.retry_after_s) == ("retry", 30.0)


def _trigger(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "k",
        "payload": {"summary": "s", "source": "src", "severity": "error"},
    }
    for key, value in changes.items():
        if key.startswith("payload_"):
            event["payload"][key[8:]] = value
        elif value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_trigger(routing_key="short"), "should be 32 characters, got 5"),
        (_trigger(event_action="escalate"), "'event_action' must be one of"),
        (_trigger(dedup_key="d" * 256), "1..255 characters"),
        (_trigger(event_action="resolve", dedup_key=None), "'dedup_key' is required to resolve"),
        (_trigger(payload=None), "'payload' is required to trigger"),
        (_trigger(payload_summary=""), "'payload.summary' is missing"),
        (_trigger(payload_summary="s" * 1025), "at most 1024"),
        (_trigger(payload_severity="high"), "'payload.severity' must be one of"),
        (_trigger(payload_source=None), "'payload.source' is missing"),
        (_trigger(payload_timestamp="yesterday"), "not an ISO 8601 time"),
        (_trigger(payload_colour="red"), "unknown payload field"),
        (_trigger(links=[{"text": "no href"}]), "'links[0].href' is required"),
        (_trigger(incident_key="legacy"), "unknown field"),
    ],
)
def test_the_validator_refuses_what_pagerduty_refuses(event: dict[str, Any], reason: str) -> None:
    errors = validate_pagerduty_event(event)
    assert any(reason in e for e in errors), errors


def test_the_validator_checks_the_integration_key() -> None:
    assert validate_pagerduty_event(_trigger()) == []
    assert validate_pagerduty_event(_trigger(), ROUTING_KEY) == []
    errors = validate_pagerduty_event(_trigger(), "z" * 32)
    assert errors == ["'routing_key' is not a known integration key"]
