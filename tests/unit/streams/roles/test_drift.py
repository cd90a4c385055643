"""The drift processor on seeded synthetic traffic, without a broker: micro-batches decide as
one monitor run does, checkpoints resume exactly (replays and events forwarded twice skipped,
re-emitted drift events with the same ids), rebalances reload from the table, bad records
become dead letters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from undertow.backoff import Backoff
from undertow.schemas.codec import AvroCodec
from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.baselines import BaselineNotFoundError
from undertow.services.warehouse.rows import DRIFT_COLUMNS, drift_row
from undertow.streams.drift import DriftMonitor, MonitorConfig
from undertow.streams.drift.baseline import Baseline, content_version
from undertow.streams.drift.segment import segment_key, segment_of
from undertow.streams.records import SourceRecord
from undertow.streams.roles.drift import (
    PROCESSOR,
    TRACE_DETECTOR,
    TRACE_EVERY,
    DriftOutput,
    DriftProcessor,
    first_snapshot,
    segment_record_key,
)
from undertow.streams.state.checkpoint import KeyedStates, decode_checkpoint, encode_checkpoint

from ..drift.fixtures import SEGMENT, around, centres, scored_event, synthetic_baseline

TOPIC = "undertow-drift-segments-repartition"
PARTITION = 3
SCORED = "undertow.scored.v1"  # where the repartitioned events were first read
TOPICS = centres(0, 6)
USUAL, NEW = TOPICS[:4], TOPICS[4:]
# Stable traffic, a third from new topics, stable again, only new topics, stable again.
PHASES = ((USUAL, 1000), (TOPICS, 600), (USUAL, 600), (NEW, 300), (USUAL, 500))
N = sum(n for _, n in PHASES)
# A short confirmation deadline, so the stream yields unconfirmed detections as well.
CONFIG = MonitorConfig(confirm_within=200)
KEY = "app=chat/model=tiny/prompt=v1"
CODEC = AvroCodec()


def full_record(i: int, vector: Any, **fields: Any) -> dict[str, Any]:
    """A complete ``scored_event`` record (every field of the schema) of the test segment."""
    record = scored_event(i, vector)
    record.update(
        parent_span_id=None,
        user_hash=None,
        session_hash=None,
        attributes={"source": "test"},
        prompt_name="assistant",
        scorer_versions={},
        embedding_model=None if vector is None else "synthetic-24",
        input_tokens=12,
        output_tokens=None,
        cached_tokens=None,
        cost_usd=None,
        price_table_version=None,
        latency_ms=None,
    )
    record.update(fields)
    return record


def source(
    offset: int,
    value: bytes | None,
    key: str | bytes | None = KEY,
    origin: tuple[str, int, int] | None = None,
) -> SourceRecord:
    raw_key = key.encode() if isinstance(key, str) else key
    return SourceRecord(TOPIC, PARTITION, offset, raw_key, value, origin)


def origin_of(i: int) -> tuple[str, int, int]:
    """Event ``i`` of the stream was read from one of two scored partitions, alternately."""
    return (SCORED, i % 2, i // 2)


def origins_through(i: int) -> dict[str, int]:
    """The highest origin offsets of events 0..i (what a checkpoint after event i holds)."""
    return {f"{SCORED}:{j % 2}": j // 2 for j in (i - 1, i)}


def chunks(records: Sequence[SourceRecord], size: int) -> list[Sequence[SourceRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


@dataclasses.dataclass
class Run:
    drift_events: list[dict[str, Any]]
    events: int
    replayed: int
    dead_letters: int


def feed(
    processor: DriftProcessor, records: Sequence[SourceRecord], generation: int, size: int = 250
) -> Run:
    """Process ``records`` in micro-batches of ``size``; everything they came to."""
    run = Run([], 0, 0, 0)
    for batch in chunks(records, size):
        out = processor.process(batch, generation)
        assert isinstance(out, DriftOutput)
        run.drift_events += out.drift_events
        run.events += out.events
        run.replayed += out.replayed
        run.dead_letters += len(out.dead_letters)
    return run


def processor(
    baseline: Baseline, table: dict[bytes, bytes] | None = None, config: MonitorConfig = CONFIG
) -> DriftProcessor:
    states = KeyedStates({} if table is None else table)
    return DriftProcessor({baseline.segment_key: baseline}, states, config, CODEC)


def checkpoint(p: DriftProcessor, generation: int, table: dict[bytes, bytes]) -> None:
    """What the worker's checkpoint does: write the changed states, then mark them written."""
    for _, key, value in p.states.checkpoints(generation, p.state_of):
        table[key] = value
    p.states.written(generation)


def confirmed_at(events: list[dict[str, Any]]) -> list[tuple[bool, int]]:
    return [(d["detected"], int(d["attributes"]["confirmed_at"])) for d in events]


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    # k-means over 800 rows takes 0.05 s on one thread and seconds when OpenMP threads
    # contend on a busy machine (one thread also keeps its float sums in a fixed order).
    import sklearn.cluster  # noqa: F401  (loads the OpenMP runtime that the limit applies to)

    with threadpool_limits(limits=1):
        return synthetic_baseline(USUAL, rows=800, calibrate=False)


@pytest.fixture(scope="module")
def stream() -> list[SourceRecord]:
    """The shifting stream as the repartition topic holds it: offsets 0..N-1, segment key,
    each record with its origin in the scored topic."""
    rng = np.random.default_rng(7)
    vectors = np.vstack([around(rng, topics, n) for topics, n in PHASES])
    return [
        source(i, CODEC.encode("scored_event", full_record(i, v)), origin=origin_of(i))
        for i, v in enumerate(vectors)
    ]


@pytest.fixture(scope="module")
def expected(baseline: Baseline, stream: list[SourceRecord]) -> list[dict[str, Any]]:
    """The drift events of one uninterrupted monitor run over the decoded stream."""
    decoded = [CODEC.decode(r.value or b"", "scored_event").record for r in stream]
    found: list[dict[str, Any]] = DriftMonitor([baseline], CONFIG).update_many(decoded)
    return found


def test_the_stream_has_confirmed_and_unconfirmed_detections(
    expected: list[dict[str, Any]],
) -> None:
    assert confirmed_at(expected) == [(True, 1031), (False, 1884), (True, 2224), (False, 2736)]
    assert len({d["event_id"] for d in expected}) == 4
    assert all(d["segment"] == KEY for d in expected)


@pytest.mark.parametrize("size", [N, 173])
def test_micro_batches_give_the_drift_events_of_one_monitor_run(
    baseline: Baseline, stream: list[SourceRecord], expected: list[dict[str, Any]], size: int
) -> None:
    p = processor(baseline)
    run = feed(p, stream, generation=1, size=size)
    assert [(d["event_id"], d["detected"]) for d in run.drift_events] == [
        (d["event_id"], d["detected"]) for d in expected
    ]
    assert run.drift_events == expected
    assert (run.events, run.replayed, run.dead_letters) == (N, 0, 0)
    assert p.monitor.segments[KEY].events == N
    for d in run.drift_events:  # what the worker publishes must encode
        assert CODEC.decode(CODEC.encode("drift_event", d), "drift_event").record["segment"] == KEY


@pytest.mark.parametrize(
    "checkpoint_at, crash_at, replay_from",
    [
        # a detection at 1011 pends across the checkpoint and confirms at 1031
        (1020, 1999, 800),
        # one at 1651 pends across it (expires unconfirmed at 1884); 2224 before the crash
        (1700, 2299, 1000),
    ],
)
def test_a_processor_resumes_from_a_checkpoint_and_skips_the_replayed_records(
    baseline: Baseline,
    stream: list[SourceRecord],
    expected: list[dict[str, Any]],
    checkpoint_at: int,
    crash_at: int,
    replay_from: int,
) -> None:
    table: dict[bytes, bytes] = {}
    a = processor(baseline)
    before = feed(a, stream[: checkpoint_at + 1], generation=1).drift_events
    writes = a.states.checkpoints(1, a.state_of)
    assert [(p, k) for p, k, _ in writes] == [(PARTITION, KEY.encode())]
    assert decode_checkpoint(writes[0][2]).origins == origins_through(checkpoint_at)
    checkpoint(a, 1, table)
    # A carries on past the checkpoint, then dies before its next one
    after = feed(a, stream[checkpoint_at + 1 : crash_at + 1], generation=1).drift_events
    assert after, "the crash must lose drift events already emitted"

    b = processor(baseline, table)
    # the replay starts at an older committed offset than the checkpoint's
    resumed = feed(b, stream[replay_from:], generation=1, size=300)
    assert resumed.replayed == checkpoint_at + 1 - replay_from
    assert resumed.events == N - 1 - checkpoint_at
    assert before + resumed.drift_events == expected
    # events emitted after the checkpoint come again with the same ids; none from before it
    assert resumed.drift_events[: len(after)] == after
    assert not {d["event_id"] for d in before} & {d["event_id"] for d in resumed.drift_events}
    assert all(int(d["attributes"]["confirmed_at"]) > checkpoint_at for d in resumed.drift_events)
    assert b.monitor.segments[KEY].events == N


def test_a_new_generation_reloads_the_state_from_the_table(
    baseline: Baseline, stream: list[SourceRecord], expected: list[dict[str, Any]]
) -> None:
    table: dict[bytes, bytes] = {}
    p = processor(baseline, table)
    feed(p, stream[:1500], generation=1)
    checkpoint(p, 1, table)
    ahead = feed(p, stream[1500:2500], generation=1).drift_events
    assert p.process([stream[2000]], 1).replayed == 1  # generation 1's state is past it
    # a rebalance: the records since the last commit come again in generation 2
    run = feed(p, stream[1500:], generation=2)
    assert run.replayed == 0  # the in-memory state after the checkpoint was discarded
    assert run.drift_events == [d for d in expected if int(d["attributes"]["confirmed_at"]) >= 1500]
    assert run.drift_events[: len(ahead)] == ahead
    assert p.monitor.segments[KEY].events == N  # continued from the checkpoint, not afresh
    assert p.states.current(KEY, 2) and not p.states.current(KEY, 1)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(100, id="repeats-in-a-later-batch"),
        pytest.param(230, id="repeats-in-the-same-batch"),
    ],
)
def test_events_forwarded_twice_by_the_rekey_stage_are_folded_once(
    baseline: Baseline, stream: list[SourceRecord], expected: list[dict[str, Any]], size: int
) -> None:
    """The rekey stage forwarded events 1400..1499, died before its commit and forwarded
    them again: they come twice, the second time under new repartition offsets."""
    again = [dataclasses.replace(r, offset=1500 + k) for k, r in enumerate(stream[1400:1500])]
    later = [dataclasses.replace(r, offset=r.offset + 100) for r in stream[1500:]]
    p = processor(baseline)
    run = feed(p, [*stream[:1500], *again, *later], generation=1, size=size)
    assert run.replayed == 100 and run.events == N
    assert run.drift_events == expected
    assert p.monitor.segments[KEY].events == N


def test_forget_drops_the_segments_not_loaded_in_the_generation(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    p = processor(baseline)
    feed(p, stream[:50], generation=4)
    p.forget(4)
    assert KEY in p.monitor.segments and p.states.current(KEY, 4)
    p.forget(5)
    assert p.monitor.segments == {} and p.states.keys(4) == []
    run = feed(p, stream[50:60], generation=5)  # nothing in the table: afresh
    assert (run.events, run.replayed) == (10, 0)
    assert p.monitor.segments[KEY].events == 10


def test_a_checkpoint_of_another_partition_is_ignored(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    a = processor(baseline)
    feed(a, stream[:100], generation=1)
    ((_, key, value),) = a.states.checkpoints(1, a.state_of)
    saved = decode_checkpoint(value)
    table = {key: encode_checkpoint(PARTITION + 1, saved.origins, saved.state)}
    b = processor(baseline, table)
    run = feed(b, stream[:10], generation=1)
    assert (run.replayed, run.events) == (0, 10)
    assert b.monitor.segments[KEY].events == 10


def test_a_checkpoint_under_another_config_starts_the_segment_afresh(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    table: dict[bytes, bytes] = {}
    a = processor(baseline, table)
    feed(a, stream[:100], generation=1)
    checkpoint(a, 1, table)
    b = processor(baseline, table, MonitorConfig(window=400))
    run = feed(b, stream[100:110], generation=1)
    assert (run.events, run.replayed) == (10, 0)
    assert b.monitor.segments[KEY].events == 10  # afresh, not 110
    ((_, _, value),) = b.states.checkpoints(1, b.state_of)
    assert decode_checkpoint(value).state["config"] == MonitorConfig(window=400).fingerprint()


def test_a_checkpoint_against_an_older_baseline_starts_the_segment_afresh(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    table: dict[bytes, bytes] = {}
    a = processor(baseline, table)
    feed(a, stream[:100], generation=1)
    checkpoint(a, 1, table)
    newer = rebuilt(baseline)
    b = processor(newer, table)
    assert feed(b, stream[:100], generation=1).replayed == 100  # its offsets still count
    assert b.states.dirty(1)  # the discarded state is checkpointed over
    assert b.monitor.discarded == [KEY]
    run = feed(b, stream[100:120], generation=1)
    assert run.events == 20 and b.monitor.segments[KEY].events == 20
    state = b.state_of(KEY)
    assert state is not None and state["baseline_version"] == newer.version


def test_an_unreadable_checkpoint_starts_the_segment_afresh(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    p = processor(baseline, {KEY.encode(): b"not a checkpoint"})
    run = feed(p, stream[:10], generation=1)
    assert (run.events, run.replayed) == (10, 0)
    assert p.monitor.segments[KEY].events == 10


def test_bad_records_become_dead_letters_and_the_good_ones_flow_on(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    other_app = CODEC.encode("scored_event", full_record(900, USUAL[0], app="billing"))
    wrong_type = CODEC.encode("drift_event", drift_event_record())
    bad = {
        5: source(5, stream[5].value, key=None),
        6: source(6, None),  # a tombstone
        7: source(7, b"\x01\x02 not avro"),
        8: source(8, (stream[8].value or b"")[:20]),  # truncated
        9: source(9, other_app),  # the record's segment is not its key's
        10: source(10, wrong_type),
    }
    batch = [bad.get(i, r) for i, r in enumerate(stream[:20])]
    p = processor(baseline)
    out = p.process(batch, generation=1)
    assert out.events == 14 and out.replayed == 0 and out.drift_events == []
    assert p.monitor.segments[KEY].events == 14
    assert p.monitor.unbaselined == {}
    letters = {d["source_offset"]: d for d in out.dead_letters}
    assert sorted(letters) == sorted(bad)
    assert letters[5]["key"] is None and letters[7]["payload"] == b"\x01\x02 not avro"
    expected_letters = {
        5: ("KeyError", "without a segment key"),
        6: ("DecodeError", "tombstone"),
        7: ("DecodeError", "unknown framing"),
        8: ("DecodeError", "cannot read"),
        9: ("ValueError", "does not match"),
        10: ("DecodeError", "expected a scored_event record, got drift_event"),
    }
    for offset, (error_type, reason) in expected_letters.items():
        assert letters[offset]["error_type"] == error_type
        assert reason in str(letters[offset]["reason"]), letters[offset]["reason"]
    for offset, letter in letters.items():
        assert (letter["processor"], letter["source_topic"]) == (PROCESSOR, TOPIC)
        assert letter["source_partition"] == PARTITION and letter["source_offset"] == offset
        CODEC.encode("dead_letter", letter)  # publishable as it is
    origin, offset = stream[19].source
    assert not p.states.fresh(KEY, origin, offset)


def test_events_of_a_segment_without_baseline_are_counted_and_not_checkpointed(
    baseline: Baseline,
) -> None:
    fields = {"app": "chat", "model": "other", "prompt_version": "v1"}
    key = segment_key(fields)
    rng = np.random.default_rng(3)
    records = [
        source(i, CODEC.encode("scored_event", full_record(i, v, model="other")), key=key)
        for i, v in enumerate(around(rng, USUAL, 30))
    ]
    p = processor(baseline)
    run = feed(p, records, generation=1, size=7)
    assert run.drift_events == [] and run.dead_letters == 0
    assert run.events == 30
    assert p.monitor.unbaselined == {key: 30}
    assert key not in p.monitor.segments
    assert p.state_of(key) is None
    assert p.states.dirty(1)
    assert p.states.checkpoints(1, p.state_of) == []
    assert records[29].source == (f"{TOPIC}:{PARTITION}", 29)  # no origin: its own place
    assert not p.states.fresh(key, f"{TOPIC}:{PARTITION}", 29)  # folded: a replay skips them


def rebuilt(baseline: Baseline) -> Baseline:
    """The same segment's baseline under a new version (as ``undertow baseline build`` makes)."""
    changed = dataclasses.replace(baseline, source={"rebuilt": "2026-02-01"})
    return dataclasses.replace(changed, version=content_version(changed))


def test_a_new_baseline_version_restarts_its_segment(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    p = processor(baseline)
    feed(p, stream[:200], generation=1)
    p.states.written(1)
    assert p.use_baselines({KEY: baseline}, generation=1) == []  # same version: kept
    assert p.monitor.segments[KEY].events == 200 and not p.states.dirty(1)
    newer = rebuilt(baseline)
    assert newer.version != baseline.version
    assert p.use_baselines({KEY: newer}, generation=1) == [KEY]
    assert p.baseline_versions == {KEY: newer.version}
    assert KEY not in p.monitor.segments and p.states.dirty(1)
    run = feed(p, stream[200:230], generation=1)
    assert run.events == 30 and run.replayed == 0
    segment = p.monitor.segments[KEY]
    assert segment.events == 30 and segment.baseline.version == newer.version


def test_use_baselines_reports_added_and_removed_segments(
    baseline: Baseline, stream: list[SourceRecord]
) -> None:
    p = processor(baseline)
    feed(p, stream[:50], generation=1)
    other = dataclasses.replace(baseline, segment={**SEGMENT, "model": "big"})
    other_key = "app=chat/model=big/prompt=v1"
    changed = p.use_baselines({KEY: baseline, other_key: other}, generation=1)
    assert changed == [other_key]
    assert p.monitor.segments[KEY].events == 50  # untouched segment keeps its state
    assert p.use_baselines({other_key: other}, generation=1) == [KEY]
    assert p.state_of(KEY) is None
    run = feed(p, stream[50:60], generation=1)
    assert run.events == 10 and p.monitor.unbaselined == {KEY: 10}


def test_the_unbaselined_count_survives_a_baseline_swap(baseline: Baseline) -> None:
    key = "app=chat/model=other/prompt=v1"
    records = [
        source(i, CODEC.encode("scored_event", full_record(i, USUAL[0], model="other")), key=key)
        for i in range(3)
    ]
    p = processor(baseline)
    p.process(records, generation=1)
    p.use_baselines({KEY: baseline}, generation=1)
    assert p.monitor.unbaselined == {key: 3}


@pytest.mark.parametrize(
    "fields, config, key",
    [
        ({}, CONFIG, KEY),
        ({"prompt_version": None}, CONFIG, "app=chat/model=tiny/prompt="),
        ({"app": "a/b%c"}, CONFIG, "app=a%2Fb%25c/model=tiny/prompt=v1"),
        (
            {},
            MonitorConfig(segment_fields=("app", "environment")),
            "app=chat/environment=production",
        ),
    ],
)
def test_segment_record_key_is_the_segment_key_of_the_record(
    fields: dict[str, Any], config: MonitorConfig, key: str
) -> None:
    record = full_record(1, None, **fields)
    assert segment_record_key(record, config) == key
    assert segment_record_key(record, config) == segment_key(
        segment_of(record, config.segment_fields)
    )


def test_segment_record_key_reads_decoded_records_alike() -> None:
    record = full_record(2, USUAL[1])
    decoded = CODEC.decode(CODEC.encode("scored_event", record), "scored_event").record
    assert segment_record_key(decoded, CONFIG) == segment_record_key(record, CONFIG) == KEY


def drift_event_record() -> dict[str, Any]:
    """A valid drift event of the test segment: a record of the wrong type for the processor."""
    return {
        "event_id": "00000000-0000-4000-8000-00000000d001",
        "trace_id": "d" * 32,
        "span_id": "e" * 16,
        "event_time": datetime(2026, 1, 1, tzinfo=UTC),
        "app": "chat",
        "segment": KEY,
        "segment_fields": dict(SEGMENT),
        "stream": "topic_surprise.prompt",
        "detector": "adwin+novelty",
        "statistic": 1.0,
        "threshold": 0.5,
        "detected": True,
    }


def test_each_stream_is_traced_every_trace_every_events_into_the_table_only(
    baseline: Baseline, stream: list[SourceRecord], expected: list[dict[str, Any]]
) -> None:
    p = processor(baseline)
    traces: list[dict[str, Any]] = []
    for batch in chunks(stream, 100):
        out = p.process(batch, 1)
        traces += out.trace
        assert all(d["detector"] != TRACE_DETECTOR for d in out.drift_events)
    segment = p.monitor.segments[KEY]
    streams = sorted(segment.streams)
    # A batch of 100 passes at least one multiple of 25: one row per stream per batch.
    assert len(traces) == len(streams) * (N // 100)
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for row in traces:
        by_stream.setdefault(row["stream"], []).append(row)
        assert (row["detector"], row["detected"], row["segment"]) == (TRACE_DETECTOR, False, KEY)
        assert row["window_current"] == TRACE_EVERY
        assert len(drift_row(row)) == len(DRIFT_COLUMNS)  # a row of the drift table
    assert sorted(by_stream) == streams
    # The traced value is the mean of the detector's last inputs at that batch's end.
    last = by_stream[streams[0]][-1]
    window = segment.streams[streams[0]].window
    assert last["statistic"] == pytest.approx(float(np.mean(window.values(TRACE_EVERY))))
    # The same stream replayed by another processor traces the same ids: replays dedupe.
    again = processor(baseline)
    ids = [r["event_id"] for b in chunks(stream, 100) for r in again.process(b, 1).trace]
    assert ids == [r["event_id"] for r in traces]
    assert len(set(ids)) == len(ids)


class FlakySource:
    """A baseline source whose warehouse answers after ``failures`` tries."""

    def __init__(self, failures: int, baselines: dict[str, Baseline]) -> None:
        self.failures, self.baselines, self.tries = failures, baselines, 0

    def revision(self) -> str:
        return "r1"

    def snapshot(self) -> tuple[str, dict[str, Baseline]]:
        self.tries += 1
        if self.tries <= self.failures:
            raise WarehouseError("connection refused")
        return "r1", self.baselines


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_a_starting_drift_worker_waits_for_the_warehouse_to_give_its_baselines() -> None:
    baseline = synthetic_baseline(USUAL, rows=100, calibrate=False)
    source, clock = FlakySource(3, {"model=m": baseline}), FakeClock()
    got, revision, baselines = first_snapshot(
        lambda: source, Backoff(1, 4, jitter=0), 60, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert got is source and revision == "r1" and baselines == {"model=m": baseline}
    assert source.tries == 4 and clock.waits == [1, 2, 4]


def test_a_drift_worker_stops_with_the_warehouse_error_after_its_patience() -> None:
    source, clock = FlakySource(1_000, {}), FakeClock()
    with pytest.raises(WarehouseError, match="connection refused"):
        first_snapshot(
            lambda: source, Backoff(1, 4, jitter=0), 20, sleep=clock.sleep, clock=lambda: clock.now
        )
    assert (
        clock.now <= 20 and sum(clock.waits) == clock.now and source.tries == len(clock.waits) + 1
    )


def test_a_baseline_error_that_is_not_the_warehouse_being_away_stops_at_once() -> None:
    class Gone(FlakySource):
        def snapshot(self) -> tuple[str, dict[str, Baseline]]:
            raise BaselineNotFoundError("baseline 'x' version 3 was active but is gone")

    clock = FakeClock()
    with pytest.raises(BaselineNotFoundError):
        first_snapshot(lambda: Gone(0, {}), Backoff(1, 4), 60, sleep=clock.sleep)
    assert clock.waits == []
