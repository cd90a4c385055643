"""``undertow infra``: start, inspect and stop the local stack (Kafka broker, ClickHouse
engine) under ``UNDERTOW_HOME``."""

from __future__ import annotations

import typer
from rich.table import Table

from undertow.cli.console import console
from undertow.cli.migrations import migrations
from undertow.settings import StackSettings

infra_app = typer.Typer(help="Start, inspect and stop the local stack.", no_args_is_help=True)
infra_app.command("migrations")(migrations)


@infra_app.command("up")
def infra_up() -> None:
    """Start the Kafka broker and the ClickHouse engine, create topics, apply migrations.

    Finds a running stack instead of starting another.
    """
    from undertow.demo import stack_table
    from undertow.infra.stack import LocalStack

    settings = StackSettings()
    with console.status("Starting the local stack..."):
        info = LocalStack(settings).up()
    console.print(stack_table(info))
    if info.migrations_applied:
        console.print("migrations applied: " + ", ".join(info.migrations_applied))
    if info.topics_created:
        console.print("topics created: " + ", ".join(info.topics_created))


@infra_app.command("status")
def infra_status() -> None:
    """Show what is running under the state directory; exit 1 when the stack is down."""
    from undertow.infra.stack import LocalStack

    stack = LocalStack(StackSettings())
    broker, warehouse = stack.broker.status(), stack.warehouse.status()
    table = Table(title=f"Local stack under {stack.state_dir}")
    for col in ("component", "state", "address", "pid"):
        table.add_column(col)
    table.add_row(
        "Kafka broker",
        "running" if broker else "stopped",
        broker.bootstrap if broker else "",
        str(broker.pid) if broker else "",
    )
    table.add_row(
        "ClickHouse engine",
        "running" if warehouse else "stopped",
        warehouse.url if warehouse else "",
        str(warehouse.pid) if warehouse else "",
    )
    console.print(table)
    if broker is None or warehouse is None:
        raise typer.Exit(1)


@infra_app.command("down")
def infra_down() -> None:
    """Stop the local broker and warehouse (their data stays under the state directory)."""
    from undertow.infra.stack import LocalStack

    stopped = LocalStack(StackSettings()).down()
    for name, was_running in stopped.items():
        console.print(f"{name}: {'stopped' if was_running else 'was not running'}")
