"""W3C trace context: the ``traceparent`` header that carries a trace across services.

Undertow ids are W3C ids (32 hex trace id, 16 hex span id), so a trace started by a caller's
OpenTelemetry setup continues through the gateway and the SDK unchanged.

>>> ctx = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
>>> ctx.trace_id, ctx.parent_span_id, ctx.sampled
('4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', True)
>>> format_traceparent(ctx.trace_id, "b7ad6b7169203331")
'00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

TRACEPARENT = "traceparent"
# A plain trace id header for callers without OpenTelemetry.
TRACE_ID_HEADER = "x-undertow-trace-id"

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class TraceContext:
    """Where an incoming request sits in a trace."""

    trace_id: str
    parent_span_id: str | None
    sampled: bool = True


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The context in a ``traceparent`` header, or None when it is absent or invalid.

    Per the W3C spec, an all-zero trace or span id is invalid, version ``ff`` is invalid, and
    a future version may append fields after the four known ones.
    """
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, sampled=bool(int(flags, 16) & 1))


def format_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    """A ``traceparent`` header value naming ``span_id`` as the parent of what comes next."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def context_from_headers(headers: Mapping[str, str]) -> TraceContext | None:
    """The trace context of a request: ``traceparent`` first, then ``x-undertow-trace-id``.

    ``headers`` is looked up with lowercase names (Starlette's and httpx's headers are
    case-insensitive already).
    """
    ctx = parse_traceparent(headers.get(TRACEPARENT))
    if ctx is not None:
        return ctx
    trace_id = (headers.get(TRACE_ID_HEADER) or "").strip().lower()
    if _TRACE_ID.match(trace_id) and trace_id != "0" * 32:
        return TraceContext(trace_id, None)
    return None
