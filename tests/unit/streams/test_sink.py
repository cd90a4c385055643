"""The sink's pure parts: dedup tokens, backoff, error classification, blocks by partition."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

from undertow.services.traffic import sample_traces
from undertow.streams.sink import Backoff, EventSink, SinkError, SinkItem, classify, dedup_token


def items(partitions: list[int]) -> list[SinkItem]:
    records = list(sample_traces(len(partitions), seed=3))[: len(partitions)]
    return [
        SinkItem(r, "undertow.events.v1", p, 10 * i)
        for i, (r, p) in enumerate(zip(records, partitions, strict=True))
    ]


def never_connect() -> Any:
    raise AssertionError("prepare must not touch the warehouse")


def test_the_token_is_a_function_of_offsets_and_event_ids() -> None:
    token = dedup_token("events", "t", 2, 5, 9, ["a", "b"])
    assert token == dedup_token("events", "t", 2, 5, 9, ["a", "b"])
    assert token.startswith("events:t:2:5-9:2:")
    assert token != dedup_token("events", "t", 2, 5, 9, ["a", "c"])  # a recreated topic
    assert token != dedup_token("events", "t", 3, 5, 9, ["a", "b"])
    assert token != dedup_token("events", "t", 2, 5, 10, ["a", "b"])


def test_backoff_grows_to_its_cap() -> None:
    delays = Backoff(0.1, 1.0, jitter=0).delays()
    assert [next(delays) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    jittered = Backoff(1.0, 1.0, jitter=0.2).delays()
    assert all(0.8 <= next(jittered) <= 1.2 for _ in range(100))
    with pytest.raises(SinkError):
        Backoff(2.0, 1.0)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OperationalError("Connection refused"), "transient"),
        (DatabaseError("HTTP driver received HTTP status 503"), "transient"),
        (DatabaseError("x", code=252), "transient"),  # TOO_MANY_PARTS: later
        (DatabaseError("x", code=60), "transient"),  # UNKNOWN_TABLE: not migrated yet
        (DatabaseError("x", code=53), "rejected"),  # TYPE_MISMATCH
        (DatabaseError("Code: 27. DB::Exception: Cannot parse input"), "rejected"),
        (DataError("Failed to write column 'output_tokens'"), "rejected"),
        (struct.error("argument out of range"), "rejected"),
        (OverflowError("can't convert negative int to unsigned"), "rejected"),
        (TimeoutError("timed out"), "transient"),
        (RuntimeError("something else"), "transient"),
    ],
)
def test_only_data_errors_are_rejected(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_prepare_makes_one_ordered_block_per_partition_and_rejects_unmappable_records() -> None:
    sink = EventSink(never_connect)
    try:
        batch = items([1, 0, 1, 1, 0])
        broken = SinkItem({"event_id": "not-a-uuid", "body": ("undertow.Feedback", {})}, "t", 0, 99)
        blocks, rejected = sink.prepare([*reversed(batch), broken])
        assert [(b.partition, [i.offset for i in b.items]) for b in blocks] == [
            (0, [10, 40]),
            (1, [0, 20, 30]),
        ]
        assert all(len(b.rows) == len(b.items) for b in blocks)
        assert blocks[1].token.startswith("events:undertow.events.v1:1:0-30:3:")
        assert [r.item.offset for r in rejected] == [99]
        assert rejected[0].error_type in ("KeyError", "ValueError")
        # The same items in another order give the same blocks, so the same tokens.
        again, _ = sink.prepare(batch)
        assert sorted(b.token for b in again) == sorted(b.token for b in blocks)
    finally:
        sink.close()
