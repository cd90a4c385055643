"""CLI commands that need no running stack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from undertow.cli import app
from undertow.streams.policy import RuleError, load_rules


def test_rules_check_lists_the_shipped_rules() -> None:
    result = CliRunner().invoke(app, ["rules", "check"])
    assert result.exit_code == 0, result.output
    assert f"{len(load_rules().rules)} rules valid" in result.output
    assert "prompt_injection" in result.output


def test_rules_check_names_the_bad_rule_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: tox\n    kind: rate\n    value: scores.toxicity\n")
    result = CliRunner().invoke(app, ["rules", "check", str(bad)])
    assert result.exit_code != 0
    assert isinstance(result.exception, RuleError)
    assert "tox" in str(result.exception)


def test_alerts_serve_refuses_to_start_without_a_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("UNDERTOW_ALERTS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("UNDERTOW_ALERTS_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(app, ["alerts", "serve"])
    assert result.exit_code != 0
    assert "no channel is configured" in result.output


def test_an_error_prints_whole_even_when_it_quotes_brackets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A message quoting a log or a path ("[/tmp/x]") is text, not rich markup."""
    import undertow.cli as cli
    from undertow.errors import UndertowError

    message = "the drift process stopped:\n[11/25/26 04:38:27] WARNING see [/tmp/x] [bold]"

    def fail() -> None:
        raise UndertowError(message)

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    assert " ".join(capsys.readouterr().err.split()) == " ".join(f"error: {message}".split())
