"""The repartition stage of the drift and policy roles: their source records forwarded
unchanged to the role's repartition topic, keyed by what the role groups by (a segment, an
app), so every record of a key reaches one worker, in order.

Each source partition is forwarded in offset order (the runtime's ordered intake), with the
record's origin in a header, so the keyed stage behind can tell a record forwarded twice (a
rekey worker killed after forwarding, before its commit) from a new one. Records of other
types, or undecodable, go to dead letters. A batch is acknowledged only once the broker has
all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.streams.records import SourceRecord, letter, origin_header

if TYPE_CHECKING:
    from undertow.streams.runtime.intake import Batch
    from undertow.streams.runtime.worker import Runtime

Forwarded = tuple[list[tuple[bytes | None, bytes]], list[list[tuple[str, bytes]]], list[bytes]]


def route(
    records: list[SourceRecord],
    types: tuple[str, ...],
    key_of: Callable[[dict[str, Any]], str],
    processor: str,
    codec: AvroCodec,
) -> Forwarded:
    """(messages, their origin headers, encoded dead letters) for a batch of records."""
    messages: list[tuple[bytes | None, bytes]] = []
    headers: list[list[tuple[str, bytes]]] = []
    letters: list[bytes] = []
    for rec in records:
        try:
            if rec.value is None:
                raise DecodeError(f"empty value (tombstone): expected {' or '.join(types)}")
            decoded = codec.decode(rec.value)
            if decoded.type_name not in types:
                raise DecodeError(f"record type {decoded.type_name}; expected {' or '.join(types)}")
            messages.append((key_of(decoded.record).encode(), rec.value))
            headers.append(origin_header(rec))
        except DecodeError as exc:
            dead = letter(rec, str(exc), type(exc).__name__, processor)
            letters.append(codec.encode("dead_letter", dead))
    return messages, headers, letters


def add(
    runtime: Runtime,
    sources: tuple[str, ...],
    types: tuple[str, ...],
    key_of: Callable[[dict[str, Any]], str],
) -> None:
    """Forward ``sources`` of ``types`` to the role's repartition topic, keyed by ``key_of``."""
    settings = runtime.settings
    codec = AvroCodec()
    target = settings.repartition_topic
    processor = f"{settings.role}.rekey"

    async def forward(batch: Batch) -> None:
        messages, headers, letters = route(batch.records, types, key_of, processor, codec)
        await runtime.publish(target, messages, target, headers)
        await runtime.publish(
            settings.deadletter_topic, [(None, v) for v in letters], "dead letters"
        )
        await batch.acknowledge()

    runtime.consume(sources, f"undertow.streams.{settings.role}.rekey", forward)
