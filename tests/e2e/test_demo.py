"""The README's main command, end to end through the CLI, from a clean state directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

UNDERTOW = [sys.executable, "-m", "undertow.cli"]


def _run(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UNDERTOW_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(UNDERTOW + args, capture_output=True, text=True, env=env, timeout=timeout)


def test_demo_from_a_clean_state_directory(tmp_path: Path) -> None:
    home = tmp_path / "state"
    assert not home.exists()
    try:
        result = _run(["demo", "--traces", "60", "--seed", "11"], home)
        out = result.stdout
        assert result.returncode == 0, f"demo failed:\n{out}\n{result.stderr}"

        sent = re.search(r"Published (\d+) events", out)
        assert sent, out
        n_sent = int(sent.group(1))
        assert n_sent >= 180  # 60 traces of prompt, retrieval, completion (+ some feedback)
        assert f"Read back {n_sent} events from Kafka" in out
        summary = f"Sent {n_sent}, read back {n_sent} from Kafka, stored {n_sent} in ClickHouse"
        assert f"{summary}: all arrived" in out
        assert "One trace, as ClickHouse has it" in out

        # State lives under the one state directory; the stack is still up for the user.
        assert (home / "kafka.json").exists() and (home / "warehouse.json").exists()
        status = _run(["infra", "status"], home, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr

        # A second run finds the running stack and counts only its own events.
        again = _run(["demo", "--traces", "10"], home)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "running" in again.stdout
    finally:
        down = _run(["infra", "down"], home, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _run(["infra", "status"], home, timeout=60).returncode == 1
