"""The SDK client without a broker: the trace API, the hot path's guarantees, drops,
sampling and the spool path (services/sdk/client.py, trace.py, delivery.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from undertow.schemas.events import new_span_id, new_trace_id
from undertow.services.sdk import SdkConfig, TraceContext, Undertow

from .sdk_fixtures import HASH_KEY, body, spool_only, spooled_events

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def completion_kwargs(**overrides: Any) -> dict[str, Any]:
    return {
        "trace_id": new_trace_id(),
        "span_id": new_span_id(),
        "parent_span_id": None,
        "model": "m",
        "text": "hello",
        "latency_ms": 12.5,
        "input_tokens": 10,
        "output_tokens": 2,
        "finish_reason": "stop",
        **overrides,
    }


def test_trace_api_links_prompt_retrieval_completion_and_feedback(tmp_path: Path) -> None:
    ut = spool_only(tmp_path)
    trace = ut.trace(user_id="u-1", session_id="s-1", attributes={"tenant": "acme"})
    with trace as tr:
        scope = tr.prompt(messages=MESSAGES, model="m", prompt_name="greet", prompt_version="3")
        with scope as p:
            with tr.retrieval(query="q", store="faq", top_k=2) as r:
                r.set_documents([{"id": "d1", "score": 0.9, "text": "doc", "source": "kb"}])
            with tr.completion(model="m") as c:
                c.first_token()
                c.set_output("answer", input_tokens=5, output_tokens=1, finish_reason="stop")
    ut.feedback(tr.trace_id, score=1.0, label="thumbs_up", comment="great")
    assert ut.flush(5)
    ut.close()

    events = spooled_events(tmp_path)
    kinds = [body(record)[0] for _, record in events]
    assert kinds == ["prompt", "retrieval", "completion", "feedback"]
    prompt, retrieval, completion, feedback = (record for _, record in events)
    assert {r["trace_id"] for _, r in events} == {tr.trace_id}
    assert all(key == tr.trace_id.encode() for key, _ in events)
    assert prompt["span_id"] == p.span_id and prompt["parent_span_id"] is None
    assert retrieval["parent_span_id"] == p.span_id
    assert completion["parent_span_id"] == p.span_id
    assert len({r["event_id"] for _, r in events}) == 4
    assert prompt["attributes"] == {"tenant": "acme"}
    assert prompt["user_hash"] and prompt["user_hash"] == completion["user_hash"]
    assert "u-1" not in str(prompt) and prompt["session_hash"]
    assert body(prompt)[1]["messages"] == MESSAGES
    rbody = body(retrieval)[1]
    assert rbody["documents"][0]["id"] == "d1" and rbody["top_k"] == 2
    assert rbody["latency_ms"] >= 0
    cbody = body(completion)[1]
    assert (cbody["prompt_name"], cbody["prompt_version"]) == ("greet", "3")
    assert (cbody["text"], cbody["input_tokens"], cbody["output_tokens"]) == ("answer", 5, 1)
    assert cbody["time_to_first_token_ms"] is not None
    assert cbody["latency_ms"] >= cbody["time_to_first_token_ms"]
    assert body(feedback)[1] == {
        "score": 1.0,
        "label": "thumbs_up",
        "comment": "great",
        "source": "user",
    }
    stats = ut.stats()
    assert (stats.enqueued, stats.spooled, stats.failed, stats.dropped) == (4, 4, 0, 0)


def test_completion_scope_records_an_error_and_reraises(tmp_path: Path) -> None:
    ut = spool_only(tmp_path)
    with pytest.raises(KeyError, match="boom"), ut.trace() as tr, tr.completion(model="m"):
        raise KeyError("boom")
    ut.close()
    [(_, record)] = spooled_events(tmp_path)
    assert body(record)[1]["finish_reason"] == "error"
    assert record["attributes"] == {"error": "KeyError"}


def test_incoming_trace_context_is_continued(tmp_path: Path) -> None:
    ut = spool_only(tmp_path)
    parent = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    with ut.trace(parent=parent) as tr:
        tr.prompt(messages=MESSAGES)
        header = tr.traceparent()
    ut.close()
    [(_, record)] = spooled_events(tmp_path)
    assert record["trace_id"] == parent.trace_id
    assert record["parent_span_id"] == parent.parent_span_id
    assert header.startswith(f"00-{parent.trace_id}-")


def test_decorators_sync_and_async(tmp_path: Path) -> None:
    ut = spool_only(tmp_path)

    @ut.span("retrieval", store="faq", top_k=3)
    def search(query: str) -> list[dict[str, Any]]:
        return [{"id": "a", "score": 1.0}, {"id": "b", "score": 0.5}]

    @ut.span("completion", model="m-async")
    async def generate(prompt: str) -> str:
        await asyncio.sleep(0)
        return f"echo {prompt}"

    @ut.traced(user_id="u-9")
    def handle(question: str) -> str:
        search(question)
        return asyncio.run(generate(question))

    assert handle("why?") == "echo why?"
    ut.close()
    events = [record for _, record in spooled_events(tmp_path)]
    assert [body(r)[0] for r in events] == ["retrieval", "completion"]
    assert events[0]["trace_id"] == events[1]["trace_id"]
    assert events[0]["user_hash"] is not None
    assert body(events[0])[1]["query"] == "why?"
    assert [d["id"] for d in body(events[0])[1]["documents"]] == ["a", "b"]
    assert body(events[1])[1]["text"] == "echo why?"
    assert body(events[1])[1]["model"] == "m-async"


def test_hot_path_never_raises_on_garbage_and_counts_it(tmp_path: Path) -> None:
    ut = spool_only(tmp_path)
    garbage: list[Any] = [
        lambda: ut.record_completion(**completion_kwargs(text=123)),
        lambda: ut.record_completion(**completion_kwargs(trace_id=None)),
        lambda: ut.record_completion(**completion_kwargs(input_tokens="ten")),
        lambda: ut.record_prompt(
            trace_id=new_trace_id(),
            span_id="s",
            parent_span_id=None,
            messages="nope",  # type: ignore[arg-type]
        ),
        lambda: ut.record_retrieval(
            trace_id=new_trace_id(),
            span_id="s",
            parent_span_id=None,
            query=object(),  # type: ignore[arg-type]
            documents=5,  # type: ignore[arg-type]
            store="x",
            latency_ms="slow",  # type: ignore[arg-type]
        ),
        lambda: ut.record_feedback(trace_id=new_trace_id(), score="high"),  # type: ignore[arg-type]
        lambda: ut.record_feedback(trace_id=b"bytes"),  # type: ignore[arg-type]
    ]
    for call in garbage:
        call()  # must not raise
    ut.record_completion(**completion_kwargs())
    assert ut.flush(5)
    stats = ut.stats()
    assert stats.failed == len(garbage)
    assert stats.spooled == 1
    assert stats.enqueued == len(garbage) + 1
    ut.close()
    assert len(spooled_events(tmp_path)) == 1


def test_a_raising_redaction_hook_is_counted_not_raised(tmp_path: Path) -> None:
    def hook(text: str) -> str:
        raise RuntimeError("hook bug")

    ut = spool_only(tmp_path, redact=hook)
    ut.record_completion(**completion_kwargs())
    assert ut.flush(5)
    assert (ut.stats().failed, ut.stats().spooled) == (1, 0)
    ut.close()


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def hook(text: str) -> str:
        if text == "block":
            entered.set()
            release.wait(10)
        return text

    ut = spool_only(tmp_path, queue_size=5, redact=hook)
    ut.record_completion(**completion_kwargs(text="block"))
    assert entered.wait(5), "the delivery thread never took the first record"
    for i in range(8):
        ut.record_completion(**completion_kwargs(text=f"t{i}"))
    stats = ut.stats()
    assert (stats.queue_depth, stats.dropped_queue_full, stats.dropped) == (5, 3, 3)
    release.set()
    assert ut.flush(5)
    stats = ut.stats()
    assert (stats.enqueued, stats.spooled, stats.dropped) == (6, 6, 3)
    ut.close()
    texts = [body(r)[1]["text"] for _, r in spooled_events(tmp_path)]
    assert texts == ["block", "t0", "t1", "t2", "t3", "t4"]


def test_sampling_keeps_or_drops_whole_traces(tmp_path: Path) -> None:
    ut = spool_only(tmp_path, sample_rate=0.5)
    traces = [new_trace_id() for _ in range(200)]
    for trace_id in traces:
        ut.record_prompt(trace_id=trace_id, span_id="p", parent_span_id=None, messages=MESSAGES)
        ut.record_completion(**completion_kwargs(trace_id=trace_id))
    assert ut.flush(10)
    stats = ut.stats()
    assert stats.sampled_out + stats.spooled == 400
    assert 100 < stats.spooled < 300
    ut.close()
    kept: dict[str, int] = {}
    for _, record in spooled_events(tmp_path):
        kept[record["trace_id"]] = kept.get(record["trace_id"], 0) + 1
    assert set(kept.values()) == {2}
    assert len(kept) * 2 == stats.spooled


def test_full_spool_drops_the_newest_and_counts(tmp_path: Path) -> None:
    ut = spool_only(tmp_path, spool_max_bytes=2000, spool_segment_bytes=1000)
    for _ in range(40):
        ut.record_completion(**completion_kwargs())
    assert ut.flush(5)
    stats = ut.stats()
    assert stats.spooled > 0 and stats.dropped_spool_full > 0
    assert stats.spooled + stats.dropped_spool_full == 40
    assert stats.spool_bytes <= 2000
    ut.close()


def test_records_after_close_are_dropped_and_counted(tmp_path: Path) -> None:
    ut = spool_only(tmp_path)
    ut.record_completion(**completion_kwargs())
    ut.close()
    ut.record_completion(**completion_kwargs())
    assert ut.flush(1) is True
    stats = ut.stats()
    assert (stats.spooled, stats.dropped, stats.dropped_queue_full) == (1, 1, 0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_broker_spools_every_record(tmp_path: Path) -> None:
    ut = Undertow(
        SdkConfig(
            app="unit",
            bootstrap_servers=f"127.0.0.1:{closed_port()}",
            spool_dir=tmp_path,
            hash_key=HASH_KEY,
            message_timeout_ms=1500,
            flush_at_exit=False,
        )
    )
    calls = [completion_kwargs(input_tokens=i, output_tokens=i + 1) for i in range(20)]
    for kwargs in calls:
        ut.record_completion(**kwargs)
    assert ut.flush(20)
    stats = ut.stats()
    assert (stats.spooled, stats.sent, stats.failed, stats.in_flight) == (20, 0, 0, 0)
    assert stats.link_up is False
    ut.close(5)
    events = spooled_events(tmp_path)
    by_span = {r["span_id"]: r for _, r in events}
    assert len(events) == 20 and len({r["event_id"] for _, r in events}) == 20
    for kwargs in calls:
        cbody = body(by_span[kwargs["span_id"]])[1]
        assert (cbody["input_tokens"], cbody["output_tokens"]) == (
            kwargs["input_tokens"],
            kwargs["output_tokens"],
        )


def test_high_level_api_never_raises_on_garbage(tmp_path: Path) -> None:
    ut = spool_only(tmp_path)
    bad: Any = object()
    with ut.trace(attributes=bad, user_id=bad) as tr:
        with tr.prompt(messages=bad, attributes=bad):
            tr.record_retrieval(query=bad, documents=bad, store=bad, latency_ms=bad)
        with tr.completion(model=bad) as c:
            c.set_output(bad, input_tokens=bad)
        tr.feedback(score=bad)
    ut.feedback(bad, score=bad)
    assert ut.flush(5)
    stats = ut.stats()
    assert stats.enqueued == 5
    assert stats.failed == 5 + 1  # the five events, and the trace that fell back to a fresh one
    ut.close()
