"""Running the gateway: the SDK config from settings, the blocking ``serve`` of the CLI, and
a background-thread server for tests and benchmarks.

``serve`` loads the model before the socket opens (uvicorn runs the app's lifespan, which
starts the backend, before it binds), so no request ever reaches a half-loaded gateway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

from undertow.services.gateway.errors import GatewayError
from undertow.services.gateway.settings import GatewaySettings

log = logging.getLogger("undertow.services.gateway")


class ServerError(GatewayError):
    """The gateway's HTTP server did not start."""


def sdk_config(settings: GatewaySettings, bootstrap_servers: str | None) -> Any:
    """The SDK configuration the gateway publishes with (an ``SdkConfig``)."""
    from undertow.services.sdk import SdkConfig

    return SdkConfig(
        app=settings.app_name,
        bootstrap_servers=bootstrap_servers,
        environment=settings.environment,
        hash_key=settings.hash_key.get_secret_value() if settings.hash_key else None,
        spool_dir=settings.spool_dir,
    )


def serve(settings: GatewaySettings, bootstrap_servers: str | None) -> None:
    """Run the gateway in the foreground until interrupted (what ``undertow gateway`` does)."""
    import uvicorn

    from undertow.services.gateway.app import create_app
    from undertow.services.gateway.backends import create_backend
    from undertow.services.sdk import Undertow

    if not settings.keys() and not settings.loopback:
        log.warning(
            "no API keys configured and bound to %s: anyone who reaches it can use the model",
            settings.host,
        )
    backend = create_backend(settings)
    with Undertow(sdk_config(settings, bootstrap_servers)) as sdk:
        app = create_app(settings, backend, sdk, serving_view(settings, backend, bootstrap_servers))
        uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_config=None)


def serving_view(settings: GatewaySettings, backend: Any, bootstrap_servers: str | None) -> Any:
    """The registry follower of a gateway (a ``ServingView``), or None when it is off."""
    if not settings.follow_registry or not bootstrap_servers:
        return None
    from undertow.services.gateway.serving import ServingView
    from undertow.services.registry.client import Follower

    follower = Follower(bootstrap_servers, topic=settings.registry_topic)
    return ServingView(follower, settings.registry_model or settings.model, backend.use_version)


class ServerThread:
    """Serves an ASGI app with uvicorn on a background thread, on a port picked by the OS.

    >>> with ServerThread(app) as server:  # doctest: +SKIP
    ...     httpx.get(server.url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", ready_timeout_s: float = 120.0) -> None:
        import uvicorn

        self.host = host
        self.ready_timeout_s = ready_timeout_s
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, access_log=False, log_config=None, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"gateway-{self.port}", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except BaseException as exc:
            self._error = exc

    def start(self) -> ServerThread:
        """Start and wait until the server accepts connections (lifespan done)."""
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise ServerError(f"gateway server on port {self.port} exited: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"gateway server not started within {self.ready_timeout_s} s")
            self._thread.join(0.05)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
