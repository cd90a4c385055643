"""``undertow registry``, ``prompts`` and ``ab`` against the session's Kafka broker: what the
commands write is what a reader of the registry topic folds."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from undertow.cli import app
from undertow.cli.console import console as cli_console
from undertow.infra.stack import StackInfo
from undertow.services.registry.client import RegistryClient
from undertow.settings import StackSettings

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]


@pytest.fixture()
def undertow(
    stack_settings: StackSettings, stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> CliRunner:
    monkeypatch.setenv("UNDERTOW_HOME", str(stack_settings.home))
    # Wide enough for every column: the CLI's console read COLUMNS when first imported,
    # which may have been by another test of this process.
    monkeypatch.setattr(cli_console, "_width", 200)
    return CliRunner()


def ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"undertow {' '.join(args)}: {result.output}"
    return result.output


def test_models_push_promote_roll_back_and_refuse_what_cannot_be(
    undertow: CliRunner, stack: StackInfo, tmp_path: Path
) -> None:
    name = f"cli-model-{RUN}"
    adapter = tmp_path / "lora"
    adapter.mkdir()
    refused = undertow.invoke(
        app, ["registry", "push", name, "--base-model", "b", "--adapter", str(adapter)]
    )
    assert refused.exit_code != 0 and "not a PEFT adapter" in refused.output
    (adapter / "adapter_config.json").write_text("{}")
    assert "version 1 registered, serving" in ok(
        undertow, "registry", "push", name, "--base-model", "b", "--activate"
    )
    ok(undertow, "registry", "push", name, "--base-model", "b", "--adapter", str(adapter))
    assert "serves version 2" in ok(undertow, "registry", "promote", name, "2")
    assert "nothing to change" in ok(undertow, "registry", "promote", name, "2")
    listed = ok(undertow, "registry", "list", name)
    assert "active" in listed and "superseded" in listed
    assert "rolled back from version 2 to 1" in ok(
        undertow, "registry", "rollback", name, "--from", "2"
    )
    assert "skipped" in ok(undertow, "registry", "rollback", name, "--from", "2")
    state = RegistryClient(stack.bootstrap_servers).load()
    assert state.active_model(name).version == "1"  # type: ignore[union-attr]
    failed = undertow.invoke(app, ["registry", "retire", name, "1"])
    assert failed.exit_code != 0 and "is serving" in str(failed.exception)


def test_prompts_and_ab_tests(undertow: CliRunner, stack: StackInfo, tmp_path: Path) -> None:
    name = f"cli-prompt-{RUN}"
    template = tmp_path / "support.txt"
    template.write_text("You help with {product}.")
    ok(undertow, "prompts", "push", name, "--file", str(template), "--label", "production")
    ok(undertow, "prompts", "push", name, "--text", "You help with {product}, briefly.")
    assert "production is version 2" in ok(undertow, "prompts", "promote", name, "2")
    assert "You help with {product}, briefly." in ok(undertow, "prompts", "show", name)
    assert "production is version 1 again" in ok(undertow, "prompts", "rollback", name)
    assert name in ok(undertow, "prompts", "list")
    test = f"cli-ab-{RUN}"
    ok(
        undertow,
        "ab",
        "start",
        test,
        "--prompt",
        name,
        "-v",
        "a=1",
        "-v",
        "b=2",
        "-w",
        "a=3",
        "-w",
        "b=1",
    )
    listed = ok(undertow, "ab", "list")
    assert test in listed and "a=0.75" in listed and "running" in listed
    experiment = RegistryClient(stack.bootstrap_servers).load().experiment(name, "production")
    assert experiment is not None and dict(experiment.variants) == {"a": "1", "b": "2"}
    ok(undertow, "ab", "stop", test)
    assert RegistryClient(stack.bootstrap_servers).load().experiment(name, "production") is None
