"""The chaos run of tests/chaos.py, repeated: a fleet of stream workers (3 ingest, 2 drift,
2 policy) under a seeded schedule of faults (SIGKILL, SIGTERM, a worker joining, the broker
stopped and restarted, the warehouse away 20 s), with about 10,000 events per run, and the
invariants checked after each run. Prints one line per run and the pass count.

    .venv/bin/python bench/chaos.py --runs 20 --seed 1

It starts its own local stack in a temporary state directory (or --home) and stops it at the
end. Run ``seed`` uses seed ``--seed + run``, so a failing seed can be run alone again.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests package

from tests.chaos import ChaosConfig, run_chaos
from undertow.infra.stack import LocalStack
from undertow.settings import StackSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--traces", type=int, default=ChaosConfig.traces)
    parser.add_argument("--warehouse-outage-s", type=float, default=20.0)
    parser.add_argument("--home", type=Path, default=None, help="state directory of the stack")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="undertow-chaos-"))
    local = LocalStack(StackSettings(home=home, clickhouse_database="undertow_chaos"))
    print(
        f"chaos: {args.runs} runs from seed {args.seed}, {args.traces} traces each; "
        f"{platform.machine()}, {platform.python_version()}, state under {home}",
        flush=True,
    )
    stack = local.up()
    began = time.monotonic()
    passed = 0
    try:
        for run in range(args.runs):
            config = ChaosConfig(
                seed=args.seed + run,
                traces=args.traces,
                warehouse_outage_s=args.warehouse_outage_s,
            )
            report = run_chaos(stack, local, home / f"run-{config.seed}", config)
            passed += report.passed
            print(report.line(), flush=True)
    finally:
        local.down()
    minutes = (time.monotonic() - began) / 60
    print(f"passed {passed} of {args.runs} runs ({minutes:.1f} min)")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
