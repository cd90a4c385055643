"""Map decoded ``event`` records to rows of the ``events`` table and insert them.

The table (``schemas/clickhouse/001_events.sql``) has envelope columns, then one group of
columns per body type; a body fills its own group and leaves the others empty.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from undertow.schemas.events import ENVELOPE_FIELDS, event_body, event_type
from undertow.services.warehouse import WarehouseError

EVENT_COLUMNS: tuple[str, ...] = (
    *ENVELOPE_FIELDS,
    "event_type",
    "model",
    "prompt_name",
    "prompt_version",
    "latency_ms",
    "truncated",
    "prompt_messages",
    "template_variables",
    "retrieval_query",
    "retrieval_documents",
    "retrieval_store",
    "retrieval_top_k",
    "model_version",
    "adapter",
    "completion_text",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "time_to_first_token_ms",
    "finish_reason",
    "feedback_score",
    "feedback_label",
    "feedback_comment",
    "feedback_source",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)


def event_row(
    record: Mapping[str, Any], topic: str = "", partition: int = -1, offset: int = -1
) -> list[Any]:
    """One ``events`` row, in ``EVENT_COLUMNS`` order, from a decoded event record."""
    kind = event_type(record)
    body = event_body(record)
    event_id = record["event_id"]
    row: dict[str, Any] = {
        "event_id": event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id),
        "event_type": kind,
        "trace_id": record["trace_id"],
        "span_id": record["span_id"],
        "parent_span_id": record["parent_span_id"],
        "event_time": record["event_time"],
        "app": record["app"],
        "environment": record["environment"],
        "user_hash": record["user_hash"],
        "session_hash": record["session_hash"],
        "attributes": dict(record["attributes"]),
        "model": body.get("model") or "",
        "prompt_name": body.get("prompt_name") or "",
        "prompt_version": body.get("prompt_version") or "",
        "latency_ms": body.get("latency_ms"),
        "truncated": bool(body.get("truncated", False)),
        "prompt_messages": [],
        "template_variables": {},
        "retrieval_query": None,
        "retrieval_documents": [],
        "retrieval_store": "",
        "retrieval_top_k": None,
        "model_version": "",
        "adapter": "",
        "completion_text": None,
        "input_tokens": None,
        "output_tokens": None,
        "cached_tokens": None,
        "time_to_first_token_ms": None,
        "finish_reason": None,
        "feedback_score": None,
        "feedback_label": None,
        "feedback_comment": None,
        "feedback_source": None,
        "kafka_topic": topic,
        "kafka_partition": partition,
        "kafka_offset": offset,
    }
    if kind == "prompt":
        row["prompt_messages"] = [(m["role"], m["content"]) for m in body["messages"]]
        row["template_variables"] = dict(body.get("template_variables") or {})
    elif kind == "retrieval":
        row["retrieval_query"] = body["query"]
        row["retrieval_documents"] = [
            (d["id"], d.get("score"), d.get("text"), d.get("source")) for d in body["documents"]
        ]
        row["retrieval_store"] = body["store"]
        row["retrieval_top_k"] = body.get("top_k")
    elif kind == "completion":
        row["model_version"] = body.get("model_version") or ""
        row["adapter"] = body.get("adapter") or ""
        row["completion_text"] = body["text"]
        for name in ("input_tokens", "output_tokens", "cached_tokens", "time_to_first_token_ms"):
            row[name] = body.get(name)
        row["finish_reason"] = body.get("finish_reason")
    else:
        row["feedback_score"] = body.get("score")
        row["feedback_label"] = body.get("label")
        row["feedback_comment"] = body.get("comment")
        row["feedback_source"] = body.get("source")
    return [row[c] for c in EVENT_COLUMNS]


def insert_events(client: Client, items: Iterable[tuple[Mapping[str, Any], str, int, int]]) -> int:
    """Insert ``(record, topic, partition, offset)`` items into ``events`` in one block.

    Returns the number of rows written; raises WarehouseError when ClickHouse refuses them.
    """
    rows = [
        event_row(record, topic, partition, offset) for record, topic, partition, offset in items
    ]
    if not rows:
        return 0
    try:
        client.insert("events", rows, column_names=list(EVENT_COLUMNS))
    except ClickHouseError as exc:
        raise WarehouseError(f"inserting {len(rows)} events failed: {exc}") from exc
    return len(rows)


# The detector of the drift role's trace rows (streams/roles/drift.py): every few events
# a stream's recent mean detector input, never a detection, so the statistic can be drawn
# over time between detections.
DRIFT_TRACE_DETECTOR = "window_mean"

DRIFT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "app",
    "environment",
    "segment",
    "segment_fields",
    "stream",
    "detector",
    "statistic",
    "threshold",
    "detected",
    "window_reference",
    "window_current",
    "baseline_version",
    "example_event_ids",
    "nearest_topics",
)

ALERT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "app",
    "environment",
    "trace_id",
    "rule",
    "severity",
    "status",
    "dedup_key",
    "segment",
    "summary",
    "evidence",
    "sql",
    "runbook_url",
)


ACTION_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "app",
    "environment",
    "trace_id",
    "action_type",
    "target",
    "phase",
    "request_id",
    "reason",
    "parameters",
    "result",
)
REGISTRY_COLUMNS: tuple[str, ...] = (
    "kind",
    "name",
    "version",
    "status",
    "labels",
    "base_model",
    "adapter_path",
    "template",
    "metadata",
    "payload",
    "event_id",
    "updated_at",
)


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def drift_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``drift`` row, in ``DRIFT_COLUMNS`` order, from a ``drift_event`` record."""
    row = {c: record.get(c) for c in DRIFT_COLUMNS}
    row["event_id"] = _uuid(record["event_id"])
    row["segment_fields"] = dict(record.get("segment_fields") or {})
    row["baseline_version"] = record.get("baseline_version") or ""
    row["example_event_ids"] = list(record.get("example_event_ids") or [])
    row["nearest_topics"] = list(record.get("nearest_topics") or [])
    return [row[c] for c in DRIFT_COLUMNS]


def alert_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``alerts`` row, in ``ALERT_COLUMNS`` order, from an ``alert`` record."""
    row = {c: record.get(c) for c in ALERT_COLUMNS}
    row["event_id"] = _uuid(record["event_id"])
    row["segment"] = record.get("segment") or ""
    row["evidence"] = dict(record.get("evidence") or {})
    return [row[c] for c in ALERT_COLUMNS]


def action_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``actions`` row, in ``ACTION_COLUMNS`` order, from an ``action`` record."""
    row = {c: record.get(c) for c in ACTION_COLUMNS}
    row["event_id"] = _uuid(record["event_id"])
    row["reason"] = record.get("reason") or ""
    row["parameters"] = dict(record.get("parameters") or {})
    row["result"] = dict(record.get("result") or {})
    return [row[c] for c in ACTION_COLUMNS]


def registry_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``registry`` row, in ``REGISTRY_COLUMNS`` order, from a ``registry_record``."""
    row = {c: record.get(c) for c in REGISTRY_COLUMNS}
    row["event_id"] = _uuid(record["event_id"])
    row["labels"] = list(record.get("labels") or [])
    row["metadata"] = dict(record.get("metadata") or {})
    row["updated_at"] = record["event_time"]
    row["payload"] = json.dumps(
        {k: v for k, v in record.items() if k not in ("event_time",)}, default=str
    )
    return [row[c] for c in REGISTRY_COLUMNS]


# -- judge_scores (schemas/clickhouse/012_judge_scores.sql; streams/roles/judge.py) -------

JUDGE_SCORE_COLUMNS: tuple[str, ...] = (
    "id",
    "completion_event_id",
    "trace_id",
    "event_time",
    "app",
    "environment",
    "model",
    "model_version",
    "prompt_name",
    "prompt_version",
    "attributes",
    "rubric",
    "rubric_version",
    "judge_model",
    "score",
    "raw_score",
    "scale",
    "parse_error",
    "reason",
    "latency_ms",
    "judged_at",
)


def judge_score_row(values: Mapping[str, Any]) -> list[Any]:
    """One ``judge_scores`` row, in ``JUDGE_SCORE_COLUMNS`` order, from a mapping by column
    name (ids as UUIDs or strings; missing segment names become '')."""
    row = {c: values.get(c) for c in JUDGE_SCORE_COLUMNS}
    row["id"] = _uuid(values["id"])
    row["completion_event_id"] = _uuid(values["completion_event_id"])
    for name in ("model", "model_version", "prompt_name", "prompt_version", "reason"):
        row[name] = row[name] or ""
    row["attributes"] = dict(values.get("attributes") or {})
    return [row[c] for c in JUDGE_SCORE_COLUMNS]
