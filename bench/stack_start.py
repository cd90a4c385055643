"""Start times of the local stack: Kafka jars, broker and warehouse, cold and warm.

    .venv/bin/python bench/stack_start.py

Cold: a new state directory (broker storage formatted, empty warehouse). Warm: the same
directory restarted. Jar resolution is timed into a fresh cache (cold, Maven's own ~/.m2 may
already hold the jars) and again when already resolved (warm).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from undertow.infra.kafka import KafkaBroker
from undertow.infra.warehouse import LocalWarehouse
from undertow.settings import StackSettings


def _timed(fn: object) -> float:
    began = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - began


def main() -> None:
    settings = StackSettings()
    cores, python = os.cpu_count(), platform.python_version()
    print(f"machine: {platform.machine()}, {cores} cores, Python {python}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fresh_cache = KafkaBroker(root / "s0", root / "cache", version=settings.kafka_version)
        print(f"kafka jars, fresh cache: {_timed(fresh_cache.resolve_jars):.1f} s")
        print(f"kafka jars, resolved:    {_timed(fresh_cache.resolve_jars):.2f} s")

        broker = KafkaBroker(root / "s1", settings.cache_dir, version=settings.kafka_version)
        warehouse = LocalWarehouse(root / "s1")
        try:
            for label in ("cold", "warm"):
                b = _timed(lambda: broker.start(timeout=120))
                w = _timed(lambda: warehouse.start(timeout=120))
                print(f"broker start, {label}: {b:.1f} s; warehouse start, {label}: {w:.1f} s")
                broker.stop()
                warehouse.stop()
        finally:
            broker.stop()
            warehouse.stop()


if __name__ == "__main__":
    main()
