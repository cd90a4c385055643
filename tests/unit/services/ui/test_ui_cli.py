"""``undertow ui`` (undertow/cli/ui.py): it binds to loopback unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from undertow.cli.ui import ui
from undertow.infra import InfraError


def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("ui")(ui)
    cli.command("noop")(lambda: None)  # two commands: "ui" stays a subcommand
    return cli


@pytest.fixture(autouse=True)
def no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDERTOW_HOME", str(tmp_path))
    for name in ("UNDERTOW_CLICKHOUSE_URL", "UNDERTOW_BOOTSTRAP_SERVERS", "UNDERTOW_UI_HOST"):
        monkeypatch.delenv(name, raising=False)


def test_a_remote_host_is_refused_without_allow_remote() -> None:
    result = CliRunner().invoke(app(), ["ui", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "expected a loopback host" in result.output and "--allow-remote" in result.output


def test_allow_remote_warns_loudly_then_needs_a_warehouse() -> None:
    result = CliRunner().invoke(app(), ["ui", "--host", "0.0.0.0", "--allow-remote"])
    assert "WITHOUT authentication" in result.output
    # No stack under the empty home: it stops with the stack's own advice.
    assert isinstance(result.exception, InfraError)
    assert "undertow infra up" in str(result.exception)


def test_loopback_goes_straight_to_the_sources() -> None:
    result = CliRunner().invoke(app(), ["ui", "--port", "0"])
    assert "WARNING" not in result.output
    assert isinstance(result.exception, InfraError)
