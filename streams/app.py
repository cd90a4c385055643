"""The Faust application of the stream worker, built in one function from one settings object.

:func:`build_app` wires the processor of ``settings.role`` (ingest, drift, policy, judge) to Kafka:
the app id is the consumer group (one group per role), keys and values are raw bytes (the
Avro codec does the decoding, so a bad record is a dead letter, not a crashed agent), the web
server is off unless a port is given (and then bound to loopback), and Faust creates no topics
(``undertow infra up`` does, from ``infra/topics.yaml``).

Offsets and acknowledgements
----------------------------
Faust commits, every ``commit_interval_s``, the highest offset below which every record of a
partition was *acknowledged*. ``Stream.take_events`` acknowledges a batch when the agent asks
for the next one, and also from a ``finally`` block when the agent raises or is cancelled
(shutdown, crash), i.e. also for a batch that never reached the warehouse. So the agent holds
one extra reference on each record's message (``Message.incref``) for as long as it works on
the batch, and drops it (``Stream.ack``) only after :meth:`Ingest.process` returned, which it
does only once the rows are in ClickHouse and the dead letters in Kafka. A batch abandoned for
any reason keeps a reference, is never acknowledged, and so is never committed: the next
owner of the partition reads it again, and the sink's deduplication makes the replay harmless.

While the warehouse is away the agent simply blocks in the sink's retry loop. Heartbeats
continue (aiokafka sends them from its own task and the inserts run on a thread), so the group
keeps the worker; Faust's buffers fill and fetching pauses. Past ``max_poll_interval_s``
(default 1000 s) without a poll the group would drop the worker; it rejoins by itself once the
write succeeds, and anything not committed is read again.

``stream_wait_empty`` is off: on shutdown and on partition revocation Faust would otherwise
wait until every record handed to the agent is acknowledged, which during an outage means
until the warehouse returns (SIGTERM would hang). Off, Faust commits what is acknowledged (only
written batches), drops its buffers and moves on; the batch in hand stays unacknowledged and
the partition's next owner reads it again. Faust commits only offsets of partitions still
assigned, and a batch finished after its partition moved is a duplicate the sink absorbs.

Scoring and open traces
-----------------------
With ``settings.enrich`` on, each batch is scored on a worker thread by an
:class:`~undertow.streams.enrich.Enricher` built from the settings' scorer names (models load
once, before the worker joins its group). After the sink stored a batch, the agent publishes
its ``ScoredEvent`` records to ``undertow.scored.v1`` (waiting for the broker's acks) and folds
the events into the open-traces table (a Faust table, in memory, backed by the compacted topic
``<group>-traces-changelog``, which :func:`ensure_worker_topics` creates with the event
topic's partition count). A timer writes finished traces to ``traces`` and deletes them
(:mod:`undertow.streams.trace_store`). Standby replicas are off: the timer runs on every
worker and must only see the traces of partitions that worker owns.

Example (``undertow worker`` does this)::

    settings = WorkerSettings(bootstrap_servers="127.0.0.1:9092",
                              clickhouse_url="http://127.0.0.1:8123")
    ensure_worker_topics(settings)
    app = build_app(settings, enricher=default_enricher(settings))
    run_worker(app)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from undertow.errors import ConfigError
from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.services.warehouse.rows import (
    ACTION_COLUMNS,
    ALERT_COLUMNS,
    DRIFT_COLUMNS,
    action_row,
    alert_row,
    drift_row,
)
from undertow.streams.checkpoint import KeyedStates
from undertow.streams.drift import Baseline, MonitorConfig
from undertow.streams.drift_processor import DriftProcessor, segment_record_key
from undertow.streams.enrich import ContextLookup, Enricher
from undertow.streams.ingest import Enrich, Ingest, SourceRecord, identity, letter
from undertow.streams.policy_processor import PolicyProcessor, app_record_key
from undertow.streams.scored import Scored, scored_record
from undertow.streams.seeks import fence_seeks
from undertow.streams.settings import WorkerSettings
from undertow.streams.sink import Backoff, EventSink, SinkItem, warehouse_connector
from undertow.streams.trace_store import TraceStore
from undertow.streams.traces import STORED_TRACE_COLUMNS, readiness, stored_row

logger = logging.getLogger(__name__)


@dataclass
class WorkerHealth:
    """Set when a processor failed in a way it cannot handle, so the worker exits non-zero."""

    failure: BaseException | None = None


EnricherFactory = Callable[[ContextLookup], Enrich]


class BaselineSource(Protocol):
    """Where the drift role gets its baselines: ``undertow.streams.drift.store.BaselineStore``
    (the warehouse's ``baselines`` table) or anything with the same two methods."""

    def revision(self) -> str:
        """A token that changes whenever :meth:`snapshot` would return other baselines."""
        ...

    def snapshot(self) -> tuple[str, Mapping[str, Baseline]]:
        """The revision and the active baseline of each segment (by segment key) at once."""
        ...


def build_app(
    settings: WorkerSettings,
    *,
    enricher: EnricherFactory | None = None,
    health: WorkerHealth | None = None,
    partitions: int | None = None,
    baselines: BaselineSource | None = None,
) -> Any:
    """The Faust app (``faust.App``) running the ``settings.role`` processor.

    ``enricher`` builds the scoring hook given the open traces' context lookup (see
    :func:`default_enricher`); it is used when ``settings.enrich`` is on, and without one
    events are stored unscored. ``health`` records a fatal failure. ``partitions`` is the
    partition count of the role's keyed input (ingest: the event topic, with which the
    open-traces table is co-partitioned; drift and policy: their repartition topic, with which
    their state table is); None asks the broker. ``baselines``: where the drift role reads its
    baselines (default: the warehouse's ``baselines`` table).
    """
    import faust

    if not settings.bootstrap_servers or not settings.clickhouse_url:
        raise ConfigError(
            "the worker needs bootstrap_servers and clickhouse_url "
            f"(got {settings.bootstrap_servers!r} and {settings.clickhouse_url!r})"
        )
    group = settings.consumer_group
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        group,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        env={},  # the entrypoint read the environment already; Faust must not
        autodiscover=False,
        datadir=str(settings.data_dir / group),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=settings.web_port is not None,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port or 6066,
        topic_allow_declare=False,
        topic_disable_leader=True,
        table_standby_replicas=0,  # see "Scoring and open traces" above
        consumer_auto_offset_reset=settings.auto_offset_reset,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        stream_wait_empty=False,  # see "Offsets and acknowledgements" above
        producer_acks=-1,
        producer_max_request_size=settings.state_max_bytes,  # drift checkpoints are large
        consumer_max_fetch_size=settings.state_max_bytes,
        processing_guarantee="at_least_once",
        worker_redirect_stdouts=False,
    )
    positions = None if settings.role == "judge" else Positions()
    fence_seeks(app)
    _refuse_stale_acks(app, positions)
    if positions is not None:
        _watch_stalls(app, positions)
    reread = settings.auto_offset_reset == "earliest"
    if settings.role == "ingest":
        assert positions is not None
        committed = _track_commits(
            app, {settings.events_topic}, reread_uncommitted=reread, positions=positions
        )
        if partitions is None:
            partitions = event_partitions(settings)
        _add_ingest(
            app,
            settings,
            enricher if settings.enrich else None,
            health,
            partitions,
            committed,
            positions,
        )
        return app
    if settings.role == "judge":
        _track_commits(app, {settings.events_topic}, reread_uncommitted=reread)
        _add_judge(app, settings, health)
        return app
    sources = _role_sources(settings)
    _track_commits(
        app,
        {*sources, settings.repartition_topic},
        reread_uncommitted=reread,
        positions=positions,
    )
    assert positions is not None
    if partitions is None:
        partitions = _partitions(settings, settings.repartition_topic)
    if settings.role == "drift":
        _add_drift(app, settings, partitions, baselines, health, positions)
    else:
        _add_policy(app, settings, partitions, health, positions)
    return app


class Rereads:
    """Records Faust skipped at a rebalance, to be read again, and the seeks that should
    bring them: a seek that is not followed by the record it sought within ``STALL_AFTER_S``
    is due again (a seek can be lost to a fetch Faust is still handing over, see
    :class:`Positions`; a lost one left a record unstored for as long as the worker ran)."""

    STALL_AFTER_S = 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._skipped: dict[Any, int] = {}
        self._sought: dict[Any, tuple[int, float]] = {}  # offset, sought at
        self._clock = clock

    def skipped(self, tp: Any, offset: int) -> None:
        self._skipped[tp] = min(self._skipped.get(tp, offset), offset)

    def acknowledged(self, tp: Any, offset: int) -> None:
        """A record of the current generation was handled: the one sought, if it is."""
        sought = self._sought.get(tp)
        if sought is not None and sought[0] == offset:
            del self._sought[tp]

    def due(self, assigned: Collection[Any]) -> dict[Any, int]:
        """The partitions to seek now (tp -> offset): those with records skipped, and those
        whose last seek brought nothing for ``STALL_AFTER_S``. Partitions no longer assigned
        are forgotten: their next owner reads from the committed offset, below the skipped."""
        now = self._clock()
        due: dict[Any, int] = {}
        for tp, (offset, at) in list(self._sought.items()):
            if tp not in assigned:
                del self._sought[tp]
            elif now - at >= self.STALL_AFTER_S:
                logger.warning(
                    "%s[%d]: offset %d not read again %.0f s after the seek; seeking again",
                    tp.topic,
                    tp.partition,
                    offset,
                    now - at,
                )
                due[tp] = offset
        pending, self._skipped = self._skipped, {}
        for tp, offset in pending.items():
            if tp in assigned:
                due[tp] = min(due.get(tp, offset), offset)
        for tp, offset in due.items():
            self._sought[tp] = (offset, now)
        return due

    def moved(self, tp: Any, offset: int) -> None:
        """The seek for ``tp`` went to ``offset`` instead (the records before are gone)."""
        if tp in self._sought:
            self._sought[tp] = (offset, self._sought[tp][1])


def _refuse_stale_acks(app: Any, positions: Positions | None = None) -> Rereads:
    """Keep Faust from acknowledging records it skipped after a rebalance, and read them again.

    A record fetched before a rebalance and reaching the stream after it belongs to the old
    consumer generation: Faust skips it, and also *acknowledges* it, so the next commit may
    move past a record that was never processed; nor does it fetch the record again. A worker
    restarted after a crash (a rebalance while it fetches) lost such records, found by
    tests/integration/test_worker.py. Here the acknowledgement of a stale-generation record is
    refused, which keeps the committed offset below it, and a timer seeks its partition back
    to the lowest skipped offset (again if that record does not come, :class:`Rereads`), so
    the record is fetched again in the current generation and stored; records re-read on the
    way are duplicates the sink absorbs.
    """
    consumer = app.consumer
    acknowledge = consumer.ack
    rereads = Rereads()

    def ack(message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        if generation is not None and generation != app.consumer_generation_id:
            rereads.skipped(message.tp, message.offset)
            return False
        rereads.acknowledged(message.tp, message.offset)
        return bool(acknowledge(message))

    consumer.ack = ack

    async def read_skipped_again() -> None:
        if app.rebalancing:
            return
        due = rereads.due(consumer.assignment())
        if not due:
            return
        earliest = await consumer.earliest_offsets(*due)
        for tp, offset in due.items():
            low = earliest.get(tp)
            if low is not None and offset < low:
                logger.warning("%s: offsets before %d are gone from the log", tp, low)
                offset = low
                rereads.moved(tp, low)
            logger.info("reading %s from offset %d again (skipped at a rebalance)", tp, offset)
            await consumer.seek(tp, offset)
            if positions is not None:
                positions.sought(tp.topic, tp.partition, offset)

    app.timer(0.5, name="undertow.streams.reread")(read_skipped_again)
    return rereads


class CommittedOffsets:
    """The offsets the broker confirmed as committed for this consumer, by partition.

    Faust records an offset as committed even when the commit failed (a commit during a
    rebalance is refused), so its own view can run ahead of the broker's; a trace written on
    that view could have its records replayed into a second part after a crash or rebalance
    (tests/integration/test_worker.py counted 4,945 spans for 4,941 events). This view moves
    only on a commit the broker accepted, and is reset from the broker's committed offsets
    after each assignment.
    """

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, int], int] = {}

    def get(self, topic: str, partition: int) -> int | None:
        return self._offsets.get((topic, partition))

    def confirm(self, offsets: Mapping[Any, int | None]) -> None:
        for tp, offset in offsets.items():
            if offset is None:
                self._offsets.pop((tp.topic, tp.partition), None)
            else:
                self._offsets[(tp.topic, tp.partition)] = int(offset)


class Positions:
    """Where each partition's next record must come from, so a stage sees records exactly in
    offset order, none skipped: the drift and policy roles, whose state is order-dependent, and
    the ingest role, whose commits cannot pass a record never handed over.

    Faust hands records over out of order around seeks: after an assignment it fetches before
    it seeks back to the committed offsets, and records it dropped as stale are read again
    (``_refuse_stale_acks``) only after newer ones went through. A stage that folded the newer
    ones first would take the older ones for repeats and lose them
    (tests/integration/test_monitor_workers.py saw a detector 26 to 570 events behind).

    Every seek the worker knows of sets the partition's position. :meth:`admit` passes the
    record at the position; after a gap it holds the rest of the partition back (the caller
    keeps those records unacknowledged, so Faust cannot commit past the gap, and seeks back
    to the position, again after ``RESEEK_AFTER_S`` while still waiting); records below the
    position are repeats of ones handed over already. Offsets of a non-transactional topic
    are contiguous, so a gap is only real where retention removed records: the caller moves
    the position to the log's start then (:func:`_seek_back`).

    A batch can end with records fetched before a seek back and go on with the ones the seek
    brought: the record at the position passes even after a gap in the same batch. (Before,
    the rest of such a batch was held back, and a restarted drift worker's first seek back
    came up empty in about half the runs of tests/integration/test_monitor_workers.py.) For a
    seek to bring the records again at all, Faust's hand-over needed help
    (:mod:`undertow.streams.seeks`). Should a partition still go silent, :meth:`stalled`
    names the partitions that owe records held back and have been silent for
    ``STALL_AFTER_S``, and those the broker has records for past the position while their
    whole topic has been silent that long (:meth:`quiet` names the ones to ask the broker
    about); a timer seeks them back again (:func:`_watch_stalls`).
    """

    RESEEK_AFTER_S = 5.0
    STALL_AFTER_S = 10.0
    CONFIRM_S = 2.0  # behind the broker at two asks this far apart, not records just arriving

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._next: dict[tuple[str, int], int] = {}
        self._waiting: dict[tuple[str, int], tuple[int, float]] = {}  # position, sought at
        self._owed: dict[tuple[str, int], int] = {}  # the highest offset held back
        self._heard: dict[tuple[str, int], float] = {}  # a record arrived, or a seek, at
        self._topic_heard: dict[str, float] = {}
        self._asked: dict[tuple[str, int], float] = {}  # the broker's end offset asked at
        self._busy: dict[str, int] = {}  # topic -> batches being handled
        self._behind: dict[tuple[str, int], tuple[int, float]] = {}  # position, first seen at
        self._clock = clock

    def sought(self, topic: str, partition: int, offset: int | None) -> None:
        """The consumer was sought to ``offset`` (None: to a place this worker cannot know)."""
        key = (topic, partition)
        self._waiting.pop(key, None)
        self._heard[key] = self._topic_heard[topic] = self._clock()
        if offset is None:
            self._next.pop(key, None)
            self._owed.pop(key, None)
        else:
            self._next[key] = offset

    @contextlib.contextmanager
    def handling(self, records: Sequence[Any]) -> Iterator[None]:
        """Around the handling of admitted ``records``: their topics are busy, not silent
        (a batch waiting out a warehouse outage takes no record for as long), and heard from
        when it ends."""
        topics = {event.message.topic for event in records}
        for topic in topics:
            self._busy[topic] = self._busy.get(topic, 0) + 1
        try:
            yield
        finally:
            now = self._clock()
            for topic in topics:
                self._busy[topic] -= 1
                self._topic_heard[topic] = now
            for event in records:
                self._heard[(event.message.topic, event.message.partition)] = now

    def _silent(self, key: tuple[str, int], now: float) -> bool:
        return (
            not self._busy.get(key[0])
            and now - self._topic_heard.get(key[0], now) >= self.STALL_AFTER_S
            and now - self._heard.get(key, now) >= self.STALL_AFTER_S
        )

    def quiet(self) -> list[tuple[str, int]]:
        """Partitions with a known position whose topic has been silent for ``STALL_AFTER_S``:
        the ones to ask the broker's end offset for, each at most once per ``STALL_AFTER_S``
        (``CONFIRM_S`` while it was behind at the last ask)."""
        now = self._clock()
        quiet = []
        for key in self._next:
            every = self.CONFIRM_S if key in self._behind else self.STALL_AFTER_S
            if self._silent(key, now) and now - self._asked.get(key, now - every) >= every:
                self._asked[key] = now
                quiet.append(key)
        return quiet

    def stalled(
        self, ends: Mapping[tuple[str, int], int] | None = None
    ) -> dict[tuple[str, int], int]:
        """Partitions to seek back: (topic, partition) -> the position. Those silent for
        ``STALL_AFTER_S`` while records held back beyond their position were never handed
        over (each named again only after another ``STALL_AFTER_S`` of silence), and those of
        ``ends`` (the broker's end offsets of :meth:`quiet` partitions) with records past
        their position at two asks ``CONFIRM_S`` apart, with no progress between (at the
        first, they may be records that just arrived)."""
        now = self._clock()
        stalled: dict[tuple[str, int], int] = {}
        for key, end in (ends or {}).items():
            position = self._next.get(key)
            if position is None or end <= position or self._busy.get(key[0]):
                self._behind.pop(key, None)
                continue
            seen = self._behind.get(key)
            if seen is None or seen[0] != position:
                self._behind[key] = (position, now)
            elif now - seen[1] >= self.CONFIRM_S:
                del self._behind[key]
                stalled[key] = position
                self._heard[key] = now
        for key, owed in list(self._owed.items()):
            position = self._next.get(key)
            if position is None or position > owed:
                del self._owed[key]
                continue
            if not self._busy.get(key[0]) and now - self._heard.get(key, now) >= self.STALL_AFTER_S:
                stalled[key] = position
                self._heard[key] = now
        return stalled

    def admit(
        self, records: Sequence[Any]
    ) -> tuple[list[Any], list[Any], list[Any], dict[Any, int]]:
        """Split a batch of Faust events into (in order, repeats, held back, to seek:
        tp -> offset)."""
        admitted: list[Any] = []
        repeats: list[Any] = []
        held_back: list[Any] = []
        seek: dict[Any, int] = {}
        gapped: set[tuple[str, int]] = set()  # a gap seen in this batch already
        now = self._clock()
        for event in records:
            msg = event.message
            key = (msg.topic, msg.partition)
            self._heard[key] = self._topic_heard[msg.topic] = now
            self._behind.pop(key, None)
            expected = self._next.get(key)
            if expected is not None and msg.offset > expected:
                held_back.append(event)
                self._owed[key] = max(self._owed.get(key, msg.offset), msg.offset)
                if key not in gapped:
                    gapped.add(key)
                    waiting = self._waiting.get(key)
                    if (
                        waiting is None
                        or waiting[0] != expected
                        or now - waiting[1] >= (self.RESEEK_AFTER_S)
                    ):
                        assert expected is not None
                        self._waiting[key] = (expected, now)
                        seek[msg.tp] = expected
                continue
            if expected is not None and msg.offset < expected:
                repeats.append(event)
                continue
            # The record at the position, even after a gap in this batch: a batch may end
            # with records fetched before a seek back and go on with the ones it brought.
            self._waiting.pop(key, None)
            seek.pop(msg.tp, None)
            self._next[key] = msg.offset + 1
            admitted.append(event)
        return admitted, repeats, held_back, seek


def _watch_stalls(app: Any, positions: Positions) -> None:
    """Seek back the assigned partitions :meth:`Positions.stalled` names, every second."""

    async def seek_stalled() -> None:
        if app.rebalancing:
            return
        assigned = {(tp.topic, tp.partition): tp for tp in app.consumer.assignment()}
        quiet = [assigned[key] for key in positions.quiet() if key in assigned]
        ends: dict[tuple[str, int], int] = {}
        if quiet:
            found = await app.consumer.highwaters(*quiet)
            ends = {(tp.topic, tp.partition): int(end) for tp, end in found.items()}
        stalled = positions.stalled(ends)
        if not stalled:
            return
        seeks = {assigned[key]: offset for key, offset in stalled.items() if key in assigned}
        for tp, offset in seeks.items():
            logger.warning(
                "%s[%d]: no record from offset %d for %.0f s although later ones exist; "
                "seeking back again",
                tp.topic,
                tp.partition,
                offset,
                Positions.STALL_AFTER_S,
            )
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s[%d]: %s", tp.topic, tp.partition, await _fetch_state(app, tp))
        await _seek_back(app, positions, seeks)

    app.timer(1.0, name="undertow.streams.stalls")(seek_stalled)


async def _fetch_state(app: Any, tp: Any) -> str:
    """Where Faust and aiokafka stand on a partition, for the log of a stall."""
    consumer = app.consumer
    try:
        position = await consumer.position(tp)
    except Exception as exc:  # a diagnostic: never in the way
        position = repr(exc)
    return (
        f"read offset {consumer._read_offset.get(tp)}, position {position}, "
        f"active {tp in (consumer._active_partitions or ())}, "
        f"buffered {tp in consumer._buffered_partitions}, "
        f"paused {tp in consumer._paused_partitions}, flow active {consumer.flow_active}"
    )


async def _seek_back(app: Any, positions: Positions, seeks: Mapping[Any, int]) -> None:
    """Seek partitions back to the positions :meth:`Positions.admit` is waiting for; where
    retention removed them, move the position to the log's start instead."""
    if not seeks:
        return
    earliest = await app.consumer.earliest_offsets(*seeks)
    for tp, offset in seeks.items():
        low = earliest.get(tp)
        if low is not None and offset < low:
            logger.warning(
                "%s[%d]: offsets %d to %d are gone from the log; going on from %d",
                tp.topic,
                tp.partition,
                offset,
                low - 1,
                low,
            )
            positions.sought(tp.topic, tp.partition, low)
            offset = low
        logger.debug("%s[%d]: a gap before the next record; seeking back to %d", *tp, offset)
        await app.consumer.seek(tp, offset)


def _track_commits(
    app: Any, topics: set[str], *, reread_uncommitted: bool, positions: Positions | None = None
) -> CommittedOffsets:
    """Wrap the consumer's commit and post-assignment seek (see :class:`CommittedOffsets`).

    With ``reread_uncommitted`` (the ``earliest`` reset policy), the seek also covers
    partitions with no committed offset. After each assignment Faust resumes fetching and
    then seeks every partition back to its committed offset, so records fetched meanwhile
    and dropped (Faust discards records of partitions it considers paused, or fetched across
    a generation change) are read again. A partition without a committed offset (a new
    group, or nothing committed yet; Kafka reports 0 the same way) is not sought at all, and
    the records fetched and dropped there were lost: tests/integration/test_worker.py found
    547 of 660 events never stored after a restart. Such partitions are sought to their
    first offset; what is read twice is a duplicate the sink absorbs.
    """
    consumer = app.consumer
    committed = CommittedOffsets()
    commit = consumer._commit
    perform_seek = consumer.perform_seek

    async def commit_confirmed(offsets: Mapping[Any, int]) -> bool:
        assigned = consumer.assignment()  # the driver commits only these
        done = bool(await commit(offsets))
        if done:
            committed.confirm({tp: o for tp, o in offsets.items() if tp in assigned})
        return done

    async def perform_seek_all() -> None:
        await perform_seek()
        faust_view = consumer._committed_offset  # set from the broker by perform_seek
        for tp in sorted(consumer.assignment()):
            if tp.topic not in topics:
                continue
            offset = faust_view.get(tp)
            committed.confirm({tp: offset or None})
            if reread_uncommitted and not offset:
                await consumer.seek(tp, 0)
                offset = 0
            if positions is not None:
                positions.sought(tp.topic, tp.partition, offset)

    consumer._commit = commit_confirmed
    consumer.perform_seek = perform_seek_all
    return committed


def event_partitions(settings: WorkerSettings) -> int:
    """The partition count of the event topic, from the broker."""
    from undertow.infra.kafka import topic_partitions

    counts = topic_partitions(str(settings.bootstrap_servers))
    if settings.events_topic not in counts:
        raise ConfigError(
            f"the topic {settings.events_topic} does not exist on {settings.bootstrap_servers}; "
            "create the topics first (undertow infra up, or infra/topics.yaml)"
        )
    return counts[settings.events_topic]


def _role_sources(settings: WorkerSettings) -> tuple[str, ...]:
    """The topics a drift or policy worker reads before repartitioning them."""
    if settings.role == "drift":
        return (settings.scored_topic,)
    return (settings.scored_topic, settings.drift_topic)


def _partitions(settings: WorkerSettings, topic: str) -> int:
    from undertow.infra.kafka import topic_partitions

    counts = topic_partitions(str(settings.bootstrap_servers))
    if topic not in counts:
        raise ConfigError(
            f"the topic {topic} does not exist on {settings.bootstrap_servers}; "
            "create the topics first (undertow infra up, or infra/topics.yaml)"
        )
    return counts[topic]


def ensure_worker_topics(settings: WorkerSettings) -> int:
    """Create the role's own topics if missing; returns the partition count of its keyed input.

    ingest: the open-traces changelog, compacted, with as many partitions as the event topic
    (Faust recovers changelog partition *n* to the owner of event partition *n*). drift and
    policy: the repartition topic, with as many partitions as the scored topic, and their
    state changelog, compacted, co-partitioned with it and taking checkpoints of up to
    ``state_max_bytes``.
    """
    from undertow.infra.kafka import TopicSpec, ensure_topics

    compacted = {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": "60000",
        "segment.ms": "3600000",
    }
    if settings.role == "judge":
        return event_partitions(settings)  # reads the event topic; no state of its own
    if settings.role == "ingest":
        partitions = event_partitions(settings)
        specs = [TopicSpec(settings.traces_changelog_topic, partitions, compacted)]
    else:
        for topic in _role_sources(settings):
            _partitions(settings, topic)  # a clear error when the pipeline's topics are missing
        partitions = _partitions(settings, settings.scored_topic)
        specs = [
            TopicSpec(
                settings.repartition_topic,
                partitions,
                {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
            ),
            TopicSpec(
                settings.state_changelog_topic,
                partitions,
                {**compacted, "max.message.bytes": str(settings.state_max_bytes)},
            ),
        ]
    ensure_topics(str(settings.bootstrap_servers), specs)
    if settings.role != "ingest":
        partitions = _partitions(settings, settings.repartition_topic)
    return partitions


def default_enricher(settings: WorkerSettings) -> EnricherFactory:
    """Builds the :class:`Enricher` the settings name: embedder, toxicity and injection
    scorers by registered name, the shipped token encodings and price table."""

    def build(contexts: ContextLookup) -> Enrich:
        import undertow.streams.scoring  # noqa: F401  (registers the implementations)
        from undertow.streams.cost import PriceTable
        from undertow.streams.scoring.base import (
            create,
            create_embedder,
            embedder_factory,
            scorer_factory,
        )
        from undertow.streams.tokens import TokenCounter

        embedder = create_embedder(
            settings.embedder,
            **_supported(
                embedder_factory(settings.embedder),
                model_name_or_path=settings.embedding_model,
                device=settings.device,
                batch_size=settings.embedding_batch_size,
            ),
        )

        def scorer(name: str | None, **options: Any) -> Any:
            return create(name, **_supported(scorer_factory(name), **options)) if name else None

        toxicity = scorer(
            settings.toxicity,
            model_path=settings.toxicity_model_path,
            checkpoint=settings.toxicity_checkpoint,
            device=settings.device,
        )
        injection = scorer(
            settings.injection, artifact=settings.injection_artifact, embedder=embedder
        )
        return Enricher(
            embedder,
            toxicity=toxicity,
            injection=injection,
            counter=TokenCounter(),
            prices=PriceTable.load(settings.price_table),
            contexts=contexts,
            max_documents=settings.max_context_documents,
        )

    return build


def _supported(factory: Callable[..., Any] | None, **options: Any) -> dict[str, Any]:
    """The options (not None) that ``factory`` takes by name."""
    if factory is None:
        return {}
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {
        name: value
        for name, value in options.items()
        if value is not None and (takes_any or name in params)
    }


def _add_ingest(
    app: Any,
    settings: WorkerSettings,
    enricher: EnricherFactory | None,
    health: WorkerHealth | None,
    partitions: int,
    committed: CommittedOffsets,
    positions: Positions,
) -> None:
    sink, backoff = _sink(settings)
    codec = AvroCodec()
    deadletter_topic = settings.deadletter_topic
    scored_topic = settings.scored_topic
    table = app.Table(
        "traces",
        partitions=partitions,
        # no key/value types: keys and values go through Faust's json codec as they are
        help="open traces: state and scoring context by trace_id",
    )

    def send_changelog(partition: int, key: str, value: Any) -> None:
        if value is None:
            table.send_changelog(partition, key, None, value_serializer="raw")
        else:
            table.send_changelog(partition, key, value)

    store = TraceStore(
        table.data,
        send_changelog,
        idle_s=settings.trace_idle_s,
        max_age_s=settings.trace_max_age_s,
    )

    def send_all(topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> Any:
        return _send_all(app, topic, messages)

    async def publish_dead_letters(values: Sequence[bytes]) -> None:
        await send_all(deadletter_topic, [(None, value) for value in values])

    async def on_stored(items: list[SinkItem]) -> None:
        if settings.publish_scored:
            messages = [
                (
                    str(item.record["trace_id"]).encode(),
                    codec.encode("scored_event", scored_record(item.record, item.scores)),
                )
                for item in items
                if isinstance(item.scores, Scored)
            ]
            if messages:
                await _retry(lambda: send_all(scored_topic, messages), backoff, "scored events")
        store.apply(items, committed_offset)

    ingest = Ingest(
        sink,
        publish_dead_letters,
        enrich=enricher(store.context) if enricher is not None else identity,
        backoff=backoff,
        on_stored=on_stored,
    )
    source = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")

    async def ingest_events(stream: Any) -> None:
        batches = stream.take_events(settings.batch_size, within=settings.batch_window_s)
        async for batch in batches:
            # Each partition's records in offset order, none skipped (see Positions): a
            # record Faust never hands over would be lost until the next restart, behind a
            # commit that cannot pass it (tests/integration/test_worker.py saw 716 of 4,941
            # events never stored after a SIGKILL and restart).
            events, repeats, held_back, seeks = positions.admit(batch)
            for event in held_back:  # never acknowledged: read again after the seek back
                event.message.incref()
            await _seek_back(app, positions, seeks)
            for event in repeats:  # stored already: batches are durable before the next
                await stream.ack(event)
            if not events:
                continue
            with positions.handling(events):  # busy, not silent, while it stores
                # Hold each record until its batch is durable; see the module docstring.
                for event in events:
                    event.message.incref()
                records = _records(events)
                try:
                    report = await ingest.process(records)
                except Exception as exc:  # a bug, not data or an outage: stop, replay on restart
                    logger.critical(
                        "the ingest processor failed; stopping the worker", exc_info=True
                    )
                    if health is not None:
                        health.failure = exc
                    signal.raise_signal(signal.SIGTERM)
                    await asyncio.Event().wait()  # parked, unacknowledged, until cancelled
                    return
                for event in events:
                    await stream.ack(event)
                logger.debug(
                    "batch of %d: %d stored, %d dead letters, %.3f s (%s)",
                    report.records,
                    report.stored,
                    report.dead_letters,
                    report.seconds,
                    ", ".join(f"{step} {s:.3f}" for step, s in report.steps.items()),
                )

    app.agent(source, name=f"undertow.streams.{settings.role}")(ingest_events)

    async def write_finished_traces() -> None:
        try:
            await _write_finished_traces()
        except asyncio.CancelledError:
            raise
        except Exception:  # a timer that raises crashes the app; the next tick tries again
            logger.error("writing finished traces failed; retrying on the next tick", exc_info=True)

    def committed_offset(partition: int) -> int | None:
        return committed.get(settings.events_topic, partition)

    async def _write_finished_traces() -> None:
        if app.rebalancing or app.should_stop:
            return  # the table may be half recovered; the assignment is changing
        owned = {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == settings.events_topic
        }
        if not owned:
            return
        now = time.time()
        entries = store.ready(now, owned.__contains__, committed_offset)
        if not entries:
            return
        rows = [
            stored_row(
                e.state,
                readiness(e.state, now, idle_s=store.idle_s, max_age_s=store.max_age_s)
                or "expired",
            )
            for e in entries
        ]
        token = "traces:" + ",".join(f"{e.state.trace_id}/{e.state.span_count}" for e in entries)
        await sink.insert_rows("traces", STORED_TRACE_COLUMNS, rows, _digest(token))
        if app.should_stop:
            # The producer is stopping: tombstones sent now would crash its buffer and the
            # worker would exit 1 (tests/integration/test_worker.py, SIGTERM during an
            # outage). The entries stay; whoever recovers them writes the same parts again.
            logger.debug("%d traces written; their entries stay open (stopping)", len(rows))
            return
        removed = store.remove(entries)
        logger.debug("%d traces written, %d closed, %d open", len(rows), removed, len(store))

    app.timer(settings.trace_scan_interval_s, name="undertow.streams.traces")(write_finished_traces)


def _add_judge(app: Any, settings: WorkerSettings, health: WorkerHealth | None) -> None:
    """The LLM-as-judge role: sampled completions of the event topic rated by a judge model
    into ``judge_scores`` and back onto the event topic as feedback events
    (:mod:`undertow.streams.judge_processor`). A batch is acknowledged only once its rows are
    stored and its feedback published; while the judge is away the batch waits and retries."""
    from undertow.services.warehouse.client import connect
    from undertow.services.warehouse.rows import JUDGE_SCORE_COLUMNS
    from undertow.streams.judge import JudgeClient, JudgeClientConfig, load_rubrics
    from undertow.streams.judge_processor import (
        ContextCache,
        Judge,
        JudgeConfig,
        warehouse_context,
    )

    rubrics = load_rubrics(settings.judge_rubrics_file)
    if settings.judge_rubrics:
        rubrics = rubrics.only(settings.judge_rubrics)
    sink, backoff = _sink(settings)
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
        await _publish(app, settings.events_topic, messages, backoff, "judge feedback")

    async def publish_dead_letters(messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        await _publish(app, settings.deadletter_topic, messages, backoff, "dead letters")

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
        backoff=backoff,
    )
    logger.info(
        "judge: %s at %s, rubrics %s, sample rate %s",
        settings.judge_model,
        settings.judge_base_url,
        ", ".join(f"{r.name} {r.rubric_version}" for r in rubrics),
        settings.judge_sample_rate,
    )
    source = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")

    async def judge_events(stream: Any) -> None:
        batches = stream.take_events(settings.batch_size, within=settings.batch_window_s)
        async for events in batches:
            for event in events:  # held until the batch's results are durable
                event.message.incref()
            try:
                report = await judge.process(_records(events))
            except Exception as exc:
                await _fail("judge processor", exc, health)
                return
            for event in events:
                await stream.ack(event)
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

    app.agent(source, name="undertow.streams.judge")(judge_events)


def _sink(settings: WorkerSettings) -> tuple[EventSink, Backoff]:
    backoff = Backoff(settings.retry_backoff_min_s, settings.retry_backoff_max_s)
    sink = EventSink(
        warehouse_connector(
            str(settings.clickhouse_url),
            settings.clickhouse_database,
            settings.clickhouse_user,
            settings.clickhouse_password.get_secret_value(),
            settings.clickhouse_timeout_s,
        ),
        backoff=backoff,
    )
    return sink, backoff


async def _send_all(
    app: Any,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes]],
    headers: Sequence[list[tuple[str, bytes]]] | None = None,
) -> None:
    """Produce ``(key, value)`` messages in order (with ``headers[i]`` each, if given) and
    wait until the broker has them all."""
    producer = app.producer
    pending = [
        await producer.send(topic, key, value, None, None, headers[i] if headers else None)
        for i, (key, value) in enumerate(messages)
    ]
    await asyncio.gather(*pending)


ORIGIN_HEADER = "undertow-origin"


def _origin_header(rec: SourceRecord) -> list[tuple[str, bytes]]:
    """Where a forwarded record was first read: ``topic:partition:offset`` (its origin's own
    origin when it was forwarded already)."""
    topic, partition, offset = rec.origin or (rec.topic, rec.partition, rec.offset)
    return [(ORIGIN_HEADER, f"{topic}:{partition}:{offset}".encode())]


def _origin(headers: Any) -> tuple[str, int, int] | None:
    """The origin header of a message (headers as aiokafka or Faust give them), if any."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == ORIGIN_HEADER and value:
            text = value.decode() if isinstance(value, bytes | bytearray) else str(value)
            topic, partition, offset = text.rsplit(":", 2)
            return topic, int(partition), int(offset)
    return None


async def _publish(
    app: Any,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes]],
    backoff: Backoff,
    what: str,
) -> None:
    """:func:`_send_all`, retried until the broker takes the messages."""
    if messages:
        await _retry(lambda: _send_all(app, topic, messages), backoff, what)


def _records(events: Sequence[Any]) -> list[SourceRecord]:
    return [
        SourceRecord(
            topic=event.message.topic,
            partition=event.message.partition,
            offset=event.message.offset,
            key=event.message.key,
            value=event.message.value,
            origin=_origin(event.message.headers),
        )
        for event in events
    ]


async def _fail(what: str, exc: BaseException, health: WorkerHealth | None) -> None:
    """A processor bug: stop the worker (records in hand stay unacknowledged, read again)."""
    logger.critical("the %s failed; stopping the worker", what, exc_info=exc)
    if health is not None:
        health.failure = exc
    signal.raise_signal(signal.SIGTERM)
    await asyncio.Event().wait()  # parked, unacknowledged, until cancelled


def _add_rekey(
    app: Any,
    settings: WorkerSettings,
    types: tuple[str, ...],
    key_of: Callable[[dict[str, Any]], str],
    health: WorkerHealth | None,
    positions: Positions,
) -> None:
    """Forward the role's source records unchanged to its repartition topic, keyed by
    ``key_of(record)``, each partition in offset order (``positions``), with their origin in a
    header; records of other types or undecodable go to dead letters. A batch is
    acknowledged only once the broker has all of it."""
    codec = AvroCodec()
    backoff = Backoff(settings.retry_backoff_min_s, settings.retry_backoff_max_s)
    target = settings.repartition_topic
    processor = f"{settings.role}.rekey"

    Forwarded = tuple[list[tuple[bytes | None, bytes]], list[list[tuple[str, bytes]]], list[bytes]]

    def route(records: list[SourceRecord]) -> Forwarded:
        messages: list[tuple[bytes | None, bytes]] = []
        headers: list[list[tuple[str, bytes]]] = []
        letters: list[bytes] = []
        for rec in records:
            try:
                if rec.value is None:
                    raise DecodeError(f"empty value (tombstone): expected {' or '.join(types)}")
                decoded = codec.decode(rec.value)
                if decoded.type_name not in types:
                    raise DecodeError(
                        f"record type {decoded.type_name}; expected {' or '.join(types)}"
                    )
                messages.append((key_of(decoded.record).encode(), rec.value))
                headers.append(_origin_header(rec))
            except DecodeError as exc:
                dead = letter(rec, str(exc), type(exc).__name__, processor)
                letters.append(codec.encode("dead_letter", dead))
        return messages, headers, letters

    async def rekey(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_window_s):
            events, repeats, held_back, seeks = positions.admit(batch)
            for event in held_back:  # never acknowledged: read again after the seek back
                event.message.incref()
            await _seek_back(app, positions, seeks)
            for event in repeats:  # forwarded already, since the last seek
                await stream.ack(event)
            for event in events:
                event.message.incref()
            with positions.handling(events):  # busy, not silent, while it forwards
                try:
                    messages, headers, letters = route(_records(events))
                    if messages:
                        await _retry(
                            lambda: _send_all(app, target, messages, headers),  # noqa: B023
                            backoff,
                            target,
                        )
                    if letters:
                        pairs = [(None, v) for v in letters]
                        await _publish(
                            app, settings.deadletter_topic, pairs, backoff, "dead letters"
                        )
                except Exception as exc:
                    await _fail(processor, exc, health)
                    return
            for event in events:
                await stream.ack(event)

    source = app.topic(*_role_sources(settings), key_serializer="raw", value_serializer="raw")
    app.agent(source, name=f"undertow.streams.{settings.role}.rekey")(rekey)


class _KeyedStage:
    """The Faust side of a checkpointed keyed processor (drift, policy): a state table whose
    values are checkpoints (:mod:`undertow.streams.checkpoint`), the records handed to the
    processor since the last checkpoint (acknowledged only after it), and a lock that keeps
    batches, timers and checkpoints from interleaving."""

    def __init__(
        self,
        app: Any,
        settings: WorkerSettings,
        partitions: int,
        help_text: str,
    ) -> None:
        self.app = app
        self.settings = settings
        # Keys and values are bytes encoded here (streams/checkpoint.py), so the changelog
        # topic (created by ensure_worker_topics) is given with raw serializers: Faust's
        # recovery decodes with the topic's, json by default.
        changelog = app.topic(
            settings.state_changelog_topic,
            partitions=partitions,
            key_serializer="raw",
            value_serializer="raw",
            compacting=True,
        )
        self.table = app.Table(
            settings.role, partitions=partitions, changelog_topic=changelog, help=help_text
        )
        self.table.key_serializer = "raw"
        self.table.value_serializer = "raw"
        self.states = KeyedStates(self.table.data)
        self.lock = asyncio.Lock()
        self.held: list[tuple[Any, Any]] = []
        self.last = time.monotonic()

    @property
    def generation(self) -> int:
        return int(self.app.consumer_generation_id)

    async def checkpoint(
        self, state_of: Callable[[str], dict[str, Any] | None], forget: Callable[[int], None]
    ) -> None:
        """Write the changed states (waiting for the broker), then acknowledge the records
        they hold. Call with :attr:`lock` held."""
        if self.app.rebalancing:
            return  # the assignment is changing; the next checkpoint runs in the new one
        generation = self.generation
        writes = self.states.checkpoints(generation, state_of)
        topic = self.table.changelog_topic
        pending = []
        for partition, key, value in writes:
            pending.append(
                await topic.send(
                    key=key,
                    value=value,
                    partition=partition,
                    key_serializer="raw",
                    value_serializer="raw",
                    force=True,
                )
            )
        if pending:
            await asyncio.gather(*pending)
        for _, key, value in writes:
            self.table.data[key] = value
        self.states.written(generation)
        held, self.held = self.held, []
        for stream, event in held:
            await stream.ack(event)
        forget(generation)
        self.last = time.monotonic()
        if writes:
            logger.debug(
                "checkpoint: %d keys, %d bytes, %d records acknowledged",
                len(writes),
                sum(len(v) for _, _, v in writes),
                len(held),
            )

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.settings.checkpoint_interval_s

    def run(
        self,
        process: Callable[[list[SourceRecord], int], Any],
        emit: Callable[[Any], Any],
        state_of: Callable[[str], dict[str, Any] | None],
        forget: Callable[[int], None],
        health: WorkerHealth | None,
        positions: Positions,
    ) -> None:
        """Register the agent over the repartition topic and the checkpoint timer. Records
        reach ``process`` in offset order per partition, each once per seek (``positions``)."""
        settings = self.settings

        async def stage(stream: Any) -> None:
            batches = stream.take_events(settings.batch_size, within=settings.batch_window_s)
            async for batch in batches:
                events, repeats, held_back, seeks = positions.admit(batch)
                for event in held_back:  # never acknowledged: read again after the seek back
                    event.message.incref()
                await _seek_back(self.app, positions, seeks)
                for event in events:
                    event.message.incref()
                with positions.handling(batch):  # busy, not silent, while it waits or works
                    async with self.lock:
                        # Repeats of records handed over since the last seek: acknowledged with
                        # the checkpoint that holds the first delivery.
                        for event in repeats:
                            event.message.incref()
                            self.held.append((stream, event))
                        if not events:
                            continue
                        try:
                            output = await asyncio.to_thread(
                                process, _records(events), self.generation
                            )
                            await emit(output)
                        except Exception as exc:
                            await _fail(f"{settings.role} processor", exc, health)
                            return
                        self.held.extend((stream, event) for event in events)
                        if self.due():
                            await self.checkpoint(state_of, forget)

        source = self.app.topic(
            settings.repartition_topic, key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(source, name=f"undertow.streams.{settings.role}")(stage)

        async def checkpoint_timer() -> None:
            try:
                async with self.lock:
                    if self.held or self.states.dirty(self.generation):
                        await self.checkpoint(state_of, forget)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker is away: the next tick tries again
                logger.error(
                    "checkpointing %s state failed; retrying", settings.role, exc_info=True
                )

        self.app.timer(
            settings.checkpoint_interval_s, name=f"undertow.streams.{settings.role}.checkpoint"
        )(checkpoint_timer)


def _warehouse_baselines(settings: WorkerSettings) -> BaselineSource:
    from undertow.services.warehouse.client import connect
    from undertow.streams.drift.store import BaselineStore

    client = connect(
        str(settings.clickhouse_url),
        settings.clickhouse_database,
        settings.clickhouse_user,
        settings.clickhouse_password.get_secret_value(),
    )
    return BaselineStore(client)


def _add_drift(
    app: Any,
    settings: WorkerSettings,
    partitions: int,
    baselines: BaselineSource | None,
    health: WorkerHealth | None,
    positions: Positions,
) -> None:
    source = baselines if baselines is not None else _warehouse_baselines(settings)
    revision, initial = source.snapshot()
    config = MonitorConfig(window=settings.drift_window)
    stage = _KeyedStage(app, settings, partitions, "drift monitor state by segment")
    codec = AvroCodec()
    processor = DriftProcessor(initial, stage.states, config, codec)
    logger.info(
        "drift: %d baselines %s", len(processor.baseline_versions), processor.baseline_versions
    )
    sink, backoff = _sink(settings)
    _add_rekey(
        app,
        settings,
        ("scored_event",),
        lambda r: segment_record_key(r, config),
        health,
        positions,
    )

    async def emit(output: Any) -> None:
        events = output.drift_events
        # The trace rows go to the table only, in the same insert: they are for plots, not
        # for the policy.
        rows = [*events, *output.trace]
        if rows:
            token = _digest("drift:" + ",".join(str(e["event_id"]) for e in rows))
            await sink.insert_rows("drift", DRIFT_COLUMNS, [drift_row(e) for e in rows], token)
        if events:
            messages = [
                (str(e["segment"]).encode(), codec.encode("drift_event", e)) for e in events
            ]
            await _publish(app, settings.drift_topic, messages, backoff, "drift events")
            detected = sum(bool(e["detected"]) for e in events)
            logger.info("%d drift events (%d detections)", len(events), detected)
        if output.dead_letters:
            letters = [(None, codec.encode("dead_letter", d)) for d in output.dead_letters]
            await _publish(app, settings.deadletter_topic, letters, backoff, "dead letters")

    stage.run(processor.process, emit, processor.state_of, processor.forget, health, positions)

    async def poll_baselines() -> None:
        nonlocal revision
        try:
            now = await asyncio.to_thread(source.revision)
            if now == revision:
                return
            now, current = await asyncio.to_thread(source.snapshot)
            async with stage.lock:
                changed = processor.use_baselines(current, stage.generation)
            revision = now
            logger.info("drift: baselines changed for %s", ", ".join(changed) or "no segment")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.error("reading the baselines failed; retrying", exc_info=True)

    app.timer(settings.baseline_poll_s, name="undertow.streams.drift.baselines")(poll_baselines)


def _add_policy(
    app: Any,
    settings: WorkerSettings,
    partitions: int,
    health: WorkerHealth | None,
    positions: Positions,
) -> None:
    from undertow.streams.policy import load_rules

    rules = load_rules(settings.rules_file)
    stage = _KeyedStage(app, settings, partitions, "policy engine state by app")
    codec = AvroCodec()
    processor = PolicyProcessor(rules, stage.states, codec)
    sink, backoff = _sink(settings)
    _add_rekey(app, settings, ("scored_event", "drift_event"), app_record_key, health, positions)

    async def emit(output: Any) -> None:
        alerts = output.alerts
        if alerts:
            rows = [alert_row(a) for a in alerts]
            token = _digest("alerts:" + ",".join(str(a["event_id"]) for a in alerts))
            await sink.insert_rows("alerts", ALERT_COLUMNS, rows, token)
            messages = [(str(a["dedup_key"]).encode(), codec.encode("alert", a)) for a in alerts]
            await _publish(app, settings.alerts_topic, messages, backoff, "alerts")
            for a in alerts:
                logger.info(
                    "alert %s %s %s (%s)", a["status"], a["severity"], a["rule"], a["dedup_key"]
                )
        if output.actions:
            # Requests land in the table and on the topic before the alerts' offsets commit;
            # their ids derive from the alerts', so a replay requests nothing twice.
            acts = output.actions
            token = _digest("actions:" + ",".join(str(a["event_id"]) for a in acts))
            await sink.insert_rows("actions", ACTION_COLUMNS, [action_row(a) for a in acts], token)
            messages = [(str(a["target"]).encode(), codec.encode("action", a)) for a in acts]
            await _publish(app, settings.actions_topic, messages, backoff, "actions")
            for a in acts:
                logger.info("action requested: %s %s", a["action_type"], a["target"])
        if output.dead_letters:
            letters = [(None, codec.encode("dead_letter", d)) for d in output.dead_letters]
            await _publish(app, settings.deadletter_topic, letters, backoff, "dead letters")

    stage.run(processor.process, emit, processor.state_of, processor.forget, health, positions)

    async def tick() -> None:
        try:
            if app.rebalancing:
                return
            async with stage.lock:
                output = processor.tick(stage.generation)
                await emit(output)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.error("the policy tick failed; retrying", exc_info=True)

    app.timer(settings.policy_tick_s, name="undertow.streams.policy.tick")(tick)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


async def _retry(send: Callable[[], Any], backoff: Backoff, what: str) -> None:
    delays = backoff.delays()
    while True:
        try:
            await send()
            return
        except Exception as exc:  # the producer's errors vary by client and cause
            logger.warning("publishing %s failed, retrying: %s: %s", what, type(exc).__name__, exc)
            await asyncio.sleep(next(delays))


def run_worker(app: Any, health: WorkerHealth | None = None) -> int:
    """Run ``app`` in the foreground until SIGTERM or SIGINT; returns the exit status.

    Logging stays as the caller configured it. The status is 1 when ``health`` recorded a
    processor failure.
    """
    import faust

    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    else:  # pragma: no cover - execute_from_commandline always exits
        code = 0
    if health is not None and health.failure is not None:
        return 1
    return code
