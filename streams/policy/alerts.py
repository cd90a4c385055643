"""Alert records (``schemas/avro/alert.v1.avsc``) as the policy engine emits them.

Ids are derived, not random: ``event_id`` is a UUIDv5 of the incident key, status, severity
and time, so re-running the engine over the same input (a replay after a crash, a restored
state) emits byte-identical alerts, and the ``alerts`` table, which deduplicates on
``event_id``, keeps one row each. All alerts of one incident share its ``trace_id``.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from undertow.schemas.events import alert
from undertow.streams.policy.sql import render

# Namespace of the alert event ids (uuid5): a fixed, arbitrary UUID.
ALERT_NAMESPACE = uuid.UUID("5a0c7e0e-2b1f-4c61-9d8e-7f3f1a2b9c40")


def segment_of(fields: Mapping[str, str]) -> str:
    """A group as ``app=chat/model=gpt-4o``; a drift ``segment`` field is already in that form
    and is spliced in as is."""
    return "/".join(
        value if name == "segment" else f"{name}={value}" for name, value in fields.items()
    )


def dedup_key(rule: str, segment: str, started: datetime) -> str:
    """The key of one incident: rule, group and when it started, e.g.
    ``toxicity_rate|app=chat/environment=production|2026-01-01T00:05:00Z``."""
    return f"{rule}|{segment}|{iso(started)}"


def iso(moment: datetime) -> str:
    """UTC time as ``2026-01-01T00:05:00Z`` (with microseconds only when it has some)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def number(value: float | None) -> str:
    """A figure for the evidence map: 6 significant digits, '' when there is none."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.6g}"


def build_alert(
    *,
    rule: str,
    status: str,
    severity: str,
    key: str,
    segment: str,
    app: str,
    environment: str,
    at: datetime,
    summary: str,
    evidence: Mapping[str, str],
    attributes: Mapping[str, str],
    sql_template: str | None,
    sql_parameters: Mapping[str, object],
    runbook_url: str | None,
) -> dict[str, Any]:
    """One alert record, with its SQL rendered from the template and parameters."""
    event_id = uuid.uuid5(ALERT_NAMESPACE, f"{key}|{status}|{severity}|{iso(at)}")
    return alert(
        rule=rule,
        severity=severity,
        status=status,
        dedup_key=key,
        summary=summary,
        app=app,
        segment=segment,
        evidence=evidence,
        sql=None if sql_template is None else render(sql_template, sql_parameters),
        runbook_url=runbook_url,
        event_id=str(event_id),
        trace_id=hashlib.sha256(key.encode()).hexdigest()[:32],
        span_id=hashlib.sha256(event_id.bytes).hexdigest()[:16],
        environment=environment,
        event_time=at,
        attributes=attributes,
    )


def joined(ids: Sequence[str]) -> str:
    """Example ids for the evidence map (a map of strings): comma-separated."""
    return ",".join(ids)


__all__ = ["build_alert", "dedup_key", "iso", "joined", "number", "segment_of"]
