"""W3C traceparent parsing: valid headers, invalid ones, and the fallback header."""

from __future__ import annotations

import pytest

from undertow.services.sdk.context import (
    context_from_headers,
    format_traceparent,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_parses_the_spec_example() -> None:
    ctx = parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    assert ctx is not None
    assert (ctx.trace_id, ctx.parent_span_id, ctx.sampled) == (TRACE, SPAN, True)
    unsampled = parse_traceparent(f"00-{TRACE}-{SPAN}-00")
    assert unsampled is not None and not unsampled.sampled


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE}-{SPAN}-01",  # forbidden version
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id
    ],
)
def test_rejects_invalid_headers(header: str | None) -> None:
    assert parse_traceparent(header) is None


def test_future_versions_may_append_fields() -> None:
    ctx = parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever")
    assert ctx is not None and ctx.trace_id == TRACE


def test_round_trip_and_header_fallback() -> None:
    header = format_traceparent(TRACE, SPAN)
    assert parse_traceparent(header) == parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    ctx = context_from_headers({"x-undertow-trace-id": TRACE.upper()})
    assert ctx is not None and ctx.trace_id == TRACE and ctx.parent_span_id is None
    assert context_from_headers({"x-undertow-trace-id": "nope"}) is None
    both = context_from_headers({"traceparent": header, "x-undertow-trace-id": "f" * 32})
    assert both is not None and both.trace_id == TRACE
