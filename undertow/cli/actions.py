"""``undertow actions``: run the action workers, request an action, list requests and results.

Kafka is ``UNDERTOW_ACTIONS_BOOTSTRAP_SERVERS``, else ``UNDERTOW_BOOTSTRAP_SERVERS``, else the
running local stack's broker; ClickHouse likewise (``UNDERTOW_ACTIONS_CLICKHOUSE_*``, else as
for ``undertow sql``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from undertow.cli import connections
from undertow.cli.console import cell, console
from undertow.cli.options import parse_pairs
from undertow.settings import StackSettings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

actions_app = typer.Typer(
    help="Action workers (rollback, promote, fine-tune) and their requests.", no_args_is_help=True
)


@actions_app.command("serve")
def actions_serve(
    worker: Annotated[
        list[str] | None,
        typer.Option("--worker", "-w", help="only these action types (default: every one)"),
    ] = None,
) -> None:
    """Run the action workers (one consumer group each) and the registry mirror until SIGTERM.

    Settings come from UNDERTOW_ACTIONS_* variables; Kafka and ClickHouse default to the local
    stack's.
    """
    import signal
    import threading

    from undertow.services.actions.service import run_service
    from undertow.services.actions.settings import ActionSettings
    from undertow.services.warehouse.client import connect

    overrides: dict[str, Any] = {"workers": ",".join(worker)} if worker else {}
    settings = ActionSettings(**overrides)
    bootstrap = settings.bootstrap_servers or connections.bootstrap_servers()
    # ClickHouse: the action settings' own, else the stack's (URL and credentials together).
    stack = StackSettings()
    source: ActionSettings | StackSettings = settings if settings.clickhouse_url else stack
    url = source.clickhouse_url
    if url is None:
        from undertow.infra.stack import LocalStack

        url = LocalStack(stack).require().clickhouse_url

    def warehouse() -> Client:
        return connect(
            str(url),
            database=source.clickhouse_database,
            username=source.clickhouse_user,
            password=source.clickhouse_password.get_secret_value(),
        )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("undertow.services.actions").setLevel(logging.INFO)
    console.print(
        f"actions: {settings.actions_topic} on {bootstrap} -> {', '.join(settings.worker_names())}",
        highlight=False,
    )
    counts = run_service(settings, stop, bootstrap=bootstrap, warehouse=warehouse)
    for name, c in counts.items():
        console.print(f"{name}: {c}", highlight=False)


@actions_app.command("request")
def actions_request(
    action_type: Annotated[str, typer.Argument(help="rollback, promote, fine_tune")],
    target: Annotated[str, typer.Argument(help="the model or prompt name")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE parameters")
    ] = None,
    reason: Annotated[str, typer.Option(help="why (kept with the request)")] = "requested by hand",
) -> None:
    """Put a request on the actions topic for the action workers."""
    from undertow.schemas import topics
    from undertow.schemas.codec import AvroCodec
    from undertow.schemas.events import action
    from undertow.services.bus import publish

    record = action(
        action_type=action_type,
        target=target,
        reason=reason,
        parameters=parse_pairs(param, "--param"),
    )
    publish(
        connections.bootstrap_servers(),
        topics.ACTIONS,
        [(target.encode(), AvroCodec().encode("action", record))],
    )
    console.print(
        f"requested {action_type} of {target}: request {record['event_id']}", highlight=False
    )


@actions_app.command("list")
def actions_list(
    target: Annotated[str | None, typer.Option(help="only this target")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
) -> None:
    """Recent requests and their results, newest first (from ClickHouse)."""
    rows = (
        connections.warehouse()
        .query(
            "SELECT event_time, action_type, target, phase, "
            "substring(ifNull(request_id, ''), 1, 8), reason, result FROM actions FINAL "
            "WHERE {target:String} = '' OR target = {target:String} "
            "ORDER BY event_time DESC LIMIT {limit:UInt32}",
            parameters={"target": target or "", "limit": limit},
        )
        .result_rows
    )
    table = Table("time", "type", "target", "phase", "request", "reason", "result")
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    console.print(table)
