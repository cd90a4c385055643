"""A fleet of workers (3 ingest, 2 drift, 2 policy) under a seeded schedule of faults, on the
real broker and warehouse: SIGKILL, SIGTERM, a worker joining, the broker stopped and
restarted, the warehouse away. The short form of ``bench/chaos.py``; tests/chaos.py says what
is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import FAULTS, ChaosConfig, run_chaos, schedule
from undertow.infra.stack import LocalStack, StackInfo

pytestmark = pytest.mark.integration


def test_the_schedule_has_every_fault_once_between_the_first_and_last_chunks() -> None:
    config = ChaosConfig(seed=5, chunks=20)
    faults = schedule(config)
    assert sorted(f.kind for f in faults) == sorted(FAULTS)
    assert all(2 <= f.after < config.chunks - 2 for f in faults)
    assert schedule(config) == faults  # seeded
    assert schedule(ChaosConfig(seed=6, chunks=20)) != faults


@pytest.mark.long(seconds=200)
def test_a_fleet_under_faults_stores_scores_and_detects_every_event_once(
    stack: StackInfo, local_stack: LocalStack, tmp_path: Path
) -> None:
    config = ChaosConfig(
        seed=11, traces=600, chunks=16, warehouse_outage_s=8, broker_outage_s=5, catch_up_s=300
    )
    report = run_chaos(stack, local_stack, tmp_path / "chaos", config)
    print("\n" + report.line())
    assert report.passed, report.line()
