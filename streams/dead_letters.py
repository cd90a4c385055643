"""Dead letters: records a processor could not handle, as ``DeadLetter`` Avro records.

A dead letter keeps the original bytes unchanged with the source topic, partition and offset,
so a fixed processor (or a person) can replay it. Its ``event_id`` is derived from the processor
and the source coordinates, so the same record dead-lettered twice (a replay after a crash)
carries the same id and readers can drop the repeat.

>>> letter = dead_letter(
...     reason="unknown framing", error_type="DecodeError", processor="ingest",
...     topic="undertow.events.v1", partition=2, offset=41, key=None, payload=b"junk",
... )
>>> letter["source_offset"], letter["trace_id"]
(41, '00000000000000000000000000000000')
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# Fixed namespace for the ids of dead letters (uuid5 over processor and source coordinates).
DEAD_LETTER_NAMESPACE = uuid.UUID("6f1c2a3e-2b7d-5c41-9a8e-0d3f4b5c6a7e")
MAX_REASON_CHARS = 1000
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")


def dead_letter_id(processor: str, topic: str, partition: int, offset: int) -> str:
    """The id a dead letter of this source record always gets."""
    return str(uuid.uuid5(DEAD_LETTER_NAMESPACE, f"{processor}:{topic}:{partition}:{offset}"))


def dead_letter(
    *,
    reason: str,
    error_type: str,
    processor: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    payload: bytes,
    record: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A ``dead_letter`` record for the codec.

    ``record`` is the decoded record when decoding got that far (a valid record the processor
    still could not use): its trace, span, app and environment are kept for joins. Otherwise
    the trace id is the Kafka key when that is one (events are keyed by trace id), else zeros.
    ``reason`` is cut to ``MAX_REASON_CHARS``; it should say what was wrong, never quote text.
    """
    source = record or {}
    key_text = key.decode("ascii", "replace") if key else ""
    trace_id = _pick(_TRACE_ID, source.get("trace_id"), key_text) or "0" * 32
    span_id = _pick(_SPAN_ID, source.get("span_id")) or "0" * 16
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return {
        "event_id": dead_letter_id(processor, topic, partition, offset),
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": None,
        "event_time": now or datetime.now(UTC),
        "app": str(source.get("app") or "unknown"),
        "environment": str(source.get("environment") or "production"),
        "user_hash": None,
        "session_hash": None,
        "attributes": {},
        "reason": reason,
        "error_type": error_type,
        "processor": processor,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": key,
        "payload": payload,
    }


def _pick(pattern: re.Pattern[str], *candidates: object) -> str | None:
    for candidate in candidates:
        if isinstance(candidate, str) and pattern.match(candidate):
            return candidate
    return None
