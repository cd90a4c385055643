"""``undertow demo``: the main job, the whole pipeline on the local stack with planted
incidents (:mod:`undertow.demo`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from undertow.cli.console import console
from undertow.settings import StackSettings


def demo(
    seed: Annotated[int, typer.Option(help="seed of the scenario's traffic")] = 7,
    scale: Annotated[
        float, typer.Option(min=0.1, max=10, help="multiplies the scenario's trace counts")
    ] = 1.0,
    report: Annotated[
        Path | None, typer.Option(help="where to write the HTML report (default: the run's folder)")
    ] = None,
) -> None:
    """Run the main job: the whole pipeline on the local stack, with planted incidents.

    Starts the local stack (or finds it running) and leaves it running; starts the workers,
    the action and alert services and the gateway for the run, plays a support assistant's
    traffic with a topic shift, an injection burst, rude answers, a cost spike and a bad model
    version, and shows what was caught, paged and done. Exits 1 if an incident was missed.
    """
    from undertow.demo import run_demo

    # SIGTERM (a supervisor, a test's timeout) unwinds like Ctrl-C, so the run stops the
    # workers and services it started instead of leaving them running without it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Without a terminal (make demo piped or logged) rich would wrap the tables at 80 columns
    # and cut the incidents' names; a log has room for wide lines.
    wide = console.is_terminal or "COLUMNS" in os.environ
    out = console if wide else Console(width=160)
    result = run_demo(StackSettings(), seed=seed, scale=scale, report_path=report, console=out)
    if result.caught < len(result.outcomes):
        raise typer.Exit(1)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
