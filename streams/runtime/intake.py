"""The one admit / acknowledge / seek-back sequence every role's agent runs.

Faust acknowledges a record when the agent asks for the next batch, and also from a
``finally`` block when the agent raises or is cancelled (shutdown, crash): for a batch that
never became durable. So the intake holds one extra reference on each record's message
(``Message.incref``) from the moment it is handed over, and a role drops it
(:meth:`Batch.acknowledge`) only once what the batch came to is durable (rows in ClickHouse,
records on the broker, state in a checkpoint). A batch abandoned for any reason keeps its
references, is never acknowledged, and so is never committed: the next owner of the
partition reads it again, and the role's idempotent writes make the replay harmless.

Per batch, :func:`batches`:

0. leaves out records fetched in an older consumer generation (before a rebalance): their
   partition may belong to another worker now, whose state a role must not write to; they
   are never acknowledged (Faust's acknowledgement of them is refused, see
   :func:`~undertow.streams.runtime.consumer.refuse_stale_acks`) and are read again from
   the committed offset by whoever owns the partition;
1. splits the records with :meth:`Positions.admit` into those in offset order, repeats of
   records handed over already since the last seek, and records after a gap;
2. holds records after a gap (never acknowledged: they come again after the seek back) and
   seeks their partitions back to the missing offset;
3. yields a :class:`Batch` of the admitted records and the repeats, all referenced; the
   role handles ``records`` and acknowledges the batch once it is durable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from undertow.streams.records import SourceRecord, origin
from undertow.streams.runtime.consumer import seek_back
from undertow.streams.runtime.positions import Positions

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Records handed to a role: ``events`` in offset order (as ``records``), ``repeats``
    handed over before; every one referenced until :meth:`acknowledge`."""

    stream: Any
    events: list[Any]
    repeats: list[Any] = field(default_factory=list)
    records: list[SourceRecord] = field(default_factory=list)
    generation: int | None = None  # the consumer generation the records were fetched in

    @property
    def all(self) -> list[Any]:
        return [*self.events, *self.repeats]

    async def acknowledge(self) -> None:
        """What this batch came to is durable: let Faust commit past it."""
        for event in self.all:
            await self.stream.ack(event)
        self.events, self.repeats = [], []


async def batches(
    app: Any, stream: Any, positions: Positions, size: int, within: float
) -> AsyncIterator[Batch]:
    """The stream's micro-batches, each partition in offset order (see the module doc)."""
    async for fetched in stream.take_events(size, within=within):
        generation = app.consumer_generation_id
        batch = [e for e in fetched if _generation(e) in (None, generation)]
        if len(batch) < len(fetched):
            logger.debug(
                "%d records of an older consumer generation left out", len(fetched) - len(batch)
            )
        events, repeats, held_back, seeks = positions.admit(batch)
        for event in held_back:  # never acknowledged: read again after the seek back
            event.message.incref()
        await seek_back(app, positions, seeks)
        for event in (*events, *repeats):  # held until the role says it is durable
            event.message.incref()
        yield Batch(stream, events, repeats, records(events), generation)


def _generation(event: Any) -> int | None:
    generation = getattr(event.message, "generation_id", None)
    return generation if isinstance(generation, int) else None


def records(events: Sequence[Any]) -> list[SourceRecord]:
    """Faust events as the processors see them."""
    return [
        SourceRecord(
            topic=event.message.topic,
            partition=event.message.partition,
            offset=event.message.offset,
            key=event.message.key,
            value=event.message.value,
            origin=origin(event.message.headers),
        )
        for event in events
    ]
