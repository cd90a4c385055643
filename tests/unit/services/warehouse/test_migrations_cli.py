"""``undertow infra migrations`` (undertow/cli/migrations.py): the migrations listed, or printed
as they would run on one node or on a cluster; no server is reached."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from undertow.cli.migrations import migrations
from undertow.services.warehouse.migrations import load_migrations


def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("migrations")(migrations)
    cli.command("noop")(lambda: None)  # two commands: "migrations" stays a subcommand
    return cli


@pytest.fixture(autouse=True)
def no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDERTOW_HOME", str(tmp_path))
    for name in ("UNDERTOW_CLICKHOUSE_URL", "UNDERTOW_CLICKHOUSE_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UNDERTOW_CLICKHOUSE_DATABASE", "undertow")


def test_print_for_one_node_is_the_files_statements() -> None:
    result = CliRunner().invoke(app(), ["migrations", "--print"])
    assert result.exit_code == 0, result.output
    assert "ON CLUSTER" not in result.output
    assert "USE undertow;" in result.output
    for migration in load_migrations():
        assert f"-- {migration.version:03d}_{migration.name}\n" in result.output
        for statement in migration.statements:
            assert f"{statement};\n" in result.output


def test_print_for_a_cluster_from_the_setting_or_the_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNDERTOW_CLICKHOUSE_CLUSTER", "from_env")
    from_env = CliRunner().invoke(app(), ["migrations", "--print"])
    assert from_env.exit_code == 0, from_env.output
    assert "-- Undertow migrations for database undertow on cluster from_env" in from_env.output
    assert "CREATE DATABASE IF NOT EXISTS `undertow` ON CLUSTER from_env;" in from_env.output
    assert "CREATE TABLE IF NOT EXISTS undertow.events_local ON CLUSTER from_env" in from_env.output

    option = CliRunner().invoke(app(), ["migrations", "--cluster", "main", "--print"])
    assert "ON CLUSTER from_env" not in option.output
    assert "ENGINE = Distributed('main', 'undertow', 'events_local', cityHash64(trace_id))" in (
        option.output
    )


def test_the_list_counts_the_statements_each_migration_runs() -> None:
    result = CliRunner().invoke(app(), ["migrations", "--cluster", "main"])
    assert result.exit_code == 0, result.output
    assert "Migrations for undertow on cluster main" in result.output
    assert "001_events" in result.output
