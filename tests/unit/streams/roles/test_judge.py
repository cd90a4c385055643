"""The judge processor's core (streams/roles/judge.py), with the judge model, the
warehouse and the broker replaced by in-memory fakes (the edges are tested for real in
tests/integration/test_judge_worker.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event, event_body, event_type
from undertow.services.judge_client import JudgeRefused, JudgeReply, JudgeUnavailable
from undertow.services.warehouse.rows import JUDGE_SCORE_COLUMNS
from undertow.streams.judge.parse import Verdict
from undertow.streams.judge.rubrics import load_rubrics
from undertow.streams.records import SourceRecord
from undertow.streams.roles.judge import (
    ContextCache,
    Judge,
    JudgeConfig,
    TraceContext,
    judge_id,
    judge_inputs,
    judgement,
    sampled,
    should_judge,
    warehouse_context,
)
from undertow.streams.sinks.warehouse import Backoff

CODEC = AvroCodec()
RUBRICS = load_rubrics()
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
JUDGED_AT = datetime(2025, 3, 1, 12, 5, tzinfo=UTC)


def trace_events(
    n: int,
    *,
    documents: list[str] | None = None,
    finish_reason: str = "stop",
    app: str = "support",
    question: str | None = None,
) -> list[dict[str, Any]]:
    """A trace: [retrieval], prompt, completion (child of the prompt), with fixed ids."""
    trace = uuid.uuid5(uuid.NAMESPACE_DNS, f"trace-{n}").hex
    common: dict[str, Any] = {"app": app, "environment": "production", "trace_id": trace}
    out = []
    if documents is not None:
        out.append(
            event(
                "retrieval",
                {
                    "query": "q",
                    "store": "kb",
                    "latency_ms": 3.0,
                    "documents": [{"id": f"d{i}", "text": t} for i, t in enumerate(documents)],
                },
                span_id=f"{n:04d}00000000000a",
                event_time=T0,
                **common,
            )
        )
    prompt_span = f"{n:04d}00000000000b"
    out.append(
        event(
            "prompt",
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": question or f"Question number {n}?"},
                ],
                "model": "smollm2",
            },
            span_id=prompt_span,
            event_time=T0 + timedelta(milliseconds=1),
            **common,
        )
    )
    out.append(
        event(
            "completion",
            {
                "model": "smollm2",
                "model_version": "v3",
                "prompt_name": "faq",
                "prompt_version": "7",
                "text": f"Answer number {n}.",
                "latency_ms": 120.0,
                "finish_reason": finish_reason,
            },
            span_id=f"{n:04d}00000000000c",
            parent_span_id=prompt_span,
            event_time=T0 + timedelta(milliseconds=2),
            attributes={"ab.variant": "B", "tenant": "acme"},
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"completion-{n}")),
            **common,
        )
    )
    return out


def source(records: Sequence[dict[str, Any] | bytes]) -> list[SourceRecord]:
    out = []
    for offset, rec in enumerate(records):
        value = rec if isinstance(rec, bytes) else CODEC.encode("event", rec)
        key = None if isinstance(rec, bytes) else str(rec["trace_id"]).encode()
        out.append(SourceRecord("undertow.events.v1", 0, offset, key, value))
    return out


# A phrase of each shipped rubric's user template, to tell which one the judge is asked.
MARKERS = {
    "relevance": "relevance of the answer",
    "coherence": "coherence of the answer",
    "groundedness": "documents support the answer",
}


class FakeJudge:
    """Answers by rubric (from the system prompt); records what it was asked."""

    def __init__(self, answers: dict[str, str] | None = None, hold_until: int = 0) -> None:
        self.answers = answers or {
            "relevance": '{"score": 4, "reason": "on topic"}',
            "coherence": "Score: 5",
            "groundedness": "I think it is fine",  # no score: a parse failure
        }
        # With hold_until, calls wait until that many are in flight at once (then all go on):
        # a cap that lets more through shows in max_in_flight, one that lets fewer through
        # never reaches the count and the wait times out.
        self.hold_until = hold_until
        self.gate: asyncio.Event | None = None
        self.asked: list[list[dict[str, str]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.failures: list[BaseException] = []

    async def __call__(self, messages: list[dict[str, str]]) -> JudgeReply:
        self.asked.append(messages)
        if self.failures:
            raise self.failures.pop(0)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold_until:
                self.gate = self.gate or asyncio.Event()
                if self.in_flight >= self.hold_until:
                    self.gate.set()
                await asyncio.wait_for(self.gate.wait(), timeout=5)
        finally:
            self.in_flight -= 1
        user = messages[1]["content"]
        rubric = next(name for name, marker in MARKERS.items() if marker in user)
        return JudgeReply(self.answers[rubric], "judge-served", 42.0, 1)


class Outputs:
    """What the processor wrote and published, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    async def write_rows(self, rows: list[list[Any]], token: str) -> None:
        self.log.append(("rows", [dict(zip(JUDGE_SCORE_COLUMNS, r, strict=True)) for r in rows]))

    async def feedback(self, messages: Any) -> None:
        self.log.append(("feedback", list(messages)))

    async def dead_letters(self, messages: Any) -> None:
        self.log.append(("dead", list(messages)))

    def get(self, kind: str) -> list[Any]:
        return [item for k, items in self.log if k == kind for item in items]


def make_judge(fake: FakeJudge, outputs: Outputs, lookup: Any = None, **config: Any) -> Judge:
    return Judge(
        RUBRICS,
        JudgeConfig(
            judge_model="judge-configured",
            sample_rate=config.pop("sample_rate", 1.0),
            **{"lookup_wait_s": 1.0, "lookup_interval_s": 0.01, **config},
        ),
        ask=fake,
        write_rows=outputs.write_rows,
        publish_feedback=outputs.feedback,
        publish_dead_letters=outputs.dead_letters,
        lookup=lookup,
        backoff=Backoff(0.001, 0.002),
        clock=lambda: JUDGED_AT,
    )


def test_sampling_is_deterministic_and_close_to_the_rate() -> None:
    ids = [str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))) for i in range(20_000)]
    at_10 = {i for i in ids if sampled(i, 0.1)}
    at_20 = {i for i in ids if sampled(i, 0.2)}
    assert 0.09 < len(at_10) / len(ids) < 0.11
    assert 0.19 < len(at_20) / len(ids) < 0.21
    assert at_10 < at_20  # raising the rate keeps what was sampled
    assert at_10 == {i for i in ids if sampled(i, 0.1)}
    assert all(sampled(i, 1.0) for i in ids[:100]) and not any(sampled(i, 0.0) for i in ids[:100])


def test_only_successful_completions_of_included_apps_are_judged() -> None:
    prompt, completion = trace_events(1)
    assert should_judge(completion, 1.0)
    assert not should_judge(prompt, 1.0)
    assert not should_judge(trace_events(2, finish_reason="error")[-1], 1.0)
    assert not should_judge(completion, 1.0, frozenset({"support"}))
    assert should_judge(trace_events(3, finish_reason="length")[-1], 1.0)


def test_the_cache_is_bounded_by_count_and_age() -> None:
    now = [0.0]
    cache = ContextCache(max_traces=2, max_age_s=10.0, max_documents=2, clock=lambda: now[0])
    a, b, c = (trace_events(i, documents=["x", "y", "z"]) for i in (1, 2, 3))
    for rec in a[:2] + b[:2]:
        cache.add(rec)
    context = cache.get(a[0]["trace_id"])
    assert context is not None and context.documents == ("x", "y")  # capped at 2
    assert context.prompts[0].messages[1] == ("user", "Question number 1?")
    for rec in c[:2]:
        cache.add(rec)  # a third trace: the least recently touched (a) goes
    assert len(cache) == 2 and cache.get(a[0]["trace_id"]) is None
    now[0] = 10.5  # b and c were last touched at 0
    assert cache.get(b[0]["trace_id"]) is None and len(cache) == 0


def test_the_prompt_is_the_completions_parent_else_the_latest() -> None:
    first = trace_events(1, question="First?")
    second = trace_events(1, question="Second?")
    second[0]["span_id"] = "ffff00000000000b"
    cache = ContextCache()
    cache.add(first[0])
    cache.add(second[0])
    context = cache.get(first[0]["trace_id"])
    assert judge_inputs(first[1], context).question == "First?"
    orphan = dict(first[1], parent_span_id="0123456789abcdef")
    assert judge_inputs(orphan, context).question == "Second?"
    assert judge_inputs(first[1], None).question == ""


def test_a_judgement_is_a_row_and_a_feedback_event_with_one_deterministic_id() -> None:
    completion = CODEC.decode(CODEC.encode("event", trace_events(5)[-1])).record
    rubric = RUBRICS.get("relevance")
    verdict = Verdict(4.0, 0.75, "on topic")
    made = judgement(
        completion,
        rubric,
        judge_model="judge-m",
        verdict=verdict,
        latency_ms=12.0,
        judged_at=JUDGED_AT,
    )
    expected_id = str(
        uuid.uuid5(
            uuid.UUID("3b8f6a52-7c1e-5d94-8a60-2f4e9c1d7b35"),
            f"{completion['event_id']}:relevance:{rubric.rubric_version}",
        )
    )
    assert (
        made.row["id"]
        == expected_id
        == judge_id(str(completion["event_id"]), "relevance", rubric.rubric_version)
    )
    row = made.row
    assert (row["score"], row["raw_score"], row["scale"], row["parse_error"]) == (
        0.75,
        4.0,
        "1..5",
        None,
    )
    assert (row["model"], row["model_version"], row["prompt_name"], row["prompt_version"]) == (
        "smollm2",
        "v3",
        "faq",
        "7",
    )
    assert row["attributes"] == {"ab.variant": "B", "tenant": "acme"}
    assert row["event_time"] == completion["event_time"]
    feedback = made.feedback
    assert feedback is not None
    decoded = CODEC.decode(CODEC.encode("event", feedback), "event").record
    assert event_type(decoded) == "feedback"
    assert str(decoded["event_id"]) == expected_id
    assert decoded["trace_id"] == completion["trace_id"]
    assert decoded["parent_span_id"] == completion["span_id"]
    assert event_body(decoded) == {
        "score": 0.75,
        "label": "relevance",
        "comment": "on topic",
        "source": "judge",
    }
    attributes = decoded["attributes"]
    assert attributes["ab.variant"] == "B" and attributes["model"] == "smollm2"
    assert attributes["judge.model"] == "judge-m"
    assert attributes["judge.rubric_version"] == rubric.rubric_version
    assert attributes["prompt_version"] == "7" and attributes["model_version"] == "v3"

    failed = judgement(
        completion,
        rubric,
        judge_model="judge-m",
        verdict=Verdict(None, None, "hmm", "no score found"),
        latency_ms=12.0,
        judged_at=JUDGED_AT,
    )
    assert failed.feedback is None
    assert failed.row["score"] is None and failed.row["parse_error"] == "no score found"
    assert failed.row["id"] == expected_id


def test_a_batch_is_judged_stored_then_published() -> None:
    with_docs = trace_events(1, documents=["Doc one.", "Doc two."])
    without_docs = trace_events(2)
    failed = trace_events(3, finish_reason="error")
    excluded = trace_events(4, app="undertow-judge")
    batch = source([*with_docs, *without_docs, *failed, *excluded, b"\x00junk"])
    fake, outputs = FakeJudge(), Outputs()
    report = asyncio.run(
        make_judge(fake, outputs, exclude_apps=frozenset({"undertow-judge"})).process(batch)
    )

    assert [kind for kind, _ in outputs.log] == ["rows", "feedback", "dead"]
    rows = outputs.get("rows")
    got = sorted((r["trace_id"], r["rubric"]) for r in rows)
    t1, t2 = with_docs[0]["trace_id"], without_docs[0]["trace_id"]
    assert got == sorted(
        [
            (t1, "relevance"),
            (t1, "coherence"),
            (t1, "groundedness"),
            (t2, "relevance"),
            (t2, "coherence"),
        ]
    )
    by_key = {(r["trace_id"], r["rubric"]): r for r in rows}
    assert by_key[(t1, "relevance")]["score"] == 0.75
    assert by_key[(t1, "coherence")]["score"] == 1.0
    grounded = by_key[(t1, "groundedness")]
    assert grounded["score"] is None and grounded["parse_error"].startswith("no score found")
    assert grounded["reason"] == "I think it is fine"
    assert all(r["judge_model"] == "judge-served" and r["latency_ms"] == 42.0 for r in rows)
    assert all(r["judged_at"] == JUDGED_AT for r in rows)

    feedback = [CODEC.decode(v, "event").record for _, v in outputs.get("feedback")]
    assert len(feedback) == 4  # the unparsable groundedness reply has none
    assert {str(f["event_id"]) for f in feedback} == {
        str(r["id"]) for r in rows if r["score"] is not None
    }
    assert all(
        k == str(v).encode()
        for (k, _), v in zip(
            outputs.get("feedback"), [f["trace_id"] for f in feedback], strict=True
        )
    )
    (dead,) = outputs.get("dead")
    assert CODEC.decode(dead[1]).type_name == "dead_letter"

    # The judge saw the question, the answer and, for groundedness, the documents.
    grounded_ask = next(m for m in fake.asked if "Retrieved documents" in m[1]["content"])
    assert "[1] Doc one." in grounded_ask[1]["content"]
    assert "Question number 1?" in grounded_ask[1]["content"]
    assert "Answer number 1." in grounded_ask[1]["content"]
    assert (report.completions, report.selected, report.judged, report.scored) == (4, 2, 5, 4)
    assert (report.failed, report.dead_letters, report.lookups) == (1, 1, 0)


def test_a_replay_produces_the_same_rows_and_events() -> None:
    batch = source(trace_events(1, documents=["Doc."]) + trace_events(2))
    first, second = Outputs(), Outputs()
    asyncio.run(make_judge(FakeJudge(), first).process(batch))
    asyncio.run(make_judge(FakeJudge(), second).process(batch))
    assert first.get("rows") == second.get("rows")
    assert first.get("feedback") == second.get("feedback")  # byte for byte


def test_a_record_delivered_twice_in_a_batch_is_judged_once() -> None:
    events = trace_events(1)
    fake, outputs = FakeJudge(), Outputs()
    asyncio.run(make_judge(fake, outputs).process(source([*events, events[-1]])))
    assert len(outputs.get("rows")) == 2 and len(fake.asked) == 2


def test_sampling_picks_the_same_completions_as_sampled() -> None:
    events = [e for i in range(40) for e in trace_events(i)]
    fake, outputs = FakeJudge(), Outputs()
    asyncio.run(make_judge(fake, outputs, sample_rate=0.3).process(source(events)))
    expected = {str(e["event_id"]) for e in events[1::2] if sampled(str(e["event_id"]), 0.3)}
    assert 0 < len(expected) < 40
    assert {str(r["completion_event_id"]) for r in outputs.get("rows")} == expected


def test_an_unavailable_judge_is_waited_for_not_dropped() -> None:
    fake, outputs = FakeJudge(), Outputs()
    fake.failures = [JudgeUnavailable("down"), JudgeUnavailable("still down")]
    report = asyncio.run(make_judge(fake, outputs, concurrency=1).process(source(trace_events(1))))
    assert report.judge_retries == 2
    assert [r["score"] for r in outputs.get("rows")] == [0.75, 1.0]
    assert len(fake.asked) == 4


def test_a_refused_request_is_a_row_with_the_refusal() -> None:
    fake, outputs = FakeJudge(), Outputs()
    fake.failures = [JudgeRefused("the judge refused the request: 400 too long", 400)]
    asyncio.run(make_judge(fake, outputs, concurrency=1).process(source(trace_events(1))))
    rows = sorted(outputs.get("rows"), key=lambda r: r["score"] is None)
    assert rows[-1]["score"] is None
    assert rows[-1]["parse_error"] == "refused: the judge refused the request: 400 too long"
    assert rows[-1]["judge_model"] == "judge-configured" and rows[-1]["latency_ms"] is None
    assert len(outputs.get("feedback")) == 1


def test_concurrent_judge_calls_are_capped() -> None:
    events = [e for i in range(6) for e in trace_events(i)]
    fake, outputs = FakeJudge(hold_until=3), Outputs()
    asyncio.run(make_judge(fake, outputs, concurrency=3).process(source(events)))
    assert len(fake.asked) == 12
    assert fake.max_in_flight == 3


def test_a_cache_miss_is_looked_up_until_the_warehouse_has_it() -> None:
    prompt, completion = trace_events(7, question="Where is my parcel?")
    context = ContextCache()
    context.add(prompt)
    found = context.get(prompt["trace_id"])
    calls: list[str] = []

    def lookup(trace_id: str) -> TraceContext | None:
        calls.append(trace_id)
        if len(calls) == 1:
            raise ConnectionError("warehouse away")
        return found if len(calls) >= 3 else None  # not written yet, then there

    fake, outputs = FakeJudge(), Outputs()
    judge = make_judge(fake, outputs, lookup=lookup, lookup_wait_s=10.0)
    report = asyncio.run(judge.process(source([completion])))
    assert calls == [prompt["trace_id"]] * 3
    assert report.lookups == 1
    assert all(
        "Where is my parcel?" in m[1]["content"]
        for m in fake.asked
        if "Question" in m[1]["content"]
    )
    assert all(r["score"] is not None for r in outputs.get("rows"))
    # Now cached: the next completion of the trace needs no lookup.
    again = asyncio.run(judge.process(source([dict(completion, event_id=str(uuid.uuid4()))])))
    assert again.lookups == 0 and len(calls) == 3


def test_a_prompt_never_found_gives_rows_that_say_so() -> None:
    completion = trace_events(8)[-1]
    fake, outputs = FakeJudge(), Outputs()
    report = asyncio.run(
        make_judge(fake, outputs, lookup=lambda _: None, lookup_wait_s=0.05).process(
            source([completion])
        )
    )
    rows = {r["rubric"]: r for r in outputs.get("rows")}
    assert rows["relevance"]["parse_error"] == "missing input: no question found for the completion"
    assert rows["relevance"]["score"] is None and rows["relevance"]["latency_ms"] is None
    assert rows["coherence"]["score"] == 1.0  # needs only the answer
    assert report.lookups == 1 and len(fake.asked) == 1


class _Result:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class _Client:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.queries: list[dict[str, Any]] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> _Result:
        assert "FROM events FINAL" in sql
        self.queries.append(parameters)
        return _Result(self.rows)


def test_the_warehouse_lookup_reads_prompts_and_documents() -> None:
    client = _Client(
        [
            ("retrieval", "aaaa", [], [("d1", 0.9, "Doc text.", None), ("d2", None, None, None)]),
            ("prompt", "bbbb", [("system", "Be brief."), ("user", "Hi?")], []),
        ]
    )
    connects: list[int] = []

    def connect() -> _Client:
        connects.append(1)
        return client

    lookup = warehouse_context(connect)
    context = lookup("t" * 32)
    assert context is not None
    assert context.documents == ("Doc text.",)
    assert context.prompts[0].span_id == "bbbb"
    assert context.prompts[0].messages == (("system", "Be brief."), ("user", "Hi?"))
    assert client.queries == [{"trace": "t" * 32}]
    client.rows = [("retrieval", "aaaa", [], [])]
    assert lookup("u" * 32) is None  # no prompt yet
    assert connects == [1]  # one client, reused


@pytest.mark.parametrize("rate", [-0.5, 1.5])
def test_rates_outside_0_1_are_clamped(rate: float) -> None:
    assert sampled("x", rate) is (rate > 1)
