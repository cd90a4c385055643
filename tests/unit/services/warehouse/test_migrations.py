"""Applying migrations (services/warehouse/migrations.py) against a recording client: one node
exactly as before, or a cluster through the renderer (no server; the statements themselves are
checked by ClickHouse's parser in test_cluster.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.migrations import (
    Migration,
    apply_migrations,
    bookkeeping_statements,
    checksum,
    load_migrations,
)

# What apply_migrations sent before clusters existed, word for word: one node must not change.
ONE_NODE_BOOKKEEPING = [
    "CREATE DATABASE IF NOT EXISTS `undertow`",
    "CREATE TABLE IF NOT EXISTS `undertow`.schema_migrations ("
    " version UInt32, name String, checksum String,"
    " applied_at DateTime64(6, 'UTC') DEFAULT now64(6))"
    " ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
    " COMMENT 'Migrations from schemas/clickhouse applied to this database'",
]
LEDGER_INSERT = (
    "INSERT INTO `undertow`.schema_migrations (version, name, checksum) VALUES "
    "({version:UInt32}, {name:String}, {checksum:String})"
)


@dataclass
class _Result:
    result_rows: list[tuple[Any, ...]]


@dataclass
class RecordingClient:
    """Records commands with their settings; the ledger answers ``applied``."""

    applied: list[tuple[int, str, str]] = field(default_factory=list)
    commands: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    def command(
        self,
        statement: str,
        parameters: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.commands.append((statement, settings))

    def query(self, sql: str) -> _Result:
        assert sql == "SELECT version, name, checksum FROM `undertow`.schema_migrations FINAL"
        return _Result(list(self.applied))


def _migration(version: int, name: str, sql: str) -> Migration:
    return Migration(version, name, sql, checksum(sql))


TWO = [
    _migration(
        1,
        "spans",
        "CREATE TABLE IF NOT EXISTS spans (trace_id String) ENGINE = MergeTree ORDER BY trace_id;\n"
        "CREATE VIEW IF NOT EXISTS v AS SELECT trace_id FROM spans;",
    ),
    _migration(2, "rename", "RENAME TABLE spans TO spans_v1;"),
]


def test_one_node_sends_what_it_always_sent() -> None:
    client = RecordingClient()
    shipped = load_migrations()
    applied = apply_migrations(client, "undertow", shipped)  # type: ignore[arg-type]
    assert applied == shipped
    expected: list[tuple[str, dict[str, Any] | None]] = [(s, None) for s in ONE_NODE_BOOKKEEPING]
    for migration in shipped:
        expected += [(s, {"database": "undertow"}) for s in migration.statements]
        expected.append((LEDGER_INSERT, None))
    assert client.commands == expected
    assert bookkeeping_statements() == ONE_NODE_BOOKKEEPING


def test_a_cluster_gets_the_rendered_statements_and_a_ledger_on_every_node() -> None:
    client = RecordingClient()
    assert apply_migrations(client, "undertow", TWO, cluster="main") == TWO  # type: ignore[arg-type]
    sent = [statement for statement, _ in client.commands]
    assert sent[0] == "CREATE DATABASE IF NOT EXISTS `undertow` ON CLUSTER main"
    assert sent[1].startswith("CREATE TABLE IF NOT EXISTS `undertow`.schema_migrations ON CLUSTER")
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/all-shards/{database}/schema_migrations',"
        " '{shard}-{replica}', applied_at)" in sent[1]
    )
    assert sent[2].startswith("CREATE TABLE IF NOT EXISTS undertow.spans_local ON CLUSTER main")
    assert sent[3].startswith("CREATE TABLE IF NOT EXISTS undertow.spans ON CLUSTER main")
    assert sent[4].startswith("CREATE VIEW IF NOT EXISTS undertow.v ON CLUSTER main")
    assert sent[5] == LEDGER_INSERT
    assert sent[6:10] == [
        "SYSTEM FLUSH DISTRIBUTED undertow.spans ON CLUSTER main",
        "DROP TABLE IF EXISTS undertow.spans ON CLUSTER main",
        "RENAME TABLE undertow.spans_local TO undertow.spans_v1_local ON CLUSTER main",
        "CREATE TABLE undertow.spans_v1 ON CLUSTER main\nAS undertow.spans_v1_local\n"
        "ENGINE = Distributed('main', 'undertow', 'spans_v1_local', cityHash64(trace_id))",
    ]
    assert sent[10:] == [LEDGER_INSERT]


def test_applied_migrations_still_shape_what_later_ones_become() -> None:
    """Migration 1 ran earlier: migration 2's RENAME still knows spans is sharded."""
    client = RecordingClient(applied=[(1, "spans", TWO[0].checksum)])
    assert apply_migrations(client, "undertow", TWO, cluster="main") == [TWO[1]]  # type: ignore[arg-type]
    sent = [statement for statement, _ in client.commands]
    assert sent[2] == "SYSTEM FLUSH DISTRIBUTED undertow.spans ON CLUSTER main"
    assert "RENAME TABLE undertow.spans_local TO undertow.spans_v1_local" in sent[4]


def test_a_statement_the_cluster_cannot_take_stops_the_run_before_anything_is_sent() -> None:
    client = RecordingClient()
    bad = [*TWO, _migration(3, "optimize", "OPTIMIZE TABLE spans_v1 FINAL;")]
    with pytest.raises(WarehouseError, match="migration 003_optimize statement 1"):
        apply_migrations(client, "undertow", bad, cluster="main")  # type: ignore[arg-type]
    assert client.commands == []


def test_errors_on_a_cluster_name_the_file_statement_and_rendered_statement() -> None:
    class Refusing(RecordingClient):
        def command(self, statement: str, **_: Any) -> None:
            from clickhouse_connect.driver.exceptions import DatabaseError

            if "RENAME" in statement:
                raise DatabaseError("Code: 57. Table exists")

    with pytest.raises(WarehouseError) as caught:
        apply_migrations(Refusing(), "undertow", TWO, cluster="main")  # type: ignore[arg-type]
    assert str(caught.value).startswith(
        "migration 002_rename statement 1 (on cluster 'main': 3 of 4) failed: "
    )
