"""Reproductions of the Faust (and aiokafka) bugs that ``undertow.streams.runtime`` works around.

Each test runs the installed faust-streaming's own code (0.15.3, with aiokafka 0.14.0, when
these were written) in-process: an app that is never started, whose broker address is never
dialled, and stand-ins only for what would talk to a broker (the aiokafka consumer, the fetch).
Each asserts the faulty behaviour as it is in those versions, so it passes today. docs/faust.md
has one section per bug: symptom, root cause, upstream report, workaround, and what removing the
workaround takes.

When a test here fails after an upgrade with an assertion error, Faust (or aiokafka) changed
the behaviour it pins: read its docstring, which names the workaround to remove with it. When
it fails with an AttributeError or TypeError instead, a private name the test reaches into has
moved: the bug has to be checked again by hand, and so does the workaround, which replaces the
same private attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from unittest import mock

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, TopicPartition
from faust.types import TP
from faust.types.tuples import ConsumerMessage

BROKER = "kafka://127.0.0.1:1"  # nothing here starts the app, so nothing dials it
TOPIC = "undertow.events.v1"
A = TP(TOPIC, 0)
B = TP(TOPIC, 1)
C = TP(TOPIC, 2)
TIMEOUT_S = 10.0  # a guard against a hang after an upgrade, never reached when the tests pass


APPS: list[Any] = []  # made by the scenario running now


def run(scenario: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(asyncio.wait_for(scenario, TIMEOUT_S))
    finally:
        while APPS:  # a consumer's thread makes an event loop of its own, here never run
            consumer = APPS.pop()._consumer
            if consumer is not None:
                consumer._thread.thread_loop.close()


def new_app(**settings: Any) -> Any:
    """A Faust app like the worker's (``build_app``), never started."""
    app = faust.App(
        "undertow-faust-upstream",
        broker=BROKER,
        autodiscover=False,
        store="memory://",
        web_enabled=False,
        **settings,
    )
    APPS.append(app)
    return app


def message(offset: int, generation: int | None = None, tp: TP = A) -> ConsumerMessage:
    """A record as Faust's aiokafka driver hands it over (``Consumer._to_message``), stamped
    with the consumer generation it was fetched in."""
    return ConsumerMessage(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0.0,
        timestamp_type=0,
        headers=None,
        key=b"key",
        value=str(offset).encode(),
        checksum=None,
        tp=tp,
        generation_id=generation,
    )


def record(offset: int, tp: TP = A) -> ConsumerRecord[bytes, bytes]:
    """A record as aiokafka fetches it."""
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"key",
        value=str(offset).encode(),
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(str(offset)),
        headers=(),
    )


def acking(app: Any) -> None:
    """Acknowledgements count for ``TOPIC``, as the conductor arranges for a topic an agent
    subscribes to (``Conductor._acking_topics``)."""
    app.topics._acking_topics.add(TOPIC)


def record_acks(consumer: Any) -> list[int]:
    """The offsets ``Consumer.ack`` is called with, in order (``Consumer.ack`` itself runs)."""
    acks: list[int] = []
    acknowledge = consumer.ack

    def ack(msg: Any) -> bool:
        acks.append(msg.offset)
        return bool(acknowledge(msg))

    consumer.ack = ack
    return acks


def acknowledged(consumer: Any, tp: TP, *offsets: int) -> None:
    """``offsets`` of ``tp`` acknowledged, as ``Consumer.ack`` records them."""
    consumer._acked[tp].extend(offsets)
    consumer._acked_index[tp].update(offsets)


def on_the_caller(calls: list[Any]) -> Callable[..., Awaitable[Any]]:
    """A stand-in for ``ServiceThread.call_thread``: what Faust hands to the consumer's thread
    is run right here (the thread is never started), and noted in ``calls``."""

    async def call_thread(fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(("call_thread", fun.__name__))
        result = fun(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    return call_thread


def fetches(consumer: Any, batches: list[dict[TP, list[ConsumerRecord[bytes, bytes]]]]) -> Any:
    """Make ``consumer`` fetch ``batches`` one by one (``Consumer._wait_next_records``, where
    the aiokafka fetch happens), all partitions active. Returns the stand-in for the app's
    Fetcher service that ``Consumer._drain_messages`` runs for: stopped by the fetch after the
    last batch."""
    fetcher = faust.Service()

    async def wait_next_records(timeout: float) -> tuple[dict[TP, Any], set[TP]]:
        if batches:
            return batches.pop(0), {A, B, C}
        fetcher._stopped.set()
        return {}, {A, B, C}

    consumer._wait_next_records = wait_next_records
    consumer.highwater = lambda tp: 1_000
    return fetcher


def sought(consumer: Any) -> list[tuple[TP, int]]:
    """The seeks that reach the driver (``Consumer._seek``), recorded instead of made."""
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    consumer._seek = seek
    return seeks


def records(first: int, last: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [record(o) for o in range(first, last + 1)]


# Rereads / stale-ack refusal ---------------------------------------------------------------


def test_consumer_ack_takes_a_record_of_an_older_consumer_generation() -> None:
    """``Consumer.ack`` records the offset of a record fetched in an older consumer generation
    as acknowledged, so the next commit moves past it (here to 6, for a record 5 fetched in
    generation 1 and acknowledged in generation 2). ``Stream.take_events`` acknowledges a
    batch buffered before a rebalance this way, and so does a role acknowledging its batch
    (``Stream.ack``).

    Workaround: the stale-ack refusal with :class:`Rereads` (``consumer.ack`` replaced, a timer
    seeking back to the refused offsets). Upstream: none reported; the generation stamp on
    messages came with the fix of faust-streaming #221 (PR #223), which checks it in the
    stream's iterator only. When this test fails after a faust upgrade, the bug is fixed
    upstream: remove the workaround (the replaced ``consumer.ack``; :class:`Rereads` as well
    once Faust also reads a skipped record again, see docs/faust.md) and this test.
    """

    async def scenario() -> None:
        app = new_app()
        acking(app)
        app.consumer_generation_id = 2
        consumer = app.consumer
        consumer._committed_offset[A] = 5  # 5 is the next record to commit
        assert consumer.ack(message(5, generation=1)) is True
        assert consumer._acked[A] == [5]
        assert consumer._new_offset(A) == 6

    run(scenario())


def test_the_stream_skips_a_record_of_an_older_generation_and_acknowledges_it() -> None:
    """The stream's pure-Python iterator (``Stream._py_aiter``) never hands the agent a record
    fetched in an older consumer generation, but acknowledges it in its ``finally`` block (the
    branch for skipped values), so Faust commits past a record nobody processed and nothing
    fetches it again. (The compiled iterator, ``faust/_cython/streams.pyx``, used when it is
    built, skips the record without acknowledging it; see docs/faust.md.)

    Workaround: the stale-ack refusal with :class:`Rereads`. Upstream: none reported; the skip
    is the fix of faust-streaming #221 (PR #223). When this test fails after a faust upgrade,
    the bug is fixed upstream: remove the workaround (the replaced ``consumer.ack``, once
    ``test_consumer_ack_takes_a_record_of_an_older_consumer_generation`` fails too;
    :class:`Rereads` once Faust also reads a skipped record again) and this test.
    """

    async def scenario() -> None:
        app = new_app()
        acking(app)
        app.flow_control.resume()
        app.consumer_generation_id = 2
        app.consumer._committed_offset[A] = 5  # 5 is the next record to commit
        acks = record_acks(app.consumer)
        channel = app.channel()
        values = channel.stream()._py_aiter()
        for msg in (message(5, generation=1), message(6, generation=2)):
            await channel.put(app.create_event(msg.key, msg.value, msg.headers, msg))
        assert await values.__anext__() == b"6"  # 5 never reaches the agent
        assert acks == [5]  # ... and is acknowledged all the same
        await values.aclose()  # 6 is done with
        assert app.consumer._new_offset(A) == 7

    run(scenario())


# Positions -------------------------------------------------------------------------------


def test_the_commit_passes_a_head_gap_when_nothing_was_committed() -> None:
    """``Consumer._new_offset`` holds the commit back at a gap between the committed offset and
    the lowest acknowledged one only ``if committed_offset:``. With nothing committed (None,
    or 0, which ``perform_seek`` stores as None) it commits past the gap: records 0 to 4, never
    handed over, are committed past once 5 to 7 are acknowledged.

    Workaround: :class:`Positions` (a record after a gap is held back unacknowledged and its
    partition sought back, so nothing past a record never handed over is acknowledged).
    Upstream: none reported for the case without a commit; the head-gap check came with
    faust-streaming #312 (PR #313). When this test fails after a faust upgrade, the bug is
    fixed upstream: remove this test; :class:`Positions` stays for the other faults it covers
    (docs/faust.md lists them), so remove it only once none of them is left.
    """

    async def scenario() -> None:
        fresh = new_app().consumer
        acknowledged(fresh, A, 5, 6, 7)
        assert fresh._committed_offset[A] is None
        assert fresh._new_offset(A) == 8

        committed = new_app().consumer  # the same gap after a commit of 2 holds the commit
        committed._committed_offset[A] = 2
        acknowledged(committed, A, 5, 6, 7)
        assert committed._new_offset(A) is None

    run(scenario())


def test_the_commit_passes_an_in_flight_record_at_the_committed_offset() -> None:
    """``Consumer._new_offset`` treats a gap of exactly one offset after the committed offset
    as no gap (``min(acked) - committed_offset > 1``): with 2 committed, record 2 handed over
    and not yet acknowledged and 3 and 4 acknowledged, it commits 5, past record 2.

    Undertow acknowledges each partition's records in offset order (:class:`Positions`, one
    batch at a time, held by the intake's extra reference until durable), so no later record
    is acknowledged while an earlier one is in flight. Upstream: faust-streaming #606 (open);
    PR #707 (open) caps the commit at the lowest unacknowledged tracked record. When this test
    fails after a faust upgrade, the bug is fixed upstream: remove this test; no workaround
    exists for it alone (:class:`Positions` stays for the faults docs/faust.md lists).
    """

    async def scenario() -> None:
        app = new_app()
        consumer = app.consumer
        consumer._committed_offset[A] = 2
        in_flight = message(2)  # handed to the stream, not acknowledged
        consumer.track_message(in_flight)  # (held in a WeakSet: the name keeps it there)
        acknowledged(consumer, A, 3, 4)
        assert consumer._new_offset(A) == 5
        assert in_flight in consumer.unacked

    run(scenario())


# A refused commit recorded as committed (no workaround in use) --------------------------


class RefusingAioKafka:
    """The aiokafka consumer during a rebalance: the group coordinator turns a commit down
    (``GroupCoordinator.commit_offsets`` raises this for UnknownMemberId, IllegalGeneration and
    RebalanceInProgress)."""

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    async def commit(self, offsets: Any) -> None:
        raise CommitFailedError(
            "Commit cannot be completed since the group has already rebalanced and may have "
            "assigned the partitions to another member"
        )


def test_a_commit_the_broker_refused_is_recorded_as_committed() -> None:
    """``Consumer._commit_offsets`` updates ``_committed_offset`` whether or not the commit was
    made: the driver (``AIOKafkaConsumerThread._commit``) returns False for a commit refused
    during a rebalance, and Faust records the offset as committed all the same, after which
    ``_should_commit`` turns down committing that offset again.

    Workaround: none in use. The worker once kept its own view of the confirmed commits,
    because it wrote trace rows only once their records were committed; traces are now folded
    where they are stored (migration 014), and the only effect left is a larger replay after a
    crash, which idempotent writes absorb. Upstream: faust-streaming #316 (closed; its fix, PR
    #692, is not in 0.15.3); the question in #611; the replays after a rebalance in #502. When
    this test fails after a faust upgrade, the bug is fixed upstream: delete this test.
    """

    async def scenario() -> None:
        app = new_app()
        consumer = app.consumer
        thread = consumer._thread
        thread._consumer = RefusingAioKafka()
        thread.call_thread = on_the_caller([])
        app.producer.flush = mock.AsyncMock()  # flushed before each commit; nothing to send
        assert await consumer._commit_offsets({A: 8}) is False
        assert consumer._committed_offset[A] == 8
        assert consumer._should_commit(A, 8) is False

    run(scenario())


# perform_seek of uncommitted partitions --------------------------------------------------


def test_after_an_assignment_streams_resume_before_the_seek_to_committed_offsets() -> None:
    """With tables and nothing to recover, ``Recovery._restart_recovery`` resumes the flow
    before ``on_recovery_completed`` resumes the stream partitions and seeks them to their
    committed offsets (``consumer.perform_seek``): the fetcher may fetch and hand over records
    from wherever the partition stood before the seek. An app without tables takes
    ``Recovery._resume_streams``, which seeks first: that order was fixed for it only.

    Workaround: ``perform_seek`` of uncommitted partitions (``consumer.perform_seek`` wrapped:
    partitions without a committed offset sought to their first offset, and the positions set)
    and :class:`Positions` (records in offset order whatever the fetch order). Upstream:
    faust-streaming #216 (closed by PR #217, which reordered ``_resume_streams`` only). When
    this test fails after a faust upgrade, the bug is fixed upstream: remove this test; the
    workaround stays as long as
    ``test_the_seek_to_committed_offsets_leaves_partitions_without_a_committed_offset`` passes.
    """

    async def flow_at_the_seek(app: Any) -> tuple[bool, bool]:
        consumer = app.consumer
        recovery = app.tables.recovery
        consumer.highwaters = mock.AsyncMock(return_value={})
        consumer.earliest_offsets = mock.AsyncMock(return_value={})
        consumer.seek_wait = mock.AsyncMock()
        consumer.assignment = lambda: {A}
        app._fetcher.maybe_start = mock.AsyncMock()
        at_the_seek: list[tuple[bool, bool]] = []

        async def perform_seek() -> None:
            at_the_seek.append((consumer.flow_active, A in consumer._get_active_partitions()))
            recovery._stopped.set()  # one recovery is enough

        consumer.perform_seek = perform_seek
        consumer.stop_flow()  # as at an assignment: app.on_rebalance_start ...
        consumer.pause_partitions({A})  # ... and app._on_partitions_assigned
        recovery.signal_recovery_start.set()
        await recovery._restart_recovery(recovery)
        assert len(at_the_seek) == 1
        return at_the_seek[0]

    async def scenario() -> None:
        with_tables = new_app(stream_recovery_delay=0)
        with_tables.Table("open", partitions=1)
        assert await flow_at_the_seek(with_tables) == (True, True)  # fetching before the seek
        without_tables = new_app(stream_recovery_delay=0)
        assert await flow_at_the_seek(without_tables) == (False, True)

    run(scenario())


def test_the_seek_to_committed_offsets_leaves_partitions_without_a_committed_offset() -> None:
    """``Consumer.perform_seek`` seeks through aiokafka's ``seek_to_committed``, which seeks a
    partition only ``if offset and offset > 0``: a partition with nothing committed (None, or
    0) is left where the fetch before the seek took it, and records fetched and dropped there
    are not read again.

    Workaround: ``perform_seek`` of uncommitted partitions (``consumer.perform_seek`` wrapped to
    seek them to offset 0 under the ``earliest`` reset policy). Upstream: aio-libs/aiokafka
    #1003 (open; the fetch before the seek is faust-streaming #216). When this test fails
    after a faust or aiokafka upgrade, the bug is fixed upstream: remove the seek of
    uncommitted partitions from the wrapper (it still sets the positions) and this test.
    """

    async def scenario() -> None:
        app = new_app()
        consumer = app.consumer
        aiokafka = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id="upstream")
        committed = {A: 8, B: None, C: 0}
        aiokafka._subscription.assign_from_user({TopicPartition(*tp) for tp in committed})

        async def committed_offset(tp: TopicPartition) -> int | None:
            return committed[TP(*tp)]

        aiokafka.committed = committed_offset
        aiokafka._fetcher = mock.Mock()  # its seek_to is aiokafka's seek
        consumer._thread._consumer = aiokafka
        consumer._thread.call_thread = on_the_caller([])
        try:
            await consumer.perform_seek()
            assert aiokafka._fetcher.seek_to.call_args_list == [
                mock.call(TopicPartition(TOPIC, 0), 8)
            ]
            assert consumer._committed_offset[B] is None
            assert consumer._committed_offset[C] is None
        finally:
            aiokafka._fetcher = None
            await aiokafka.stop()

    run(scenario())


# SeekFence / ReadOffsets / seek on the consumer thread -----------------------------------


class AioKafkaCalls:
    """The aiokafka consumer the consumer thread owns, noting what is asked of it."""

    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def seek(self, tp: TP, offset: int) -> None:
        self.calls.append(("seek", tp, offset))

    async def position(self, tp: TP) -> int:
        self.calls.append(("position", tp))
        return 4


def test_a_seek_calls_aiokafka_from_the_event_loop_not_on_the_consumer_thread() -> None:
    """``ThreadDelegateConsumer._seek`` calls the consumer thread's ``seek`` directly, so
    aiokafka's ``seek`` runs on the worker's event loop while the aiokafka consumer, fetch in
    progress included, lives on the consumer thread's loop; every other call (here
    ``position``) goes through ``call_thread``. A seek racing the fetch crashed the fetcher once
    (KeyError in aiokafka's ``Fetcher.fetched_records``).

    Workaround: the seek on the consumer thread (``consumer._seek`` replaced by
    ``fence_seeks``, through ``call_thread``). Upstream: none reported for the seek; the same
    KeyError is reported, without a diagnosis, in robinhood/aiokafka #19. When this test fails
    after a faust upgrade, the bug is fixed upstream: remove the workaround (the replaced
    ``consumer._seek``, keeping :class:`SeekFence`'s count of the seek) and this test.
    """

    async def scenario() -> None:
        consumer = new_app().consumer
        calls: list[Any] = []
        consumer._thread._consumer = AioKafkaCalls(calls)
        consumer._thread.call_thread = on_the_caller(calls)
        await consumer.seek(A, 4)
        assert await consumer.position(A) == 4
        assert calls == [("seek", A, 4), ("call_thread", "position"), ("position", A)]

    run(scenario())


def test_getmany_hands_over_records_fetched_before_a_seek_after_it() -> None:
    """``Consumer.getmany`` hands a fetched batch over record by record and goes on with the
    records of a partition sought meanwhile: sought back to 4 after record 10, it still hands
    over 11 to 13, each of which sets the read offset in ``_drain_messages``, so the records 4
    to 12 fetched again after the seek are then dropped as read already.

    Workaround: :class:`SeekFence` (batches stamped with the seek counts on the consumer
    thread, ``thread._fetch_records`` and ``scheduler.iterate`` replaced, records of partitions
    sought since their fetch left out). Upstream: none reported. When this test fails after a
    faust upgrade, the bug is fixed upstream: remove the stamping and filtering of
    :class:`SeekFence` (``_fetch_records``, ``scheduler.iterate``) and this test.
    """

    async def scenario() -> None:
        consumer = new_app().consumer
        fetches(consumer, [{A: records(10, 13)}])
        seeks = sought(consumer)
        handed = consumer.getmany(timeout=1.0)
        _, first = await handed.__anext__()
        await consumer.seek(A, 4)
        rest = [msg.offset async for _, msg in handed]
        assert (first.offset, seeks, rest) == (10, [(A, 4)], [11, 12, 13])

    run(scenario())


def test_the_record_in_hand_during_a_seek_sets_the_read_offset_past_the_sought_one() -> None:
    """``Consumer._drain_messages`` sets the read offset to a record's offset once its hand-over
    (``callback``, which waits for room in the stream's buffer) returns. A seek made meanwhile
    set the read offset to the sought one, and the end of the hand-over overwrites it: sought
    back to 4 while handing over 10, the records 4 to 9 fetched again are dropped as read
    already, and 10 is handed over twice.

    Workaround: :class:`ReadOffsets` (``consumer._read_offset`` replaced; the hand-over a seek
    overtook does not set it) with the record in hand noted by :class:`SeekFence`. Upstream:
    none reported. When this test fails after a faust upgrade, the bug is fixed upstream:
    remove :class:`ReadOffsets`, the in-hand note of :class:`SeekFence`, and this test.
    """

    async def scenario() -> None:
        consumer = new_app().consumer
        fetcher = fetches(consumer, [{A: [record(10)]}, {A: records(4, 10)}])
        sought(consumer)
        handed: list[int] = []
        read_offsets: list[int | None] = []

        async def hand_over(msg: Any) -> None:  # the conductor's callback
            handed.append(msg.offset)
            if handed == [10]:
                await consumer.seek(A, 4)
                read_offsets.append(consumer._read_offset[A])

        consumer.callback = hand_over
        await consumer._drain_messages(fetcher)
        read_offsets.append(consumer._read_offset[A])
        assert read_offsets == [4, 10]
        assert handed == [10, 10]

    run(scenario())


# The intake's reference on records until their batch is durable --------------------------


async def take_events_stream(app: Any, *offsets: int) -> tuple[Any, list[int]]:
    """A stream over a channel holding records ``offsets`` (generation 0, the app's), and the
    offsets ``Consumer.ack`` is called with."""
    acking(app)
    app.flow_control.resume()
    acks = record_acks(app.consumer)
    channel = app.channel()
    stream = channel.stream()  # a clone of the channel: what is put from here on
    for offset in offsets:
        msg = message(offset, generation=0)
        await channel.put(app.create_event(msg.key, msg.value, msg.headers, msg))
    return stream, acks


def test_take_events_acknowledges_the_batch_when_the_agent_raises() -> None:
    """``Stream.take_events`` acknowledges the batch it yielded in a ``finally`` block, which
    also runs when the agent raised on it: the generator is closed (by the event loop's
    async-generator finalizer once the agent drops it; explicitly here), and records that
    never became durable are committed past.

    Workaround: the intake's extra reference on each record (``Message.incref`` when a batch is
    handed over, dropped by ``Batch.acknowledge`` once what it came to is durable).
    Upstream: none reported for ``take_events``; the same class of fault for ``noack()``
    streams is faust-streaming #527 (robinhood/faust #604). Faust's answer is
    ``Stream.noack_take`` (PR #192, in 0.15.3), which acknowledges nothing; the intake could
    use it instead of the extra reference. When this test fails after a faust upgrade, the bug
    is fixed upstream: remove the extra reference (the ``incref`` calls of the intake) and
    this test.
    """

    async def scenario() -> None:
        stream, acks = await take_events_stream(new_app(), 1, 2)
        batches = stream.take_events(2, within=TIMEOUT_S)
        try:
            async for batch in batches:
                assert [event.message.offset for event in batch] == [1, 2]
                raise RuntimeError("the warehouse write failed")
        except RuntimeError:
            pass
        assert acks == []
        await batches.aclose()
        assert acks == [1, 2]
        await stream.stop()

    run(scenario())


def test_take_events_acknowledges_the_batch_when_the_agent_is_cancelled() -> None:
    """As ``test_take_events_acknowledges_the_batch_when_the_agent_raises``, for an agent
    cancelled while it works on the batch (a shutdown, a rebalance): the batch is acknowledged
    when the abandoned generator is closed.

    Workaround: the intake's extra reference on each record until its batch is durable.
    Upstream: none reported (related: faust-streaming #527, robinhood/faust #604; the
    alternative ``Stream.noack_take``, PR #192).
    When this test fails after a faust upgrade, the bug is fixed upstream: remove the extra
    reference (the ``incref`` calls of the intake) and this test.
    """

    async def scenario() -> None:
        stream, acks = await take_events_stream(new_app(), 1, 2)
        batches = stream.take_events(2, within=TIMEOUT_S)
        working = asyncio.Event()

        async def agent() -> None:
            async for _ in batches:
                working.set()
                await asyncio.Event().wait()  # the warehouse write, never done

        task = asyncio.ensure_future(agent())
        await working.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert acks == []
        await batches.aclose()
        assert acks == [1, 2]
        await stream.stop()

    run(scenario())


# fetch_again --------------------------------------------------------------------------------


def test_a_partition_out_for_a_full_buffer_stays_out_while_the_buffer_stays_above_40pct() -> None:
    """A stream's buffer under pressure takes its partition out of the partitions Faust
    fetches (``Consumer.on_buffer_full``), and only the buffer draining to 40% of its size
    (or empty) brings it back (``on_buffer_drop``, through mode's ``FlowControlQueue``). While
    the buffer stays above that mark, fed by the other partitions of the topic, the partition
    is not fetched, and a seek does not change that: the likely cause of chaos seed 26, where
    an event partition stayed unread for the rest of the run, every seek back answered by
    nothing.

    Workaround: :func:`undertow.streams.runtime.consumer.fetch_again` (a partition that owes
    records, sought back by the reread and stall timers, is put back among the fetched ones
    outside rebalances and recoveries). Upstream: none reported. When this test fails after
    an upgrade, Faust brings such partitions back by itself: remove ``fetch_again`` and this
    test.
    """
    from mode.utils.queues import FlowControlQueue

    async def scenario() -> None:
        app = new_app()
        consumer = app.consumer
        sought(consumer)
        consumer._set_active_tps({A, B})  # as after an assignment
        queue: FlowControlQueue[int] = FlowControlQueue(maxsize=10, flow_control=app.flow_control)

        # the conductor's callbacks, one pair per partition (``Conductor._build_handler``)
        high = {tp: (lambda tp=tp: consumer.on_buffer_full(tp)) for tp in (A, B)}
        drop = {tp: (lambda tp=tp: consumer.on_buffer_drop(tp)) for tp in (A, B)}

        def put(tp: TP) -> None:  # the conductor's hand-over of a record of ``tp``
            queue.put_nowait_enhanced(
                tp.partition, on_pressure_high=high[tp], on_pressure_drop=drop[tp]
            )

        for _ in range(9):
            put(A)
        assert consumer._get_active_partitions() == {B}  # A: buffer at 80%
        for _ in range(3):
            queue.get_nowait()
        for _ in range(50):  # B's records keep the buffer between 40% and 80%
            queue.get_nowait()
            put(B)
        await consumer.seek(A, 4)
        assert 4 < queue.qsize() < 8 and consumer._get_active_partitions() == {B}
        while queue.qsize() > 3:
            queue.get_nowait()
        assert consumer._get_active_partitions() == {A, B}  # drained to 40%: back

    run(scenario())
