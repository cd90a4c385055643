"""The alert as channels see it: a typed, immutable view of an ``undertow.Alert`` record.

Records come off ``undertow.alerts.v1`` as plain dicts (:class:`~undertow.schemas.codec.AvroCodec`
reads them); :meth:`Alert.from_record` checks the fields channels rely on and fills the two
that must never be empty for a page to be useful:

* an empty ``dedup_key`` becomes ``rule|app|environment|segment`` (without a key an incident can
  be neither deduplicated nor resolved);
* an empty ``summary`` becomes ``"<rule> on <app>"`` (Slack headers and PagerDuty summaries
  need text).

A page with a derived key beats a page lost to the dead-letter topic; only records whose
fields have the wrong type or value raise :class:`~undertow.services.alerts.errors.AlertError`.

>>> rec = alert_record(rule="toxicity>0.8", severity="error", status="firing",
...                    dedup_key="tox:chat", summary="Toxic answers", app="chat")
>>> a = Alert.from_record(rec)
>>> a.severity, a.status, a.rank
('error', 'firing', 2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, cast

from undertow.schemas.events import alert
from undertow.services.alerts.errors import AlertError

Severity = Literal["info", "warning", "error", "critical"]
Status = Literal["firing", "resolved"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error", "critical")
STATUSES: tuple[Status, ...] = ("firing", "resolved")
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Alert:
    """One alert record. ``evidence`` and ``attributes`` are read-only mappings."""

    event_id: str
    dedup_key: str
    rule: str
    severity: Severity
    status: Status
    summary: str
    app: str
    event_time: datetime
    environment: str = "production"
    segment: str = ""
    evidence: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    sql: str | None = None
    runbook_url: str | None = None
    trace_id: str = ""
    span_id: str = ""
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    @property
    def rank(self) -> int:
        """0 for info up to 3 for critical, to compare severities."""
        return SEVERITIES.index(self.severity)

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Alert:
        """Build from a decoded ``alert`` record; raises AlertError naming the bad fields."""
        if not isinstance(record, Mapping):
            raise AlertError(f"expected an alert record (a mapping), got {type(record).__name__}")
        problems: list[str] = []

        def text(name: str, *, optional: bool = False, default: str = "") -> Any:
            value = record.get(name, None if optional else default)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                problems.append(f"{name}: expected a string, got {type(value).__name__}")
                return default
            return value

        def mapping(name: str) -> Mapping[str, str]:
            value = record.get(name) or {}
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                problems.append(f"{name}: expected a map of strings")
                return _EMPTY
            return MappingProxyType(dict(value))

        event_id = record.get("event_id")
        if event_id is None or not str(event_id):
            problems.append("event_id: missing")
        severity = record.get("severity")
        if severity not in SEVERITIES:
            problems.append(f"severity: expected one of {list(SEVERITIES)}, got {severity!r}")
        status = record.get("status")
        if status not in STATUSES:
            problems.append(f"status: expected one of {list(STATUSES)}, got {status!r}")
        event_time = record.get("event_time")
        if not isinstance(event_time, datetime):
            problems.append(f"event_time: expected a datetime, got {type(event_time).__name__}")
            event_time = datetime.fromtimestamp(0, UTC)
        elif event_time.tzinfo is None:
            event_time = event_time.replace(tzinfo=UTC)
        rule = text("rule")
        app = text("app")
        environment = text("environment", default="production")
        segment = text("segment")
        summary = text("summary")
        dedup_key = text("dedup_key")
        built = {
            "sql": text("sql", optional=True),
            "runbook_url": text("runbook_url", optional=True),
            "trace_id": text("trace_id"),
            "span_id": text("span_id"),
            "evidence": mapping("evidence"),
            "attributes": mapping("attributes"),
        }
        if problems:
            raise AlertError("invalid alert record: " + "; ".join(problems))
        if not dedup_key.strip():
            dedup_key = "|".join((rule, app, environment, segment))
        if not summary.strip():
            summary = f"{rule or 'alert'} on {app or 'unknown app'}"
        return cls(
            event_id=str(event_id),
            dedup_key=dedup_key,
            rule=rule,
            severity=cast(Severity, severity),
            status=cast(Status, status),
            summary=summary,
            app=app,
            event_time=event_time,
            environment=environment,
            segment=segment,
            **built,
        )

    def to_record(self) -> dict[str, Any]:
        """The ``alert`` record for :meth:`AvroCodec.encode` (envelope fields included)."""
        return alert(
            rule=self.rule,
            severity=self.severity,
            status=self.status,
            dedup_key=self.dedup_key,
            summary=self.summary,
            app=self.app,
            segment=self.segment,
            evidence=self.evidence,
            sql=self.sql,
            runbook_url=self.runbook_url,
            event_id=self.event_id,
            trace_id=self.trace_id or None,
            span_id=self.span_id or None,
            environment=self.environment,
            event_time=self.event_time,
            attributes=self.attributes,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (ISO 8601 time, plain dicts), as the webhook channel sends it."""
        return {
            "event_id": self.event_id,
            "dedup_key": self.dedup_key,
            "status": self.status,
            "severity": self.severity,
            "rule": self.rule,
            "summary": self.summary,
            "app": self.app,
            "environment": self.environment,
            "segment": self.segment,
            "event_time": self.event_time.astimezone(UTC).isoformat(),
            "evidence": dict(self.evidence),
            "sql": self.sql,
            "runbook_url": self.runbook_url,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "attributes": dict(self.attributes),
        }


# The ``alert`` record for the codec: the envelope (fresh ids and now, unless given) plus the
# alert's own fields. One builder serves the policy engine, the subscribers and the tests.
alert_record = alert
