"""The drift processor: scored events per segment into the drift monitor, drift events out.

The worker's ``drift`` role runs two stages (wired by :func:`add`):

1. **rekey**: scored events (``undertow.scored.v1``, keyed by trace_id) are forwarded unchanged
   to the repartition topic ``<group>-segments-repartition``, keyed by their segment key
   (:func:`segment_record_key`), so every event of a segment reaches one worker, in order;
2. **detect** (:class:`DriftProcessor`): each micro-batch of the repartition topic goes through
   the :class:`~undertow.streams.drift.DriftMonitor`; the drift events it completes are stored
   in the ``drift`` table and published to ``undertow.drift.v1`` (key: segment).

Per segment, the monitor's state (detectors, windows, pending detections) is checkpointed to
a Faust table keyed by segment (:mod:`undertow.streams.state.checkpoint`), so a restarted worker
resumes every segment where it stopped and, replaying the records since its last commit,
makes the decisions it would have made without the stop; drift events it emits twice carry
the same ids.

Baselines come from a :class:`~undertow.services.warehouse.baselines.BaselineStore` (``undertow
baseline build``), read before the first record (a starting worker waits for the warehouse,
:func:`first_snapshot`); :meth:`DriftProcessor.use_baselines` swaps them in while running. A
segment whose baseline version changed starts afresh; events of segments without a baseline
are counted and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from undertow.backoff import Backoff
from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.rows import DRIFT_COLUMNS, DRIFT_TRACE_DETECTOR, drift_row
from undertow.streams.drift import Baseline, DriftError, DriftMonitor, MonitorConfig
from undertow.streams.drift.segment import segment_key, segment_of
from undertow.streams.records import SourceRecord, letter
from undertow.streams.roles import rekey
from undertow.streams.sinks.warehouse import digest, warehouse_sink
from undertow.streams.state.checkpoint import CheckpointError, KeyedStates

if TYPE_CHECKING:
    from undertow.streams.runtime.worker import Runtime
    from undertow.streams.settings import WorkerSettings

logger = logging.getLogger(__name__)

PROCESSOR = "drift"
# Every this many events of a stream, a trace row of its recent mean detector input.
TRACE_EVERY = 25
TRACE_DETECTOR = DRIFT_TRACE_DETECTOR
TRACE_NAMESPACE = uuid.UUID("0c9a4f3e-6b1d-4e27-9a55-2f7e8d3c1b44")


def segment_record_key(record: Mapping[str, Any], config: MonitorConfig) -> str:
    """The repartition key of a scored event: its segment key under ``config``."""
    return segment_key(segment_of(record, config.segment_fields))


@dataclass
class DriftOutput:
    """What one micro-batch came to."""

    drift_events: list[dict[str, Any]] = field(default_factory=list)
    # Rows of the drift table only (never on the topic): each stream's recent mean, traced.
    trace: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, object]] = field(default_factory=list)
    events: int = 0  # scored events fed to the monitor
    replayed: int = 0  # records already folded into a checkpoint, skipped


class DriftProcessor:
    """Feeds repartitioned scored events to a :class:`DriftMonitor`, one state per segment.

    ``states`` holds the checkpoints (see :mod:`undertow.streams.state.checkpoint`); ``generation``
    arguments are the Kafka consumer generation the records were fetched in.
    """

    def __init__(
        self,
        baselines: Mapping[str, Baseline],
        states: KeyedStates,
        config: MonitorConfig | None = None,
        codec: AvroCodec | None = None,
        trace_every: int = TRACE_EVERY,
    ) -> None:
        self.config = config or MonitorConfig()
        self.states = states
        self.codec = codec or AvroCodec()
        self.monitor = DriftMonitor(baselines, self.config)
        self.trace_every = trace_every
        self._traced: dict[tuple[str, str], int] = {}

    @property
    def baseline_versions(self) -> dict[str, str]:
        return {k: b.version for k, b in sorted(self.monitor.baselines.items())}

    def process(self, records: Sequence[SourceRecord], generation: int) -> DriftOutput:
        """Fold a micro-batch (records of the repartition topic, in offset order per
        partition) into the monitor; the drift events it completed and the dead letters."""
        out = DriftOutput()
        batch: list[dict[str, Any]] = []
        for rec in records:
            if rec.key is None:
                out.dead_letters.append(
                    letter(rec, "repartitioned record without a segment key", "KeyError", PROCESSOR)
                )
                continue
            key = rec.key.decode("utf-8", "replace")
            self._ensure(key, rec.partition, generation)
            origin, origin_offset = rec.source
            if not self.states.fresh(key, origin, origin_offset):
                out.replayed += 1
                continue
            try:
                if rec.value is None:
                    raise DecodeError("empty value (tombstone): expected a scored_event record")
                record = self.codec.decode(rec.value, "scored_event").record
            except DecodeError as exc:
                out.dead_letters.append(letter(rec, str(exc), type(exc).__name__, PROCESSOR))
                continue
            if segment_record_key(record, self.config) != key:
                reason = f"segment key {key!r} does not match the record's segment"
                out.dead_letters.append(letter(rec, reason, "ValueError", PROCESSOR))
                continue
            # Folded as accepted, so a repeat later in the same batch is skipped too; the
            # mark is only written with the state, after the batch (under the stage's lock).
            self.states.folded(key, origin, origin_offset)
            batch.append(record)
        if batch:
            out.drift_events = self.monitor.update_many(batch)
            out.events = len(batch)
            latest = {segment_record_key(r, self.config): r for r in batch}
            out.trace = self.trace(latest)
        return out

    def trace(self, latest: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """A ``window_mean`` row per stream of the segments in ``latest`` (segment key to the
        batch's last event there) whose stream index passed a multiple of ``trace_every``:
        the mean of the detector's input over the last ``trace_every`` events, so the
        statistic can be drawn over time between detections. Ids derive from the segment,
        stream, baseline and index: a replay writes the same rows again."""
        rows: list[dict[str, Any]] = []
        for key, event in latest.items():
            segment = self.monitor.segments.get(key)
            if segment is None:
                continue
            baseline = segment.baseline
            for name, stream in sorted(segment.streams.items()):
                end = stream.window.end
                mark = end // self.trace_every
                if mark <= self._traced.get((key, name), 0):
                    continue
                self._traced[(key, name)] = mark
                n = min(self.trace_every, len(stream.window))
                ident = f"trace|{baseline.version}|{key}|{name}|{end}"
                rows.append(
                    {
                        "event_id": str(uuid.uuid5(TRACE_NAMESPACE, ident)),
                        "event_time": event.get("event_time"),
                        "app": baseline.segment.get("app") or str(event.get("app") or ""),
                        "environment": str(event.get("environment") or "production"),
                        "segment": key,
                        "segment_fields": dict(baseline.segment),
                        "stream": name,
                        "detector": TRACE_DETECTOR,
                        "statistic": float(np.mean(stream.window.values(n))),
                        "threshold": 0.0,
                        "detected": False,
                        "window_reference": 0,
                        "window_current": n,
                        "baseline_version": baseline.version,
                        "example_event_ids": [],
                        "nearest_topics": [],
                    }
                )
        return rows

    def _ensure(self, key: str, partition: int, generation: int) -> None:
        """Have the in-memory state of ``key`` be the one valid in ``generation``."""
        if self.states.current(key, generation):
            return
        try:
            saved = self.states.load(key, partition, generation)
        except CheckpointError as exc:
            logger.error("segment %s: checkpoint unreadable, starting afresh: %s", key, exc)
            saved = None
        self.monitor.segments.pop(key, None)
        if saved is None:
            return
        try:
            if not self.monitor.restore_segment(key, saved.state):
                logger.warning("segment %s: baseline changed since its checkpoint; afresh", key)
                self.states.touch(key)
            else:
                logger.info(
                    "segment %s: resumed from its checkpoint (%d events; origin offsets %s)",
                    key,
                    self.monitor.segments[key].events,
                    saved.origins,
                )
        except DriftError as exc:  # another MonitorConfig: the checkpoint cannot continue
            logger.error("segment %s: checkpoint not restorable, starting afresh: %s", key, exc)
            self.monitor.segments.pop(key, None)
            self.states.touch(key)

    def state_of(self, key: str) -> dict[str, Any] | None:
        """The state to checkpoint for ``key`` (None: a segment without a baseline)."""
        monitor = self.monitor.segments.get(key)
        return None if monitor is None else monitor.to_state()

    def use_baselines(self, baselines: Mapping[str, Baseline], generation: int) -> list[str]:
        """Swap the baselines in; segments whose baseline version changed start afresh.
        Returns the segments whose baseline was added, changed or removed."""
        old = self.monitor
        changed = sorted(
            k
            for k in set(old.baselines) | set(baselines)
            if (old.baselines[k].version if k in old.baselines else None)
            != (baselines[k].version if k in baselines else None)
        )
        monitor = DriftMonitor(baselines, self.config)
        for key, segment in old.segments.items():
            if monitor.restore_segment(key, segment.to_state()) is False and self.states.current(
                key, generation
            ):
                self.states.touch(key)
        monitor.unbaselined = dict(old.unbaselined)
        self.monitor = monitor
        return changed

    def forget(self, generation: int) -> None:
        """Drop the in-memory state of segments not loaded in ``generation`` (their
        partitions moved away; they load again from the table if they come back)."""
        for key in self.states.forget(lambda k: not self.states.current(k, generation)):
            self.monitor.segments.pop(key, None)


class BaselineSource(Protocol):
    """Where the drift role gets its baselines:
    :class:`undertow.services.warehouse.baselines.BaselineStore` (the warehouse's
    ``baselines`` table) or anything with the same two methods."""

    def revision(self) -> str:
        """A token that changes whenever :meth:`snapshot` would return other baselines."""
        ...

    def snapshot(self) -> tuple[str, Mapping[str, Baseline]]:
        """The revision and the active baseline of each segment (by segment key) at once."""
        ...


def warehouse_baselines(settings: WorkerSettings) -> BaselineSource:
    """The ``baselines`` table of the settings' warehouse."""
    from undertow.services.warehouse.baselines import BaselineStore
    from undertow.services.warehouse.client import connect

    client = connect(
        str(settings.clickhouse_url),
        settings.clickhouse_database,
        settings.clickhouse_user,
        settings.clickhouse_password.get_secret_value(),
    )
    return BaselineStore(client)


def first_snapshot(
    open_source: Callable[[], BaselineSource],
    backoff: Backoff,
    patience_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[BaselineSource, str, Mapping[str, Baseline]]:
    """The source ``open_source`` gives and its first snapshot, tried again with ``backoff``
    while the warehouse does not answer (:class:`WarehouseError`) for up to ``patience_s``;
    then that error is raised. Other errors (a baseline active but gone) are raised at once.

    A drift worker restarted while the warehouse is away so waits for it instead of stopping,
    and never reads records before it has the baselines to judge them by.
    """
    deadline = clock() + patience_s
    delays = backoff.delays()
    source: BaselineSource | None = None
    while True:
        try:
            if source is None:
                source = open_source()
            revision, baselines = source.snapshot()
            return source, revision, baselines
        except WarehouseError as exc:
            wait = next(delays)
            if clock() + wait > deadline:
                raise
            logger.warning("drift: no baselines yet, the warehouse did not answer: %s", exc)
            sleep(wait)


def add(runtime: Runtime, partitions: int, baselines: BaselineSource | None = None) -> None:
    """Wire the drift role: rekey scored events by segment, run :class:`DriftProcessor` on
    the repartition topic (``partitions``) with checkpointed state, store and publish drift
    events, and poll the baselines for changes."""
    settings = runtime.settings
    source, revision, initial = first_snapshot(
        (lambda: baselines) if baselines is not None else lambda: warehouse_baselines(settings),
        Backoff(settings.retry_backoff_min_s, settings.retry_backoff_max_s),
        settings.baseline_wait_s,
    )
    config = MonitorConfig(window=settings.drift_window)
    stage = runtime.keyed("drift", partitions, "drift monitor state by segment")
    codec = AvroCodec()
    processor = DriftProcessor(initial, stage.states, config, codec)
    logger.info(
        "drift: %d baselines %s", len(processor.baseline_versions), processor.baseline_versions
    )
    sink = warehouse_sink(settings)
    rekey.add(
        runtime,
        (settings.scored_topic,),
        ("scored_event",),
        lambda r: segment_record_key(r, config),
    )

    async def emit(output: DriftOutput) -> None:
        events = output.drift_events
        # The trace rows go to the table only, in the same insert: they are for plots, not
        # for the policy.
        rows = [*events, *output.trace]
        if rows:
            token = digest("drift:" + ",".join(str(e["event_id"]) for e in rows))
            await sink.insert_rows("drift", DRIFT_COLUMNS, [drift_row(e) for e in rows], token)
        if events:
            messages = [
                (str(e["segment"]).encode(), codec.encode("drift_event", e)) for e in events
            ]
            await runtime.publish(settings.drift_topic, messages, "drift events")
            detected = sum(bool(e["detected"]) for e in events)
            logger.info("%d drift events (%d detections)", len(events), detected)
        letters = [(None, codec.encode("dead_letter", d)) for d in output.dead_letters]
        await runtime.publish(settings.deadletter_topic, letters, "dead letters")

    stage.run(processor.process, emit, processor.state_of, processor.forget)

    async def poll_baselines() -> None:
        nonlocal revision
        now = await asyncio.to_thread(source.revision)
        if now == revision:
            return
        now, current = await asyncio.to_thread(source.snapshot)
        async with stage.lock:
            changed = processor.use_baselines(current, stage.generation)
        revision = now
        logger.info("drift: baselines changed for %s", ", ".join(changed) or "no segment")

    runtime.timer(settings.baseline_poll_s, "undertow.streams.drift.baselines", poll_baselines)


__all__ = [
    "PROCESSOR",
    "BaselineSource",
    "DriftOutput",
    "DriftProcessor",
    "add",
    "first_snapshot",
    "segment_record_key",
    "warehouse_baselines",
]
