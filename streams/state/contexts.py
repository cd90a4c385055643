"""The open traces' scoring contexts, kept in the ingest worker's Faust table.

Scoring a later event of a trace needs something of its earlier events
(:class:`~undertow.streams.scoring.enrich.TraceContext`: the latest prompt's token count, the latest
retrieval's document vectors), which may have come in an earlier batch. Each open trace is
one entry under its ``trace_id``: the source partition it lives in, its context, when it was
first and last seen, and whether a completion was seen. Values are JSON-shaped dicts, the
form Faust's ``json`` serializer keeps in the table's changelog topic, so a restarted or
rebalanced worker recovers the contexts of its partitions.

The store talks to the table through two small things, so its logic is tested without Faust:
``data``, the mapping of values, and ``send(partition, key, value)``, which writes a
changelog record. The changelog partition is always the source partition of the trace's
events, stated explicitly: the SDK's partitioner (librdkafka) and Faust's (the Java one)
would not agree on a key's partition, and Faust recovers changelog partition *n* to the owner
of source partition *n*.

Nothing here counts: a trace's figures are folded where they are stored (``trace_spans`` and
the ``traces`` view, :mod:`undertow.streams.traces`), so a record applied twice changes no
total. Applying the same events again in the same order gives the same context.

Expiry: :meth:`ContextStore.expire` deletes (with a tombstone) the entries of owned partitions
whose trace is answered and has been quiet for ``idle_s``, or is older than ``max_age_s``,
and drops from memory the entries of partitions this worker no longer owns (their new owner
recovered them from the changelog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple

from undertow.schemas.events import event_type
from undertow.streams.records import SinkItem
from undertow.streams.scoring.enrich import TraceContext
from undertow.streams.scoring.scored import Scored

Send = Callable[[int, str, Mapping[str, Any] | None], None]
logger = logging.getLogger(__name__)

DEFAULT_IDLE_S = 30.0
DEFAULT_MAX_AGE_S = 600.0
FORMAT = 2


class ContextEntry(NamedTuple):
    """One open trace: where it lives, its scoring context, and its processing times."""

    partition: int
    context: TraceContext
    first_seen: float
    last_seen: float
    answered: bool = False  # a completion was seen

    def to_value(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "partition": self.partition,
            "context": self.context.to_dict(),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "answered": self.answered,
        }

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> ContextEntry | None:
        """The entry in a table value; None for one of another format (it is dropped)."""
        try:
            if value.get("format") != FORMAT:
                return None
            return cls(
                int(value["partition"]),
                TraceContext.from_dict(value.get("context")),
                float(value["first_seen"]),
                float(value["last_seen"]),
                bool(value.get("answered")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def done(self, now: float, idle_s: float, max_age_s: float) -> bool:
        """Answered and quiet for ``idle_s``, or open for ``max_age_s``."""
        return (self.answered and now - self.last_seen >= idle_s) or (
            now - self.first_seen >= max_age_s
        )


class ContextStore:
    """The open traces' contexts of a worker (see the module doc)."""

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

    def get(self, trace_id: str) -> ContextEntry | None:
        value = self.data.get(trace_id)
        return None if value is None else ContextEntry.from_value(value)

    def context(self, trace_id: str) -> TraceContext | None:
        """The scoring context of an open trace (safe to call from the scoring thread)."""
        entry = self.get(trace_id)
        return None if entry is None else entry.context

    def apply(self, items: Sequence[SinkItem]) -> int:
        """Fold stored (and scored) events into their traces' contexts, each touched trace
        written once, with one changelog record; returns the traces touched."""
        now = self.clock()
        touched: dict[str, ContextEntry] = {}
        for item in sorted(items, key=lambda i: (i.topic, i.partition, i.offset)):
            trace_id = str(item.record["trace_id"])
            entry = touched.get(trace_id) or self.get(trace_id)
            context = entry.context if entry else TraceContext()
            if isinstance(item.scores, Scored):
                context = context.updated(item.scores)
            try:
                answered = event_type(item.record) == "completion"
            except ValueError:
                answered = False
            touched[trace_id] = ContextEntry(
                item.partition,
                context,
                entry.first_seen if entry else now,
                now,
                answered or bool(entry and entry.answered),
            )
        for trace_id, entry in touched.items():
            value = entry.to_value()
            self.data[trace_id] = value
            self.send(entry.partition, trace_id, value)
        return len(touched)

    def expire(
        self, now: float | None = None, owned: Callable[[int], bool] = lambda _: True
    ) -> int:
        """Delete the done entries of owned partitions; forget those of others. Returns the
        entries deleted."""
        now = self.clock() if now is None else now
        deleted = 0
        for trace_id, value in list(self.data.items()):
            entry = ContextEntry.from_value(value)
            if entry is not None and not owned(entry.partition):
                self.data.pop(trace_id, None)
                continue
            if entry is None or entry.done(now, self.idle_s, self.max_age_s):
                del self.data[trace_id]
                if entry is not None:
                    self.send(entry.partition, trace_id, None)
                deleted += 1
        return deleted

    def __len__(self) -> int:
        return len(self.data)


__all__ = ["ContextEntry", "ContextStore", "Send"]
