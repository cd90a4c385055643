"""Cost of encoding and decoding one event with the codec, per call, on one thread.

.venv/bin/python bench/codec.py [--n 50000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from undertow.schemas.codec import AvroCodec
from undertow.services.traffic import sample_traces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    codec = AvroCodec()
    records = list(sample_traces(max(1, args.n // 3), seed=1))
    payloads = [codec.encode("event", r) for r in records]

    def timed(fn: object, items: list[object]) -> list[float]:
        samples = []
        for item in items:
            began = time.perf_counter_ns()
            fn(item)  # type: ignore[operator]
            samples.append((time.perf_counter_ns() - began) / 1000)
        return samples

    enc = timed(lambda r: codec.encode("event", r), records)  # type: ignore[arg-type]
    dec = timed(codec.decode, payloads)  # type: ignore[arg-type]
    cores, python = os.cpu_count(), platform.python_version()
    print(f"machine: {platform.machine()}, {cores} cores, Python {python}")
    print(f"records: {len(records)} events, mean size {statistics.mean(map(len, payloads)):.0f} B")
    for name, samples in (("encode", enc), ("decode", dec)):
        samples.sort()
        p50 = samples[len(samples) // 2]
        p99 = samples[int(len(samples) * 0.99)]
        rate = len(samples) / (sum(samples) / 1e6)
        print(f"{name}: p50 {p50:.1f} us, p99 {p99:.1f} us, {rate:,.0f} records/s")


if __name__ == "__main__":
    main()
