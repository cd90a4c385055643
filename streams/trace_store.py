"""Open traces, kept in the worker's Faust table until they are complete, then written once.

Each open trace is one entry under its ``trace_id``: the source partition it lives in, its
:class:`~undertow.streams.traces.TraceState` (what the ``traces`` row will say) and its
:class:`~undertow.streams.enrich.TraceContext` (what scoring its later events needs). Values
are JSON-shaped dicts, the form Faust's ``json`` serializer keeps in the table's changelog
topic, so a restarted or rebalanced worker recovers the open traces of its partitions.

The store talks to the table through two small things, so its logic is tested without Faust:
``data``, the mapping of values (``table.data``), and ``send(partition, key, value)``, which
writes a changelog record (``table.send_changelog``). The changelog partition is always the
source partition of the trace's events, stated explicitly: the SDK's partitioner (librdkafka)
and Faust's (the Java one) would not agree on a key's partition, and Faust recovers changelog
partition *n* to the owner of source partition *n*.

Expiry: :meth:`TraceStore.ready` lists the entries whose trace is done (a completion and
``idle_s`` of quiet, or ``max_age_s`` since it began; :func:`undertow.streams.traces.readiness`)
in partitions this worker owns; the worker writes their rows, then :meth:`TraceStore.remove`
deletes them (a tombstone in the changelog), unless an event arrived for the trace in the
meantime, in which case it stays open and is written later with everything.

Exactly once: an entry remembers the highest source offset it counted per partition, so
records read again after a crash (past the last commit, but already in the changelog) are not
counted twice. An entry is written only once the consumer has *committed* past every record it
counted (``ready``'s ``committed``), so no crash can later replay one of them into a second
part after this one was written and deleted; a worker that recovers idle traces after a crash
first reads and commits the replayed records, then writes. A trace row is keyed by its
``part`` (the first event id of the entry), so a worker killed between writing rows and
deleting their entries writes the same parts again after recovery, and the table keeps one of
each. An event arriving after its trace was written (late feedback) starts a new part; the
``trace_totals`` view adds the parts up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple

from undertow.streams.enrich import TraceContext
from undertow.streams.scored import Scored
from undertow.streams.sink import SinkItem
from undertow.streams.traces import (
    DEFAULT_IDLE_S,
    DEFAULT_MAX_AGE_S,
    TraceError,
    TraceState,
    readiness,
    update,
)

Send = Callable[[int, str, Mapping[str, Any] | None], None]
logger = logging.getLogger(__name__)


class TraceEntry(NamedTuple):
    """One open trace: where it lives, what it adds up to, its scoring context, and the
    highest source offset folded in, per source partition (the replay guard)."""

    partition: int
    state: TraceState
    context: TraceContext
    offsets: Mapping[int, int] = {}

    def to_value(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "state": self.state.to_dict(),
            "context": self.context.to_dict(),
            # JSON object keys are strings
            "offsets": {str(p): o for p, o in self.offsets.items()},
        }

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> TraceEntry:
        try:
            return cls(
                int(value["partition"]),
                TraceState.from_dict(value["state"]),
                TraceContext.from_dict(value.get("context")),
                {int(p): int(o) for p, o in (value.get("offsets") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TraceError(f"not a stored trace entry: {exc}") from exc

    def folded(self, partition: int, offset: int) -> bool:
        """Whether the record at ``offset`` of ``partition`` is already counted here."""
        return offset <= self.offsets.get(partition, -1)


class TraceStore:
    """The open traces of a worker (see the module doc)."""

    def __init__(
        self,
        data: MutableMapping[str, Any],
        send: Send,
        *,
        idle_s: float = DEFAULT_IDLE_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data = data
        self.send = send
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.clock = clock

    def get(self, trace_id: str) -> TraceEntry | None:
        value = self.data.get(trace_id)
        return None if value is None else TraceEntry.from_value(value)

    def context(self, trace_id: str) -> TraceContext | None:
        """The scoring context of an open trace (safe to call from the scoring thread)."""
        value = self.data.get(trace_id)
        return None if value is None else TraceContext.from_dict(value.get("context"))

    def apply(
        self,
        items: Sequence[SinkItem],
        committed: Callable[[int], int | None] | None = None,
    ) -> int:
        """Fold stored (and scored) events into their traces; returns the traces touched.

        Each touched trace's new value is written once, with one changelog record.

        Records already folded in are skipped: a worker that crashed after updating the
        table but before committing its offsets reads those records again, and the entry
        it recovers from the changelog remembers the highest offset it counted per source
        partition (records of a partition come in offset order). So are records below
        ``committed(partition)`` (the broker-confirmed committed offset of their source
        partition, as for :meth:`ready`): a commit passes a record only once it was folded,
        so one handed over again after the commit was counted already, possibly in a trace
        written and deleted since, where the entry's offsets no longer guard it
        (tests/integration/test_worker.py counted such a record in a second part of its
        trace after a restart, in about one run of four).
        """
        now = self.clock()
        touched: dict[str, TraceEntry] = {}
        late = 0
        for item in sorted(items, key=lambda i: (i.topic, i.partition, i.offset)):
            if committed is not None:
                done = committed(item.partition)
                if done is not None and item.offset < done:
                    late += 1
                    continue
            trace_id = str(item.record["trace_id"])
            entry = touched.get(trace_id) or self.get(trace_id)
            if entry is not None and entry.folded(item.partition, item.offset):
                continue
            scored = item.scores if isinstance(item.scores, Scored) else None
            state = update(
                entry.state if entry else None,
                item.record,
                scored=scored.trace_fields() if scored else None,
                now=now,
            )
            context = entry.context if entry else TraceContext()
            if scored is not None:
                context = context.updated(scored)
            offsets = {**(entry.offsets if entry else {}), item.partition: item.offset}
            touched[trace_id] = TraceEntry(item.partition, state, context, offsets)
        for trace_id, entry in touched.items():
            value = entry.to_value()
            self.data[trace_id] = value
            self.send(entry.partition, trace_id, value)
        if late:
            logger.debug("%d records below the committed offset left out of traces", late)
        return len(touched)

    def ready(
        self,
        now: float | None = None,
        owned: Callable[[int], bool] = lambda _: True,
        committed: Callable[[int], int | None] | None = None,
    ) -> list[TraceEntry]:
        """Entries of owned partitions whose trace is done, oldest first.

        ``committed(partition)`` is the consumer's committed offset of a source partition
        (the next offset a restarted consumer would read; None: nothing committed). An
        entry is written only once every record it counted is below that offset: until
        then a crash could replay some of its records into a new, second part of the trace
        after this part was written and deleted. None skips the check (tests, backfills).

        Entries of partitions this worker no longer owns are dropped from memory (their new
        owner recovered them from the changelog), without a tombstone.
        """
        now = self.clock() if now is None else now
        out = []
        for trace_id, value in list(self.data.items()):
            partition = int(value.get("partition", -1))
            if not owned(partition):
                self.data.pop(trace_id, None)
                continue
            state = TraceState.from_dict(value["state"])  # the context is decoded if ready
            if not readiness(state, now, idle_s=self.idle_s, max_age_s=self.max_age_s):
                continue
            entry = TraceEntry.from_value(value)
            if committed is None or all(
                (done := committed(p)) is not None and done > offset
                for p, offset in entry.offsets.items()
            ):
                out.append(entry)
        out.sort(key=lambda e: (e.state.start_us, e.state.trace_id))
        return out

    def remove(self, entries: Sequence[TraceEntry]) -> int:
        """Delete written entries, except those that changed since; returns how many."""
        removed = 0
        for entry in entries:
            trace_id = entry.state.trace_id
            value = self.data.get(trace_id)
            if value is None:
                continue
            current = value["state"]
            if current["span_count"] != entry.state.span_count or current["last_seen"] != (
                entry.state.last_seen
            ):
                continue  # an event arrived meanwhile: written again when done
            del self.data[trace_id]
            self.send(entry.partition, trace_id, None)
            removed += 1
        return removed

    def __len__(self) -> int:
        return len(self.data)


__all__ = ["Send", "TraceEntry", "TraceStore"]
