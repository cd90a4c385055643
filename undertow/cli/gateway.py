"""``undertow gateway``: serve the OpenAI-compatible inference gateway."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import typer

from undertow.cli.console import console
from undertow.settings import StackSettings


def gateway(
    host: Annotated[str | None, typer.Option(help="interface to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="port to listen on")] = None,
    backend: Annotated[
        Literal["local", "openai"] | None,
        typer.Option(help="local (transformers model) or openai (upstream server)"),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible inference gateway, publishing every exchange as events.

    Settings come from UNDERTOW_GATEWAY_* variables; the options override them.
    The model loads before the port opens.
    Events go to UNDERTOW_GATEWAY_BOOTSTRAP_SERVERS, else to the local stack's broker.
    """
    from undertow.infra.stack import LocalStack
    from undertow.services.gateway.server import serve
    from undertow.services.gateway.settings import GatewaySettings

    overrides: dict[str, Any] = {"host": host, "port": port, "backend": backend}
    settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    bootstrap = settings.bootstrap_servers
    if bootstrap is None:
        stack = LocalStack(StackSettings())
        bootstrap = stack.settings.bootstrap_servers or stack.require().bootstrap_servers
    logging.getLogger("undertow.services.gateway").setLevel(logging.INFO)
    console.print(
        f"gateway on http://{settings.host}:{settings.port}/v1 "
        f"(backend {settings.backend}, events to {bootstrap})"
    )
    serve(settings, bootstrap)
