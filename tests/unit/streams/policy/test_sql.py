"""Alert SQL: literals, and every query the default rules render runs in ClickHouse (the
embedded engine, chdb) against the tables of the shipped migrations, showing the evidence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from undertow.services.warehouse.migrations import load_migrations
from undertow.streams.policy import PolicyEngine, load_rules
from undertow.streams.policy.sql import literal, placeholders, render

from .fixtures import ManualClock, run, scenario


def test_literals_are_quoted_and_escaped() -> None:
    assert literal("it's \\ ok") == "'it\\'s \\\\ ok'"
    assert literal(0.5) == "0.5" and literal(3) == "3" and literal(True) == "true"
    assert literal(None) == "NULL"
    assert literal(["a", "b'"]) == "['a', 'b\\'']"
    assert literal([]) == "CAST([], 'Array(String)')"
    moment = datetime(2026, 1, 1, 0, 5, 0, 250, tzinfo=UTC)
    assert literal(moment) == "toDateTime64('2026-01-01 00:05:00.000250', 6, 'UTC')"
    with pytest.raises(TypeError):
        literal(object())


def test_render_fills_every_placeholder() -> None:
    template = "SELECT {{app}}, {{ app }}, {{ attributes.tenant }}"
    assert placeholders(template) == {"app", "attributes.tenant"}
    assert render(template, {"app": "x", "attributes.tenant": "t"}) == "SELECT 'x', 'x', 't'"
    with pytest.raises(KeyError):
        render(template, {"app": "x"})


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A chdb session holding the tables of every migration, in database ``undertow``."""
    try:
        import chdb.session as session_module
    except ImportError as exc:  # a dependency of undertow: its absence is a failure, not a skip
        pytest.fail(f"the embedded ClickHouse engine (chdb) is not installed: {exc}")
    path: Path = tmp_path_factory.mktemp("chdb")
    session = session_module.Session(str(path))
    try:
        session.query("CREATE DATABASE IF NOT EXISTS undertow")
        session.query("USE undertow")
        for migration in load_migrations():
            for statement in migration.statements:
                session.query(statement)
        yield session
    finally:
        session.close()


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert(session: Any, table: str, rows: list[dict[str, Any]]) -> None:
    lines = "\n".join(json.dumps(row) for row in rows)
    session.query(f"INSERT INTO {table} FORMAT JSONEachRow\n{lines}")


def _query(session: Any, sql: str) -> list[dict[str, Any]]:
    text = session.query(sql, "JSONEachRow").bytes().decode()
    return [json.loads(line) for line in text.splitlines() if line]


def test_every_default_rule_sql_runs_and_shows_its_evidence(warehouse: Any) -> None:
    steps = scenario()
    clock = ManualClock()
    alerts = run(PolicyEngine(load_rules(), clock), clock, steps)
    scores, drifts = [], []
    for step in steps:
        record = step.record
        if step.call == "scored" and record is not None:
            scores.append(
                {
                    "event_id": record["event_id"],
                    "event_type": record["event_type"],
                    "trace_id": record["trace_id"],
                    "span_id": record["span_id"],
                    "event_time": _time(record["event_time"]),
                    "app": record["app"],
                    "environment": record["environment"],
                    "model": record["model"] or "",
                    "prompt_name": record["prompt_name"] or "",
                    "prompt_version": record["prompt_version"] or "",
                    "scores": record["scores"],
                    "scorer_versions": record["scorer_versions"],
                    "cost_usd": record["cost_usd"],
                    "latency_ms": record["latency_ms"],
                }
            )
        elif step.call == "drift" and record is not None:
            drifts.append(
                {
                    **{k: record[k] for k in ("event_id", "app", "environment", "segment")},
                    **{k: record[k] for k in ("segment_fields", "stream", "detector", "statistic")},
                    **{k: record[k] for k in ("threshold", "detected", "window_reference")},
                    **{k: record[k] for k in ("window_current", "baseline_version")},
                    **{k: record[k] for k in ("example_event_ids", "nearest_topics")},
                    "event_time": _time(record["event_time"]),
                }
            )
    _insert(warehouse, "scores", scores)
    _insert(warehouse, "drift", drifts)

    assert {a["rule"] for a in alerts} == {r.name for r in load_rules().rules}
    for alert in alerts:
        rows = _query(warehouse, alert["sql"])
        assert rows, f"{alert['rule']} {alert['status']}: no rows for\n{alert['sql']}"
        if alert["rule"] == "toxicity_rate" and alert["status"] == "firing":
            toxic = sum(int(row["toxic"]) for row in rows)
            total = sum(int(row["completions"]) for row in rows)
            assert str(total) == alert["evidence"]["count"]
            assert str(toxic) == alert["evidence"]["hits"]
        if alert["rule"] == "hourly_spend" and alert["status"] == "firing":
            spend = sum(float(row["spend_usd"]) for row in rows)
            assert spend == pytest.approx(float(alert["evidence"]["value"]))
        if alert["rule"] == "prompt_injection" and alert["status"] == "resolved":
            assert len(rows) == int(alert["evidence"]["count"])
            assert all(float(row["injection"]) > 0.8 for row in rows)
        if alert["rule"] == "drift_detected":
            assert {row["detector"] for row in rows} == {"adwin"}
