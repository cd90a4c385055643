"""Seeks that take effect at once: no record fetched before a seek is handed over after it.

A worker seeks a partition back when a record is missing
(:class:`~undertow.streams.runtime.positions.Positions`) or was skipped at a rebalance
(:class:`~undertow.streams.runtime.positions.Rereads`). With Faust's aiokafka driver such a
seek did not always bring the records again (tests/integration/test_monitor_workers.py: a
restarted drift worker's first seek back came up empty in about half the runs), for three
reasons, each handled here:

1. Faust calls aiokafka's ``seek`` from the worker's event loop while the Kafka consumer runs
   on a thread of its own, racing the fetch in progress (once a ``KeyError`` in aiokafka's
   ``fetched_records``). The seek is handed to the consumer's thread, as Faust does with
   every other consumer call.
2. Faust hands a fetched batch over record by record. The rest of a batch fetched before the
   seek still went through after it and moved Faust's read offset past the sought offset,
   and Faust then dropped the records fetched again as already read. Each batch is stamped,
   on the consumer's thread, with the count of seeks per partition at the moment it was
   fetched; a record whose partition was sought since is left out.
   Faust's own seek to the committed offsets after an assignment counts as well.
3. The record whose hand-over was in progress during the seek (waiting for room in the
   stream's buffer) set the read offset past the sought one when it finished, with the same
   effect. The seek notes that record, and its read offset is not set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)


class Fetched(dict[Any, Any]):
    """A batch of records per partition, with the seek counts at the moment it was fetched."""

    def __init__(self, records: Mapping[Any, Any], seeks: Mapping[Any, int]) -> None:
        super().__init__(records)
        self.seeks = dict(seeks)


class ReadOffsets(dict[Any, int | None]):
    """Faust's read offsets (the last offset handed over per partition; a record at or below
    it is dropped as a repeat), less the one set by a hand-over that a seek overtook (point 3
    above)."""

    def __init__(self, offsets: Mapping[Any, int | None] | None = None) -> None:
        super().__init__(offsets or {})
        self._overtaken: dict[Any, int] = {}

    def __missing__(self, tp: Any) -> None:
        return None

    def overtaken(self, tp: Any, offset: int) -> None:
        """The record at ``offset`` was being handed over when ``tp`` was sought: when its
        hand-over ends, the read offset stays where the seek put it."""
        self._overtaken[tp] = offset

    def __setitem__(self, tp: Any, offset: int | None) -> None:
        if offset is not None and self._overtaken.pop(tp, None) == offset:
            logger.debug("%r: read offset stays at %r, not %d: sought", tp, self.get(tp), offset)
            return
        super().__setitem__(tp, offset)

    def __delitem__(self, tp: Any) -> None:
        self._overtaken.pop(tp, None)
        super().__delitem__(tp)

    def pop(self, tp: Any, *default: Any) -> Any:
        self._overtaken.pop(tp, None)
        return super().pop(tp, *default)

    def clear(self) -> None:
        self._overtaken.clear()
        super().clear()


class SeekFence:
    """Seek counts per partition, the filter that leaves out records fetched before a seek of
    their partition (point 2 above), and the record being handed over (point 3)."""

    def __init__(self) -> None:
        self._seeks: dict[Any, int] = {}
        self.in_hand: tuple[Any, int] | None = None  # (tp, offset) being handed over
        self.left_out = 0

    def seek(self, seek: Callable[[Any, int], None], tp: Any, offset: int) -> None:
        """Seek, and count it; on the consumer's thread, like the fetches."""
        seek(tp, offset)
        self._seeks[tp] = self._seeks.get(tp, 0) + 1

    async def seek_to_committed(self, consumer: Any) -> dict[Any, int | None]:
        """aiokafka's ``seek_to_committed`` (Faust's seek after an assignment), with every
        seek counted as it is made: the committed offsets are asked first, then the seeks
        made with no wait between (on the consumer's thread)."""
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
        for tp, offset in committed.items():
            if offset and offset > 0:
                self.seek(consumer.seek, tp, offset)
        return committed

    def stamp(self, records: Any) -> Any:
        """A batch just fetched, stamped with the seek counts (on the consumer's thread)."""
        if not isinstance(records, Mapping):
            return records
        return Fetched(records, self._seeks)

    def current(self, records: Any, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """``items`` of the batch ``records``, less those of partitions sought since it was
        fetched (checked at each record: a seek may come while the batch is handed over).

        Faust asks for the next record only once the one before is handed over, read offset
        set, with no wait between: while this generator is suspended at a record, that record
        is :attr:`in_hand`."""
        stamped = records.seeks if isinstance(records, Fetched) else None
        left_out = 0
        try:
            for tp, record in items:
                if stamped is not None and self._seeks.get(tp, 0) != stamped.get(tp, 0):
                    left_out += 1
                    continue
                offset = getattr(record, "offset", None)
                self.in_hand = (tp, offset) if isinstance(offset, int) else None
                yield tp, record
                self.in_hand = None
        finally:
            self.in_hand = None
            if left_out:
                self.left_out += left_out
                logger.debug("left out %d records fetched before a seek", left_out)


def fence_seeks(app: Any) -> SeekFence | None:
    """Make the Faust app's seeks take effect at once (points 1 to 3 above). Returns the fence,
    or None for a driver other than aiokafka's threaded one, left as it is."""
    consumer = app.consumer
    thread = getattr(consumer, "_thread", None)
    if thread is None or not hasattr(thread, "call_thread"):
        return None
    fence = SeekFence()

    async def seek_on_the_thread(partition: Any, offset: int) -> None:
        await thread.call_thread(fence.seek, thread._ensure_consumer().seek, partition, offset)

    fetch_records = thread._fetch_records

    async def fetch_stamped(*args: Any, **kwargs: Any) -> Any:
        return fence.stamp(await fetch_records(*args, **kwargs))

    scheduler = consumer.scheduler
    iterate = scheduler.iterate

    def iterate_current(records: Any) -> Iterator[tuple[Any, Any]]:
        return fence.current(records, iterate(records))

    read_offsets = ReadOffsets(consumer._read_offset)

    def overtake(sought: Collection[Any]) -> None:
        in_hand = fence.in_hand
        if in_hand is not None and in_hand[0] in sought:
            read_offsets.overtaken(*in_hand)

    faust_seek = consumer.seek

    async def seek(partition: Any, offset: int) -> None:
        await faust_seek(partition, offset)  # sets the read offset to the sought one
        overtake({partition})

    async def seek_to_committed() -> Mapping[Any, int | None]:
        # Faust's perform_seek sets the read offsets to these once this returns.
        committed: Mapping[Any, int | None] = await thread.call_thread(
            fence.seek_to_committed, thread._ensure_consumer()
        )
        overtake({tp for tp, offset in committed.items() if offset and offset > 0})
        return committed

    consumer._seek = seek_on_the_thread
    thread._fetch_records = fetch_stamped
    scheduler.iterate = iterate_current
    consumer._read_offset = read_offsets
    consumer.seek = seek
    thread.seek_to_committed = seek_to_committed
    return fence
