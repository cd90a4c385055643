"""The sink's pure parts: dedup tokens, backoff, error classification, blocks by partition."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import numpy as np
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

from undertow.services.traffic import sample_traces
from undertow.streams.scoring.scored import EMBEDDING_COLUMNS, SCORE_COLUMNS, Scored
from undertow.streams.sinks.warehouse import (
    EMBEDDINGS,
    EVENTS,
    SCORES,
    EventSink,
    SinkItem,
    classify,
    dedup_token,
)


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


def unit_vector(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def scored_items() -> list[SinkItem]:
    """Six events on two partitions: some scored, one with two embedded fields."""
    batch = items([0, 0, 1, 1, 0, 1])
    one = Scored(
        scores={"toxicity": 0.1}, embeddings={"prompt": unit_vector(1)}, embedding_model="m"
    )
    two = Scored(
        scores={"toxicity": 0.2},
        embeddings={"query": unit_vector(2), "completion": unit_vector(3)},
        embedding_model="m",
    )
    no_vectors = Scored(scores={})  # feedback: a scores row, nothing to embed
    return [
        batch[0]._replace(scores=one),
        batch[1],  # not scored
        batch[2],  # not scored
        batch[3]._replace(scores=no_vectors),
        batch[4]._replace(scores=two),
        batch[5]._replace(scores=one),
    ]


def test_prepare_scores_gives_a_row_per_scored_item_only() -> None:
    sink = EventSink(never_connect)
    try:
        batch = scored_items()
        blocks, rejected = sink.prepare(batch, SCORES)
        assert rejected == []
        assert [(b.partition, [i.offset for i in b.items]) for b in blocks] == [
            (0, [0, 40]),
            (1, [30, 50]),
        ]
        for block in blocks:
            assert (block.table, block.columns) == ("scores", SCORE_COLUMNS)
            assert block.token.startswith(f"scores:undertow.events.v1:{block.partition}:")
            assert all(len(row) == len(SCORE_COLUMNS) for row in block.rows)
            scores = [dict(zip(SCORE_COLUMNS, row, strict=True))["scores"] for row in block.rows]
            assert scores == [dict(i.scores.scores) for i in block.items if i.scores]
        # the same items make other blocks in the events table: every item, its own token
        events, _ = sink.prepare(batch, EVENTS)
        assert sum(len(b.rows) for b in events) == len(batch)
        assert all(b.token.startswith("events:") for b in events)
        # nothing scored: no scores block at all
        assert sink.prepare([i._replace(scores=None) for i in batch], SCORES) == ([], [])
    finally:
        sink.close()


def test_prepare_embeddings_gives_a_row_per_embedded_field_in_one_block() -> None:
    sink = EventSink(never_connect)
    try:
        batch = scored_items()
        blocks, rejected = sink.prepare(batch, EMBEDDINGS)
        assert rejected == []
        assert [(b.partition, [i.offset for i in b.items]) for b in blocks] == [
            (0, [0, 40, 40]),  # the item with two fields, twice: rows[i] came from items[i]
            (1, [50]),
        ]
        first = blocks[0]
        assert (first.table, first.columns) == ("embeddings", EMBEDDING_COLUMNS)
        assert first.token.startswith("embeddings:undertow.events.v1:0:0-40:")
        rows = [dict(zip(EMBEDDING_COLUMNS, row, strict=True)) for row in first.rows]
        assert [r["field"] for r in rows] == ["prompt", "completion", "query"]
        assert {r["event_id"] for r in rows[1:]} == {uuid.UUID(batch[4].record["event_id"])}
        assert rows[2]["vector"] == unit_vector(2).tolist()
        assert blocks[1].token.startswith("embeddings:undertow.events.v1:1:50-50:")
        # the token is a function of the content: the same items again, the same tokens
        again, _ = sink.prepare(list(reversed(batch)), EMBEDDINGS)
        assert sorted(b.token for b in again) == sorted(b.token for b in blocks)
    finally:
        sink.close()
