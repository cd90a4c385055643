"""The SDK against real Kafka brokers: every event delivered once with the right fields, and
the outage the issue describes (services/sdk/delivery.py).

The outage test runs its own broker in a temporary state dir (it stops and restarts it); the
delivery test uses the session's local stack.
"""

from __future__ import annotations

import shutil
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from undertow.infra.kafka import KafkaBroker, ensure_topics, load_topics
from undertow.infra.process import wait_until
from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import new_span_id, new_trace_id
from undertow.schemas.topics import EVENTS
from undertow.services.bus import BusError, end_offsets, read_range
from undertow.services.sdk import SdkConfig, Undertow
from undertow.settings import StackSettings

pytestmark = pytest.mark.integration

HASH_KEY = "integration-hash-key"


def offsets(bootstrap: str) -> dict[int, int]:
    """EVENTS' end offsets, once every partition has a leader (new or restarted broker)."""

    def probe() -> dict[int, int] | None:
        try:
            return end_offsets(bootstrap, EVENTS)
        except BusError:
            return None

    return wait_until(probe, timeout=60, what=f"{EVENTS} partition leaders", interval=0.2)


def read_events(
    bootstrap: str, start: dict[int, int], app: str
) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, decoded event) of every record of ``app`` written to EVENTS since ``start``."""
    end = offsets(bootstrap)
    codec = AvroCodec()
    out = []
    for record in read_range(bootstrap, EVENTS, start, end):
        event = codec.decode(record.value, "event").record
        if event["app"] == app:
            out.append((record.key or b"", event))
    return out


def test_every_event_is_delivered_once_with_its_fields(stack: StackInfo, tmp_path: Path) -> None:
    bootstrap = stack.bootstrap_servers
    app = f"sdk-delivery-{uuid.uuid4().hex[:8]}"
    start = offsets(bootstrap)
    ut = Undertow(
        SdkConfig(
            app=app,
            environment="test",
            bootstrap_servers=bootstrap,
            hash_key=HASH_KEY,
            spool_dir=tmp_path / "spool",
            flush_at_exit=False,
        )
    )
    expected: dict[str, tuple[str, int, int]] = {}  # completion span -> trace, tokens in/out
    traces = 50
    for i in range(traces):
        trace_id, prompt_span, completion_span = new_trace_id(), new_span_id(), new_span_id()
        ut.record_prompt(
            trace_id=trace_id,
            span_id=prompt_span,
            parent_span_id=None,
            messages=[{"role": "user", "content": f"question {i}"}],
            model="m",
            user_id=f"user-{i}",
        )
        ut.record_retrieval(
            trace_id=trace_id,
            span_id=new_span_id(),
            parent_span_id=prompt_span,
            query=f"question {i}",
            documents=[{"id": f"doc-{i}", "score": 0.5, "text": "t", "source": "kb"}],
            store="faq",
            latency_ms=1.5,
            top_k=1,
        )
        ut.record_completion(
            trace_id=trace_id,
            span_id=completion_span,
            parent_span_id=prompt_span,
            model="m",
            text=f"answer {i}",
            latency_ms=20.0 + i,
            input_tokens=100 + i,
            output_tokens=10 + i,
            cached_tokens=i,
            finish_reason="stop",
        )
        ut.record_feedback(trace_id=trace_id, score=float(i % 2), label="rating")
        expected[completion_span] = (trace_id, 100 + i, 10 + i)
    assert ut.flush(30)
    stats = ut.stats()
    ut.close()
    assert (stats.sent, stats.spooled, stats.failed, stats.dropped) == (4 * traces, 0, 0, 0)

    events = read_events(bootstrap, start, app)
    assert len(events) == 4 * traces
    assert max(Counter(e["event_id"] for _, e in events).values()) == 1
    assert all(key == e["trace_id"].encode() for key, e in events)
    per_trace = Counter(e["trace_id"] for _, e in events)
    assert set(per_trace.values()) == {4}
    completions = {e["span_id"]: e for _, e in events if e["body"][0] == "undertow.Completion"}
    assert completions.keys() == expected.keys()
    for span_id, (trace_id, tokens_in, tokens_out) in expected.items():
        event = completions[span_id]
        fields = event["body"][1]
        assert event["trace_id"] == trace_id and event["environment"] == "test"
        assert (fields["input_tokens"], fields["output_tokens"]) == (tokens_in, tokens_out)
        assert fields["finish_reason"] == "stop"
    prompts = [e for _, e in events if e["body"][0] == "undertow.Prompt"]
    assert all(p["user_hash"] and "user-" not in p["user_hash"] for p in prompts)


# --------------------------------------------------------------------------- the outage


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of this module's own, which the outage test stops and starts."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the local Kafka broker needs {' and '.join(missing)} on PATH")
    kafka = KafkaBroker(tmp_path_factory.mktemp("sdk-outage"), StackSettings().cache_dir)
    ensure_topics(kafka.start().bootstrap, load_topics())
    yield kafka
    kafka.stop()


class SupportBot:
    """A small serving app: retrieve, prompt, generate, with the SDK recording each step."""

    def __init__(self, ut: Undertow) -> None:
        self.ut = ut
        self.traces: list[str] = []

    def handle(self, question: str, user_id: str) -> str:
        with self.ut.trace(user_id=user_id, attributes={"route": "/answer"}) as tr:
            self.traces.append(tr.trace_id)
            with tr.retrieval(query=question, store="faq", top_k=2) as r:
                docs = [{"id": str(i), "score": 1.0 / (i + 1), "text": question} for i in range(2)]
                r.set_documents(docs)
            messages = [{"role": "user", "content": question}]
            prompt = tr.prompt(messages=messages, model="m", prompt_name="faq", prompt_version="1")
            with prompt, tr.completion(model="m") as c:
                answer = self.generate(question)
                c.set_output(answer, input_tokens=len(question), output_tokens=len(answer))
        return answer

    @staticmethod
    def generate(question: str) -> str:
        """Stand-in for model work: some CPU, so a request costs what a real handler does."""
        digest = question
        for _ in range(200):
            digest = str(hash(digest))
        return f"answer to {question}: {digest[:8]}"


def serve(bot: SupportBot, count: int, label: str) -> tuple[list[float], list[BaseException]]:
    """Serve ``count`` requests; their latencies (s) and any exception the app saw."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    for i in range(count):
        started = time.perf_counter()
        try:
            bot.handle(f"{label} question {i}", user_id=f"user-{i % 7}")
        except BaseException as exc:  # the test is that there are none
            errors.append(exc)
        latencies.append(time.perf_counter() - started)
    return latencies, errors


def test_outage_spools_then_delivers_every_event_exactly_once(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    bootstrap = broker.start().bootstrap
    app = f"sdk-outage-{uuid.uuid4().hex[:8]}"
    start = offsets(bootstrap)
    ut = Undertow(
        SdkConfig(
            app=app,
            bootstrap_servers=bootstrap,
            hash_key=HASH_KEY,
            spool_dir=tmp_path / "spool",
            message_timeout_ms=3000,
            replay_interval_s=0.5,
            flush_at_exit=False,
        )
    )
    bot = SupportBot(ut)
    requests = 300
    serve(bot, 50, "warm-up")
    up, up_errors = serve(bot, requests, "up")
    assert ut.flush(30)
    before = ut.stats()
    assert before.sent == before.enqueued and before.spooled == 0

    broker.stop()
    down, down_errors = serve(bot, requests, "down")
    assert ut.flush(30), "events recorded during the outage were not spooled in time"
    during = ut.stats()

    assert up_errors == [] and down_errors == []
    assert during.spooled > 0
    assert during.sent + during.spooled == during.enqueued
    assert during.failed == 0 and during.dropped == 0
    p50_up, p50_down = statistics.median(up), statistics.median(down)
    # The app does not wait for the broker: same speed within a generous margin, and no
    # request anywhere near the producer's message timeout.
    assert p50_down <= 2 * p50_up + 0.001, (p50_up, p50_down)
    assert max(down) < 0.5, max(down)

    broker.start()  # same state dir: same ports and data
    wait_until(
        lambda: (
            True if (s := ut.stats()).replayed == during.spooled and s.spool_bytes == 0 else None
        ),
        timeout=120,
        what="replay of the spooled events",
        interval=0.2,
    )
    after = ut.stats()
    ut.close()
    assert after.sent + after.replayed == after.enqueued == 3 * (50 + 2 * requests)

    events = read_events(bootstrap, start, app)
    ids = Counter(e["event_id"] for _, e in events)
    assert len(events) == after.enqueued
    assert max(ids.values()) == 1, "an event was delivered twice"
    per_trace = Counter(e["trace_id"] for _, e in events)
    assert per_trace.keys() == set(bot.traces)
    assert set(per_trace.values()) == {3}
