"""``undertow migrate`` and ``undertow sql``: the warehouse's schema and queries on it.

ClickHouse is ``UNDERTOW_CLICKHOUSE_URL``, else the running local stack's engine.
"""

from __future__ import annotations

import csv
import sys
from typing import Annotated, Literal

import typer
from rich.table import Table

from undertow.cli.console import console
from undertow.errors import UndertowError
from undertow.settings import StackSettings


def migrate() -> None:
    """Apply pending ClickHouse migrations to the configured (or local) warehouse."""
    from undertow.infra.stack import LocalStack

    stack = LocalStack(StackSettings())
    cluster = stack.settings.clickhouse_cluster or None
    if cluster and not stack.settings.clickhouse_url:
        raise UndertowError(
            f"UNDERTOW_CLICKHOUSE_CLUSTER={cluster} needs UNDERTOW_CLICKHOUSE_URL: "
            "the local ClickHouse engine is one node, not a cluster"
        )
    url = stack.settings.clickhouse_url or stack.require().clickhouse_url
    from undertow.services.warehouse.migrations import apply_migrations

    applied = apply_migrations(
        stack.admin_client(url), stack.settings.clickhouse_database, cluster=cluster
    )
    console.print(f"{len(applied)} migrations applied" + "".join(f"\n  {m.name}" for m in applied))


def sql(
    query: Annotated[str, typer.Argument(help="a ClickHouse SQL query")],
    output: Annotated[
        Literal["table", "csv"], typer.Option("--format", "-f", help="table or csv")
    ] = "table",
) -> None:
    """Run a query on the warehouse and print the result."""
    from undertow.infra.stack import LocalStack

    stack = LocalStack(StackSettings())
    url = stack.settings.clickhouse_url or stack.require().clickhouse_url
    result = stack.client(url).query(query)
    if output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.column_names)
        writer.writerows(result.result_rows)
        return
    table = Table()
    for name in result.column_names:
        table.add_column(name)
    for row in result.result_rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
