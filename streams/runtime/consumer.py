"""The workarounds on Faust's consumer that keep the committed offset honest and bring skipped
records back, each restoring one invariant (docs/faust.md has the upstream reports, their
reproductions in tests/unit/streams/runtime/test_faust_upstream.py, and what removing each
would take):

* :func:`refuse_stale_acks`: a record Faust skipped because it was fetched in an older
  consumer generation is never acknowledged, and is read again.
* :func:`seek_uncommitted`: after every assignment, each partition of the role's topics is
  read from its committed offset, also where nothing was committed yet (the first offset),
  and the intake's :class:`~undertow.streams.runtime.positions.Positions` learns where.
* :func:`watch_stalls`: a partition that owes records held back, or whose topic is silent
  while the broker has records past its position, is sought back.
* :func:`fetch_again`: a partition sought back because a seek brought nothing is fetched
  again if Faust left it out of the partitions it fetches.

The attributes replaced here (``ack``, ``perform_seek``) are checked at start by
:func:`undertow.streams.runtime.edge.check_edge`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from undertow.streams.runtime.positions import Positions, Rereads

logger = logging.getLogger(__name__)

Timer = Callable[[float, str, Callable[[], Any]], None]


def refuse_stale_acks(app: Any, timer: Timer, positions: Positions | None = None) -> Rereads:
    """Keep Faust from acknowledging records it skipped after a rebalance, and read them again.

    A record fetched before a rebalance and reaching the stream after it belongs to the old
    consumer generation: Faust skips it, and also *acknowledges* it, so the next commit may
    move past a record that was never processed; nor does it fetch the record again. A worker
    restarted after a crash (a rebalance while it fetches) lost such records. Here the
    acknowledgement of a stale-generation record is refused, which keeps the committed offset
    below it, and a timer seeks its partition back to the lowest skipped offset (again if that
    record does not come, :class:`Rereads`), so the record is fetched again in the current
    generation; records re-read on the way are repeats the intake recognises.
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
            await fetch_again(app, tp)
            await consumer.seek(tp, offset)
            if positions is not None:
                positions.sought(tp.topic, tp.partition, offset)

    timer(0.5, "undertow.streams.reread", read_skipped_again)
    return rereads


def seek_uncommitted(
    app: Any,
    topics: Collection[str],
    *,
    reread_uncommitted: bool,
    positions: Positions | None = None,
) -> None:
    """After each assignment, tell ``positions`` where each partition of ``topics`` is read
    from, and with ``reread_uncommitted`` (the ``earliest`` reset policy) read partitions
    without a committed offset from their first offset.

    Faust resumes fetching after an assignment and then seeks every partition back to its
    committed offset, so records fetched meanwhile and dropped are read again; but a partition
    without a committed offset (a new group, or nothing committed yet; Kafka reports 0 the
    same way) is not sought at all, and the records fetched and dropped there were lost
    (tests/integration/test_worker.py found 547 of 660 events never stored after a restart).
    ``topics`` is read at each assignment, so roles may add to it while they are wired.
    """
    consumer = app.consumer
    perform_seek = consumer.perform_seek

    async def perform_seek_all() -> None:
        await perform_seek()
        faust_view = consumer._committed_offset  # set from the broker by perform_seek
        for tp in sorted(consumer.assignment()):
            if tp.topic not in topics:
                continue
            offset = faust_view.get(tp)
            if reread_uncommitted and not offset:
                await consumer.seek(tp, 0)
                offset = 0
            if positions is not None:
                positions.sought(tp.topic, tp.partition, offset)

    consumer.perform_seek = perform_seek_all


def watch_stalls(app: Any, timer: Timer, positions: Positions) -> None:
    """Seek back the assigned partitions :meth:`Positions.stalled` names, every second."""

    async def seek_stalled() -> None:
        assigned = {(tp.topic, tp.partition): tp for tp in app.consumer.assignment()}
        quiet = [assigned[key] for key in positions.quiet() if key in assigned]
        ends: dict[tuple[str, int], int] = {}
        if quiet:
            # Bounded: the timer's ticks run one after another, so a broker call that never
            # answers would end the watch for good, silently.
            try:
                found = await asyncio.wait_for(
                    app.consumer.highwaters(*quiet), Positions.STALL_AFTER_S
                )
            except TimeoutError:
                logger.warning(
                    "asking the broker for the end offsets of %d quiet partitions took more "
                    "than %.0f s; asking again on a later tick",
                    len(quiet),
                    Positions.STALL_AFTER_S,
                )
                return
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
            await fetch_again(app, tp)
        await seek_back(app, positions, seeks)

    timer(1.0, "undertow.streams.stalls", seek_stalled)


async def fetch_again(app: Any, tp: Any) -> bool:
    """Make sure Faust fetches ``tp``, an assigned partition about to be sought back because
    it owes records; True when it had to be put back among the partitions Faust fetches.

    Faust hands aiokafka's fetcher only its *active* partitions; records fetched for any
    other stay in the fetcher, and a seek just fetches them again, unseen. A partition leaves
    the active ones when its stream's buffer is under pressure, to come back once the
    buffer has drained below 40% (``Consumer.on_buffer_full``/``on_buffer_drop``), and while
    the assignment is recovered (``pause_partitions``); while the other partitions keep the
    buffer above that mark, it stays out (docs/faust.md, fault 11). Chaos seed 26 left an
    event partition unread for as long as the run lasted, every seek back answered by
    nothing, most likely so. Outside a rebalance and a recovery, an assigned partition that
    owes records is fetched; the buffer's bound is a soft one (Faust still accepts whatever
    was fetched)."""
    from faust.types import TP

    consumer = app.consumer
    # Faust's TP: records carry aiokafka's TopicPartition, equal to it as a tuple, but Faust
    # asserts its own type in the active set (and resume_partitions adds what it is given).
    tp = TP(tp.topic, tp.partition)
    if app.rebalancing or app.in_recovery or tp not in consumer.assignment():
        return False
    active = consumer._get_active_partitions()
    if tp in active:
        return False
    why = (
        "its stream's buffer was full"
        if tp in consumer._buffered_partitions
        else "paused"
        if tp in consumer._paused_partitions
        else "left out"
    )
    logger.warning(
        "%s[%d]: Faust was not fetching it (%s) while it owed records; fetching it again (%s)",
        tp.topic,
        tp.partition,
        why,
        await fetch_state(app, tp),
    )
    consumer._buffered_partitions.discard(tp)
    consumer.resume_partitions([tp])
    return True


async def fetch_state(app: Any, tp: Any) -> str:
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


async def seek_back(app: Any, positions: Positions, seeks: Mapping[Any, int]) -> None:
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
