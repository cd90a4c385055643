"""Versioned ClickHouse migrations: ``schemas/clickhouse/NNN_name.sql``, each applied once.

A file holds one or more statements, each ending with ``;`` at the end of a line; whole-line
``--`` comments are dropped. Table names are unqualified: statements run with the target
database as the default. ``<database>.schema_migrations`` records what ran, with a checksum of
the statements (not of comments or blank lines), so an applied migration that was edited
afterwards is reported instead of silently diverging.

The files are written for one node. Given a cluster name, :func:`apply_migrations` runs them
as :mod:`undertow.services.warehouse.cluster` renders them instead (``ON CLUSTER``,
replicated shards behind Distributed tables), and the ledger is one replicated table that
every node of the cluster holds whole.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.cluster import on_cluster, render_migrations

logger = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"(\d+)_(\w+)\.sql")
LEDGER = "schema_migrations"
# On a cluster the ledger is one replica set over every node (no {shard} in the path, a
# replica name unique across shards), so whichever node the runner reaches knows what ran.
LEDGER_CLUSTER_PATH = "/clickhouse/tables/all-shards/{database}/" + LEDGER
LEDGER_CLUSTER_REPLICA = "{shard}-{replica}"


@dataclass(frozen=True)
class Migration:
    """One migration file: its version and name (from the file name), text and checksum."""

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """The statements of a migration file, without whole-line comments or the final ``;``."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line.rstrip())
        if stripped.endswith(";"):
            current[-1] = current[-1][: current[-1].rfind(";")].rstrip()
            statements.append("\n".join(current).strip())
            current = []
    if current:
        statements.append("\n".join(current).strip())
    return [s for s in statements if s]


def checksum(sql: str) -> str:
    """SHA-256 of the statements, so editing comments or blank lines does not change it."""
    return hashlib.sha256("\n;\n".join(split_statements(sql)).encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: packaged ``schemas/clickhouse``), by version."""
    root: Traversable | Path = (
        directory if directory is not None else resources.files("undertow.schemas") / "clickhouse"
    )
    migrations: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise WarehouseError(f"migration file {entry.name!r} is not named like 001_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise WarehouseError(
                f"two migrations have version {version}: "
                f"{migrations[version].name!r} and {match.group(2)!r}"
            )
        sql = entry.read_text(encoding="utf-8")
        migrations[version] = Migration(version, match.group(2), sql, checksum(sql))
    return [migrations[v] for v in sorted(migrations)]


def bookkeeping_statements(database: str = "undertow", cluster: str | None = None) -> list[str]:
    """The statements that create ``database`` and its ledger, before any migration runs."""
    db = _quote_identifier(database)
    if cluster is None:
        return [
            f"CREATE DATABASE IF NOT EXISTS {db}",
            f"CREATE TABLE IF NOT EXISTS {db}.{LEDGER} ("
            " version UInt32, name String, checksum String,"
            " applied_at DateTime64(6, 'UTC') DEFAULT now64(6))"
            " ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
            " COMMENT 'Migrations from schemas/clickhouse applied to this database'",
        ]
    on = on_cluster(cluster)
    return [
        f"CREATE DATABASE IF NOT EXISTS {db} {on}",
        f"CREATE TABLE IF NOT EXISTS {db}.{LEDGER} {on} ("
        " version UInt32, name String, checksum String,"
        " applied_at DateTime64(6, 'UTC') DEFAULT now64(6))"
        f" ENGINE = ReplicatedReplacingMergeTree('{LEDGER_CLUSTER_PATH}',"
        f" '{LEDGER_CLUSTER_REPLICA}', applied_at) ORDER BY version"
        " COMMENT 'Migrations from schemas/clickhouse applied to this database'",
    ]


def planned_statements(
    migrations: Sequence[Migration], database: str = "undertow", cluster: str | None = None
) -> list[list[tuple[str, str]]]:
    """Per migration, the statements it runs, each with the words that name it in errors.

    Without ``cluster``, a migration's own statements. With one, the statements rendered for
    that cluster (:func:`~undertow.services.warehouse.cluster.render_migrations`): all
    migrations are rendered, applied ones too, since a statement's form depends on what the
    earlier ones created; a statement that cannot be rendered raises before anything runs.
    """
    if cluster is None:
        return [
            [
                (statement, f"migration {m.version:03d}_{m.name} statement {number}")
                for number, statement in enumerate(m.statements, start=1)
            ]
            for m in migrations
        ]
    return [
        [
            (
                statement,
                f"migration {r.version:03d}_{r.name} statement {source} "
                f"(on cluster {cluster!r}: {position} of {len(r.statements)})",
            )
            for position, (statement, source) in enumerate(
                zip(r.statements, r.sources, strict=True), start=1
            )
        ]
        for r in render_migrations(migrations, cluster, database)
    ]


def apply_migrations(
    client: Client,
    database: str = "undertow",
    migrations: Sequence[Migration] | None = None,
    cluster: str | None = None,
) -> list[Migration]:
    """Create ``database`` if needed and apply the pending migrations in order.

    ``client`` may have any default database (or none): statements run with ``database`` as
    theirs. With ``cluster`` (a cluster of the servers' ``remote_servers``), the database, the
    ledger and every migration are created on each node of that cluster, as
    :mod:`~undertow.services.warehouse.cluster` renders them; without it, on the node
    ``client`` reaches, as written. Returns the migrations applied now (empty when the schema
    was up to date). Raises :class:`WarehouseError` when an applied migration's checksum
    changed, or a statement cannot be rendered for the cluster, before applying anything.
    """
    if migrations is None:
        migrations = load_migrations()
    db = _quote_identifier(database)
    plan = planned_statements(migrations, database, cluster)
    for statement in bookkeeping_statements(database, cluster):
        _run(client, statement, database=None)
    applied = _applied(client, db)
    _check_unchanged(migrations, applied)
    done: list[Migration] = []
    for migration, statements in zip(migrations, plan, strict=True):
        if migration.version in applied:
            continue
        if applied and migration.version < max(applied):
            logger.warning(
                "applying migration %03d_%s after a later one", migration.version, migration.name
            )
        for statement, what in statements:
            _run(client, statement, database, what)
        _run(
            client,
            f"INSERT INTO {db}.{LEDGER} (version, name, checksum) VALUES "
            "({version:UInt32}, {name:String}, {checksum:String})",
            database=None,
            parameters={
                "version": migration.version,
                "name": migration.name,
                "checksum": migration.checksum,
            },
        )
        logger.info("applied migration %03d_%s", migration.version, migration.name)
        done.append(migration)
    return done


def _applied(client: Client, db: str) -> dict[int, tuple[str, str]]:
    try:
        rows = client.query(f"SELECT version, name, checksum FROM {db}.{LEDGER} FINAL").result_rows
    except ClickHouseError as exc:
        raise WarehouseError(f"cannot read {db}.{LEDGER}: {exc}") from exc
    return {int(version): (str(name), str(check)) for version, name, check in rows}


def _check_unchanged(migrations: Iterable[Migration], applied: dict[int, tuple[str, str]]) -> None:
    known = {m.version for m in migrations}
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded[1] != migration.checksum:
            raise WarehouseError(
                f"migration {migration.version:03d}_{migration.name} was applied with checksum "
                f"{recorded[1][:12]} but the file now has {migration.checksum[:12]}; "
                "add a new migration instead of editing an applied one"
            )
    for version in sorted(set(applied) - known):
        logger.warning(
            "migration %03d_%s is applied but no longer shipped", version, applied[version][0]
        )


def _run(
    client: Client,
    statement: str,
    database: str | None,
    what: str | None = None,
    parameters: dict[str, object] | None = None,
) -> None:
    settings = {"database": database} if database else None
    try:
        client.command(statement, parameters=parameters, settings=settings)
    except ClickHouseError as exc:
        raise WarehouseError(f"{what or 'migration bookkeeping'} failed: {exc}") from exc


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
