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

1. splits the records with :meth:`Positions.admit` into those in offset order, repeats of
   records handed over already since the last seek, and records after a gap;
2. holds records after a gap (never acknowledged: they come again after the seek back) and
   seeks their partitions back to the missing offset;
3. yields a :class:`Batch` of the admitted records and the repeats, all referenced; the
   role handles ``records`` and acknowledges the batch once it is durable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from undertow.streams.records import SourceRecord
from undertow.streams.runtime.consumer import seek_back
from undertow.streams.runtime.positions import Positions

ORIGIN_HEADER = "undertow-origin"


@dataclass
class Batch:
    """Records handed to a role: ``events`` in offset order (as ``records``), ``repeats``
    handed over before; every one referenced until :meth:`acknowledge`."""

    stream: Any
    events: list[Any]
    repeats: list[Any] = field(default_factory=list)
    records: list[SourceRecord] = field(default_factory=list)

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
    async for batch in stream.take_events(size, within=within):
        events, repeats, held_back, seeks = positions.admit(batch)
        for event in held_back:  # never acknowledged: read again after the seek back
            event.message.incref()
        await seek_back(app, positions, seeks)
        for event in (*events, *repeats):  # held until the role says it is durable
            event.message.incref()
        yield Batch(stream, events, repeats, records(events))


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


def origin_header(rec: SourceRecord) -> list[tuple[str, bytes]]:
    """Where a forwarded record was first read: ``topic:partition:offset`` (its origin's own
    origin when it was forwarded already)."""
    topic, partition, offset = rec.origin or (rec.topic, rec.partition, rec.offset)
    return [(ORIGIN_HEADER, f"{topic}:{partition}:{offset}".encode())]


def origin(headers: Any) -> tuple[str, int, int] | None:
    """The origin header of a message (headers as aiokafka or Faust give them), if any."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == ORIGIN_HEADER and value:
            text = value.decode() if isinstance(value, bytes | bytearray) else str(value)
            topic, partition, offset = text.rsplit(":", 2)
            return topic, int(partition), int(offset)
    return None
