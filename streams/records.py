"""A Kafka record as every processor sees it, the decoded event with its coordinates
(:class:`SinkItem`), and the dead letter of a record a processor cannot use.

Processors take :class:`SourceRecord` values (coordinates, key, raw value and, for records
forwarded by a repartition stage, where they were first read), never Faust or aiokafka
objects: the runtime (:mod:`undertow.streams.runtime.intake`) makes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from undertow.streams.dead_letters import dead_letter
from undertow.streams.scoring.scored import Scored

ORIGIN_HEADER = "undertow-origin"


@dataclass(frozen=True)
class SourceRecord:
    """One Kafka record as the processor sees it: coordinates, key and raw value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    origin: tuple[str, int, int] | None = None  # (topic, partition, offset) before a repartition

    @property
    def source(self) -> tuple[str, int]:
        """The event's origin partition as ``("topic:partition", offset)``: where it was
        first read, for records forwarded by a repartition stage (their ``origin``)."""
        topic, partition, offset = self.origin or (self.topic, self.partition, self.offset)
        return f"{topic}:{partition}", offset


class SinkItem(NamedTuple):
    """One decoded event and where it came from: the unit the processor and its hooks pass on.

    ``scores`` is filled by the enrich hook: a :class:`~undertow.streams.scoring.scored.Scored`,
    stored in ``scores`` and ``embeddings``; None (not scored) writes no ``scores`` row.
    """

    record: Mapping[str, Any]
    topic: str
    partition: int
    offset: int
    scores: Scored | None = None


def letter(
    rec: SourceRecord,
    reason: str,
    error_type: str,
    processor: str,
    item: SinkItem | None = None,
) -> dict[str, object]:
    """The dead letter of a record a processor cannot use (with its decoded ``item``, if any,
    for the ids it carries)."""
    return dead_letter(
        reason=reason,
        error_type=error_type,
        processor=processor,
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        payload=rec.value or b"",
        record=item.record if item is not None else None,
    )


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
