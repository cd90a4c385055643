"""Where each partition's next record must come from: the bookkeeping behind the ordered
intake (:mod:`undertow.streams.runtime.intake`), as plain classes that know nothing of Faust,
so every rule here is tested without a broker (tests/unit/streams/runtime/).

Invariant kept by the two together: a stage is handed each partition's records exactly in
offset order, none skipped, and a record it was not handed is never acknowledged, so no
commit passes it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


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


class Positions:
    """Where each partition's next record must come from, so a stage sees records exactly in
    offset order, none skipped: the drift and policy roles, whose state is order-dependent, and
    the ingest role, whose commits cannot pass a record never handed over.

    Faust hands records over out of order around seeks: after an assignment it fetches before
    it seeks back to the committed offsets, and records it dropped as stale are read again
    (:func:`~undertow.streams.runtime.consumer.refuse_stale_acks`) only after newer ones went
    through. A stage that folded the newer ones first would take the older ones for repeats
    and lose them.

    Every seek the worker knows of sets the partition's position. :meth:`admit` passes the
    record at the position; after a gap it holds the rest of the partition back (the caller
    keeps those records unacknowledged, so Faust cannot commit past the gap, and seeks back
    to the position, again after ``RESEEK_AFTER_S`` while still waiting); records below the
    position are repeats of ones handed over already. Offsets of a non-transactional topic
    are contiguous, so a gap is only real where retention removed records: the caller moves
    the position to the log's start then
    (:func:`~undertow.streams.runtime.consumer.seek_back`).

    A batch can end with records fetched before a seek back and go on with the ones the seek
    brought: the record at the position passes even after a gap in the same batch. For a
    seek to bring the records again at all, Faust's hand-over needed help
    (:mod:`undertow.streams.runtime.seeks`). Should a partition still go silent, :meth:`stalled`
    names the partitions that owe records held back and have been silent for
    ``STALL_AFTER_S``, and those the broker has records for past the position while their
    whole topic has been silent that long (:meth:`quiet` names the ones to ask the broker
    about); a timer seeks them back again
    (:func:`~undertow.streams.runtime.consumer.watch_stalls`).
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
