"""The rows a baseline is built from: scored events of a past period, from the warehouse or
a file, shaped like the ``ScoredEvent`` records the drift monitor reads live.

:func:`scored_rows` reads one time range of ``scores`` with each event's own embedding from
``embeddings`` (the vector the scored topic carries: ``prompt`` for a prompt, ``completion``
for a completion, ``query`` for a retrieval, as
:data:`undertow.streams.scoring.scored.PRIMARY_FIELD` says) and, on request, the embedded
text from ``events`` for topic examples. Segment names the warehouse stores as ``''`` (no
model, no prompt version) come back as None, as the live records carry them, so a baseline
built from history has the segment key of the live traffic. :func:`rows_from_file` reads the
same dicts from JSON Lines. :func:`parse_time` reads the command line's times: ISO datetimes
or durations before now.

>>> now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
>>> parse_time("90m", now=now).isoformat()
'2026-01-31T10:30:00+00:00'
>>> parse_time("2026-01-30T00:00:00Z", now=now).isoformat()
'2026-01-30T00:00:00+00:00'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from undertow.services.warehouse import WarehouseError
from undertow.streams.drift.base import DriftError
from undertow.streams.scoring.scored import PRIMARY_FIELD

DEFAULT_LIMIT = 200_000
EVENT_TYPES: tuple[str, ...] = ("prompt", "retrieval", "completion", "feedback")
# ScoredEvent fields the warehouse stores as '' when absent; live records carry None.
_EMPTY_IS_NONE: tuple[str, ...] = ("model", "prompt_name", "prompt_version", "price_table_version")
_NUMBERS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

_SCORE_COLUMNS = (
    "event_id, trace_id, span_id, event_time, app, environment, event_type, model, "
    "prompt_name, prompt_version, scores, scorer_versions, input_tokens, output_tokens, "
    "cached_tokens, cost_usd, price_table_version, latency_ms"
)


def parse_time(text: str, *, now: datetime) -> datetime:
    """An aware UTC datetime from ``now``, a duration before ``now`` (``45s``, ``30m``,
    ``1h``, ``7d``, ``2w``) or an ISO datetime (without a zone it is UTC)."""
    value = text.strip()
    if value.lower() == "now":
        return now.astimezone(UTC)
    match = _DURATION.fullmatch(value.lower())
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return (now - timedelta(**{_UNITS[unit]: amount})).astimezone(UTC)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise DriftError(
            "expected an ISO datetime (2026-01-31T12:00:00Z) or a duration before now "
            f"(30m, 1h, 7d), got {text!r}"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bound(name: str, value: datetime) -> str:
    if value.tzinfo is None:
        raise DriftError(f"{name} must be a timezone-aware datetime, got {value.isoformat()}")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _text(
    event_type: str, messages: Sequence[Any], completion: str | None, query: str | None
) -> str:
    """The text the enricher embedded for an event (a prompt: the turn's new input)."""
    from undertow.streams.scoring.enrich import turn_text

    if event_type == "prompt":
        # named tuples come back as dicts (clickhouse-connect's default), else as tuples
        turn = [
            dict(m) if isinstance(m, Mapping) else dict(zip(("role", "content"), m, strict=True))
            for m in messages
        ]
        return turn_text(turn)
    if event_type == "completion":
        return completion or ""
    if event_type == "retrieval":
        return query or ""
    return ""


def scored_rows(
    client: Client,
    *,
    since: datetime,
    until: datetime,
    apps: Sequence[str] = (),
    environment: str | None = None,
    limit: int = DEFAULT_LIMIT,
    with_text: bool = False,
) -> list[dict[str, Any]]:
    """Scored events with ``since <= event_time < until`` (of ``apps`` and ``environment``
    when given), as ``ScoredEvent``-shaped dicts in event-time order: one SQL over
    ``scores FINAL`` joined with ``embeddings FINAL`` (and ``events FINAL`` for ``text`` when
    ``with_text``; prompt text is user data, so only on request).

    Past ``limit`` rows, a seeded sample (by a hash of the event id) of ``limit`` rows spread
    over the whole range is returned, the same on every call. ``embedding`` is None for an
    event without a stored vector; the envelope fields the warehouse does not keep
    (``parent_span_id``, hashes, attributes) are left out.
    """
    if limit < 1:
        raise DriftError(f"limit must be at least 1, got {limit}")
    start, end = _bound("since", since), _bound("until", until)
    if until <= since:
        raise DriftError(f"expected since before until, got {since} and {until}")
    parameters: dict[str, Any] = {
        "since": start,
        "until": end,
        "limit": limit,
        "types": list(PRIMARY_FIELD),
        "fields": list(PRIMARY_FIELD.values()),
    }
    where = [
        "event_time >= {since:DateTime64(6, 'UTC')}",
        "event_time < {until:DateTime64(6, 'UTC')}",
    ]
    if apps:
        where.append("app IN {apps:Array(String)}")
        parameters["apps"] = list(apps)
    scope = " AND ".join(where)
    if environment is not None:
        where.append("environment = {environment:String}")
        parameters["environment"] = environment
    text_select, text_join = "", ""
    if with_text:
        text_select = ", t.prompt_messages, t.completion_text, t.retrieval_query"
        text_join = (
            " LEFT JOIN (SELECT event_id, prompt_messages, completion_text, retrieval_query"
            f" FROM events FINAL WHERE {scope}"
            " AND event_id IN (SELECT event_id FROM sampled)) AS t ON t.event_id = s.event_id"
        )
    # The sample is named once and read twice, so the right sides of the joins hold only
    # the sampled events, not the whole range.
    query = (
        f"WITH sampled AS (SELECT {_SCORE_COLUMNS},"
        " transform(event_type, {types:Array(String)}, {fields:Array(String)}, '') AS field"
        f" FROM scores FINAL WHERE {' AND '.join(where)}"
        " ORDER BY cityHash64(event_id), event_id LIMIT {limit:UInt64})"
        f" SELECT {', '.join('s.' + c.strip() for c in _SCORE_COLUMNS.split(','))},"
        f" e.vector, e.model{text_select}"
        " FROM sampled AS s"
        " LEFT JOIN (SELECT event_id, field, model, vector FROM embeddings FINAL"
        f" WHERE {scope} AND event_id IN (SELECT event_id FROM sampled)) AS e"
        " ON e.event_id = s.event_id AND e.field = s.field"
        f"{text_join}"
        " ORDER BY s.event_time, s.event_id"
    )
    try:
        result = client.query(query, parameters=parameters)
    except ClickHouseError as exc:
        raise WarehouseError(f"reading scored events from the warehouse failed: {exc}") from exc
    columns = [c.strip() for c in _SCORE_COLUMNS.split(",")]
    out: list[dict[str, Any]] = []
    for values in result.result_rows:
        row = dict(zip(columns, values[: len(columns)], strict=True))
        vector, model = values[len(columns)], values[len(columns) + 1]
        row["event_id"] = str(row["event_id"])
        row["event_time"] = _utc(row["event_time"])
        for name in _EMPTY_IS_NONE:
            row[name] = row[name] or None
        row["scores"] = {str(k): float(v) for k, v in dict(row["scores"]).items()}
        row["scorer_versions"] = {str(k): str(v) for k, v in dict(row["scorer_versions"]).items()}
        row["embedding"] = [float(x) for x in vector] if vector else None
        row["embedding_model"] = (model or None) if vector else None
        if with_text:
            messages, completion, query_text = values[len(columns) + 2 :]
            row["text"] = _text(row["event_type"], messages or (), completion, query_text)
        out.append(row)
    return out


def _check_row(row: Any, where: str) -> dict[str, Any]:
    """One file row as a ScoredEvent-shaped dict, or a DriftError naming ``where``."""
    if not isinstance(row, dict):
        raise DriftError(
            f"{where}: expected a JSON object (a scored event), got {type(row).__name__}"
        )
    event_type = row.get("event_type")
    if event_type not in EVENT_TYPES:
        raise DriftError(
            f"{where}: expected event_type one of {', '.join(EVENT_TYPES)}, got {event_type!r}"
        )
    if not isinstance(row.get("app"), str) or not row["app"]:
        raise DriftError(f"{where}: expected app as a non-empty string, got {row.get('app')!r}")
    for name in ("environment", "model", "prompt_name", "prompt_version", "embedding_model"):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise DriftError(f"{where}: expected {name} as a string or null, got {row[name]!r}")
    vector = row.get("embedding")
    if vector is not None and (
        not isinstance(vector, list)
        or not vector
        or not all(_is_number(x) and math.isfinite(x) for x in vector)
    ):
        raise DriftError(f"{where}: expected embedding as a list of finite numbers or null")
    scores = row.get("scores", {})
    if not isinstance(scores, dict) or not all(_is_number(v) for v in scores.values()):
        raise DriftError(f"{where}: expected scores as an object of numbers, got {scores!r}")
    for name in _NUMBERS:
        if row.get(name) is not None and not _is_number(row[name]):
            raise DriftError(f"{where}: expected {name} as a number or null, got {row[name]!r}")
    when = row.get("event_time")
    if isinstance(when, str):
        try:
            row["event_time"] = _utc(datetime.fromisoformat(when))
        except ValueError:
            raise DriftError(f"{where}: event_time is not an ISO datetime: {when!r}") from None
    elif isinstance(when, int) and not isinstance(when, bool):  # Avro JSON: microseconds
        try:
            row["event_time"] = datetime.fromtimestamp(when / 1e6, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise DriftError(f"{where}: event_time {when} is out of range") from None
    elif when is not None:
        raise DriftError(
            f"{where}: expected event_time as an ISO string or microseconds, got {when!r}"
        )
    return row


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def rows_from_file(path: str | Path) -> list[dict[str, Any]]:
    """``ScoredEvent``-shaped dicts from a JSON Lines file (one object a line; blank lines
    skipped; ``event_time`` as an ISO string). A bad line raises a DriftError naming it."""
    target = Path(path)
    try:
        lines = target.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DriftError(f"cannot read scored events from {target}: {exc}") from exc
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{target}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DriftError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
        out.append(_check_row(row, where))
    return out


def rows_to_file(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows as :func:`rows_from_file` reads them (``event_time`` as ISO strings)."""
    target = Path(path)
    with target.open("w", encoding="utf-8") as out:
        for row in rows:
            line = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
            out.write(json.dumps(line, sort_keys=True) + "\n")
    return target


__all__ = [
    "DEFAULT_LIMIT",
    "EVENT_TYPES",
    "parse_time",
    "rows_from_file",
    "rows_to_file",
    "scored_rows",
]
