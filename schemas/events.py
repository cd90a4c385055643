"""Builders for the records of the contract: ids, timestamps and the common envelope.

Every record carries ``event_id`` (UUID), ``trace_id``/``span_id`` in W3C trace-context form
(32 and 16 lowercase hex digits, so they join with OpenTelemetry traces), the event time and
the app and environment. These helpers fill them in; callers add the type's own fields.

>>> rec = event("feedback", {"score": 1.0}, app="chat")
>>> event_type(rec)
'feedback'
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

# The fields every record of the contract starts with, in schema order.
ENVELOPE_FIELDS: tuple[str, ...] = (
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "event_time",
    "app",
    "environment",
    "user_hash",
    "session_hash",
    "attributes",
)
EventType = Literal["prompt", "retrieval", "completion", "feedback"]
EVENT_BODY_NAMES: dict[str, str] = {
    "prompt": "undertow.Prompt",
    "retrieval": "undertow.Retrieval",
    "completion": "undertow.Completion",
    "feedback": "undertow.Feedback",
}
_BODY_TYPES = {name: short for short, name in EVENT_BODY_NAMES.items()}


def new_event_id() -> str:
    return str(uuid.uuid4())


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def envelope(
    app: str,
    *,
    trace_id: str | None = None,
    span_id: str | None = None,
    parent_span_id: str | None = None,
    environment: str = "production",
    event_time: datetime | None = None,
    user_hash: str | None = None,
    session_hash: str | None = None,
    attributes: Mapping[str, str] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The fields every record has, with fresh ids and the current time where not given."""
    return {
        "event_id": event_id or new_event_id(),
        "trace_id": trace_id or new_trace_id(),
        "span_id": span_id or new_span_id(),
        "parent_span_id": parent_span_id,
        "event_time": event_time or datetime.now(UTC),
        "app": app,
        "environment": environment,
        "user_hash": user_hash,
        "session_hash": session_hash,
        "attributes": dict(attributes or {}),
    }


def event(kind: EventType, body: Mapping[str, Any], **envelope_fields: Any) -> dict[str, Any]:
    """An ``event`` record: the envelope plus a prompt, retrieval, completion or feedback body."""
    try:
        body_name = EVENT_BODY_NAMES[kind]
    except KeyError:
        raise ValueError(
            f"event kind must be one of {sorted(EVENT_BODY_NAMES)}, got {kind!r}"
        ) from None
    record = envelope(**envelope_fields)
    record["body"] = (body_name, dict(body))
    return record


def alert(
    *,
    rule: str,
    severity: str,
    status: str,
    dedup_key: str,
    summary: str,
    app: str,
    segment: str = "",
    evidence: Mapping[str, str] | None = None,
    sql: str | None = None,
    runbook_url: str | None = None,
    **envelope_fields: Any,
) -> dict[str, Any]:
    """An ``alert`` record for the codec: the envelope (:func:`envelope`'s fields; fresh ids
    and now unless given) plus the alert's own fields. The policy engine raises alerts with
    it, the alert subscribers and tests build them with it."""
    record = envelope(app, **envelope_fields)
    record.update(
        rule=rule,
        severity=severity,
        status=status,
        dedup_key=dedup_key,
        segment=segment,
        summary=summary,
        evidence=dict(evidence or {}),
        sql=sql,
        runbook_url=runbook_url,
    )
    return record


def action(
    *,
    action_type: str,
    target: str,
    phase: str = "requested",
    app: str = "undertow",
    request_id: str | None = None,
    reason: str = "",
    parameters: Mapping[str, str] | None = None,
    result: Mapping[str, str] | None = None,
    **envelope_fields: Any,
) -> dict[str, Any]:
    """An ``action`` record: a command for the action workers (``phase="requested"``) or a
    worker's answer to one (``started``, ``succeeded``, ``failed``, ``skipped``, with
    ``request_id`` naming the request)."""
    record = envelope(app, **envelope_fields)
    record.update(
        action_type=action_type,
        target=target,
        phase=phase,
        request_id=request_id,
        reason=reason,
        parameters={k: str(v) for k, v in (parameters or {}).items()},
        result={k: str(v) for k, v in (result or {}).items()},
    )
    return record


def event_type(record: Mapping[str, Any]) -> str:
    """``prompt``, ``retrieval``, ``completion`` or ``feedback``: the body's record type."""
    body = record.get("body")
    if isinstance(body, tuple) and body and body[0] in _BODY_TYPES:
        return _BODY_TYPES[body[0]]
    raise ValueError("not an event record: its body is not a (record name, fields) pair")


def event_body(record: Mapping[str, Any]) -> dict[str, Any]:
    """The body fields of an ``event`` record."""
    event_type(record)
    body: dict[str, Any] = record["body"][1]
    return body
