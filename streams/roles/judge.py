"""The LLM-as-judge processor: sample completions, ask a judge model, store and publish scores.

Per micro-batch of ``undertow.events.v1`` records (the Faust agent in ``streams/app.py``):

1. decode each record as an ``event``; undecodable ones become dead letters
   (:func:`undertow.streams.roles.ingest.letter`);
2. fold prompts and retrievals into a bounded cache of recent trace contexts
   (:class:`ContextCache`, bounded by count and age): a completion's prompt and documents come
   earlier on the same partition (events are keyed by trace id);
3. pick the completions to judge (:func:`should_judge`): not an error, not from an excluded
   app (the judge's own traffic through an Undertow gateway), and sampled deterministically
   by event id (:func:`sampled`), so every replay picks the same ones;
4. join each with its context; on a cache miss (e.g. after a restart) look the trace up in the
   warehouse (:func:`warehouse_context`), retrying for ``lookup_wait_s`` while the ingest
   worker may not have written it yet;
5. ask the judge once per applicable rubric, at most ``concurrency`` calls at a time; while
   the judge is unavailable, wait and retry (never drop); a request it refuses for good
   becomes a row with the refusal as its ``parse_error``;
6. write one ``judge_scores`` row per completion and rubric, then publish one feedback event
   per score (none for unreadable replies), then the dead letters.

:meth:`Judge.process` returns only after step 6 succeeded, so the caller acknowledges the
batch's records only then. Rows and feedback events have deterministic ids
(:func:`judge_id`): a replay rewrites the same rows, which ``judge_scores`` collapses, and the
same events, which ``events`` collapses.

Rubrics that need documents run only on traces that retrieved some; any other rubric whose
input is missing (no prompt found, an empty answer) gets a row with that as ``parse_error``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.schemas.events import event, event_body, event_type
from undertow.services.judge_client import JudgeRefused, JudgeReply, JudgeUnavailable
from undertow.services.warehouse.rows import judge_score_row
from undertow.streams.judge.parse import Verdict, parse_verdict
from undertow.streams.judge.rubrics import JudgeInputs, Rubric, RubricSet
from undertow.streams.records import SourceRecord, letter
from undertow.streams.sinks.warehouse import Backoff, digest, warehouse_sink

if TYPE_CHECKING:
    from undertow.streams.runtime.intake import Batch
    from undertow.streams.runtime.worker import Runtime

logger = logging.getLogger(__name__)

PROCESSOR = "judge"
FEEDBACK_SOURCE = "judge"
# Fixed namespace of judge ids (uuid5 over completion event id, rubric and rubric version).
JUDGE_NAMESPACE = uuid.UUID("3b8f6a52-7c1e-5d94-8a60-2f4e9c1d7b35")

Ask = Callable[[list[dict[str, str]]], Awaitable[JudgeReply]]
Lookup = Callable[[str], "TraceContext | None"]
WriteRows = Callable[[list[list[Any]], str], Awaitable[None]]
Publish = Callable[[Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]


def judge_id(completion_event_id: str, rubric: str, rubric_version: str) -> str:
    """The id of a judgement: its ``judge_scores`` row and its feedback event."""
    return str(uuid.uuid5(JUDGE_NAMESPACE, f"{completion_event_id}:{rubric}:{rubric_version}"))


def sampled(event_id: str, rate: float) -> bool:
    """True for a fraction ``rate`` of event ids, the same ids in every process and replay.

    >>> sampled("0b7e0f9c-0a4b-4c53-9d3e-5f1a2b3c4d5e", 1.0), sampled("x", 0.0)
    (True, False)
    """
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(str(event_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def should_judge(
    record: Mapping[str, Any], rate: float, exclude_apps: frozenset[str] = frozenset()
) -> bool:
    """A completion that did not fail, from an app not excluded, in the sample."""
    if event_type(record) != "completion" or record["app"] in exclude_apps:
        return False
    if event_body(record).get("finish_reason") == "error":
        return False
    return sampled(str(record["event_id"]), rate)


@dataclass(frozen=True)
class PromptSeen:
    """A prompt of a trace: its span (a completion's parent) and its chat messages."""

    span_id: str
    messages: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TraceContext:
    """What a completion's judge needs from the rest of its trace."""

    prompts: tuple[PromptSeen, ...] = ()
    documents: tuple[str, ...] = ()

    def prompt_for(self, parent_span_id: str | None) -> PromptSeen | None:
        """The completion's own prompt (its parent span), else the trace's latest one."""
        for prompt in self.prompts:
            if prompt.span_id == parent_span_id:
                return prompt
        return self.prompts[-1] if self.prompts else None


@dataclass
class _Entry:
    prompts: list[PromptSeen] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)
    seen: float = 0.0


class ContextCache:
    """Prompts and retrieved documents of recent traces, bounded by count and age.

    ``max_traces`` traces at most (the least recently touched go first), each forgotten
    ``max_age_s`` after its last event; per trace, the last ``max_prompts`` prompts and the
    first ``max_documents`` document texts are kept.
    """

    def __init__(
        self,
        max_traces: int = 10_000,
        max_age_s: float = 600.0,
        *,
        max_prompts: int = 8,
        max_documents: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_traces, self.max_age_s = max_traces, max_age_s
        self.max_prompts, self.max_documents = max_prompts, max_documents
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, record: Mapping[str, Any]) -> None:
        """Remember a prompt or retrieval event (other events are ignored)."""
        kind = event_type(record)
        if kind not in ("prompt", "retrieval"):
            return
        now = self._clock()
        self._expire(now)
        trace_id = str(record["trace_id"])
        entry = self._entries.pop(trace_id, None) or _Entry()
        entry.seen = now
        body = event_body(record)
        if kind == "prompt":
            messages = tuple((str(m["role"]), str(m["content"])) for m in body["messages"])
            entry.prompts.append(PromptSeen(str(record["span_id"]), messages))
            del entry.prompts[: -self.max_prompts]
        else:
            texts = [str(d["text"]) for d in body.get("documents") or [] if d.get("text")]
            room = self.max_documents - len(entry.documents)
            entry.documents.extend(texts[: max(room, 0)])
        self._entries[trace_id] = entry
        while len(self._entries) > self.max_traces:
            self._entries.popitem(last=False)

    def merge(self, trace_id: str, context: TraceContext) -> None:
        """Remember a context found elsewhere (the warehouse)."""
        now = self._clock()
        self._entries.pop(trace_id, None)
        self._entries[trace_id] = _Entry(
            list(context.prompts[-self.max_prompts :]),
            list(context.documents[: self.max_documents]),
            now,
        )
        while len(self._entries) > self.max_traces:
            self._entries.popitem(last=False)

    def get(self, trace_id: str) -> TraceContext | None:
        """The trace's context, if it is remembered and not too old."""
        self._expire(self._clock())
        entry = self._entries.get(trace_id)
        if entry is None:
            return None
        return TraceContext(tuple(entry.prompts), tuple(entry.documents))

    def _expire(self, now: float) -> None:
        while self._entries:
            trace_id, entry = next(iter(self._entries.items()))
            if now - entry.seen <= self.max_age_s:
                return
            del self._entries[trace_id]


def question_of(messages: Sequence[tuple[str, str]]) -> str:
    """What the user asked: a single message's text, else the conversation without system
    messages, one ``Role: text`` line each."""
    turns = [(role, text) for role, text in messages if role not in ("system", "developer")]
    if len(turns) == 1:
        return turns[0][1]
    return "\n".join(f"{role.capitalize()}: {text}" for role, text in turns)


def judge_inputs(
    completion: Mapping[str, Any], context: TraceContext | None, max_chars: int = 4000
) -> JudgeInputs:
    """The rubric inputs of a completion: its answer, its prompt's question and the trace's
    documents, each cut to ``max_chars`` (the question keeps its end, where the last turn is;
    the documents share ``max_chars``)."""
    body = event_body(completion)
    prompt = context.prompt_for(completion.get("parent_span_id")) if context else None
    question = question_of(prompt.messages) if prompt is not None else ""
    if len(question) > max_chars:
        question = "…" + question[-(max_chars - 1) :]
    documents = context.documents if context else ()
    each = max_chars // max(len(documents), 1)
    return JudgeInputs(
        question=question,
        answer=_head(str(body.get("text") or ""), max_chars),
        documents=tuple(_head(d, each) for d in documents),
    )


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


@dataclass(frozen=True)
class JudgeConfig:
    """How the processor samples, joins and records (the worker fills it from settings)."""

    judge_model: str
    sample_rate: float = 0.1
    concurrency: int = 4
    exclude_apps: frozenset[str] = frozenset()
    lookup_wait_s: float = 30.0
    lookup_interval_s: float = 1.0
    max_input_chars: int = 4000
    max_reason_chars: int = 500


@dataclass(frozen=True)
class Judgement:
    """One completion judged by one rubric: the row and, for a score, the feedback event."""

    row: dict[str, Any]
    feedback: dict[str, Any] | None


def judgement(
    completion: Mapping[str, Any],
    rubric: Rubric,
    *,
    judge_model: str,
    verdict: Verdict,
    latency_ms: float | None,
    judged_at: datetime,
) -> Judgement:
    """The ``judge_scores`` row (by column name) and, when the verdict has a score, the
    feedback event of one completion and rubric."""
    body = event_body(completion)
    completion_id = str(completion["event_id"])
    version = rubric.rubric_version
    jid = judge_id(completion_id, rubric.name, version)
    low, high = rubric.scale
    segment = {
        "model": body.get("model") or "",
        "model_version": body.get("model_version") or "",
        "prompt_name": body.get("prompt_name") or "",
        "prompt_version": body.get("prompt_version") or "",
    }
    attributes = dict(completion.get("attributes") or {})
    row = {
        "id": jid,
        "completion_event_id": completion_id,
        "trace_id": completion["trace_id"],
        "event_time": completion["event_time"],
        "app": completion["app"],
        "environment": completion["environment"],
        **segment,
        "attributes": attributes,
        "rubric": rubric.name,
        "rubric_version": version,
        "judge_model": judge_model,
        "score": verdict.score,
        "raw_score": verdict.raw_score,
        "scale": f"{low}..{high}",
        "parse_error": verdict.error,
        "reason": verdict.reason,
        "latency_ms": latency_ms,
        "judged_at": judged_at,
    }
    if verdict.score is None:
        return Judgement(row, None)
    feedback = event(
        "feedback",
        {
            "score": verdict.score,
            "label": rubric.name,
            "comment": verdict.reason or None,
            "source": FEEDBACK_SOURCE,
        },
        app=completion["app"],
        environment=completion["environment"],
        trace_id=completion["trace_id"],
        span_id=uuid.UUID(jid).hex[:16],
        parent_span_id=completion["span_id"],
        # The completion's time, not now: a replay must produce the very same event.
        event_time=completion["event_time"],
        user_hash=completion.get("user_hash"),
        session_hash=completion.get("session_hash"),
        event_id=jid,
        attributes={
            **attributes,
            **{k: v for k, v in segment.items() if v},
            "judge.model": judge_model,
            "judge.rubric": rubric.name,
            "judge.rubric_version": version,
            "judge.raw_score": _number(verdict.raw_score),
            "judge.scale": f"{low}..{high}",
            "judge.completion_event_id": completion_id,
        },
    )
    return Judgement(row, feedback)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value == int(value) else str(value)


@dataclass
class JudgeReport:
    """What one batch came to, for logs and tests."""

    records: int = 0
    completions: int = 0
    selected: int = 0
    judged: int = 0
    scored: int = 0
    failed: int = 0
    lookups: int = 0
    dead_letters: int = 0
    judge_retries: int = 0
    seconds: float = 0.0


class Judge:
    """Sample, join, judge, store and publish one batch at a time; knows nothing of Faust.

    ``ask`` calls the judge model (:meth:`JudgeClient.complete`); ``write_rows(rows, token)``
    stores ``judge_scores`` rows (in ``JUDGE_SCORE_COLUMNS`` order) durably, retrying itself;
    ``publish_feedback`` and ``publish_dead_letters`` produce ``(key, value)`` messages and
    return once the broker has them; ``lookup`` (blocking, run on a thread) finds a trace's
    context in the warehouse, or None.
    """

    def __init__(
        self,
        rubrics: RubricSet,
        config: JudgeConfig,
        *,
        ask: Ask,
        write_rows: WriteRows,
        publish_feedback: Publish,
        publish_dead_letters: Publish,
        lookup: Lookup | None = None,
        cache: ContextCache | None = None,
        backoff: Backoff | None = None,
        codec: AvroCodec | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.rubrics = rubrics
        self.config = config
        self.cache = cache or ContextCache()
        self.codec = codec or AvroCodec()
        self._ask = ask
        self._write_rows = write_rows
        self._publish_feedback = publish_feedback
        self._publish_dead_letters = publish_dead_letters
        self._lookup = lookup
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._clock = clock
        self._exclude = frozenset(config.exclude_apps)
        self._slots = asyncio.Semaphore(config.concurrency)

    async def process(self, records: Sequence[SourceRecord]) -> JudgeReport:
        """Handle one batch; returns once its rows, feedback and dead letters are durable."""
        began = time.perf_counter()
        report = JudgeReport(records=len(records))
        letters: list[dict[str, object]] = []
        completions: list[dict[str, Any]] = []
        chosen_ids: set[Any] = set()
        for rec in records:
            try:
                if rec.value is None:
                    raise DecodeError("empty value (tombstone): expected an event record")
                record = self.codec.decode(rec.value, "event").record
                kind = event_type(record)
            except (DecodeError, ValueError) as exc:
                letters.append(letter(rec, str(exc), type(exc).__name__, PROCESSOR))
                continue
            if kind == "completion":
                report.completions += 1
                chosen = should_judge(record, self.config.sample_rate, self._exclude)
                if chosen and record["event_id"] not in chosen_ids:
                    chosen_ids.add(record["event_id"])  # a record delivered twice: judged once
                    completions.append(record)
            else:
                self.cache.add(record)
        report.selected = len(completions)
        contexts = await asyncio.gather(*(self._context(c, report) for c in completions))
        work = [
            self._judge(completion, rubric, inputs, report)
            for completion, context in zip(completions, contexts, strict=True)
            for rubric, inputs in self._rubrics_for(completion, context)
        ]
        judgements = await asyncio.gather(*work)
        if judgements:
            rows = [judge_score_row(j.row) for j in judgements]
            token = digest("judge_scores:" + ",".join(str(j.row["id"]) for j in judgements))
            await self._write_rows(rows, token)
            messages = [
                (str(j.feedback["trace_id"]).encode(), self.codec.encode("event", j.feedback))
                for j in judgements
                if j.feedback is not None
            ]
            if messages:
                await self._publish_feedback(messages)
        if letters:
            await self._publish_dead_letters(
                [(None, self.codec.encode("dead_letter", d)) for d in letters]
            )
            logger.warning("%d of %d records sent to dead letters", len(letters), len(records))
        report.judged = len(judgements)
        report.scored = sum(j.feedback is not None for j in judgements)
        report.failed = report.judged - report.scored
        report.dead_letters = len(letters)
        report.seconds = time.perf_counter() - began
        return report

    def _rubrics_for(
        self, completion: Mapping[str, Any], context: TraceContext | None
    ) -> list[tuple[Rubric, JudgeInputs]]:
        inputs = judge_inputs(completion, context, self.config.max_input_chars)
        return [
            (rubric, inputs)
            for rubric in self.rubrics
            if "documents" not in rubric.needs or inputs.has("documents")
        ]

    async def _context(self, completion: Mapping[str, Any], report: JudgeReport) -> TraceContext:
        """The trace's context from the cache, else from the warehouse (waiting a while for
        the ingest worker to write it); empty when neither has a prompt."""
        trace_id = str(completion["trace_id"])
        context = self.cache.get(trace_id)
        if (context is not None and context.prompts) or self._lookup is None:
            return context or TraceContext()
        report.lookups += 1
        deadline = time.monotonic() + self.config.lookup_wait_s
        while True:
            try:
                found = await asyncio.to_thread(self._lookup, trace_id)
            except Exception as exc:  # the warehouse is away: treat as not there yet
                logger.warning(
                    "looking up trace %s failed: %s: %s", trace_id, type(exc).__name__, exc
                )
                found = None
            if found is not None and found.prompts:
                self.cache.merge(trace_id, found)
                return found
            if time.monotonic() >= deadline:
                logger.warning(
                    "no prompt of trace %s in the cache or the warehouse after %.0f s",
                    trace_id,
                    self.config.lookup_wait_s,
                )
                return context or found or TraceContext()
            await asyncio.sleep(self.config.lookup_interval_s)

    async def _judge(
        self,
        completion: Mapping[str, Any],
        rubric: Rubric,
        inputs: JudgeInputs,
        report: JudgeReport,
    ) -> Judgement:
        missing = [name for name in rubric.needs if not inputs.has(name)]
        if missing:
            what = " and ".join(missing)
            verdict = Verdict(None, None, "", f"missing input: no {what} found for the completion")
            return self._judgement(completion, rubric, verdict, None, self.config.judge_model)
        messages = rubric.messages(inputs)
        delays = self._backoff.delays()
        async with self._slots:
            while True:
                try:
                    reply = await self._ask(messages)
                    break
                except JudgeRefused as exc:
                    verdict = Verdict(None, None, "", f"refused: {exc}")
                    return self._judgement(
                        completion, rubric, verdict, None, self.config.judge_model
                    )
                except JudgeUnavailable as exc:
                    report.judge_retries += 1
                    delay = next(delays)
                    logger.warning("the judge is unavailable (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
        verdict = parse_verdict(
            reply.text, rubric.scale, max_reason_chars=self.config.max_reason_chars
        )
        return self._judgement(completion, rubric, verdict, reply.latency_ms, reply.model)

    def _judgement(
        self,
        completion: Mapping[str, Any],
        rubric: Rubric,
        verdict: Verdict,
        latency_ms: float | None,
        judge_model: str,
    ) -> Judgement:
        return judgement(
            completion,
            rubric,
            judge_model=judge_model,
            verdict=verdict,
            latency_ms=latency_ms,
            judged_at=self._clock(),
        )


def warehouse_context(connect: Callable[[], Any]) -> Lookup:
    """A :data:`Lookup` over the warehouse's ``events`` table (``FINAL``): the prompts and
    retrieved documents of a trace, in event-time order; None when it has no prompt yet.

    ``connect`` opens a clickhouse-connect client, on first use (the worker starts even while
    the warehouse is away) and again after a failed query. Queries are serialised: one client
    session runs one query at a time.
    """
    lock = threading.Lock()
    clients: list[Any] = []
    query = (
        "SELECT event_type, span_id, prompt_messages, retrieval_documents FROM events FINAL "
        "WHERE trace_id = {trace:String} AND event_type IN ('prompt', 'retrieval') "
        "ORDER BY event_time, kafka_partition, kafka_offset"
    )

    def lookup(trace_id: str) -> TraceContext | None:
        with lock:
            if not clients:
                clients.append(connect())
            try:
                result = clients[0].query(query, parameters={"trace": trace_id})
            except Exception:
                clients.clear()
                raise
        prompts: list[PromptSeen] = []
        documents: list[str] = []
        for kind, span_id, messages, retrieved in result.result_rows:
            if kind == "prompt":
                prompts.append(PromptSeen(span_id, tuple((str(r), str(c)) for r, c in messages)))
            else:
                documents.extend(str(d[2]) for d in retrieved if d[2])
        if not prompts:
            return None
        return TraceContext(tuple(prompts), tuple(documents))

    return lookup


def add(runtime: Runtime) -> None:
    """Wire the judge role: sampled completions of the event topic rated by a judge model
    into ``judge_scores`` and back onto the event topic as feedback events. A batch is
    acknowledged only once its rows are stored and its feedback published; while the judge is
    away the batch waits and retries."""
    from undertow.services.judge_client import JudgeClient, JudgeClientConfig
    from undertow.services.warehouse.client import connect
    from undertow.services.warehouse.rows import JUDGE_SCORE_COLUMNS
    from undertow.streams.judge import load_rubrics

    settings = runtime.settings
    rubrics = load_rubrics(settings.judge_rubrics_file)
    if settings.judge_rubrics:
        rubrics = rubrics.only(settings.judge_rubrics)
    sink = warehouse_sink(settings)
    client = JudgeClient(
        JudgeClientConfig(
            base_url=settings.judge_base_url,
            model=settings.judge_model,
            api_key=settings.judge_api_key,
            timeout_s=settings.judge_timeout_s,
            max_attempts=settings.judge_max_attempts,
            backoff_min_s=settings.retry_backoff_min_s,
            backoff_max_s=settings.retry_backoff_max_s,
            max_tokens=settings.judge_max_tokens,
            json_mode=settings.judge_json_mode,
            max_connections=settings.judge_concurrency,
        )
    )

    def warehouse() -> Any:
        return connect(
            str(settings.clickhouse_url),
            settings.clickhouse_database,
            settings.clickhouse_user,
            settings.clickhouse_password.get_secret_value(),
        )

    async def write_rows(rows: list[list[Any]], token: str) -> None:
        await sink.insert_rows("judge_scores", JUDGE_SCORE_COLUMNS, rows, token)

    async def publish_feedback(messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        await runtime.publish(settings.events_topic, messages, "judge feedback")

    async def publish_dead_letters(messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        await runtime.publish(settings.deadletter_topic, messages, "dead letters")

    judge = Judge(
        rubrics,
        JudgeConfig(
            judge_model=settings.judge_model,
            sample_rate=settings.judge_sample_rate,
            concurrency=settings.judge_concurrency,
            exclude_apps=frozenset(settings.judge_exclude_apps),
            lookup_wait_s=settings.judge_lookup_wait_s,
            max_input_chars=settings.judge_max_input_chars,
            max_reason_chars=settings.judge_reason_chars,
        ),
        ask=client.complete,
        write_rows=write_rows,
        publish_feedback=publish_feedback,
        publish_dead_letters=publish_dead_letters,
        lookup=warehouse_context(warehouse),
        cache=ContextCache(settings.judge_cache_traces, settings.judge_cache_age_s),
        backoff=runtime.backoff,
    )
    logger.info(
        "judge: %s at %s, rubrics %s, sample rate %s",
        settings.judge_model,
        settings.judge_base_url,
        ", ".join(f"{r.name} {r.rubric_version}" for r in rubrics),
        settings.judge_sample_rate,
    )

    async def handle(batch: Batch) -> None:
        if batch.records:
            report = await judge.process(batch.records)
            if report.selected or report.dead_letters:
                logger.info(
                    "judge batch of %d: %d completions, %d judged by %d rubric calls "
                    "(%d scored, %d unreadable), %d lookups, %d dead letters, %.1f s",
                    report.records,
                    report.completions,
                    report.selected,
                    report.judged,
                    report.scored,
                    report.failed,
                    report.lookups,
                    report.dead_letters,
                    report.seconds,
                )
        await batch.acknowledge()

    runtime.consume((settings.events_topic,), "undertow.streams.judge", handle)
