"""Traces assembled from their events: one row per trace_id, emitted once the trace is done.

A trace's prompt, retrieval, completion and later feedback arrive as separate events (same
key, so the same partition and worker). The state kept per trace is small and JSON-shaped so
it can live in a Faust table with expiry; the functions here are pure, so the stream adapter
only looks state up, calls ``update``, and on a timer emits ``to_row`` for the traces where
``is_ready`` holds and deletes them.

Done means: a completion was seen and nothing new came for ``idle_s`` seconds (an agent's
second call usually follows its first within seconds), or the trace has been open for
``max_age_s`` (no completion ever came, or feedback arrived long after). Feedback that comes
after the trace was emitted starts a new partial trace that expires on its own; the traces
table sums partial rows per trace_id, so both halves add up there.

Accounting rules, the same as the ``traces_mv`` view over ``scores``:
* ``span_count`` counts distinct ``event_id``s: a redelivered event is counted once.
* ``latency_ms`` sums the latencies of retrievals and completions (time spent waiting on
  them, not wall-clock duration; ``to_summary`` has ``duration_ms`` for that).
* tokens and cost are summed over completions only: a prompt's tokens are the completion's
  input tokens, and counting both would bill them twice. A completion's counts come from the
  scoring output when given (which counts tokens the provider did not report), else its body.

>>> from datetime import UTC, datetime
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> rec = {"event_id": "e1", "trace_id": "t", "event_time": t0, "app": "chat",
...        "environment": "production",
...        "body": ("undertow.Completion", {"model": "m", "text": "hi", "latency_ms": 12.0})}
>>> state = update(None, rec, now=100.0)
>>> is_ready(state, now=100.0 + DEFAULT_IDLE_S)
True
>>> to_row(state)["latency_ms"]
12.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from undertow.errors import UndertowError
from undertow.schemas.events import EVENT_BODY_NAMES

# The columns of the ClickHouse table ``traces`` (schemas/clickhouse/004_traces.sql), in order.
TRACE_COLUMNS: tuple[str, ...] = (
    "trace_id",
    "app",
    "environment",
    "start_time",
    "end_time",
    "span_count",
    "completions",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "models",
    "prompt_versions",
    "max_toxicity",
    "max_injection",
)
# The columns of the ``traces`` table the worker writes (clickhouse/010_traces_from_worker.sql),
# in order; ``written_at`` takes its default. TRACE_COLUMNS are the figures ``to_row`` gives.
STORED_TRACE_COLUMNS: tuple[str, ...] = (
    "trace_id",
    "part",
    "app",
    "environment",
    "start_time",
    "end_time",
    "span_count",
    "prompts",
    "retrievals",
    "completions",
    "feedbacks",
    "latency_ms",
    "duration_ms",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "tokens",
    "cost_usd",
    "unpriced_completions",
    "models",
    "prompt_names",
    "prompt_versions",
    "max_toxicity",
    "max_injection",
    "feedback_score",
    "readiness",
)
DEFAULT_IDLE_S = 30.0
DEFAULT_MAX_AGE_S = 600.0
# Event ids kept per trace for deduplication. Past this (agent loops with thousands of
# calls), later events are counted without the redelivery check rather than growing the state.
MAX_TRACKED_EVENTS = 10_000
STATE_FORMAT = 1

_BODY_TYPES = {name: short for short, name in EVENT_BODY_NAMES.items()}
_EVENT_TYPES = frozenset(EVENT_BODY_NAMES)
Readiness = Literal["complete", "expired"]


class TraceError(UndertowError):
    """A record that cannot join a trace, or a stored state that cannot be read back."""


@dataclass(frozen=True)
class TraceState:
    """What is known of one trace so far. Times: ``*_us`` event time in microseconds since the
    epoch (UTC); ``first_seen``/``last_seen`` the processing clock in seconds."""

    trace_id: str
    app: str
    environment: str
    start_us: int
    end_us: int
    first_seen: float
    last_seen: float
    event_ids: tuple[str, ...] = ()
    span_count: int = 0
    prompts: int = 0
    retrievals: int = 0
    completions: int = 0
    feedbacks: int = 0
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_completions: int = 0
    models: tuple[str, ...] = ()
    prompt_names: tuple[str, ...] = ()
    prompt_versions: tuple[str, ...] = ()
    max_toxicity: float | None = None
    max_injection: float | None = None
    feedback_score: float | None = None
    feedback_us: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists, numbers, strings, None), for a Faust table."""
        out: dict[str, Any] = {"format": STATE_FORMAT}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceState:
        """The state ``to_dict`` wrote; unknown keys or a newer format raise TraceError."""
        values = dict(data)
        fmt = values.pop("format", None)
        if fmt != STATE_FORMAT:
            raise TraceError(f"expected trace state format {STATE_FORMAT}, got {fmt!r}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(names)
        if unknown:
            raise TraceError(f"unknown trace state fields: {sorted(unknown)}")
        for name, value in values.items():
            if isinstance(value, list):
                values[name] = tuple(value)
        try:
            return cls(**values)
        except TypeError as exc:
            raise TraceError(f"incomplete trace state: {exc}") from exc


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


def update(
    state: TraceState | None,
    record: Mapping[str, Any],
    *,
    scored: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> TraceState:
    """The state after one more event; ``state`` None starts a trace. Never mutates ``state``.

    ``record`` is a decoded ``Event`` (envelope plus a ``(record name, fields)`` body) or a
    decoded ``ScoredEvent``; ``scored`` is the scoring output for the same event, when the
    caller has it (tokens, cost, scores). ``now`` is when the event was received, in seconds
    on the clock later passed to ``is_ready``; None uses the event's own time, which suits
    tests and backfills but makes a replay of old events look idle at once.
    """
    span = _span(record, scored)
    seen = span.time_us / 1e6 if now is None else now
    if state is None:
        state = TraceState(
            trace_id=span.trace_id,
            app=span.app,
            environment=span.environment,
            start_us=span.time_us,
            end_us=span.time_us,
            first_seen=seen,
            last_seen=seen,
        )
    elif span.trace_id != state.trace_id:
        raise TraceError(f"event of trace {span.trace_id!r} given to trace {state.trace_id!r}")
    if span.event_id in state.event_ids:
        return state  # a redelivery: already counted
    ids = state.event_ids
    if len(ids) < MAX_TRACKED_EVENTS:
        ids = (*ids, span.event_id)
    changes: dict[str, Any] = {
        "event_ids": ids,
        "span_count": state.span_count + 1,
        "start_us": min(state.start_us, span.time_us),
        "end_us": max(state.end_us, span.time_us),
        "first_seen": min(state.first_seen, seen),
        "last_seen": max(state.last_seen, seen),
        "models": _add(state.models, span.model),
        "prompt_names": _add(state.prompt_names, span.prompt_name),
        "prompt_versions": _add(state.prompt_versions, span.prompt_version),
        "max_toxicity": _max(state.max_toxicity, span.toxicity),
        "max_injection": _max(state.max_injection, span.injection),
    }
    if span.latency_ms is not None and span.event_type in ("retrieval", "completion"):
        changes["latency_ms"] = state.latency_ms + span.latency_ms
    if span.event_type == "prompt":
        changes["prompts"] = state.prompts + 1
    elif span.event_type == "retrieval":
        changes["retrievals"] = state.retrievals + 1
    elif span.event_type == "completion":
        changes["completions"] = state.completions + 1
        changes["input_tokens"] = state.input_tokens + (span.input_tokens or 0)
        changes["output_tokens"] = state.output_tokens + (span.output_tokens or 0)
        changes["cached_tokens"] = state.cached_tokens + (span.cached_tokens or 0)
        if span.cost_usd is None:
            changes["unpriced_completions"] = state.unpriced_completions + 1
        else:
            changes["cost_usd"] = state.cost_usd + span.cost_usd
    else:
        changes["feedbacks"] = state.feedbacks + 1
        # the latest judgement wins: a user who changes a rating replaces it
        if span.feedback_score is not None and (
            state.feedback_us is None or span.time_us >= state.feedback_us
        ):
            changes["feedback_score"] = span.feedback_score
            changes["feedback_us"] = span.time_us
    return dataclasses.replace(state, **changes)


def readiness(
    state: TraceState,
    now: float,
    *,
    idle_s: float = DEFAULT_IDLE_S,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> Readiness | None:
    """``complete``, ``expired``, or None while the trace should stay open.

    Feedback alone counts as complete too: it comes after the answer, so a state holding
    only feedback is the late part of a trace already written.
    """
    done = state.completions or state.feedbacks == state.span_count > 0
    if done and now - state.last_seen >= idle_s:
        return "complete"
    if now - state.first_seen >= max_age_s:
        return "expired"
    return None


def is_ready(
    state: TraceState,
    now: float,
    *,
    idle_s: float = DEFAULT_IDLE_S,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> bool:
    """Whether to emit the trace now: complete and idle, or past its maximum age."""
    return readiness(state, now, idle_s=idle_s, max_age_s=max_age_s) is not None


def to_row(state: TraceState) -> dict[str, Any]:
    """The trace as a row of the ``traces`` table: exactly ``TRACE_COLUMNS``."""
    return {
        "trace_id": state.trace_id,
        "app": state.app,
        "environment": state.environment,
        "start_time": _datetime(state.start_us),
        "end_time": _datetime(state.end_us),
        "span_count": state.span_count,
        "completions": state.completions,
        "latency_ms": state.latency_ms,
        "input_tokens": state.input_tokens,
        "output_tokens": state.output_tokens,
        "cost_usd": state.cost_usd,
        "models": list(state.models),
        "prompt_versions": list(state.prompt_versions),
        "max_toxicity": state.max_toxicity,
        "max_injection": state.max_injection,
    }


def to_summary(state: TraceState) -> dict[str, Any]:
    """``to_row`` plus what the table has no column for (yet): totals, counts, feedback."""
    row = to_row(state)
    row.update(
        tokens=state.input_tokens + state.output_tokens,
        cached_tokens=state.cached_tokens,
        duration_ms=(state.end_us - state.start_us) / 1000.0,
        prompts=state.prompts,
        retrievals=state.retrievals,
        feedbacks=state.feedbacks,
        unpriced_completions=state.unpriced_completions,
        prompt_names=list(state.prompt_names),
        feedback_score=state.feedback_score,
    )
    return row


def stored_row(state: TraceState, ready: Readiness) -> list[Any]:
    """The worker's ``traces`` row, in ``STORED_TRACE_COLUMNS`` order.

    ``part`` is the first event id of the state: the same whenever this state is written
    again (after a crash), and another one for events that came after it was written.
    """
    summary = to_summary(state)
    summary.update(part=state.event_ids[0] if state.event_ids else "", readiness=ready)
    return [summary[name] for name in STORED_TRACE_COLUMNS]


class TraceAccumulator:
    """Trace states by trace_id in memory: the same logic as the Faust table, for tests,
    backfills and single-process tools."""

    def __init__(self, *, idle_s: float = DEFAULT_IDLE_S, max_age_s: float = DEFAULT_MAX_AGE_S):
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.states: dict[str, TraceState] = {}

    def add(
        self,
        record: Mapping[str, Any],
        *,
        scored: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> TraceState:
        trace_id = str(record.get("trace_id", ""))
        state = update(self.states.get(trace_id), record, scored=scored, now=now)
        self.states[state.trace_id] = state
        return state

    def pop_ready(self, now: float) -> list[dict[str, Any]]:
        """Rows of the traces ready at ``now``, oldest first, removed from the accumulator."""
        ready = [
            s
            for s in self.states.values()
            if is_ready(s, now, idle_s=self.idle_s, max_age_s=self.max_age_s)
        ]
        ready.sort(key=lambda s: (s.start_us, s.trace_id))
        for s in ready:
            del self.states[s.trace_id]
        return [to_row(s) for s in ready]


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


def _add(names: tuple[str, ...], name: str | None) -> tuple[str, ...]:
    if not name or name in names:
        return names
    return tuple(sorted((*names, name)))


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


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
