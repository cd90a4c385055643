"""Detached local processes with a record on disk, so a second ``infra up`` finds them.

Each managed component (the Kafka broker, the warehouse) is one process group started with
``start_new_session``; its pid, ports and details live in ``<state_dir>/<name>.json`` and its
output in ``<state_dir>/<name>.log``. Liveness is read from ``/proc`` so that a zombie left by
a parent that never waited counts as dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from undertow.infra import InfraError

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessRecord:
    """What a running component left on disk: enough to reach it and to stop it."""

    name: str
    pid: int
    started_at: float
    ports: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in {"Z", "X"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bindable(host: str, port: int) -> bool:
    """True when a server socket could listen on ``host:port`` now (as the JVM binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], bool] | None = None,
) -> T:
    """Call ``probe`` until it returns a value other than None, or raise after ``timeout`` s.

    ``alive``, when given, is checked on every round so a process that died fails fast
    instead of running out the whole deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if alive is not None and not alive():
            raise InfraError(f"{what}: the process exited before it was ready")
        if time.monotonic() >= deadline:
            raise InfraError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


class ManagedProcess:
    """One named component under a state directory."""

    def __init__(self, name: str, state_dir: Path) -> None:
        self.name = name
        self.state_dir = state_dir
        self.record_path = state_dir / f"{name}.json"
        self.log_path = state_dir / f"{name}.log"

    def record(self) -> ProcessRecord | None:
        """The record of the running process, or None when it is not running.

        A stale record (its process is gone) is removed.
        """
        try:
            raw = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise InfraError(f"{self.record_path} is not valid JSON: {exc}") from exc
        record = ProcessRecord(**raw)
        if pid_alive(record.pid) and _runs(record.pid, record.details.get("marker")):
            return record
        self.record_path.unlink(missing_ok=True)
        return None

    def spawn(
        self,
        argv: Sequence[str],
        ports: Mapping[str, int],
        details: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ProcessRecord:
        """Start ``argv`` detached in its own session, logging to ``log_path``.

        The last argument that names the program (its main class or module) is kept as a
        marker, so a later ``record()`` can tell our process from a stranger with its pid.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                )
            except OSError as exc:
                raise InfraError(f"cannot start {self.name} ({argv[0]}): {exc}") from exc
        record = ProcessRecord(
            name=self.name,
            pid=proc.pid,
            started_at=time.time(),
            ports=dict(ports),
            details={"marker": _marker(argv), **(details or {})},
        )
        tmp = self.record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2))
        tmp.replace(self.record_path)
        return record

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the process group: SIGTERM, then SIGKILL after ``timeout`` s.

        Returns False when nothing was running.
        """
        record = self.record()
        if record is None:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(record.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while pid_alive(record.pid) and time.monotonic() < deadline:
                _reap(record.pid)
                time.sleep(0.05)
            if not pid_alive(record.pid):
                break
        _reap(record.pid)
        self.record_path.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process log, to put in error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _marker(argv: Sequence[str]) -> str:
    """The main class (``kafka.Kafka``) or module (``-m undertow.infra.warehouse``) in argv."""
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1]
    for arg in argv[1:]:
        if not arg.startswith("-") and "." in arg and "/" not in arg and "=" not in arg:
            return arg
    return Path(argv[0]).name


def _runs(pid: int, marker: str | None) -> bool:
    """True when ``pid``'s command line holds ``marker``: a pid reused by another program
    after a reboot or a crash is not taken for our component."""
    if not marker:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
