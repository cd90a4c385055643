"""Cost of recording one span with the SDK on the caller's thread, beside the bare
``confluent_kafka.Producer.produce()`` of the same encoded record, in the same run.

.venv/bin/python bench/sdk_hot_path.py [--n 100000] [--bootstrap HOST:PORT | --local-broker]

Where events go while the caller is timed:

* default: no broker is contacted. The SDK runs without Kafka (``bootstrap_servers=None``)
  and its delivery thread builds, encodes and spools every event to a temporary directory;
  the bare producer points at a closed loopback port, so ``produce()`` only enqueues into
  librdkafka's local queue (which is all it does on the caller's thread with any broker).
* ``--bootstrap``: both send to that broker's ``undertow.events.v1`` (must exist).
* ``--local-broker``: starts a broker with ``KafkaBroker`` in a temporary state dir (needs
  java and mvn; jars cached under ``~/.cache/undertow``), creates the topics, uses it, stops it.

Figures: per-call median and p99 (``time.perf_counter_ns`` around each call), a bulk loop's
calls per second, and how fast the delivery thread drains what was recorded (event built,
redacted, encoded and produced or spooled).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from confluent_kafka import Producer

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event, new_span_id, new_trace_id
from undertow.schemas.topics import EVENTS
from undertow.services.bus import producer_config
from undertow.services.sdk import SdkConfig, Undertow

PACE_S = 0.0005
TEXT = "The refund policy allows returns within 30 days of delivery. " * 4  # ~250 chars


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000


def timed_each(call: Callable[[int], None], n: int, pause: float = 0.0) -> list[int]:
    """Nanoseconds of each call; ``pause`` s of sleep after each one, outside the timing."""
    clock = time.perf_counter_ns
    samples = []
    for i in range(n):
        began = clock()
        call(i)
        samples.append(clock() - began)
        if pause:
            time.sleep(pause)
    return samples


def bulk_rate(call: Callable[[int], None], n: int) -> float:
    began = time.perf_counter()
    for i in range(n):
        call(i)
    return n / (time.perf_counter() - began)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="calls per measurement")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--bootstrap", help="an existing broker with the Undertow topics")
    where.add_argument("--local-broker", action="store_true", help="start one for the run")
    args = parser.parse_args()
    n: int = args.n
    # The bare producer's connection failures to a closed port are expected: keep them quiet.
    logging.getLogger("undertow.kafka.client").setLevel(logging.CRITICAL)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdk-bench-")))
        bootstrap: str | None = args.bootstrap
        mode = f"broker {bootstrap}" if bootstrap else "no broker contacted (SDK spools)"
        if args.local_broker:
            from undertow.infra.kafka import KafkaBroker, ensure_topics, load_topics
            from undertow.settings import StackSettings

            broker = KafkaBroker(tmp / "state", StackSettings().cache_dir)
            bootstrap = broker.start().bootstrap
            stack.callback(broker.stop)
            ensure_topics(bootstrap, load_topics())
            mode = f"local broker started by the bench ({bootstrap})"

        ut = Undertow(
            SdkConfig(
                app="bench",
                bootstrap_servers=bootstrap,
                hash_key="bench-hash-key",
                spool_dir=tmp / "spool",
                spool_max_bytes=8 << 30,
                queue_size=4 * n + 10,
                producer_queue_limit=4 * n + 10,
                producer_overrides={"queue.buffering.max.messages": min(10_000_000, 4 * n + 10)},
                flush_at_exit=False,
            )
        )
        stack.callback(ut.close, 5.0)
        trace_ids = [new_trace_id() for _ in range(1024)]
        span_ids = [new_span_id() for _ in range(1024)]

        def record(i: int) -> None:
            ut.record_completion(
                trace_id=trace_ids[i & 1023],
                span_id=span_ids[i & 1023],
                parent_span_id=None,
                model="gpt-4o-mini",
                text=TEXT,
                latency_ms=812.5,
                input_tokens=420,
                output_tokens=64,
                finish_reason="stop",
                attributes=None,
            )

        def trace_call(i: int) -> None:
            with ut.trace(user_id="user-1") as tr:
                messages = [{"role": "user", "content": TEXT}]
                with tr.prompt(messages=messages, model="m"), tr.completion(model="m") as c:
                    c.set_output(TEXT, input_tokens=420, output_tokens=64, finish_reason="stop")

        # The same event, encoded, for the bare producer.
        codec = AvroCodec()
        sample = event(
            "completion",
            {"model": "gpt-4o-mini", "text": TEXT, "latency_ms": 812.5, "input_tokens": 420,
             "output_tokens": 64, "finish_reason": "stop"},
            app="bench",
        )  # fmt: skip
        value = codec.encode("event", sample)
        producer = Producer(
            producer_config(
                bootstrap or f"127.0.0.1:{closed_port()}",
                **{"queue.buffering.max.messages": min(10_000_000, 4 * n + 10)},
            )
        )
        keys = [t.encode() for t in trace_ids]

        def produce(i: int) -> None:
            producer.produce(EVENTS, value=value, key=keys[i & 1023])

        def encode_produce(i: int) -> None:
            producer.produce(EVENTS, value=codec.encode("event", sample), key=keys[i & 1023])

        for warm in (record, produce):  # imports, caches, first allocations
            for i in range(1000):
                warm(i)
        ut.flush(60)

        sdk_each = timed_each(record, n)
        ut.flush(600)
        drain_began = time.perf_counter()
        sdk_bulk = bulk_rate(record, n)
        flushed = ut.flush(600)
        drain_rate = n / (time.perf_counter() - drain_began)
        traces_each = timed_each(trace_call, n // 10)
        ut.flush(600)
        paced_each = timed_each(trace_call, n // 20, pause=PACE_S)
        ut.flush(600)
        stats = ut.stats()

        prod_each = timed_each(produce, n)
        prod_bulk = bulk_rate(produce, n)
        enc_each = timed_each(encode_produce, n // 10)
        if bootstrap:
            producer.flush(60)
        else:
            producer.purge()
        producer.poll(0)

    cores, python = os.cpu_count(), platform.python_version()
    print(f"machine: {platform.machine()}, {cores} cores, {platform.processor() or '?'}")
    print(f"python: {python} ({sys.implementation.name}), N = {n:,} calls per figure")
    print(f"where events go: {mode}; encoded event {len(value)} B")
    rows = [
        ("ut.record_completion()", sdk_each, sdk_bulk),
        ("Producer.produce() (bare)", prod_each, prod_bulk),
        ("encode + produce() (naive SDK)", enc_each, None),
        ("trace + prompt + completion (3 API calls, 2 events)", traces_each, None),
    ]
    paced_p50, paced_p99 = percentiles(paced_each)
    for name, samples, rate in rows:
        p50, p99 = percentiles(samples)
        bulk = f", bulk {rate:,.0f} calls/s" if rate else ""
        print(f"{name:52s} median {p50:6.2f} us, p99 {p99:7.2f} us{bulk}")
    print(
        f"  same, paced (sleep {PACE_S * 1e3:.1f} ms between traces, like an app waiting on "
        f"I/O): median {paced_p50:.2f} us, p99 {paced_p99:.2f} us"
    )
    print(
        f"delivery thread drained {n:,} events (bulk loop to flush) at {drain_rate:,.0f} events/s "
        f"(flush {'ok' if flushed else 'TIMED OUT'})"
    )
    print(
        f"sdk stats: enqueued {stats.enqueued:,}, sent {stats.sent:,}, spooled {stats.spooled:,}, "
        f"dropped {stats.dropped:,}, failed {stats.failed:,}"
    )


if __name__ == "__main__":
    main()
