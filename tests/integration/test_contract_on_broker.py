"""Avro records through the real broker: what the codec writes, a consumer reads back."""

from __future__ import annotations

import pytest

from undertow.infra.stack import StackInfo
from undertow.schemas import topics
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event_body, event_type
from undertow.services.bus import end_offsets, publish, read_range
from undertow.services.traffic import sample_traces

pytestmark = pytest.mark.integration


def test_every_architecture_topic_exists(stack: StackInfo) -> None:
    for topic in topics.ALL:
        assert end_offsets(stack.bootstrap_servers, topic), f"{topic} has no partitions"


def test_events_round_trip_through_kafka(stack: StackInfo) -> None:
    codec = AvroCodec()
    records = list(sample_traces(40, seed=3, app="contract-test"))
    start = end_offsets(stack.bootstrap_servers, topics.EVENTS)
    sent = publish(
        stack.bootstrap_servers,
        topics.EVENTS,
        [(r["trace_id"].encode(), codec.encode("event", r)) for r in records],
    )
    assert sent == len(records)
    end = end_offsets(stack.bootstrap_servers, topics.EVENTS)
    assert sum(end.values()) - sum(start.values()) == len(records)

    received = read_range(stack.bootstrap_servers, topics.EVENTS, start, end)
    records_read = [codec.decode(m.value, "event").record for m in received]
    decoded = {str(r["event_id"]): r for r in records_read}
    assert set(decoded) == {r["event_id"] for r in records}
    for original in records:
        got = decoded[original["event_id"]]
        assert event_type(got) == event_type(original)
        assert (
            event_body(got).items()
            >= {k: v for k, v in event_body(original).items() if v is not None}.items()
        )

    # Keyed by trace id: every event of one trace lands on one partition, in order.
    by_trace: dict[bytes, set[int]] = {}
    for msg in received:
        assert msg.key is not None
        by_trace.setdefault(msg.key, set()).add(msg.partition)
    assert all(len(parts) == 1 for parts in by_trace.values())
