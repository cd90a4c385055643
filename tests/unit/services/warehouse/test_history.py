"""The pure parts of reading baseline rows: times from the command line, JSON Lines files, and
the arguments ``scored_rows`` refuses before it asks the warehouse anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.streams.drift.fixtures import around, centres, scored_event
from undertow.services.warehouse.history import (
    parse_time,
    rows_from_file,
    rows_to_file,
    scored_rows,
)
from undertow.streams.drift.base import DriftError
from undertow.streams.drift.baseline import build_baselines
from undertow.streams.drift.segment import segment_key, segment_of

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("45s", NOW - timedelta(seconds=45)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1h", NOW - timedelta(hours=1)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 12H ", NOW - timedelta(hours=12)),
        ("2026-01-30T08:00:00Z", datetime(2026, 1, 30, 8, tzinfo=UTC)),
        ("2026-01-30T08:00:00+02:00", datetime(2026, 1, 30, 6, tzinfo=UTC)),
        ("2026-01-30 08:00", datetime(2026, 1, 30, 8, tzinfo=UTC)),  # no zone: UTC
        ("2026-01-30", datetime(2026, 1, 30, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text, now=NOW)
    assert parsed == expected and parsed.tzinfo == UTC


def test_parse_time_is_relative_to_now_in_any_zone() -> None:
    local_now = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert parse_time("1h", now=local_now) == NOW - timedelta(hours=1)
    assert parse_time("1h", now=local_now).tzinfo == UTC


@pytest.mark.parametrize("text", ["yesterday", "1y", "-1h", "h", "2026-13-01", ""])
def test_parse_time_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(DriftError, match=r"expected an ISO datetime .* or a duration"):
        parse_time(text, now=NOW)


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
        encoding="utf-8",
    )
    return path


def _row(**fields: Any) -> dict[str, Any]:
    row = {
        "app": "chat",
        "event_type": "prompt",
        "event_time": "2026-01-01T00:00:00+00:00",
        "embedding": [0.6, 0.8],
        "scores": {"toxicity": 0.1},
    }
    row.update(fields)
    return row


def test_rows_from_file_reads_scored_events(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "rows.jsonl",
        [
            _row(),
            "",
            _row(event_type="completion", embedding=None, latency_ms=12.5, model="m"),
            _row(event_time=1_767_225_600_000_000),  # Avro JSON: microseconds
            _row(event_time="2026-01-01T01:00:00"),
        ],
    )
    rows = rows_from_file(path)
    assert [r["event_type"] for r in rows] == ["prompt", "completion", "prompt", "prompt"]
    assert rows[0]["event_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert rows[2]["event_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert rows[3]["event_time"] == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert rows[1]["latency_ms"] == 12.5 and rows[1]["embedding"] is None
    assert rows_from_file(_write(tmp_path / "empty.jsonl", ["", "  "])) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"app": "chat", ', r"rows.jsonl:2: not JSON: "),
        ("[1, 2]", r"rows.jsonl:2: expected a JSON object \(a scored event\), got list"),
        (_row(event_type="click"), r"rows.jsonl:2: expected event_type one of prompt, .*'click'"),
        (_row(app=""), r"rows.jsonl:2: expected app as a non-empty string"),
        (_row(app=None), r"rows.jsonl:2: expected app"),
        (_row(model=3), r"rows.jsonl:2: expected model as a string or null, got 3"),
        (_row(embedding="0.1,0.2"), r"rows.jsonl:2: expected embedding as a list of finite"),
        (_row(embedding=[]), r"rows.jsonl:2: expected embedding"),
        (_row(embedding=[0.1, "x"]), r"rows.jsonl:2: expected embedding"),
        (_row(embedding=[0.1, True]), r"rows.jsonl:2: expected embedding"),
        ('{"app": "a", "event_type": "prompt", "embedding": [NaN]}', r":2: expected embedding"),
        (_row(scores=[0.1]), r"rows.jsonl:2: expected scores as an object of numbers"),
        (_row(scores={"toxicity": "low"}), r"rows.jsonl:2: expected scores"),
        (_row(latency_ms="12"), r"rows.jsonl:2: expected latency_ms as a number or null"),
        (_row(event_time="noon"), r"rows.jsonl:2: event_time is not an ISO datetime: 'noon'"),
        (_row(event_time=[2026]), r"rows.jsonl:2: expected event_time as an ISO string"),
        (_row(event_time=10**30), r"rows.jsonl:2: event_time .* is out of range"),
    ],
)
def test_rows_from_file_names_the_bad_line(tmp_path: Path, line: Any, message: str) -> None:
    path = _write(tmp_path / "rows.jsonl", [_row(), line, _row()])
    with pytest.raises(DriftError, match=message):
        rows_from_file(path)


def test_rows_from_file_says_when_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(DriftError, match=r"cannot read scored events from .*missing\.jsonl"):
        rows_from_file(tmp_path / "missing.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DriftError, match="cannot read scored events"):
        rows_from_file(binary)


def test_rows_round_trip_through_a_file_into_the_same_baselines(tmp_path: Path) -> None:
    vectors = around(np.random.default_rng(3), centres(0, 3), 120)
    rows = [scored_event(i, v, scores={"toxicity": 0.01 * (i % 5)}) for i, v in enumerate(vectors)]
    rows.append(scored_event(999, None, model=None, event_type="feedback"))
    back = rows_from_file(rows_to_file(rows, tmp_path / "rows.jsonl"))
    assert back == rows
    assert [segment_key(segment_of(r)) for r in back] == [segment_key(segment_of(r)) for r in rows]
    built = build_baselines(back, calibration=None)
    assert built.keys() == build_baselines(rows, calibration=None).keys()
    assert {b.version for b in built.values()} == {
        b.version for b in build_baselines(rows, calibration=None).values()
    }


def test_scored_rows_refuses_bad_arguments_before_querying() -> None:
    class NoClient:
        def query(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("queried the warehouse")

    client: Any = NoClient()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(DriftError, match="since must be a timezone-aware datetime"):
        scored_rows(client, since=start.replace(tzinfo=None), until=start)
    with pytest.raises(DriftError, match="expected since before until"):
        scored_rows(client, since=start, until=start)
    with pytest.raises(DriftError, match="limit must be at least 1, got 0"):
        scored_rows(client, since=start, until=start + timedelta(hours=1), limit=0)


def test_docstring_examples() -> None:
    import doctest

    from undertow.services.warehouse import history

    result = doctest.testmod(history)
    assert result.attempted > 0 and result.failed == 0
