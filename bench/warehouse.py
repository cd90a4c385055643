"""Figures for the local warehouse: start times, events insert throughput, count latency.

    .venv/bin/python bench/warehouse.py [--rows 100000]

Cold start: a new state directory (empty data directory). Warm start: the same directory
after a stop. Inserts go through clickhouse-connect with its defaults (lz4-compressed Native
bodies) into the migrated ``events`` table, as one insert of all rows and as sink-sized batches;
half the rows are prompts, half completions, with a few hundred bytes of text each. A small
untimed insert warms the client and table first (the very first insert costs ~1 s more).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from undertow.infra.warehouse import LocalWarehouse
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.migrations import apply_migrations

COLUMNS = [
    "event_id", "event_type", "trace_id", "span_id", "event_time", "app", "environment",
    "attributes", "model", "prompt_name", "prompt_version", "prompt_messages", "completion_text",
    "input_tokens", "output_tokens", "latency_ms", "kafka_topic", "kafka_partition",
    "kafka_offset",
]  # fmt: skip
PROMPT = "Summarise the following support ticket in two sentences. " * 4
ANSWER = "The customer reports that the export fails after the latest update. " * 6


def events(count: int) -> list[list[Any]]:
    """``count`` prompt and completion rows, two per trace."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows: list[list[Any]] = []
    for i in range(count):
        completion = i % 2 == 1
        rows.append(
            [
                uuid.uuid4(), "completion" if completion else "prompt", f"{i // 2:032x}",
                f"{i:016x}", start + timedelta(milliseconds=i), f"app{i % 3}", "production",
                {"tenant": f"t{i % 10}"}, "smollm2", "summarise", f"v{i % 4}",
                [] if completion else [("system", "Be brief."), ("user", PROMPT)],
                ANSWER if completion else None, 180 if completion else None,
                60 if completion else None, 350.0 + i % 100 if completion else None,
                "undertow.events.v1", i % 6, i,
            ]
        )  # fmt: skip
    return rows


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000, help="sink-sized insert batch")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        local = LocalWarehouse(Path(tmp))
        try:
            print(f"warehouse start, cold (empty data dir): {timed(local.start):.2f} s")
            local.stop()
            info_time = time.perf_counter()
            info = local.start()
            print(
                f"warehouse start, warm (same data dir):  {time.perf_counter() - info_time:.2f} s"
            )

            admin = connect(info.url, database=None)
            print(f"migrations, fresh database: {timed(lambda: apply_migrations(admin)):.2f} s")
            connect(info.url).insert("events", events(1_000), column_names=COLUMNS)  # warm-up
            variants: list[tuple[str, dict[str, Any]]] = [
                ("lz4, the default", {}),
                ("uncompressed", {"compress": False}),
            ]
            for label, options in variants:
                client = connect(info.url, **options)
                rows = events(args.rows)
                began = time.perf_counter()
                client.insert("events", rows, column_names=COLUMNS)
                seconds = time.perf_counter() - began
                print(
                    f"insert {len(rows)} rows in one insert ({label}): {seconds:.2f} s, "
                    f"{len(rows) / seconds:,.0f} rows/s"
                )
            rows = events(args.rows)
            batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
            seconds = timed(
                lambda: [client.insert("events", b, column_names=COLUMNS) for b in batches]
            )
            print(
                f"insert {len(rows)} rows in batches of {args.batch}: {seconds:.2f} s, "
                f"{len(rows) / seconds:,.0f} rows/s"
            )
            print(f"events table: {client.command('SELECT count() FROM events')} rows")

            for label, sql in (
                ("count()", "SELECT count() FROM events"),
                ("count() FINAL", "SELECT count() FROM events FINAL"),
                ("count() by app, 1 h", "SELECT app, count() FROM events"
                 " WHERE event_time < '2026-01-01 01:00:00' GROUP BY app"),
            ):  # fmt: skip
                samples = [timed(partial(client.query, sql)) * 1000 for _ in range(30)]
                print(
                    f"query {label}: median {statistics.median(samples):.1f} ms, "
                    f"max {max(samples):.1f} ms over {len(samples)} runs"
                )
        finally:
            local.stop()


if __name__ == "__main__":
    main()
