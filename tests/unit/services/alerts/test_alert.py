"""The alert record as channels see it (services/alerts/alert.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from undertow.schemas.codec import AvroCodec
from undertow.services.alerts import Alert, AlertError, alert_record


def test_a_record_round_trips_through_the_codec() -> None:
    record = alert_record(
        rule="injection_rate > 0.05",
        severity="critical",
        status="firing",
        dedup_key="inj:chat",
        summary="Prompt injection spike",
        app="chat",
        segment="model=m",
        evidence={"rate": "0.09"},
        sql="SELECT 1",
        runbook_url="https://runbooks.example.com/inj",
        environment="staging",
    )
    codec = AvroCodec()
    decoded = codec.decode(codec.encode("alert", record), "alert").record
    alert = Alert.from_record(decoded)
    assert isinstance(decoded["event_id"], uuid.UUID)
    assert alert.event_id == str(record["event_id"])
    assert (alert.severity, alert.status, alert.rank) == ("critical", "firing", 3)
    assert alert.evidence == {"rate": "0.09"} and alert.environment == "staging"
    assert alert.event_time.tzinfo is not None
    again = Alert.from_record(codec.decode(codec.encode("alert", alert.to_record())).record)
    assert again == alert


def test_empty_keys_and_summaries_are_filled_not_dropped() -> None:
    record = alert_record(
        rule="drift", severity="warning", status="firing", dedup_key=" ", summary="", app="chat"
    )
    alert = Alert.from_record(record)
    assert alert.dedup_key == "drift|chat|production|"
    assert alert.summary == "drift on chat"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"severity": "fatal"}, "severity: expected one of"),
        ({"status": "open"}, "status: expected one of"),
        ({"rule": 5}, "rule: expected a string"),
        ({"evidence": {"a": 1}}, "evidence: expected a map of strings"),
        ({"event_time": "yesterday"}, "event_time: expected a datetime"),
        ({"event_id": None}, "event_id: missing"),
    ],
)
def test_bad_fields_are_named(change: dict[str, object], message: str) -> None:
    record = alert_record(
        rule="r", severity="info", status="firing", dedup_key="k", summary="s", app="a"
    )
    record.update(change)
    with pytest.raises(AlertError, match=message):
        Alert.from_record(record)
    with pytest.raises(AlertError, match="mapping"):
        Alert.from_record([])  # type: ignore[arg-type]


def test_naive_times_are_taken_as_utc_and_json_is_iso() -> None:
    record = alert_record(
        rule="r", severity="info", status="resolved", dedup_key="k", summary="s", app="a"
    )
    record["event_time"] = datetime(2026, 1, 2, 3, 4, 5)
    alert = Alert.from_record(record)
    assert alert.event_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert alert.to_json()["event_time"] == "2026-01-02T03:04:05+00:00"
    assert not alert.firing
