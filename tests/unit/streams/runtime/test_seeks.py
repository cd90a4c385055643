"""Seeks that take effect at once: the pure parts, and Faust's hand-over loop they guard."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from typing import Any

from undertow.streams.runtime.seeks import Fetched, ReadOffsets, SeekFence

TP = namedtuple("TP", "topic partition")
Record = namedtuple("Record", "offset")

A = TP("events", 0)
B = TP("events", 1)


def records(tp: TP, first: int, last: int) -> list[Record]:
    return [Record(o) for o in range(first, last + 1)]


def round_robin(batch: dict[Any, list[Record]]) -> list[tuple[Any, Record]]:
    """Faust's scheduler takes the partitions of a batch in turn."""
    items = []
    lists = {tp: list(rs) for tp, rs in batch.items()}
    while any(lists.values()):
        for tp, rs in lists.items():
            if rs:
                items.append((tp, rs.pop(0)))
    return items


def test_a_batch_is_stamped_with_the_seek_counts_when_it_is_fetched() -> None:
    fence = SeekFence()
    fence.seek(lambda tp, o: None, A, 3)
    batch = fence.stamp({A: records(A, 3, 5)})
    assert isinstance(batch, Fetched)
    assert batch.seeks == {A: 1}
    assert batch[A] == records(A, 3, 5)
    assert fence.stamp(None) is None  # nothing fetched: passed on as it is


def test_the_seek_runs_the_given_seek_before_it_is_counted() -> None:
    fence = SeekFence()
    calls: list[tuple[TP, int]] = []
    fence.seek(lambda tp, o: calls.append((tp, o)), B, 7)
    assert calls == [(B, 7)]
    assert fence.stamp({}).seeks == {B: 1}


def test_records_fetched_before_a_seek_of_their_partition_are_left_out() -> None:
    fence = SeekFence()
    batch = fence.stamp({A: records(A, 10, 13), B: records(B, 20, 23)})
    handed: list[tuple[TP, int]] = []
    for tp, record in fence.current(batch, round_robin(batch)):
        handed.append((tp, record.offset))
        if (tp, record.offset) == (A, 11):
            fence.seek(lambda tp, o: None, A, 4)  # a gap found: back to 4
    # A's 12 and 13 were fetched before the seek and are left out; B goes on.
    assert handed == [(A, 10), (B, 20), (A, 11), (B, 21), (B, 22), (B, 23)]
    assert fence.left_out == 2
    # The next batch, fetched after the seek, is handed over whole.
    again = fence.stamp({A: records(A, 4, 6)})
    assert [(tp, r.offset) for tp, r in fence.current(again, round_robin(again))] == [
        (A, 4),
        (A, 5),
        (A, 6),
    ]


def test_an_unstamped_batch_is_handed_over_whole() -> None:
    fence = SeekFence()
    batch = {A: records(A, 0, 2)}
    fence.seek(lambda tp, o: None, A, 0)
    assert len(list(fence.current(batch, round_robin(batch)))) == 3


def test_the_record_in_hand_is_known_while_it_is_handed_over_and_not_after() -> None:
    fence = SeekFence()
    batch = fence.stamp({A: records(A, 5, 6)})
    it = fence.current(batch, round_robin(batch))
    next(it)
    assert fence.in_hand == (A, 5)
    next(it)
    assert fence.in_hand == (A, 6)
    assert next(it, None) is None
    assert fence.in_hand is None
    it = fence.current(batch, round_robin(batch))
    next(it)
    it.close()  # Faust abandons a batch at a rebalance
    assert fence.in_hand is None


def test_read_offsets_ignore_the_one_set_by_the_overtaken_hand_over() -> None:
    offsets = ReadOffsets({A: 9})
    assert offsets[B] is None and B not in offsets  # Faust's defaultdict(lambda: None)
    offsets[A] = 4  # Faust's seek sets the sought offset
    offsets.overtaken(A, 12)
    offsets[A] = 12  # the overtaken record's hand-over ends
    assert offsets[A] == 4
    offsets[A] = 4  # the sought record
    offsets[A] = 12  # ... and the one at 12 again, fetched after the seek
    assert offsets[A] == 12


def test_only_the_next_set_can_be_the_overtaken_one() -> None:
    offsets = ReadOffsets()
    offsets.overtaken(A, 12)
    offsets[A] = 4
    offsets[A] = 12
    assert offsets[A] == 12
    offsets.overtaken(B, 3)
    offsets.update({B: 1})  # Faust's seek to the committed offsets sets the read offsets
    offsets[B] = 3  # the hand-over the seek overtook
    assert offsets[B] == 1
    offsets.overtaken(A, 20)
    assert offsets.pop(A) == 12  # revoked
    offsets[A] = 20
    assert offsets[A] == 20


class Committed:
    """An aiokafka consumer's assignment, committed offsets and seeks."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed_offsets = committed
        self.sought: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return set(self.committed_offsets)

    async def committed(self, tp: TP) -> int | None:
        return self.committed_offsets[tp]

    def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


def test_the_seek_to_committed_offsets_seeks_where_one_is_committed_and_counts_it() -> None:
    fence = SeekFence()
    before = fence.stamp({A: records(A, 0, 1), B: records(B, 0, 1)})
    consumer = Committed({A: 8, B: None})
    assert asyncio.run(fence.seek_to_committed(consumer)) == {A: 8, B: None}
    assert consumer.sought == [(A, 8)]  # B has nothing committed: not sought, as aiokafka
    assert [(tp, r.offset) for tp, r in fence.current(before, round_robin(before))] == [
        (B, 0),
        (B, 1),
    ]


def drain(
    fence: SeekFence,
    offsets: ReadOffsets,
    batches: list[dict[Any, list[Record]]],
    seek_during: tuple[TP, int, int] | None,
) -> list[int]:
    """Faust's hand-over loop (``Consumer._drain_messages``): a record at or past the read
    offset is handed over and then sets it, a record below it is dropped as read already.
    ``seek_during`` (tp, offset of the record in hand, sought offset) seeks while that
    record's hand-over is in progress, as ``fence_seeks`` does."""
    handed: list[int] = []
    pending = seek_during
    for fetched in batches:
        batch = fence.stamp(fetched)
        for tp, record in fence.current(batch, round_robin(batch)):
            r_offset = offsets[tp]
            if r_offset is not None and record.offset < r_offset:
                continue  # Faust: DROPPED MESSAGE
            handed.append(record.offset)
            if pending is not None and (tp, record.offset) == pending[:2]:
                sought, pending = pending[2], None
                fence.seek(lambda tp, o: None, tp, sought)
                offsets[tp] = sought  # Faust's Consumer.seek
                in_hand = fence.in_hand
                assert in_hand is not None
                offsets.overtaken(tp, in_hand[1])
            offsets[tp] = record.offset
    return handed


def test_records_sought_again_are_handed_over_after_a_seek_during_a_batch() -> None:
    """Before the fence the records fetched again (4 to 10) were dropped as read already: the
    rest of the old batch and the record in hand had moved the read offset to 13."""
    handed = drain(
        SeekFence(),
        ReadOffsets(),
        [{A: records(A, 10, 13)}, {A: records(A, 4, 13)}],
        seek_during=(A, 10, 4),
    )
    assert handed == [10, *range(4, 14)]


def test_without_the_fence_the_records_fetched_again_are_dropped() -> None:
    """The same loop with Faust's plain read offsets and no stamps, what the fence fixes: 4 to
    12 are never handed over (Faust hands over the record at the read offset again)."""

    class Plain(SeekFence):
        def stamp(self, records: Any) -> Any:
            return dict(records)

    class PlainOffsets(ReadOffsets):
        def overtaken(self, tp: Any, offset: int) -> None:
            pass

    handed = drain(
        Plain(),
        PlainOffsets(),
        [{A: records(A, 10, 13)}, {A: records(A, 4, 13)}],
        seek_during=(A, 10, 4),
    )
    assert handed == [10, 11, 12, 13, 13]
