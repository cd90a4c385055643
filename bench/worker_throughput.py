"""Figures for the stream worker's raw path: Kafka -> ``undertow worker`` (ingest) -> ClickHouse.

    .venv/bin/python bench/worker_throughput.py [--events 30000] [--seconds 20]

A fresh local stack (broker + embedded warehouse) in a temporary state directory, and the
worker as the CLI runs it (a subprocess, default settings: batches of 500 within 0.5 s). No
scorers yet: the enrich hook is the identity, so this is decode + row mapping + insert.

1. Throughput: ``--events`` sample events (prompt, retrieval, completion, some feedback) are
   published as fast as the producer goes while the worker runs; the figure is events over the
   time from the first publish until the last row is queryable.
2. Freshness at half that rate, for ``--seconds``: each event carries its send time (taken just
   before it is handed to the producer); ClickHouse stamps ``ingested_at`` when it stores the
   row, so ``ingested_at - sent`` is produce-to-queryable latency (the insert returns a few ms
   later). p50 and p99 over every event.
3. The worker's peak resident memory (VmHWM) at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from undertow.infra.process import wait_until
from undertow.infra.stack import LocalStack
from undertow.schemas.codec import AvroCodec
from undertow.schemas.topics import EVENTS
from undertow.services.bus import producer_config, publish
from undertow.services.traffic import sample_traces
from undertow.services.warehouse.client import connect
from undertow.settings import StackSettings


def peak_rss_mib(pid: int) -> float:
    """VmHWM of ``pid`` from /proc (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored(client: Any, run: str) -> int:
    return int(
        client.query(
            "SELECT uniqExact(event_id) FROM events WHERE attributes['bench_run'] = {r:String}",
            parameters={"r": run},
        ).result_rows[0][0]
    )


def wait_stored(client: Any, run: str, expected: int, timeout: float) -> float:
    """Poll until ``expected`` events of ``run`` are queryable; returns that moment."""
    wait_until(
        lambda: True if stored(client, run) >= expected else None,
        timeout=timeout,
        what=f"{expected} events of {run}",
        interval=0.02,
    )
    return time.perf_counter()


def machine() -> str:
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=30_000, help="events for the rate test")
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness test length")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("scoring: not in yet (enrich hook = identity); raw path only")

    with tempfile.TemporaryDirectory(prefix="undertow-bench-") as tmp:
        settings = StackSettings(home=Path(tmp) / "home", clickhouse_database="undertow")
        stack = LocalStack(settings)
        info = stack.up()
        worker: subprocess.Popen[bytes] | None = None
        try:
            env = {
                **os.environ,
                "UNDERTOW_HOME": str(settings.home),
                "UNDERTOW_WORKER_BOOTSTRAP_SERVERS": info.bootstrap_servers,
                "UNDERTOW_WORKER_CLICKHOUSE_URL": info.clickhouse_url,
                "UNDERTOW_WORKER_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
            }
            log = (Path(tmp) / "worker.log").open("wb")
            worker = subprocess.Popen(
                [sys.executable, "-m", "undertow.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            client = connect(info.clickhouse_url, database="undertow")
            codec = AvroCodec()

            # Warm-up: the worker has joined its group and written once.
            warm = uuid.uuid4().hex[:8]
            events = list(sample_traces(10, seed=1, attributes={"bench_run": warm}))
            publish(
                info.bootstrap_servers, EVENTS, [(None, codec.encode("event", e)) for e in events]
            )
            wait_stored(client, warm, len(events), timeout=120)

            # 1. Throughput.
            run = uuid.uuid4().hex[:8]
            records = []
            for e in sample_traces(args.events // 3 + 1, seed=2, attributes={"bench_run": run}):
                records.append((e["trace_id"].encode(), codec.encode("event", e)))
            records = records[: args.events]
            cpu_before = cpu_seconds(worker.pid)
            began = time.perf_counter()
            publish(info.bootstrap_servers, EVENTS, records, timeout=120)
            published = time.perf_counter() - began
            done = wait_stored(client, run, len(records), timeout=600)
            rate = len(records) / (done - began)
            cpu = cpu_seconds(worker.pid) - cpu_before
            print(
                f"throughput: {len(records)} events in {done - began:.2f} s = {rate:,.0f} events/s "
                f"(publishing alone took {published:.2f} s); worker CPU {cpu:.1f} s = "
                f"{cpu / len(records) * 1e6:.0f} us/event"
            )

            # 2. Freshness at half that rate.
            target = rate / 2
            fresh = uuid.uuid4().hex[:8]
            producer = Producer(producer_config(info.bootstrap_servers))
            source = sample_traces(int(target * args.seconds) // 3 + 10, seed=3)
            count = int(target * args.seconds)
            began = time.perf_counter()
            for i in range(count):
                due = began + i / target
                while (ahead := due - time.perf_counter()) > 0:
                    time.sleep(min(ahead, 0.005))  # pacing the producer, not synchronising
                event = next(source)
                event["attributes"] = {"bench_run": fresh, "sent_us": str(time.time_ns() // 1000)}
                value = codec.encode("event", event)
                while True:
                    try:
                        producer.produce(EVENTS, value=value, key=event["trace_id"].encode())
                        break
                    except BufferError:
                        producer.poll(0.01)
                producer.poll(0)
            producer.flush(30)
            wait_stored(client, fresh, count, timeout=300)
            p50, p99, worst = client.query(
                "SELECT quantilesExact(0.5, 0.99)(lag)[1], quantilesExact(0.5, 0.99)(lag)[2], "
                "max(lag) FROM (SELECT (toUnixTimestamp64Micro(ingested_at) "
                "- toInt64(attributes['sent_us'])) / 1000 AS lag FROM events "
                "WHERE attributes['bench_run'] = {r:String})",
                parameters={"r": fresh},
            ).result_rows[0]
            print(
                f"freshness at {target:,.0f} events/s ({count} events over {args.seconds:.0f} s): "
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms (produce -> stored)"
            )
            print(f"worker peak RSS: {peak_rss_mib(worker.pid):.0f} MiB")
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
            stack.down()


if __name__ == "__main__":
    main()
