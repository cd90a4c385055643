"""Scored events as warehouse rows and as ScoredEvent records: the columns the SQL migrations
declare, and the Avro schema of the scored topic."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import EventType, event
from undertow.streams.scoring.scored import (
    EMBEDDING_COLUMNS,
    PRIMARY_FIELD,
    SCORE_COLUMNS,
    Scored,
    embedding_rows,
    scored_record,
    scores_row,
)

MIGRATIONS = Path(__file__).parents[4] / "schemas" / "clickhouse"
T0 = datetime(2026, 11, 1, 12, 0, 0, 250, tzinfo=UTC)
SCORED_AT = datetime(2026, 11, 1, 12, 0, 1, tzinfo=UTC)
# A column definition: four spaces, then its name (continuation lines are indented further).
_COLUMN = re.compile(r"^ {4}(\w+)\s+(.*)$")


def table_columns(migration: str, table: str) -> dict[str, str]:
    """Column name to its definition, from the CREATE TABLE of ``table`` in ``migration``."""
    sql = (MIGRATIONS / migration).read_text()
    start = sql.index(f"CREATE TABLE IF NOT EXISTS {table}\n")
    body = sql[start : sql.index("\nENGINE", start)]
    columns: dict[str, str] = {}
    last = None
    for line in body.splitlines()[2:]:
        match = _COLUMN.match(line)
        if match and match.group(1) != "INDEX":
            last = match.group(1)
            columns[last] = match.group(2)
        elif last is not None and line.startswith(" " * 8):
            columns[last] += " " + line.strip()
    return columns


def unit(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


BODIES: dict[str, dict[str, Any]] = {
    "prompt": {
        "messages": [{"role": "user", "content": "hi"}],
        "model": "gpt-4o",
        "prompt_name": "qa",
        "prompt_version": "3",
    },
    "retrieval": {
        "query": "hi",
        "documents": [{"id": "d1", "text": "doc"}],
        "store": "kb",
        "latency_ms": 12.5,
    },
    "completion": {
        "model": "gpt-4o",
        "prompt_version": "3",
        "text": "hello",
        "input_tokens": 20,
        "output_tokens": 3,
        "latency_ms": 250.0,
    },
    "feedback": {"score": 1.0},
}


def scored_for(kind: str) -> Scored:
    """What the enricher gives each event type (shapes, not model outputs)."""
    field = PRIMARY_FIELD.get(kind)
    common: dict[str, Any] = {
        "embeddings": {} if field is None else {field: unit(8, seed=len(kind))},
        "embedding_model": None if field is None else "mini:8d",
        "scored_at": SCORED_AT,
    }
    if kind == "prompt":
        return Scored(
            scores={"injection": 0.9, "toxicity": 0.01},
            scorer_versions={"embedding": "mini:8d", "injection": "probe@1"},
            prompt_tokens=7,
            **common,
        )
    if kind == "retrieval":
        return Scored(
            scores={"retrieval_similarity_max": -0.05, "retrieval_documents": 1.0},
            context_vectors=unit(8, seed=99)[None, :],
            **common,
        )
    if kind == "completion":
        return Scored(
            scores={"toxicity": np.float64(0.2), "groundedness_max": 0.7},
            scorer_versions={"tokens": "usage"},
            input_tokens=20,
            output_tokens=3,
            cached_tokens=0,
            token_source="usage",
            cost_usd=0.00008,
            price_table_version="2026-11-01",
            **common,
        )
    return Scored(**common)


def record_for(kind: EventType) -> dict[str, Any]:
    return event(kind, BODIES[kind], app="chat", environment="staging", event_time=T0)


# -- the warehouse's columns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "migration", "table"),
    [
        (SCORE_COLUMNS, "002_scores.sql", "scores"),
        (EMBEDDING_COLUMNS, "003_embeddings.sql", "embeddings"),
    ],
)
def test_the_written_columns_are_the_tables_in_order_and_the_rest_have_defaults(
    columns: tuple[str, ...], migration: str, table: str
) -> None:
    declared = table_columns(migration, table)
    assert "event_id" in declared  # the parser found the table
    assert set(columns) <= set(declared), set(columns) - set(declared)
    assert [c for c in declared if c in columns] == list(columns)
    for name in set(declared) - set(columns):
        assert "DEFAULT" in declared[name], f"{table}.{name} is not written and has no default"


def test_rows_follow_the_column_order() -> None:
    rec, scored = record_for("completion"), scored_for("completion")
    row = dict(zip(SCORE_COLUMNS, scores_row(rec, scored), strict=True))
    assert row["event_id"] == uuid.UUID(rec["event_id"])
    assert (row["event_type"], row["model"], row["prompt_name"], row["prompt_version"]) == (
        "completion",
        "gpt-4o",
        "",
        "3",
    )
    assert row["scores"] == {"toxicity": 0.2, "groundedness_max": 0.7}
    assert all(type(v) is float for v in row["scores"].values())
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (20, 3, 0.00008)
    assert (row["latency_ms"], row["scored_at"], row["event_time"]) == (250.0, SCORED_AT, T0)

    feedback = dict(zip(SCORE_COLUMNS, scores_row(record_for("feedback"), Scored()), strict=True))
    assert feedback["scores"] == {} and feedback["model"] == ""
    assert feedback["price_table_version"] == ""
    assert feedback["scored_at"] == T0  # not scored at a time of its own: its event time

    two = Scored(
        embeddings={"query": unit(8, 1), "completion": unit(8, 2)}, embedding_model="mini:8d"
    )
    rows = [dict(zip(EMBEDDING_COLUMNS, r, strict=True)) for r in embedding_rows(rec, two)]
    assert [r["field"] for r in rows] == ["completion", "query"]
    assert {r["model"] for r in rows} == {"mini:8d"}
    assert rows[1]["vector"] == two.embeddings["query"].tolist()
    assert embedding_rows(rec, Scored()) == []


# -- the scored topic ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["prompt", "retrieval", "completion", "feedback"])
def test_scored_records_encode_and_decode_by_the_scored_event_schema(kind: EventType) -> None:
    codec = AvroCodec()
    rec, scored = record_for(kind), scored_for(kind)
    out = scored_record(rec, scored)
    decoded = codec.decode(codec.encode("scored_event", out), "scored_event").record
    assert str(decoded["event_id"]) == rec["event_id"]
    assert decoded["event_time"] == T0
    assert (decoded["trace_id"], decoded["app"], decoded["environment"]) == (
        rec["trace_id"],
        "chat",
        "staging",
    )
    assert decoded["event_type"] == kind
    assert decoded["scores"] == pytest.approx(dict(scored.scores))
    assert decoded["scorer_versions"] == dict(scored.scorer_versions)
    body = BODIES[kind]
    assert decoded["model"] == body.get("model")
    assert decoded["latency_ms"] == body.get("latency_ms")
    for name in ("input_tokens", "output_tokens", "cached_tokens", "price_table_version"):
        assert decoded[name] == getattr(scored, name)
    assert decoded["cost_usd"] == scored.cost_usd
    field = PRIMARY_FIELD.get(kind)
    if field is None:
        assert decoded["embedding"] is None and decoded["embedding_model"] is None
    else:
        # float32 vectors pass through Avro floats unchanged
        assert decoded["embedding"] == scored.embeddings[field].tolist()
        assert decoded["embedding_model"] == "mini:8d"


def test_the_scored_record_carries_the_primary_embedding_of_its_event_type() -> None:
    assert PRIMARY_FIELD == {"prompt": "prompt", "retrieval": "query", "completion": "completion"}
    query, other = unit(8, 1), unit(8, 2)
    both = Scored(embeddings={"completion": other, "query": query}, embedding_model="mini:8d")
    out = scored_record(record_for("retrieval"), both)
    assert out["embedding"] == query.tolist()
    # no vector of the primary field: no embedding and no model named for it
    only_other = Scored(embeddings={"completion": other}, embedding_model="mini:8d")
    out = scored_record(record_for("prompt"), only_other)
    assert (out["embedding"], out["embedding_model"]) == (None, None)
