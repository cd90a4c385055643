"""A trace's spans: what each event adds to its trace, as a ``trace_spans`` row.

The accounting over a trace's spans (sums over completions, the latest feedback, one count
per event however often it was delivered) is the ``traces`` view's, tested on the real
engine in tests/integration/test_warehouse.py.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from undertow.schemas.events import event
from undertow.streams.traces import TRACE_SPAN_COLUMNS, TraceError, span_row

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
TRACE = "0af7651916cd43dd8448eb211c80319c"
MIGRATION = Path(__file__).parents[3] / "schemas" / "clickhouse" / "014_traces_from_spans.sql"


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def rag_trace(trace_id: str = TRACE) -> list[dict[str, Any]]:
    """A prompt, a retrieval, a completion and a thumbs-up, 0.1 s apart."""
    common = {"app": "chat", "trace_id": trace_id, "environment": "staging"}
    return [
        event(
            "prompt",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "model": "gpt-4o",
                "prompt_name": "qa",
                "prompt_version": "3",
            },
            event_time=at(0),
            **common,
        ),
        event(
            "retrieval",
            {"query": "hi", "documents": [], "store": "kb", "latency_ms": 20.0},
            event_time=at(100),
            **common,
        ),
        event(
            "completion",
            {
                "model": "gpt-4o-2024-08-06",
                "prompt_version": "3",
                "text": "hello",
                "input_tokens": 100,
                "output_tokens": 10,
                "cached_tokens": 40,
                "latency_ms": 250.0,
            },
            event_time=at(200),
            **common,
        ),
        event("feedback", {"score": 1.0}, event_time=at(300), **common),
    ]


def span(record: dict[str, Any], scored: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(zip(TRACE_SPAN_COLUMNS, span_row(record, scored), strict=True))


def test_span_columns_are_the_tables_columns_in_order_less_written_at() -> None:
    ddl = MIGRATION.read_text()
    body = ddl[ddl.index("CREATE TABLE IF NOT EXISTS trace_spans") :]
    body = body[body.index("(") + 1 : body.index("ENGINE")]
    columns = re.findall(r"^\s{4}(\w+) ", body, flags=re.MULTILINE)
    assert tuple(columns) == (*TRACE_SPAN_COLUMNS, "written_at")


def test_each_event_type_says_what_it_adds() -> None:
    prompt, retrieval, completion, feedback = (span(r) for r in rag_trace())
    assert (prompt["event_type"], prompt["model"], prompt["prompt_name"]) == (
        "prompt",
        "gpt-4o",
        "qa",
    )
    assert (retrieval["event_type"], retrieval["latency_ms"]) == ("retrieval", 20.0)
    assert (completion["input_tokens"], completion["output_tokens"]) == (100, 10)
    assert (completion["cached_tokens"], completion["latency_ms"]) == (40, 250.0)
    assert completion["cost_usd"] is None  # not scored: unpriced
    assert (feedback["event_type"], feedback["feedback_score"]) == ("feedback", 1.0)
    assert {s["trace_id"] for s in (prompt, retrieval, completion, feedback)} == {TRACE}
    assert isinstance(prompt["event_id"], uuid.UUID)
    assert (prompt["environment"], prompt["event_time"]) == ("staging", T0)


def test_scoring_output_supplies_tokens_cost_and_scores() -> None:
    prompt, _, completion, _ = rag_trace()
    assert span(prompt, {"scores": {"injection": 0.7, "toxicity": 0.1}})["injection"] == 0.7
    row = span(
        completion,
        {
            "input_tokens": 120,  # counted by scoring: wins over the body's figure
            "output_tokens": 12,
            "cached_tokens": 0,
            "cost_usd": 0.0005,
            "scores": {"toxicity": 0.3},
        },
    )
    assert (row["input_tokens"], row["output_tokens"], row["cached_tokens"]) == (120, 12, 0)
    assert row["cost_usd"] == pytest.approx(0.0005)
    assert (row["toxicity"], row["injection"]) == (0.3, None)


def test_scored_event_records_are_accepted() -> None:
    scored = {
        "event_id": "11111111-1111-1111-1111-111111111111",
        "trace_id": TRACE,
        "event_time": at(5),
        "app": "chat",
        "environment": "production",
        "event_type": "completion",
        "model": "m",
        "prompt_version": "v9",
        "input_tokens": 7,
        "output_tokens": 3,
        "cost_usd": 0.25,
        "latency_ms": 40.0,
        "scores": {"toxicity": 0.9},
    }
    row = span(scored)
    assert (row["model"], row["prompt_version"], row["event_type"]) == ("m", "v9", "completion")
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (7, 3, 0.25)
    assert (row["latency_ms"], row["toxicity"]) == (40.0, 0.9)


def test_bad_records_are_refused() -> None:
    with pytest.raises(TraceError, match="event_type"):
        span_row({"event_type": "nonsense", "trace_id": "t"})
    with pytest.raises(TraceError, match="body"):
        span_row({"body": {"not": "a tuple"}})
    broken = dict(rag_trace()[0])
    del broken["app"]
    with pytest.raises(TraceError, match="'app'"):
        span_row(broken)
    with pytest.raises(TraceError, match="event_time"):
        span_row({**rag_trace()[0], "event_time": "yesterday"})


def test_integer_and_naive_event_times() -> None:
    rec = rag_trace()[0]
    micros = int(T0.timestamp()) * 1_000_000 + 250
    assert span({**rec, "event_time": micros})["event_time"] == T0.replace(microsecond=250)
    naive = T0.replace(tzinfo=None)
    assert span({**rec, "event_time": naive})["event_time"] == T0
