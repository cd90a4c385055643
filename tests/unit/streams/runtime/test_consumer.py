"""The runtime's offset bookkeeping around Faust's consumer (streams/runtime/consumer.py and
positions.py), on a stand-in consumer object
that records what the wrappers ask of it (the real consumer is exercised end to end in
tests/integration/test_worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from undertow.streams.runtime.consumer import (
    fetch_again,
    seek_back,
    seek_uncommitted,
    watch_stalls,
)
from undertow.streams.runtime.positions import Positions, Rereads


class TP(NamedTuple):
    topic: str
    partition: int


EVENTS = "undertow.events.v1"


class Consumer:
    def __init__(self, assigned: set[TP], broker: Mapping[TP, int | None]) -> None:
        self.assigned = assigned
        self.broker = dict(broker)
        self.accept = True
        self._committed_offset: dict[TP, int | None] = {}
        self.seeks: list[tuple[TP, int]] = []
        self.ends: dict[TP, int] = {}  # the broker's end offsets
        self.asked: list[TP] = []
        # Faust's fetch bookkeeping: the partitions it fetches, and why others are left out
        self._active_partitions: set[TP] = set(assigned)
        self._buffered_partitions: set[TP] = set()
        self._paused_partitions: set[TP] = set()
        self._read_offset: dict[TP, int] = {}
        self.flow_active = True

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def _get_active_partitions(self) -> set[TP]:
        return self._active_partitions

    def resume_partitions(self, tps: Any) -> None:
        self._active_partitions.update(tps)
        self._paused_partitions.difference_update(tps)

    async def position(self, tp: TP) -> int:
        return self._read_offset.get(tp, 0)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        return self.accept

    async def perform_seek(self) -> None:
        self._committed_offset.update({tp: self.broker.get(tp) or None for tp in self.assigned})

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        self.asked.extend(tps)
        return {tp: self.ends.get(tp, 0) for tp in tps}


def app_of(consumer: Consumer, **state: Any) -> Any:
    """An app with ``consumer``, neither rebalancing nor in recovery unless ``state`` says."""
    return SimpleNamespace(
        **{"rebalancing": False, "in_recovery": False, **state}, consumer=consumer
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def tracked(consumer: Consumer, reread: bool = True) -> None:
    seek_uncommitted(SimpleNamespace(consumer=consumer), {EVENTS}, reread_uncommitted=reread)


def test_an_assignment_rereads_uncommitted_partitions_of_the_roles_topics() -> None:
    p0, p1, p2 = TP(EVENTS, 0), TP(EVENTS, 1), TP(EVENTS, 2)
    other = TP("other", 0)
    consumer = Consumer({p0, p1, p2, other}, {p0: 7, p1: 0, p2: None, other: None})
    tracked(consumer)
    run(consumer.perform_seek())
    assert consumer.seeks == [(p1, 0), (p2, 0)]  # 0 is "no commit" to Kafka clients too


def test_with_the_latest_policy_nothing_is_sought() -> None:
    p0 = TP(EVENTS, 0)
    consumer = Consumer({p0}, {p0: None})
    tracked(consumer, reread=False)
    run(consumer.perform_seek())
    assert consumer.seeks == []


# --- Positions: records handed to a keyed stage exactly in offset order ----------------------


def events(topic: str, partition: int, *offsets: int) -> list[Any]:
    tp = TP(topic, partition)
    return [
        SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=o, tp=tp))
        for o in offsets
    ]


def offsets_of(batch: list[Any]) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in batch]


def test_positions_pass_records_in_order_and_hold_back_a_partition_after_a_gap() -> None:
    positions = Positions()
    positions.sought(EVENTS, 0, 100)
    positions.sought(EVENTS, 1, 5)
    # Faust delivers 103.. before 100..102 (fetched before its seek): held back, seek to 100;
    # partition 1 is in order and goes through.
    batch = events(EVENTS, 0, 103, 104) + events(EVENTS, 1, 5, 6)
    admitted, repeats, held, seeks = positions.admit(batch)
    assert offsets_of(admitted) == [(1, 5), (1, 6)] and offsets_of(held) == [(0, 103), (0, 104)]
    assert repeats == [] and seeks == {TP(EVENTS, 0): 100}
    admitted, repeats, held, seeks = positions.admit(events(EVENTS, 0, 100, 101, 102, 103))
    assert offsets_of(admitted) == [(0, 100), (0, 101), (0, 102), (0, 103)]
    assert not seeks and not held
    # Read again after a seek back to 101: repeats, not records to process twice.
    admitted, repeats, held, seeks = positions.admit(events(EVENTS, 0, 101, 102, 103, 104))
    assert offsets_of(repeats) == [(0, 101), (0, 102), (0, 103)]
    assert offsets_of(admitted) == [(0, 104)]


def test_a_batch_that_goes_on_with_the_records_a_seek_back_brought_passes_them() -> None:
    """Seen in tests/integration/test_monitor_workers.py: after a seek back to 0, one batch
    held the last records fetched before the seek (908, 909) and then 0, 1 fetched after it.
    Holding back the whole rest of the batch left the partition silent until the watchdog."""
    positions = Positions()
    positions.sought(EVENTS, 0, 0)
    assert positions.admit(events(EVENTS, 0, 907))[3] == {TP(EVENTS, 0): 0}
    admitted, repeats, held, seeks = positions.admit(
        events(EVENTS, 0, 908, 909, 0, 1) + events(EVENTS, 1, 3)
    )
    assert offsets_of(held) == [(0, 908), (0, 909)]
    assert offsets_of(admitted) == [(0, 0), (0, 1), (1, 3)] and not repeats
    assert seeks == {}  # sought already, and the records came
    # A gap and then the record at the position in one batch: no seek planned after all.
    admitted, _, held, seeks = positions.admit(events(EVENTS, 0, 5, 2, 3))
    assert offsets_of(admitted) == [(0, 2), (0, 3)] and offsets_of(held) == [(0, 5)]
    assert seeks == {}
    assert offsets_of(positions.admit(events(EVENTS, 0, 4, 5))[0]) == [(0, 4), (0, 5)]


def test_positions_wait_for_the_record_at_the_position_and_seek_again_when_it_is_late() -> None:
    now = [0.0]
    positions = Positions(clock=lambda: now[0])
    positions.sought(EVENTS, 0, 10)
    positions.sought(EVENTS, 0, 4)  # a later seek wins
    assert positions.admit(events(EVENTS, 0, 10))[3] == {TP(EVENTS, 0): 4}
    # Buffered records after the gap keep coming: held back, without seeking every batch...
    admitted, _, held, seeks = positions.admit(events(EVENTS, 0, 11, 12))
    assert admitted == [] and len(held) == 2 and seeks == {}
    # ...but again once the seek is overdue.
    now[0] += Positions.RESEEK_AFTER_S
    assert positions.admit(events(EVENTS, 0, 13))[3] == {TP(EVENTS, 0): 4}
    admitted, _, held, seeks = positions.admit(events(EVENTS, 0, 4, 5))
    assert offsets_of(admitted) == [(0, 4), (0, 5)] and not held and not seeks
    # A partition with no known position takes what comes; None forgets a position.
    positions.sought(EVENTS, 0, None)
    assert offsets_of(positions.admit(events(EVENTS, 0, 50))[0]) == [(0, 50)]


def test_a_partition_silent_after_a_seek_back_is_named_stalled_until_it_catches_up() -> None:
    now = [0.0]
    positions = Positions(clock=lambda: now[0])
    positions.sought(EVENTS, 0, 100)
    positions.sought(EVENTS, 1, 0)
    positions.admit(events(EVENTS, 0, 150, 151) + events(EVENTS, 1, 0, 1))
    # Nothing comes after the seek back to 100: named once the silence lasts STALL_AFTER_S.
    now[0] += Positions.STALL_AFTER_S - 1
    assert positions.stalled() == {}
    now[0] += 1
    assert positions.stalled() == {(EVENTS, 0): 100}  # partition 1 owes nothing
    assert positions.stalled() == {}  # not again before another STALL_AFTER_S of silence
    now[0] += Positions.STALL_AFTER_S
    assert positions.stalled() == {(EVENTS, 0): 100}
    # Records arriving, even held back, are not silence.
    now[0] += Positions.STALL_AFTER_S
    positions.admit(events(EVENTS, 0, 152))
    assert positions.stalled() == {}
    # Once the position passes the last record held back, nothing is owed any more.
    positions.admit(events(EVENTS, 0, *range(100, 153)))
    now[0] += 10 * Positions.STALL_AFTER_S
    assert positions.stalled() == {}
    # A seek to an unknown place forgets what was owed.
    positions.admit(events(EVENTS, 0, 160))
    positions.sought(EVENTS, 0, None)
    now[0] += 10 * Positions.STALL_AFTER_S
    assert positions.stalled() == {}


def test_the_stall_timer_seeks_back_assigned_stalled_partitions() -> None:
    p0 = TP(EVENTS, 0)
    now = [0.0]
    positions = Positions(clock=lambda: now[0])
    positions.sought(EVENTS, 0, 100)
    positions.sought(EVENTS, 1, 0)
    positions.admit(events(EVENTS, 0, 150) + events(EVENTS, 1, 9))  # both owe records
    consumer = Consumer({p0}, {})  # partition 1 went to another worker

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    consumer.earliest_offsets = earliest_offsets  # type: ignore[attr-defined]
    timers: list[Any] = []
    app = app_of(consumer)
    watch_stalls(app, lambda interval, name, tick: timers.append(tick), positions)
    (tick,) = timers
    now[0] += Positions.STALL_AFTER_S
    run(tick())
    assert consumer.seeks == [(p0, 100)]  # it owes 150
    assert consumer.asked == [p0]  # the silent topic's assigned partition, checked too
    # A silent partition the broker has records for, none held back: sought to its position.
    consumer.seeks.clear()
    positions.admit(events(EVENTS, 0, *range(100, 151)))
    consumer.ends[p0] = 160
    now[0] += Positions.STALL_AFTER_S
    run(tick())
    assert consumer.seeks == []  # behind once: maybe records just arriving
    now[0] += Positions.CONFIRM_S
    run(tick())
    assert consumer.seeks == [(p0, 151)]  # still behind, no progress: stalled


def test_a_broker_that_never_answers_does_not_end_the_stall_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer's ticks run one after another: a tick stuck on the broker would be the
    last one. It gives up after STALL_AFTER_S (short here) and the next tick asks again."""
    p0 = TP(EVENTS, 0)
    now = [0.0]
    positions = Positions(clock=lambda: now[0])
    positions.sought(EVENTS, 0, 100)
    consumer = Consumer({p0}, {})
    answered = consumer.highwaters
    hang = [True]

    async def highwaters(*tps: TP) -> dict[TP, int]:
        if hang[0]:
            await asyncio.Event().wait()  # no answer, ever
        return await answered(*tps)

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    consumer.highwaters = highwaters  # type: ignore[method-assign]
    consumer.earliest_offsets = earliest_offsets  # type: ignore[attr-defined]
    monkeypatch.setattr(Positions, "STALL_AFTER_S", 0.05)
    timers: list[Any] = []
    watch_stalls(app_of(consumer), lambda interval, name, tick: timers.append(tick), positions)
    (tick,) = timers
    now[0] += 1
    run(tick())  # returns: the call was given up
    assert consumer.seeks == [] and consumer.asked == []
    hang[0], consumer.ends[p0] = False, 160
    for _ in range(2):  # behind at two asks CONFIRM_S apart
        now[0] += Positions.CONFIRM_S
        run(tick())
    assert consumer.asked == [p0, p0] and consumer.seeks == [(p0, 100)]


def test_a_seek_back_below_the_log_start_goes_on_from_the_log_start() -> None:
    p0 = TP(EVENTS, 0)
    positions = Positions()
    positions.sought(EVENTS, 0, 4)
    seeks = positions.admit(events(EVENTS, 0, 10))[3]
    consumer = Consumer({p0}, {})

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 10)  # retention removed 0..9

    consumer.earliest_offsets = earliest_offsets  # type: ignore[attr-defined]
    run(seek_back(SimpleNamespace(consumer=consumer), positions, seeks))
    assert consumer.seeks == [(p0, 10)]
    assert offsets_of(positions.admit(events(EVENTS, 0, 10))[0]) == [(0, 10)]


def test_the_post_assignment_seek_sets_the_positions() -> None:
    p0, p1 = TP(EVENTS, 0), TP(EVENTS, 1)
    consumer = Consumer({p0, p1}, {p0: 40})
    positions = Positions()
    seek_uncommitted(
        SimpleNamespace(consumer=consumer), {EVENTS}, reread_uncommitted=True, positions=positions
    )
    run(consumer.perform_seek())
    # committed 40 on p0; nothing on p1, so it was sought to 0
    assert positions.admit(events(EVENTS, 0, 41))[3] == {p0: 40}
    assert positions.admit(events(EVENTS, 1, 3))[3] == {p1: 0}


# --- Rereads: records skipped at a rebalance, and seeks that did not bring them ------------


def test_skipped_records_are_sought_once_and_again_only_if_they_do_not_come() -> None:
    p0, p1, gone = TP(EVENTS, 0), TP(EVENTS, 1), TP(EVENTS, 2)
    now = [0.0]
    rereads = Rereads(clock=lambda: now[0])
    for tp, offset in ((p0, 12), (p0, 10), (p1, 5), (gone, 3)):
        rereads.skipped(tp, offset)
    # The lowest skipped offset of each assigned partition; the revoked one is its new owner's.
    assert rereads.due({p0, p1}) == {p0: 10, p1: 5}
    assert rereads.due({p0, p1}) == {}
    rereads.acknowledged(p1, 6)  # not the record sought
    rereads.acknowledged(p1, 5)
    rereads.acknowledged(p0, 11)
    now[0] += Rereads.STALL_AFTER_S
    assert rereads.due({p0, p1}) == {p0: 10}  # p0's seek brought nothing: again
    rereads.skipped(p0, 4)  # skipped again meanwhile, lower: that wins
    now[0] += Rereads.STALL_AFTER_S
    assert rereads.due({p0, p1}) == {p0: 4}
    rereads.moved(p0, 7)  # retention removed 4..6
    rereads.acknowledged(p0, 7)
    now[0] += Rereads.STALL_AFTER_S
    assert rereads.due({p0, p1}) == {}
    # A partition revoked while its seek was pending is forgotten.
    rereads.skipped(p1, 9)
    assert rereads.due({p1}) == {p1: 9}
    now[0] += Rereads.STALL_AFTER_S
    assert rereads.due({p0}) == {} and rereads.due({p0, p1}) == {}


def test_a_silent_topic_is_checked_against_the_brokers_end_offsets() -> None:
    now = [0.0]
    positions = Positions(clock=lambda: now[0])
    positions.sought(EVENTS, 0, 40)
    positions.sought(EVENTS, 1, 7)
    positions.sought("other", 0, 3)
    positions.admit(events(EVENTS, 0, 40, 41))
    now[0] += Positions.STALL_AFTER_S - 1
    positions.admit(events("other", 0, 3))
    assert positions.quiet() == []  # nothing silent long enough yet
    now[0] += 1
    # The event topic has been silent for STALL_AFTER_S; "other" has not.
    assert sorted(positions.quiet()) == [(EVENTS, 0), (EVENTS, 1)]
    assert positions.quiet() == []  # asked once per STALL_AFTER_S
    # Partition 0 is at its end; partition 1 has records past its position: maybe records
    # just arriving, so it is asked again after CONFIRM_S, and stalled if still behind.
    assert positions.stalled({(EVENTS, 0): 42, (EVENTS, 1): 30}) == {}
    now[0] += Positions.CONFIRM_S
    assert positions.quiet() == [(EVENTS, 1)]
    assert positions.stalled({(EVENTS, 1): 31}) == {(EVENTS, 1): 7}
    # Behind at one ask, then a record arrives: traffic arriving, not a stall.
    now[0] += Positions.STALL_AFTER_S
    assert sorted(positions.quiet()) == sorted([(EVENTS, 0), (EVENTS, 1), ("other", 0)])
    assert positions.stalled({(EVENTS, 0): 50}) == {}
    positions.admit(events(EVENTS, 0, 42))
    assert positions.quiet() == []  # the topic is heard from again
    now[0] += Positions.CONFIRM_S
    assert positions.stalled({(EVENTS, 0): 50}) == {}  # the first sighting was forgotten


def test_a_topic_whose_batch_is_being_handled_is_busy_not_silent() -> None:
    now = [0.0]
    positions = Positions(clock=lambda: now[0])
    positions.sought(EVENTS, 0, 0)
    batch = events(EVENTS, 0, 0, 1)
    admitted = positions.admit(batch)[0]
    positions.admit(events(EVENTS, 0, 5))  # a gap: 5 is held back, 2..4 are owed
    with positions.handling(admitted):  # e.g. a batch waiting out a warehouse outage
        now[0] += 3 * Positions.STALL_AFTER_S
        assert positions.quiet() == [] and positions.stalled({(EVENTS, 0): 9}) == {}
    # Heard from when the batch ends; silent again only STALL_AFTER_S later.
    assert positions.quiet() == [] and positions.stalled() == {}
    now[0] += Positions.STALL_AFTER_S
    assert positions.quiet() == [(EVENTS, 0)]
    assert positions.stalled() == {(EVENTS, 0): 2}  # it owes 5: no need to ask the broker


def test_a_stalled_partition_faust_stopped_fetching_is_fetched_again() -> None:
    # Chaos seed 26: an event partition left out of Faust's active partitions (its stream's
    # buffer under pressure) while the worker caught up; every seek back brought nothing.
    p0, p1 = TP(EVENTS, 0), TP(EVENTS, 1)
    consumer = Consumer({p0, p1}, {})
    consumer._active_partitions.discard(p0)
    consumer._buffered_partitions.add(p0)
    assert run(fetch_again(app_of(consumer, rebalancing=True), p0)) is False
    assert run(fetch_again(app_of(consumer, in_recovery=True), p0)) is False
    assert p0 not in consumer._active_partitions  # Faust's to decide while it recovers
    assert run(fetch_again(app_of(consumer), p0)) is True
    assert p0 in consumer._active_partitions and not consumer._buffered_partitions
    assert run(fetch_again(app_of(consumer), p0)) is False  # fetched already: nothing to do
    consumer._active_partitions.discard(p1)
    consumer._paused_partitions.add(p1)  # paused for a recovery that never resumed it
    assert run(fetch_again(app_of(consumer), p1)) is True
    assert consumer._active_partitions == {p0, p1} and not consumer._paused_partitions
    gone = TP(EVENTS, 2)  # not assigned: not this worker's to fetch
    assert run(fetch_again(app_of(consumer), gone)) is False
    assert gone not in consumer._active_partitions


def test_the_stall_timer_fetches_again_a_partition_faust_left_out() -> None:
    now = [0.0]
    positions = Positions(clock=lambda: now[0])
    p0 = TP(EVENTS, 0)
    positions.sought(EVENTS, 0, 100)
    positions.admit(events(EVENTS, 0, 150))  # owes 100..149
    consumer = Consumer({p0}, {})
    consumer._active_partitions.clear()
    consumer._buffered_partitions.add(p0)

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    consumer.earliest_offsets = earliest_offsets  # type: ignore[attr-defined]
    timers: list[Any] = []
    watch_stalls(app_of(consumer), lambda interval, name, tick: timers.append(tick), positions)
    now[0] += Positions.STALL_AFTER_S
    run(timers[0]())
    assert consumer.seeks == [(p0, 100)] and p0 in consumer._active_partitions


def test_fetch_again_puts_back_faust_s_own_tp_when_given_aiokafka_s() -> None:
    # Records carry aiokafka's TopicPartition (so do the rereads taken from them); Faust's
    # active set must hold its own TP: an aiokafka one made Faust's fetcher assert and the
    # worker crash (chaos seed 27).
    import faust
    from aiokafka.structs import TopicPartition
    from faust.types import TP as FaustTP

    app = faust.App("undertow-fetch-again", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    a, b = FaustTP(EVENTS, 0), FaustTP(EVENTS, 1)
    consumer.assignment = lambda: {a, b}  # type: ignore[method-assign]
    consumer._set_active_tps({b})
    consumer._buffered_partitions.add(a)

    async def position(tp: Any) -> int:
        return 0

    consumer.position = position  # type: ignore[method-assign]
    try:
        assert run(fetch_again(app, TopicPartition(EVENTS, 0))) is True
        active = consumer._get_active_partitions()  # Faust asserts its TP type here
        assert active == {a, b} and all(type(tp) is FaustTP for tp in active)
        assert not consumer._buffered_partitions
    finally:
        if app._consumer is not None:
            app._consumer._thread.thread_loop.close()
