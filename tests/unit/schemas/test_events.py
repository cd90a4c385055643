"""Record builders of undertow.schemas.events, checked against the Avro schemas."""

from __future__ import annotations

from datetime import UTC, datetime

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import alert


def test_an_alert_built_with_given_envelope_fields_round_trips_through_the_codec() -> None:
    at = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    record = alert(
        rule="toxicity_rate",
        severity="error",
        status="firing",
        dedup_key="toxicity_rate|app=chat|2026-11-24T12:00:00Z",
        summary="toxicity above 2% on chat",
        app="chat",
        evidence={"rate": "0.031"},
        sql="SELECT 1",
        event_time=at,
        environment="staging",
    )
    codec = AvroCodec()
    decoded = codec.decode(codec.encode("alert", record), "alert").record
    assert decoded["event_time"] == at and decoded["environment"] == "staging"
    assert (decoded["rule"], decoded["severity"], decoded["status"]) == (
        "toxicity_rate",
        "error",
        "firing",
    )
    assert decoded["evidence"] == {"rate": "0.031"} and decoded["runbook_url"] is None


def test_each_alert_gets_fresh_ids_unless_given() -> None:
    common = {"rule": "r", "severity": "info", "status": "resolved", "dedup_key": "k"}
    first = alert(**common, summary="s", app="a")
    second = alert(**common, summary="s", app="a")
    assert first["event_id"] != second["event_id"]
    assert (
        alert(**common, summary="s", app="a", event_id=first["event_id"])["event_id"]
        == (first["event_id"])
    )
