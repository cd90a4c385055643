"""Undertow CLI subprocesses for end-to-end tests, with their logs in files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

UNDERTOW = [sys.executable, "-m", "undertow.cli"]


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
