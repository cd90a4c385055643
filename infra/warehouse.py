"""The local warehouse: the embedded ClickHouse engine served over HTTP, as one process.

:class:`LocalWarehouse` starts it detached under the state directory (data in
``<state_dir>/warehouse``), finds it when it already runs, and stops it. The protocol itself
lives in ``clickhouse_http.py``. In the foreground::

    python -m undertow.infra.warehouse --data .undertow/warehouse --port 8123
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from undertow.infra import InfraError
from undertow.infra.clickhouse_http import Engine, create_app
from undertow.infra.process import (
    ManagedProcess,
    bindable,
    free_port,
    pid_alive,
    port_open,
    wait_until,
)

PROCESS_NAME = "warehouse"

# --------------------------------------------------------------------------------------------
# The detached process, as `infra up` runs it.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarehouseInfo:
    """A running warehouse: where to reach it and where it keeps its data and log."""

    url: str
    host: str
    port: int
    pid: int
    data_dir: Path
    log_path: Path
    started_now: bool


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when ``GET /ping`` on ``host:port`` answers ``Ok.`` (never through a proxy)."""
    try:
        with _NO_PROXY.open(f"http://{host}:{port}/ping", timeout=timeout) as response:
            return bool(response.status == 200 and response.read().startswith(b"Ok."))
    except (OSError, urllib.error.URLError):
        return False


class LocalWarehouse:
    """Starts, finds and stops the warehouse process recorded under ``state_dir``.

    The data lives in ``<state_dir>/warehouse``; the process record and log beside it.
    """

    def __init__(self, state_dir: Path, host: str = "127.0.0.1") -> None:
        self.state_dir = state_dir
        self.host = host
        self.data_dir = state_dir / "warehouse"
        self._process = ManagedProcess(PROCESS_NAME, state_dir)
        self._port_path = state_dir / f"{PROCESS_NAME}.port"

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    def status(self) -> WarehouseInfo | None:
        """The running warehouse when its ``/ping`` answers, else None."""
        record = self._process.record()
        if record is None:
            return None
        port = record.ports.get("http")
        if port is None or not ping(self._client_host(), port):
            return None
        return self._info(record.pid, port, started_now=False)

    def start(self, timeout: float = 60) -> WarehouseInfo:
        """Start the warehouse unless it already runs; wait until ``/ping`` answers."""
        record = self._process.record()
        if record is not None:
            # Running (or still starting, from another caller): wait for it rather than
            # spawning a second process on the same data directory.
            port = record.ports.get("http")
            if port is None:
                raise InfraError(f"{self._process.record_path} names no http port; stop it first")
            self._wait_ready(record.pid, port, timeout)
            return self._info(record.pid, port, started_now=False)
        port = self._pick_port()
        argv = [
            sys.executable,
            "-m",
            "undertow.infra.warehouse",
            "--data",
            str(self.data_dir),
            "--host",
            self.host,
            "--port",
            str(port),
        ]
        record = self._process.spawn(
            argv, ports={"http": port}, details={"data": str(self.data_dir)}
        )
        self._port_path.write_text(f"{port}\n")
        self._wait_ready(record.pid, port, timeout)
        return self._info(record.pid, port, started_now=True)

    def stop(self, timeout: float = 30) -> bool:
        """Stop the warehouse (SIGTERM, so the engine closes cleanly); False if none ran."""
        return self._process.stop(timeout)

    def _wait_ready(self, pid: int, port: int, timeout: float) -> None:
        host = self._client_host()
        try:
            wait_until(
                lambda: True if ping(host, port) else None,
                timeout=timeout,
                what=f"warehouse on {host}:{port}",
                alive=lambda: pid_alive(pid),
            )
        except InfraError as exc:
            tail = self._process.log_tail()
            raise InfraError(f"{exc}; log {self.log_path}:\n{tail}") from exc

    def _pick_port(self) -> int:
        try:
            last = int(self._port_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            last = 0
        if last and not port_open(self._client_host(), last) and bindable(self.host, last):
            return last
        return free_port(self.host)

    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def _info(self, pid: int, port: int, started_now: bool) -> WarehouseInfo:
        host = self._client_host()
        return WarehouseInfo(
            url=f"http://{host}:{port}",
            host=host,
            port=port,
            pid=pid,
            data_dir=self.data_dir,
            log_path=self.log_path,
            started_now=started_now,
        )


def main(argv: list[str] | None = None) -> None:
    """Serve the warehouse in the foreground until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m undertow.infra.warehouse",
        description="Serve an embedded ClickHouse engine over ClickHouse's HTTP interface.",
    )
    parser.add_argument("--data", type=Path, required=True, help="engine data directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback)")
    parser.add_argument("--port", type=int, default=8123, help="HTTP port")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    args = parser.parse_args(argv)

    import uvicorn

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(Engine(args.data.resolve()))
    # access_log off: uvicorn would log the URL, and a query string may hold prompt text.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
