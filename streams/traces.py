"""A trace's spans as the warehouse stores them: one ``trace_spans`` row per event.

A trace's prompt, retrieval, completion and later feedback arrive as separate events. Each
becomes one row of ``trace_spans`` (schemas/clickhouse/014_traces_from_spans.sql), written
by the ingest worker in the same batch as the event's ``events`` and ``scores`` rows, keyed
by ``(app, trace_id, event_id)``. The ``traces`` view adds a trace's spans up when it is
read, so a redelivered or replayed event replaces its own row and never counts twice, and
the figures never depend on when the worker committed its offsets. The accounting rules
(tokens and cost over completions only, latency over retrievals and completions, the latest
feedback) are the view's; this module only says what one event contributes.

>>> from datetime import UTC, datetime
>>> rec = {"event_id": "7d3b8c34-5a2e-4a59-9d8e-2f1f7a9b0c11", "trace_id": "t",
...        "event_time": datetime(2026, 1, 1, tzinfo=UTC), "app": "chat",
...        "body": ("undertow.Completion", {"model": "m", "text": "hi", "latency_ms": 12.0})}
>>> row = dict(zip(TRACE_SPAN_COLUMNS, span_row(rec)))
>>> row["event_type"], row["model"], row["latency_ms"], row["cost_usd"]
('completion', 'm', 12.0, None)
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from undertow.errors import UndertowError
from undertow.schemas.events import EVENT_BODY_NAMES

# The columns of ``trace_spans`` the worker writes, in order; ``written_at`` takes its default.
TRACE_SPAN_COLUMNS: tuple[str, ...] = (
    "trace_id",
    "event_id",
    "app",
    "environment",
    "event_type",
    "event_time",
    "model",
    "prompt_name",
    "prompt_version",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "toxicity",
    "injection",
    "feedback_score",
)

_BODY_TYPES = {name: short for short, name in EVENT_BODY_NAMES.items()}
_EVENT_TYPES = frozenset(EVENT_BODY_NAMES)


class TraceError(UndertowError):
    """A record that cannot be read as a span of a trace."""


@dataclass(frozen=True)
class _Span:
    """The parts of one event (and its scoring output) a trace needs."""

    event_type: str
    event_id: str
    trace_id: str
    time_us: int
    app: str
    environment: str
    model: str | None
    prompt_name: str | None
    prompt_version: str | None
    latency_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cost_usd: float | None
    toxicity: float | None
    injection: float | None
    feedback_score: float | None


def span_row(record: Mapping[str, Any], scored: Mapping[str, Any] | None = None) -> list[Any]:
    """The ``trace_spans`` row of one event, in ``TRACE_SPAN_COLUMNS`` order.

    ``record`` is a decoded ``Event`` (envelope plus a ``(record name, fields)`` body) or a
    decoded ``ScoredEvent``; ``scored`` is the scoring output for the same event
    (:meth:`undertow.streams.scoring.scored.Scored.trace_fields`), whose counted tokens win over the
    ones the provider reported."""
    span = _span(record, scored)
    event_id = record["event_id"]
    return [
        span.trace_id,
        event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id)),
        span.app,
        span.environment,
        span.event_type,
        _datetime(span.time_us),
        span.model or "",
        span.prompt_name or "",
        span.prompt_version or "",
        span.latency_ms,
        span.input_tokens,
        span.output_tokens,
        span.cached_tokens,
        span.cost_usd,
        span.toxicity,
        span.injection,
        span.feedback_score,
    ]


# -- reading records ---------------------------------------------------------------------------


def _span(record: Mapping[str, Any], scored: Mapping[str, Any] | None) -> _Span:
    body_value = record.get("body")
    if body_value is not None:
        if not (
            isinstance(body_value, tuple) and len(body_value) == 2 and body_value[0] in _BODY_TYPES
        ):
            raise TraceError("expected an Event body as a (record name, fields) pair")
        event_type = _BODY_TYPES[body_value[0]]
        body: Mapping[str, Any] = body_value[1]
    else:
        event_type = str(record.get("event_type", ""))
        if event_type not in _EVENT_TYPES:
            raise TraceError(
                f"expected an Event or ScoredEvent record, got event_type {event_type!r}"
            )
        body, scored = {}, {**record, **(scored or {})}
    extra: Mapping[str, Any] = scored or {}
    scores: Mapping[str, Any] = extra.get("scores") or {}
    try:
        event_id = str(record["event_id"])
        trace_id = str(record["trace_id"])
        time_us = _micros(record["event_time"])
        app = str(record["app"])
    except KeyError as exc:
        raise TraceError(f"event record lacks {exc.args[0]!r}") from None
    return _Span(
        event_type=event_type,
        event_id=event_id,
        trace_id=trace_id,
        time_us=time_us,
        app=app,
        environment=str(record.get("environment") or "production"),
        model=body.get("model") or extra.get("model"),
        prompt_name=body.get("prompt_name") or extra.get("prompt_name"),
        prompt_version=body.get("prompt_version") or extra.get("prompt_version"),
        latency_ms=_first(body.get("latency_ms"), extra.get("latency_ms")),
        input_tokens=_first(extra.get("input_tokens"), body.get("input_tokens")),
        output_tokens=_first(extra.get("output_tokens"), body.get("output_tokens")),
        cached_tokens=_first(extra.get("cached_tokens"), body.get("cached_tokens")),
        cost_usd=extra.get("cost_usd"),
        toxicity=scores.get("toxicity"),
        injection=scores.get("injection"),
        feedback_score=body.get("score") if event_type == "feedback" else None,
    )


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _micros(value: object) -> int:
    """Microseconds since the epoch from a decoded timestamp-micros (datetime or int)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # the contract's times are UTC
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TraceError(f"event_time must be a datetime or microseconds, got {type(value).__name__}")


def _datetime(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)
