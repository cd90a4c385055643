"""The ingest processor: events from Kafka into ClickHouse, undecodable ones to dead letters.

Per micro-batch (the Faust agent in ``streams/app.py`` hands over up to ``batch_size`` records
or whatever arrived within ``batch_window_s``):

1. decode each record as an ``event`` (:class:`~undertow.schemas.codec.AvroCodec`); bytes that
   are not one (random bytes, a truncated record, a valid record of another type) become
   ``DeadLetter`` records, and the rest flows on;
2. call the **enrich hook** on the decoded items (the scorers; the identity when scoring is off);
3. write them through :class:`~undertow.streams.sinks.warehouse.EventSink` (idempotent,
   retries until the warehouse takes them); rows the warehouse can never store become dead
   letters too;
4. hand the stored items to the ``on_stored`` hook (the worker publishes the scored events
   and folds them into its open traces' scoring contexts there);
5. publish the dead letters (retried until the broker takes them).

Only when :meth:`Ingest.process` returns may the caller acknowledge the batch's records; it
returns only after steps 3 to 5 succeeded, and never raises for bad data or outages (the
``on_stored`` hook retries its own outages; an exception from it is a bug and propagates).

The enrich hook
---------------
``enrich(items: list[SinkItem]) -> list[SinkItem]``, a plain (blocking) function that runs
on a worker thread so the event loop keeps heartbeating while models run. Each
:class:`~undertow.streams.sinks.warehouse.SinkItem` is ``(record, topic, partition, offset,
scores)``: the decoded event, its Kafka coordinates and ``scores=None``. The hook returns
the same items (same coordinates, any order) with ``scores`` set to a
:class:`~undertow.streams.scoring.scored.Scored` where it scored something
(:class:`~undertow.streams.scoring.enrich.Enricher` is the real one). It must not drop or
invent items (that is checked). If it raises, the batch is split in halves and retried, down
to single items; an item that fails alone is dead-lettered with the hook's error, so one
poisonous record cannot stall the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from undertow.errors import UndertowError
from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.schemas.events import event_type
from undertow.streams.records import SourceRecord, letter, origin_header
from undertow.streams.scoring.enrich import ContextLookup
from undertow.streams.scoring.scored import Scored, scored_record
from undertow.streams.sinks.warehouse import Backoff, EventSink, SinkItem, warehouse_sink
from undertow.streams.state.contexts import ContextStore

if TYPE_CHECKING:
    from undertow.streams.runtime.intake import Batch
    from undertow.streams.runtime.worker import Runtime

logger = logging.getLogger(__name__)

PROCESSOR = "ingest"

Enrich = Callable[[list[SinkItem]], list[SinkItem]]
PublishDeadLetters = Callable[[Sequence[bytes]], Awaitable[None]]
OnStored = Callable[[list[SinkItem]], Awaitable[None]]


class ProcessorError(UndertowError):
    """A processor hook broke its contract (e.g. the enrich hook dropped items)."""


def identity(items: list[SinkItem]) -> list[SinkItem]:
    """The enrich hook until the scorers plug in: items pass unchanged."""
    return items


@dataclass
class DecodedBatch:
    """The decodable events of a batch, and dead letters for the rest."""

    items: list[SinkItem] = field(default_factory=list)
    dead_letters: list[dict[str, object]] = field(default_factory=list)


@dataclass
class BatchReport:
    """What one batch came to, for logs, tests and benchmarks."""

    records: int
    stored: int
    dead_letters: int
    sink_retries: int
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step


def decode_batch(
    records: Sequence[SourceRecord], codec: AvroCodec, processor: str = PROCESSOR
) -> DecodedBatch:
    """Decode each record as an ``event``; the ones that are not become dead letters."""
    out = DecodedBatch()
    for rec in records:
        try:
            if rec.value is None:
                raise DecodeError("empty value (tombstone): expected an event record")
            decoded = codec.decode(rec.value, "event")
            event_type(decoded.record)  # a body the rows mapping knows
        except (DecodeError, ValueError) as exc:
            out.dead_letters.append(letter(rec, str(exc), type(exc).__name__, processor))
            continue
        out.items.append(SinkItem(decoded.record, rec.topic, rec.partition, rec.offset))
    return out


class Ingest:
    """Decode, enrich, store and dead-letter one batch at a time; knows nothing of Faust."""

    def __init__(
        self,
        sink: EventSink,
        publish_dead_letters: PublishDeadLetters,
        *,
        enrich: Enrich = identity,
        codec: AvroCodec | None = None,
        backoff: Backoff | None = None,
        processor: str = PROCESSOR,
        on_stored: OnStored | None = None,
    ) -> None:
        self.sink = sink
        self.enrich = enrich
        self.on_stored = on_stored
        self.codec = codec or AvroCodec()
        self.processor = processor
        self._publish = publish_dead_letters
        self._backoff = backoff or sink.backoff
        self.records = 0
        self.dead_letters = 0

    async def process(self, records: Sequence[SourceRecord]) -> BatchReport:
        """Handle one batch; returns once its rows and dead letters are durable."""
        began = time.perf_counter()
        steps: dict[str, float] = {}

        def lap(step: str, since: float) -> float:
            now = time.perf_counter()
            steps[step] = now - since
            return now

        by_coordinates = {(r.topic, r.partition, r.offset): r for r in records}
        decoded = decode_batch(records, self.codec, self.processor)
        letters = decoded.dead_letters
        items = decoded.items
        mark = lap("decode", began)
        if items and self.enrich is not identity:
            items, failed = await self._enrich(items, by_coordinates)
            letters += failed
            mark = lap("enrich", mark)
        result = await self.sink.write(items)
        mark = lap("sink", mark)
        if self.on_stored is not None:
            refused = {(r.item.topic, r.item.partition, r.item.offset) for r in result.rejected}
            stored = [i for i in items if (i.topic, i.partition, i.offset) not in refused]
            if stored:
                await self.on_stored(stored)
            mark = lap("on_stored", mark)
        for rejected in result.rejected:
            item = rejected.item
            source = by_coordinates[(item.topic, item.partition, item.offset)]
            letters.append(
                letter(source, rejected.reason, rejected.error_type, self.processor, item)
            )
        if letters:
            await self._publish_with_retry([self.codec.encode("dead_letter", d) for d in letters])
            logger.warning("%d of %d records sent to dead letters", len(letters), len(records))
        self.records += len(records)
        self.dead_letters += len(letters)
        return BatchReport(
            records=len(records),
            stored=result.rows,
            dead_letters=len(letters),
            sink_retries=result.retries,
            seconds=time.perf_counter() - began,
            steps=steps,
        )

    async def _enrich(
        self, items: list[SinkItem], sources: dict[tuple[str, int, int], SourceRecord]
    ) -> tuple[list[SinkItem], list[dict[str, object]]]:
        """Run the hook on a thread; on failure bisect down to the items that fail alone."""
        try:
            enriched = await asyncio.to_thread(self.enrich, list(items))
            _check_same_items(items, enriched)
            return enriched, []
        except Exception as exc:
            if len(items) == 1:
                item = items[0]
                logger.warning(
                    "enrich hook failed on %s[%d]@%d: %s",
                    item.topic,
                    item.partition,
                    item.offset,
                    type(exc).__name__,
                )
                source = sources[(item.topic, item.partition, item.offset)]
                letter_record = letter(
                    source, f"enrich hook failed: {exc}", type(exc).__name__, self.processor, item
                )
                return [], [letter_record]
        half = len(items) // 2
        left, left_dead = await self._enrich(items[:half], sources)
        right, right_dead = await self._enrich(items[half:], sources)
        return left + right, left_dead + right_dead

    async def _publish_with_retry(self, values: list[bytes]) -> None:
        delays = self._backoff.delays()
        while True:
            try:
                await self._publish(values)
                return
            except Exception as exc:  # the producer's errors vary by client and cause
                logger.warning(
                    "publishing %d dead letters failed, retrying: %s: %s",
                    len(values),
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(next(delays))


def _check_same_items(before: Sequence[SinkItem], after: Sequence[SinkItem]) -> None:
    def coordinates(items: Sequence[SinkItem]) -> list[tuple[str, int, int]]:
        return sorted((i.topic, i.partition, i.offset) for i in items)

    if coordinates(before) != coordinates(after):
        raise ProcessorError(
            f"the enrich hook must return the {len(before)} items it was given (scores "
            f"added), got {len(after)} with different coordinates"
        )


def add(
    runtime: Runtime,
    enricher: Callable[[ContextLookup], Enrich] | None,
    partitions: int,
    scored_partitions: int | None = None,
) -> None:
    """Wire the ingest role: the event topic's batches through :class:`Ingest` (scored when
    ``enricher`` is given), scored events published, open traces' contexts kept in a table
    co-partitioned with the event topic (``partitions``) and expired on a timer.

    A scored event goes to the partition of the scored topic (``scored_partitions``; default:
    as many as the event topic) that its event's partition maps to (``partition %
    scored_partitions``), with its event's coordinates in the ``undertow-origin`` header. So
    each scored partition holds every event of its event partitions in offset order, and a
    scored event published again by a replay carries the same origin: the drift and policy
    roles, which fold each origin partition's records in order, count it once (a scored
    event partitioned by its key instead could overtake an earlier event of the same origin
    partition on another scored partition).
    """
    settings = runtime.settings
    sink = warehouse_sink(settings)
    codec = AvroCodec()
    table = runtime.table("traces", partitions, "open traces: scoring context by trace_id")
    store = ContextStore(
        table.data, table.send, idle_s=settings.trace_idle_s, max_age_s=settings.trace_max_age_s
    )

    async def publish_dead_letters(values: Sequence[bytes]) -> None:
        await runtime.send(settings.deadletter_topic, [(None, value) for value in values])

    spread = scored_partitions or partitions

    async def on_stored(items: list[SinkItem]) -> None:
        if settings.publish_scored:
            scored = [(item, item.scores) for item in items if isinstance(item.scores, Scored)]
            messages = [
                (
                    str(item.record["trace_id"]).encode(),
                    codec.encode("scored_event", scored_record(item.record, scores)),
                )
                for item, scores in scored
            ]
            await runtime.publish(
                settings.scored_topic,
                messages,
                "scored events",
                headers=[
                    origin_header(SourceRecord(i.topic, i.partition, i.offset, None, None))
                    for i, _ in scored
                ],
                partitions=[item.partition % spread for item, _ in scored],
            )
        store.apply(items)

    ingest = Ingest(
        sink,
        publish_dead_letters,
        enrich=enricher(store.context) if enricher is not None else identity,
        backoff=runtime.backoff,
        on_stored=on_stored,
    )

    async def handle(batch: Batch) -> None:
        if batch.records:
            report = await ingest.process(batch.records)
            logger.debug(
                "batch of %d: %d stored, %d dead letters, %.3f s (%s)",
                report.records,
                report.stored,
                report.dead_letters,
                report.seconds,
                ", ".join(f"{step} {s:.3f}" for step, s in report.steps.items()),
            )
        await batch.acknowledge()

    runtime.consume((settings.events_topic,), "undertow.streams.ingest", handle)

    async def expire_contexts() -> None:
        owned = runtime.owned(settings.events_topic)
        if owned:
            store.expire(owned=owned.__contains__)

    runtime.timer(settings.trace_scan_interval_s, "undertow.streams.traces", expire_contexts)
