"""``undertow infra migrations``: the ClickHouse migrations as they would run, for one node or
rendered for a cluster (``--cluster``, else ``UNDERTOW_CLICKHOUSE_CLUSTER``). Nothing is sent
to a server: ``--print`` writes the statements as SQL a ClickHouse client can run."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from undertow.cli.console import console
from undertow.services.warehouse.cluster import quote_name
from undertow.settings import StackSettings


def migrations(
    cluster: Annotated[
        str | None,
        typer.Option(
            help="render for this ClickHouse cluster (default: UNDERTOW_CLICKHOUSE_CLUSTER; "
            "unset: one node)"
        ),
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="the database (default: UNDERTOW_CLICKHOUSE_DATABASE)")
    ] = None,
    print_sql: Annotated[
        bool, typer.Option("--print", help="print every statement as it would run")
    ] = False,
) -> None:
    """List the migrations with the statements each runs, or print them (--print).

    With a cluster, each CREATE, ALTER, DROP and RENAME runs ON CLUSTER, MergeTree tables
    become replicated ``<name>_local`` tables behind Distributed ones (docs/scale-out.md).
    """
    from undertow.services.warehouse.migrations import (
        bookkeeping_statements,
        load_migrations,
        planned_statements,
    )

    settings = StackSettings()
    cluster = cluster or settings.clickhouse_cluster or None
    database = database or settings.clickhouse_database
    shipped = load_migrations()
    plan = planned_statements(shipped, database, cluster)
    if print_sql:
        where = f"cluster {cluster}" if cluster else "one node"
        out = [f"-- Undertow migrations for database {database} on {where}", ""]
        out += [f"{statement};" for statement in bookkeeping_statements(database, cluster)]
        out += [
            "-- The runner sends each statement with the database as its default (USE here),",
            "-- and records each migration in schema_migrations once its statements ran.",
            f"USE {quote_name(database)};",
        ]
        for migration, statements in zip(shipped, plan, strict=True):
            out += ["", f"-- {migration.version:03d}_{migration.name}"]
            out += [f"{statement};" for statement, _ in statements]
        sys.stdout.write("\n".join(out) + "\n")
        return
    table = Table(
        "migration",
        "statements",
        "checksum",
        title=f"Migrations for {database} on {f'cluster {cluster}' if cluster else 'one node'}",
    )
    for migration, statements in zip(shipped, plan, strict=True):
        table.add_row(
            f"{migration.version:03d}_{migration.name}",
            str(len(statements)),
            migration.checksum[:12],
        )
    console.print(table)
