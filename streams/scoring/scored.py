"""What scoring produced for one event, and how it is stored: ``scores`` and ``embeddings``
rows in ClickHouse and a ``ScoredEvent`` record on ``undertow.scored.v1``.

The enrich processor (:mod:`undertow.streams.scoring.enrich`) attaches one :class:`Scored` to each
event it handled; the sink maps it to rows with :func:`scores_row` and :func:`embedding_rows`,
and the worker publishes :func:`scored_record`. Everything here is a pure function of the
decoded event and its :class:`Scored`, so a replay builds the very same rows.

Accounting rule (shared with the ``traces`` view and the ``usage_*`` rollups):
token counts and cost sit on *completion* rows only. A prompt's tokens are its completion's
input tokens; storing both would bill them twice. A prompt's own count is kept in
``Scored.prompt_tokens`` for a later completion of the trace that reports no usage.

>>> from datetime import UTC, datetime
>>> rec = {"event_id": "0b5f0c2e-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "trace_id": "ab" * 16,
...        "span_id": "cd" * 8, "parent_span_id": None,
...        "event_time": datetime(2026, 1, 1, tzinfo=UTC), "app": "chat",
...        "environment": "production", "user_hash": None, "session_hash": None,
...        "attributes": {},
...        "body": ("undertow.Completion", {"model": "gpt-4o", "text": "hi", "latency_ms": 9.0})}
>>> row = dict(zip(SCORE_COLUMNS, scores_row(rec, Scored(scores={"toxicity": 0.01}))))
>>> row["event_type"], row["scores"], row["latency_ms"]
('completion', {'toxicity': 0.01}, 9.0)
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.schemas.events import ENVELOPE_FIELDS, event_body, event_type

Vector = npt.NDArray[np.float32]

# The columns the sink writes into ``scores`` (schemas/clickhouse/002_scores.sql), in order;
# toxicity, injection, tokens and the timestamps take their column defaults.
SCORE_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "trace_id",
    "span_id",
    "event_time",
    "app",
    "environment",
    "model",
    "prompt_name",
    "prompt_version",
    "scores",
    "scorer_versions",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "price_table_version",
    "latency_ms",
    "scored_at",
)
# The columns of ``embeddings`` (003_embeddings.sql) the sink writes.
EMBEDDING_COLUMNS: tuple[str, ...] = (
    "event_id",
    "field",
    "trace_id",
    "event_time",
    "app",
    "model",
    "vector",
)
# Which embedded field a ScoredEvent carries as its one ``embedding``, by event type.
PRIMARY_FIELD: dict[str, str] = {
    "prompt": "prompt",
    "retrieval": "query",
    "completion": "completion",
}


@dataclass(frozen=True)
class Scored:
    """The scoring output for one event.

    ``scores``: scorer outputs in [0, 1] or plain figures (``retrieval_documents``), by name;
    absent when not computed, never NaN. ``scorer_versions``: what produced each family.
    ``embeddings``: unit vectors by embedded field (``prompt``, ``completion``, ``query``).
    ``input_tokens``/``output_tokens``/``cached_tokens``/``cost_usd``: completions only (see
    the module doc), with ``token_source`` saying where the counts came from. ``prompt_tokens``
    and ``context_vectors`` are what a later event of the same trace needs (a prompt's own
    token count; a retrieval's document vectors, for groundedness); they are not stored.
    """

    scores: Mapping[str, float] = field(default_factory=dict)
    scorer_versions: Mapping[str, str] = field(default_factory=dict)
    embeddings: Mapping[str, Vector] = field(default_factory=dict)
    embedding_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    token_source: str | None = None
    cost_usd: float | None = None
    price_table_version: str | None = None
    prompt_tokens: int | None = None
    context_vectors: Vector | None = None
    scored_at: datetime | None = None

    def trace_fields(self) -> dict[str, Any]:
        """What :func:`undertow.streams.traces.span_row` takes as ``scored``."""
        return {
            "scores": dict(self.scores),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": self.cost_usd,
        }


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def scores_row(record: Mapping[str, Any], scored: Scored) -> list[Any]:
    """One ``scores`` row, in ``SCORE_COLUMNS`` order."""
    kind = event_type(record)
    body = event_body(record)
    return [
        _uuid(record["event_id"]),
        kind,
        record["trace_id"],
        record["span_id"],
        record["event_time"],
        record["app"],
        record["environment"],
        body.get("model") or "",
        body.get("prompt_name") or "",
        body.get("prompt_version") or "",
        {k: float(v) for k, v in scored.scores.items()},
        dict(scored.scorer_versions),
        scored.input_tokens,
        scored.output_tokens,
        scored.cached_tokens,
        scored.cost_usd,
        scored.price_table_version or "",
        body.get("latency_ms"),
        scored.scored_at or record["event_time"],
    ]


def embedding_rows(record: Mapping[str, Any], scored: Scored) -> list[list[Any]]:
    """One ``embeddings`` row per embedded field, in ``EMBEDDING_COLUMNS`` order."""
    event_id = _uuid(record["event_id"])
    return [
        [
            event_id,
            name,
            record["trace_id"],
            record["event_time"],
            record["app"],
            scored.embedding_model or "",
            vector.tolist(),
        ]
        for name, vector in sorted(scored.embeddings.items())
    ]


def scored_record(record: Mapping[str, Any], scored: Scored) -> dict[str, Any]:
    """The ``ScoredEvent`` record (``schemas/avro/scored_event.v1.avsc``) for the scored topic."""
    kind = event_type(record)
    body = event_body(record)
    vector = scored.embeddings.get(PRIMARY_FIELD.get(kind, ""))
    out: dict[str, Any] = {name: record[name] for name in ENVELOPE_FIELDS}
    out.update(
        event_type=kind,
        model=body.get("model"),
        prompt_name=body.get("prompt_name"),
        prompt_version=body.get("prompt_version"),
        scores={k: float(v) for k, v in scored.scores.items()},
        scorer_versions=dict(scored.scorer_versions),
        embedding=None if vector is None else vector.tolist(),
        embedding_model=scored.embedding_model if vector is not None else None,
        input_tokens=scored.input_tokens,
        output_tokens=scored.output_tokens,
        cached_tokens=scored.cached_tokens,
        cost_usd=scored.cost_usd,
        price_table_version=scored.price_table_version,
        latency_ms=body.get("latency_ms"),
    )
    return out


__all__ = [
    "EMBEDDING_COLUMNS",
    "PRIMARY_FIELD",
    "SCORE_COLUMNS",
    "Scored",
    "embedding_rows",
    "scored_record",
    "scores_row",
]
