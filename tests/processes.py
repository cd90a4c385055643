"""Undertow CLI subprocesses for end-to-end tests, with their logs in files."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from undertow.infra import InfraError
from undertow.infra.process import wait_until

UNDERTOW = [sys.executable, "-m", "undertow.cli"]


def dump_stacks(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 15) -> str:
    """What a running worker wrote to its log on SIGUSR1: the stacks of its threads and
    asyncio tasks (Faust's worker, through mode, dumps them on that signal), to explain a
    worker found stuck. Empty when it no longer runs or wrote nothing by ``timeout``."""
    if proc.poll() is not None or not log_path.exists():
        return ""
    start = log_path.stat().st_size
    proc.send_signal(signal.SIGUSR1)
    seen = [""]

    def dumped() -> str | None:
        with log_path.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        done = "THREAD" in text and text == seen[0]  # the dump began and stopped growing
        seen[0] = text
        return text if done else None

    try:
        return wait_until(dumped, timeout, "a stack dump", interval=0.5)
    except InfraError:
        return ""


class Processes:
    """CLI subprocesses with logs in files; all stopped at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*UNDERTOW, *args], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
            )
        self.running[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.running.values())

    def dead(self) -> str:
        return "; ".join(
            f"{n} exited {p.returncode}: {self.log(n)[-2000:]}"
            for n, p in self.running.items()
            if p.poll() is not None
        )

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
