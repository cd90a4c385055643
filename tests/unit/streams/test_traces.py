"""Trace assembly: pure update/readiness/row functions and the JSON-shaped state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from undertow.schemas.events import event
from undertow.streams.traces import (
    STORED_TRACE_COLUMNS,
    TRACE_COLUMNS,
    TraceAccumulator,
    TraceError,
    TraceState,
    is_ready,
    readiness,
    stored_row,
    to_row,
    to_summary,
    update,
)

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
TRACE = "0af7651916cd43dd8448eb211c80319c"
MIGRATION = Path(__file__).parents[3] / "schemas" / "clickhouse" / "004_traces.sql"


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


def fold(records: list[dict[str, Any]], **kwargs: Any) -> TraceState:
    state = None
    for r in records:
        state = update(state, r, **kwargs)
    assert state is not None
    return state


def test_trace_row_has_exactly_the_tables_columns_in_order() -> None:
    sql = MIGRATION.read_text()
    table = sql[sql.index("CREATE TABLE IF NOT EXISTS traces") : sql.index("ENGINE")]
    lines = [ln.strip() for ln in table.splitlines()[2:] if ln.strip() and ln.strip() != ")"]
    assert tuple(ln.split()[0] for ln in lines) == TRACE_COLUMNS
    assert tuple(to_row(fold(rag_trace()))) == TRACE_COLUMNS


def test_a_rag_trace_rolls_up() -> None:
    state = fold(rag_trace())
    assert to_row(state) == {
        "trace_id": TRACE,
        "app": "chat",
        "environment": "staging",
        "start_time": at(0),
        "end_time": at(300),
        "span_count": 4,
        "completions": 1,
        "latency_ms": 270.0,
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": 0.0,
        "models": ["gpt-4o", "gpt-4o-2024-08-06"],
        "prompt_versions": ["3"],
        "max_toxicity": None,
        "max_injection": None,
    }
    summary = to_summary(state)
    assert summary["tokens"] == 110
    assert summary["cached_tokens"] == 40
    assert summary["duration_ms"] == 300.0
    assert (summary["prompts"], summary["retrievals"], summary["feedbacks"]) == (1, 1, 1)
    assert summary["feedback_score"] == 1.0
    assert summary["prompt_names"] == ["qa"]
    assert summary["unpriced_completions"] == 1  # no scoring output gave it a cost


def test_scoring_output_supplies_tokens_cost_and_worst_scores() -> None:
    prompt, retrieval, completion, _ = rag_trace()
    state = update(None, prompt, scored={"scores": {"injection": 0.7, "toxicity": 0.1}})
    state = update(state, retrieval)
    state = update(
        state,
        completion,
        scored={
            "input_tokens": 120,  # counted by scoring: wins over the body's figure
            "output_tokens": 12,
            "cached_tokens": 0,
            "cost_usd": 0.0005,
            "scores": {"toxicity": 0.3},
        },
    )
    row = to_row(state)
    assert (row["input_tokens"], row["output_tokens"]) == (120, 12)
    assert row["cost_usd"] == pytest.approx(0.0005)
    assert (row["max_toxicity"], row["max_injection"]) == (0.3, 0.7)
    assert to_summary(state)["unpriced_completions"] == 0


def test_prompt_tokens_are_not_added_to_the_completions() -> None:
    prompt, _, completion, _ = rag_trace()
    state = update(None, prompt, scored={"input_tokens": 100, "cost_usd": 1.0})
    state = update(state, completion)
    assert (state.input_tokens, state.cost_usd) == (100, 0.0)


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
    row = to_row(update(None, scored))
    assert row["models"] == ["m"] and row["prompt_versions"] == ["v9"]
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (7, 3, 0.25)
    assert (row["latency_ms"], row["max_toxicity"], row["completions"]) == (40.0, 0.9, 1)


def test_redelivered_events_count_once() -> None:
    records = rag_trace()
    once = fold(records)
    twice = fold(records + records)
    assert twice == once
    assert update(once, records[2]) is once


def test_out_of_order_events() -> None:
    records = rag_trace()
    state = fold(list(reversed(records)))
    row = to_row(state)
    assert (row["start_time"], row["end_time"], row["span_count"]) == (at(0), at(300), 4)


def test_latest_feedback_wins() -> None:
    common = {"app": "chat", "trace_id": TRACE}
    up = event("feedback", {"score": 1.0}, event_time=at(10), **common)
    down = event("feedback", {"score": 0.0}, event_time=at(20), **common)
    label_only = event("feedback", {"label": "spam"}, event_time=at(30), **common)
    assert fold([up, down, label_only]).feedback_score == 0.0
    assert fold([down, up]).feedback_score == 0.0  # arrival order does not matter
    assert fold([label_only]).feedback_score is None


def test_readiness_complete_after_idle_or_expired_after_max_age() -> None:
    prompt, retrieval, completion, _ = rag_trace()
    state = update(None, prompt, now=1000.0)
    # no completion yet: not ready however long it is idle, until max age
    assert readiness(state, 1000.0 + 599, idle_s=30, max_age_s=600) is None
    assert readiness(state, 1000.0 + 600, idle_s=30, max_age_s=600) == "expired"
    state = update(state, retrieval, now=1001.0)
    state = update(state, completion, now=1002.0)
    assert not is_ready(state, 1002.0 + 29.9, idle_s=30)
    assert readiness(state, 1002.0 + 30, idle_s=30) == "complete"
    # a later event (an agent's second call) restarts the idle clock
    follow_up = event(
        "completion",
        {"model": "m", "text": "x", "latency_ms": 1.0},
        app="chat",
        trace_id=TRACE,
        event_time=at(400),
    )
    later = update(state, follow_up, now=1020.0)
    assert not is_ready(later, 1032.0, idle_s=30)
    assert is_ready(later, 1050.0, idle_s=30)


def test_without_now_the_event_time_is_the_clock() -> None:
    state = fold(rag_trace()[:3])
    t = T0.timestamp()
    assert (state.first_seen, state.last_seen) == (t, t + 0.2)
    assert is_ready(state, t + 0.2 + 30)


def test_state_round_trips_through_json() -> None:
    records = rag_trace()
    state = fold(records, now=5.0)
    data = json.loads(json.dumps(state.to_dict()))
    back = TraceState.from_dict(data)
    assert back == state
    assert to_row(back) == to_row(state)
    # and keeps deduplicating and accumulating after the round trip
    assert update(back, records[0], now=6.0) == state
    more = update(back, rag_trace()[0], now=6.0)
    assert (more.span_count, more.last_seen) == (5, 6.0)


def test_bad_state_is_refused() -> None:
    data = fold(rag_trace()).to_dict()
    with pytest.raises(TraceError, match="format"):
        TraceState.from_dict({**data, "format": 99})
    with pytest.raises(TraceError, match="unknown"):
        TraceState.from_dict({**data, "surprise": 1})
    with pytest.raises(TraceError, match="incomplete"):
        TraceState.from_dict({"format": 1, "trace_id": "t"})


def test_bad_records_are_refused() -> None:
    state = fold(rag_trace())
    other = event("feedback", {"score": 1.0}, app="chat")
    with pytest.raises(TraceError, match="given to trace"):
        update(state, other)
    with pytest.raises(TraceError, match="event_type"):
        update(None, {"event_type": "nonsense", "trace_id": "t"})
    with pytest.raises(TraceError, match="body"):
        update(None, {"body": {"not": "a tuple"}})
    broken = dict(rag_trace()[0])
    del broken["app"]
    with pytest.raises(TraceError, match="'app'"):
        update(None, broken)
    with pytest.raises(TraceError, match="event_time"):
        update(None, {**rag_trace()[0], "event_time": "yesterday"})


def test_integer_and_naive_event_times() -> None:
    rec = rag_trace()[0]
    micros = int(T0.timestamp()) * 1_000_000 + 250
    assert to_row(update(None, {**rec, "event_time": micros}))["start_time"] == T0.replace(
        microsecond=250
    )
    naive = T0.replace(tzinfo=None)
    assert to_row(update(None, {**rec, "event_time": naive}))["start_time"] == T0


def test_accumulator_emits_ready_traces_in_start_order() -> None:
    acc = TraceAccumulator(idle_s=10, max_age_s=100)
    other = "b" * 32
    for r in rag_trace(other)[:3]:
        acc.add(r, now=50.0)
    for r in rag_trace()[:3]:
        acc.add(r, now=55.0)
    orphan = event("feedback", {"score": 0.0}, app="chat", trace_id="c" * 32, event_time=at(-1))
    acc.add(orphan, now=0.0)
    # feedback alone is the late part of a trace already written: done once idle
    late = acc.pop_ready(now=59.0)
    assert [(r["trace_id"], r["completions"], r["span_count"]) for r in late] == [("c" * 32, 0, 1)]
    rows = acc.pop_ready(now=65.0)
    assert [r["trace_id"] for r in rows] == [TRACE, other]  # same start: by trace id
    assert acc.states == {}
    prompt_only = rag_trace("d" * 32)[0]
    acc.add(prompt_only, now=70.0)
    assert acc.pop_ready(now=169.0) == []  # no completion: open until max age
    assert [r["trace_id"] for r in acc.pop_ready(now=170.0)] == ["d" * 32]
    assert acc.states == {}


WORKER_MIGRATION = MIGRATION.with_name("010_traces_from_worker.sql")


def test_stored_trace_columns_are_the_worker_tables_columns_in_order() -> None:
    sql = WORKER_MIGRATION.read_text()
    table = sql[sql.index("CREATE TABLE IF NOT EXISTS traces\n") : sql.index("ENGINE")]
    # column definitions are indented four spaces; the first two lines are CREATE and "("
    lines = [ln.split() for ln in table.splitlines()[2:] if ln.startswith("    ")]
    names = [words[0] for words in lines]
    assert names[-2:] == ["written_at", "INDEX"]  # the table's default and its index
    assert "DEFAULT" in lines[-2]  # so the worker may leave it out
    assert tuple(names[:-2]) == STORED_TRACE_COLUMNS


def test_the_stored_row_is_the_summary_with_its_part_and_readiness() -> None:
    records = rag_trace()
    state = fold(records, now=5.0)
    row = dict(zip(STORED_TRACE_COLUMNS, stored_row(state, "complete"), strict=True))
    summary = to_summary(state)
    assert row["part"] == records[0]["event_id"]
    assert row["readiness"] == "complete"
    assert {k: v for k, v in row.items() if k not in ("part", "readiness")} == {
        k: summary[k] for k in STORED_TRACE_COLUMNS if k not in ("part", "readiness")
    }
    assert (row["tokens"], row["cached_tokens"], row["duration_ms"]) == (110, 40, 300.0)
    assert (row["prompts"], row["retrievals"], row["completions"], row["feedbacks"]) == (1, 1, 1, 1)
    # the part is the first event this state saw, whatever its event time
    late_first = fold(list(reversed(records)), now=5.0)
    expired = dict(zip(STORED_TRACE_COLUMNS, stored_row(late_first, "expired"), strict=True))
    assert (expired["part"], expired["readiness"]) == (records[-1]["event_id"], "expired")
    # written again after a crash, the same state gives the same part
    back = TraceState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert stored_row(back, "complete") == stored_row(state, "complete")
