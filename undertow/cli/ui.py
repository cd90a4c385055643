"""``undertow ui``: serve the dashboard over the warehouse and the registry topic."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from undertow.cli.console import err_console
from undertow.settings import StackSettings


def ui(
    host: Annotated[
        str | None, typer.Option(help="interface to bind (default 127.0.0.1, loopback)")
    ] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="port (default 8400)")] = None,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="allow a non-loopback host: the dashboard has no login and shows prompt texts",
        ),
    ] = False,
) -> None:
    """Serve the web dashboard: traffic, cost, latency and scores, drift, alerts, traces and
    the registry, refreshing every few seconds.

    Reads ClickHouse like `undertow sql` (UNDERTOW_CLICKHOUSE_URL, else the local stack) and
    the registry from the registry topic (UNDERTOW_BOOTSTRAP_SERVERS, else the local broker).
    Other settings come from UNDERTOW_UI_* variables.
    """
    import uvicorn

    from undertow.infra.stack import LocalStack
    from undertow.services.registry.client import CachedRegistry, RegistryClient
    from undertow.services.ui.app import create_app
    from undertow.services.ui.settings import UISettings, is_loopback
    from undertow.services.warehouse.client import connect

    overrides: dict[str, Any] = {"host": host, "port": port}
    if allow_remote:
        overrides["allow_remote"] = True
    settings = UISettings(**{k: v for k, v in overrides.items() if v is not None})
    if not is_loopback(settings.host):
        if not settings.allow_remote:
            raise typer.BadParameter(
                f"expected a loopback host (127.0.0.1, ::1, localhost), got {settings.host!r}: "
                "the dashboard has no login and shows prompt and completion texts. Pass "
                "--allow-remote to serve it there anyway (behind an authenticating proxy).",
                param_hint="--host",
            )
        err_console.print(
            f"[bold red]WARNING:[/] serving the dashboard on {settings.host}, reachable from "
            "other machines, WITHOUT authentication; it shows prompt and completion texts. "
            "Put an authenticating proxy in front of it.",
            highlight=False,
        )

    stack_settings = StackSettings()
    stack = LocalStack(stack_settings)
    url = stack_settings.clickhouse_url
    bootstrap = stack_settings.bootstrap_servers
    if url is None or bootstrap is None:
        info = stack.require()
        url, bootstrap = url or info.clickhouse_url, bootstrap or info.bootstrap_servers
    warehouse_url = url

    def warehouse() -> Any:
        return connect(
            warehouse_url,
            database=stack_settings.clickhouse_database,
            username=stack_settings.clickhouse_user,
            password=stack_settings.clickhouse_password.get_secret_value(),
            autogenerate_session_id=False,
        )

    reader = RegistryClient(bootstrap)
    registry = CachedRegistry(
        lambda: reader.load(timeout=settings.registry_timeout_s), ttl_s=settings.registry_ttl_s
    )
    app = create_app(warehouse, registry, refresh_s=settings.refresh_s)
    logging.getLogger("undertow.services.ui").setLevel(logging.INFO)
    err_console.print(
        f"dashboard on http://{settings.host}:{settings.port}/ "
        f"(warehouse {warehouse_url}/{stack_settings.clickhouse_database}, "
        f"registry on {bootstrap})",
        highlight=False,
    )
    # No access log: paths carry trace ids and filters only, but keep the terminal quiet.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
