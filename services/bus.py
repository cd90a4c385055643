"""The Kafka side of Undertow: client configs, publishing encoded records, bounded reads.

Everything here takes the bootstrap servers explicitly. Reads are bounded by offsets and a
deadline, never by waiting a fixed time: ``read_range`` returns once every partition reached
its end offset, or raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from undertow.errors import UndertowError

# librdkafka's own log lines (retries, reconnects) go through Python logging under this name,
# so applications decide what to show instead of the client writing to stderr.
CLIENT_LOG = logging.getLogger("undertow.kafka.client")


class BusError(UndertowError):
    """Kafka refused, lost or did not deliver records in time."""


@dataclass(frozen=True)
class Record:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """A durable producer: idempotent, ``acks=all``, compressed, batched."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "zstd",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "logger": CLIENT_LOG,
        **overrides,
    }


def publish(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    timeout: float = 30.0,
) -> int:
    """Produce ``(key, value)`` pairs and wait until every one is acknowledged.

    Returns the count delivered; raises BusError naming the first failure.
    """
    producer = Producer(producer_config(bootstrap))
    failures: list[str] = []
    delivered = 0

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            failures.append(str(err))

    sent = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: serve callbacks, then retry
        sent += 1
        producer.poll(0)
    remaining = producer.flush(timeout)
    if failures:
        raise BusError(f"{len(failures)} of {sent} records to {topic} failed: {failures[0]}")
    if remaining or delivered != sent:
        raise BusError(
            f"{sent - delivered} of {sent} records to {topic} unacknowledged after {timeout} s"
        )
    return delivered


# Broker errors of a partition between leaders (just after the topic was created, or while
# a broker restarts). librdkafka does not flag all of them retriable on a watermark query.
_LEADERSHIP_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


def _transient(error: object) -> bool:
    """Whether a Kafka error is worth asking again after a short wait."""
    return isinstance(error, KafkaError) and (
        error.retriable() or error.code() in _LEADERSHIP_ERRORS
    )


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The high watermark of every partition of ``topic``.

    Retriable broker errors (a partition between leaders, as just after it was created) are
    retried until ``timeout``; other errors raise BusError at once.
    """
    consumer = Consumer(_reader_config(bootstrap))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                meta = consumer.list_topics(topic, timeout=timeout)
                topic_meta = meta.topics.get(topic)
                if topic_meta is None or topic_meta.error is not None:
                    raise BusError(f"topic {topic} not found on {bootstrap}")
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                    for p in topic_meta.partitions
                }
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not _transient(error) or time.monotonic() >= deadline:
                    raise BusError(
                        f"cannot read offsets of {topic} from {bootstrap}: {exc}"
                    ) from exc
                time.sleep(0.1)  # back off before asking the broker again
    finally:
        consumer.close()


def read_range(
    bootstrap: str,
    topic: str,
    start: Mapping[int, int],
    end: Mapping[int, int],
    timeout: float = 30.0,
) -> list[Record]:
    """Every record with ``start[p] <= offset < end[p]``, for each partition ``p``.

    Assigns partitions directly (no consumer group, nothing committed). Raises BusError if the
    range is not complete by the deadline.
    """
    wanted = {p: (start.get(p, 0), stop) for p, stop in end.items() if stop > start.get(p, 0)}
    if not wanted:
        return []
    consumer = Consumer(_reader_config(bootstrap))
    records: list[Record] = []
    try:
        consumer.assign([TopicPartition(topic, p, first) for p, (first, _) in wanted.items()])
        pending = dict(wanted)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                missing = sum(stop - first for first, stop in pending.values())
                raise BusError(f"{missing} records of {topic} not read within {timeout} s")
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise BusError(f"reading {topic}: {err}")
                partition, offset = msg.partition(), msg.offset()
                if partition is None or offset is None:
                    continue
                if partition not in pending or offset >= pending[partition][1]:
                    continue
                raw: Any = msg.headers() or []
                pairs = list(raw.items() if isinstance(raw, dict) else raw)
                headers = tuple(
                    (str(k), v.encode() if isinstance(v, str) else v or b"") for k, v in pairs
                )
                records.append(
                    Record(topic, partition, offset, msg.key(), msg.value() or b"", headers)
                )
                if offset + 1 >= pending[partition][1]:
                    del pending[partition]
            # Offsets can skip (transaction markers, compaction): the position tells the truth.
            if pending:
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= pending[tp.partition][1]:
                        del pending[tp.partition]
    except KafkaException as exc:
        raise BusError(f"reading {topic} from {bootstrap}: {exc}") from exc
    finally:
        consumer.close()
    return records


def _reader_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": "undertow-reader",  # required by the client; never joined or committed
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
        "logger": CLIENT_LOG,
    }
