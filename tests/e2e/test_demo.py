"""The README's main command, end to end through the CLI, from a clean state directory:
``undertow demo`` starts everything, plays the scenario, and every planted incident is caught,
paged and (for the bad model version) rolled back; the HTML report is written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

UNDERTOW = [sys.executable, "-m", "undertow.cli"]
INCIDENTS = ("topic_shift", "injection", "toxicity", "cost_spike", "quality_regression")


def _run(args: list[str], home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``undertow ARGS``; past ``timeout`` it gets SIGTERM, to stop what it started (a killed
    demo would leave its workers and services running), then SIGKILL, and the test fails."""
    env = {**os.environ, "UNDERTOW_HOME": str(home), "COLUMNS": "250", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        UNDERTOW + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"undertow {args[0]} still running after {timeout:.0f} s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.long(seconds=270)
def test_demo_catches_every_planted_incident(tmp_path: Path) -> None:
    home = tmp_path / "state"
    report = tmp_path / "report.html"
    try:
        result = _run(["demo", "--seed", "11", "--report", str(report)], home, timeout=560)
        out = result.stdout
        assert result.returncode == 0, f"demo failed:\n{out[-6000:]}\n{result.stderr[-3000:]}"
        for kind in INCIDENTS:
            row = next(
                (line for line in out.splitlines() if line.lstrip("│ ").startswith(kind)), ""
            )
            assert row and " yes " in row, f"{kind} not caught:\n{out[-6000:]}"
            # how late: the incident's traces (for the regression, the bad version's answers)
            # sent before the catch; the regression cannot be caught before any answer
            after = re.search(r"\byes\b\W+(\d+) traces\b", row)
            assert after, f"{kind} has no delay:\n{row}"
            assert kind != "quality_regression" or int(after.group(1)) > 0, row
        caught = re.search(r"(\d+) of (\d+) incidents caught in (\d+) s", out)
        assert caught and caught.group(1) == caught.group(2) == str(len(INCIDENTS)), out[-3000:]
        flat = " ".join(out.split())
        assert "rollback SmolLM2-135M-Instruct" in flat and "succeeded" in flat
        assert "false alarms on the usual traffic after the baseline:" in flat
        html = report.read_text()
        assert "<html" in html and "plotly" in html.lower()
        # Self-contained: no script, style or image loaded from elsewhere (plotly's inlined
        # code mentions URLs in strings; what matters is what the page loads).
        assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?https?://", html)
        # The stack stays up for the user; the demo's own processes are gone.
        status = _run(["infra", "status"], home, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        _run(["infra", "down"], home, timeout=120)
