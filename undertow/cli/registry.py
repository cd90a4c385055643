"""``undertow registry``, ``undertow prompts`` and ``undertow ab``: model versions, prompt
versions and A/B tests, all kept in the registry.

The commands read and write the compacted registry topic (the source of truth; the action
service mirrors it into ClickHouse's ``registry`` table). Kafka is
``UNDERTOW_BOOTSTRAP_SERVERS``, else the running local stack's broker; ClickHouse (for ``ab
report``) as for ``undertow sql``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from undertow.cli import connections
from undertow.cli.console import cell, console, stderr_console
from undertow.cli.options import parse_pairs

if TYPE_CHECKING:
    from undertow.services.registry.client import RegistryClient
    from undertow.services.registry.state import RegistryState

registry_app = typer.Typer(help="Model versions: push, promote, roll back.", no_args_is_help=True)
prompts_app = typer.Typer(help="Prompt templates: versions and labels.", no_args_is_help=True)
ab_app = typer.Typer(help="Prompt A/B tests: start, stop, report.", no_args_is_help=True)


def _client() -> RegistryClient:
    from undertow.services.registry.client import RegistryClient

    return RegistryClient(connections.bootstrap_servers())


def _now() -> int:
    return time.time_ns() // 1000


def _write(client: RegistryClient, records: list[dict[str, Any]], done: str) -> None:
    if not records:
        console.print(f"nothing to change: {done} already", highlight=False)
        return
    client.publish(records)
    console.print(done, highlight=False)


def _when(us: int | None) -> str:
    if not us:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(us / 1_000_000))


# -- models -----------------------------------------------------------------------------------


def _models_table(state: RegistryState, names: Sequence[str]) -> Table:
    table = Table("model", "version", "status", "base model", "adapter", "activated", "note")
    for name in names:
        for v in state.versions("model", name):
            note = v.metadata.get("deactivated_reason", "")
            if v.metadata.get("rolled_back_by"):
                note += f" by {v.metadata['rolled_back_by'][:8]}"
            table.add_row(
                v.name,
                v.version,
                v.status,
                v.base_model or "",
                v.adapter_path or "",
                _when(v.micros("activated_at")),
                note,
            )
    return table


@registry_app.command("list")
def registry_list(name: Annotated[str | None, typer.Argument(help="one model")] = None) -> None:
    """Every model version with its status (from the registry topic)."""
    state = _client().load()
    names = [name] if name else state.names("model")
    console.print(_models_table(state, names))


@registry_app.command("push")
def registry_push(
    name: Annotated[str, typer.Argument(help="the model name clients ask for")],
    base_model: Annotated[str, typer.Option(help="hub name or local folder of the base model")],
    adapter: Annotated[
        Path | None, typer.Option(help="folder of a PEFT LoRA adapter for the base")
    ] = None,
    version: Annotated[str | None, typer.Option(help="version (default: next number)")] = None,
    activate: Annotated[bool, typer.Option(help="promote it at once")] = False,
) -> None:
    """Register a model version as a candidate (and promote it with --activate)."""
    from undertow.services.registry.state import fold, promote_model, push_model

    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise typer.BadParameter(f"{adapter} holds no adapter_config.json: not a PEFT adapter")
    client = _client()
    state = client.load()
    now = _now()
    records = push_model(
        state,
        name,
        base_model=base_model,
        adapter_path=str(adapter.resolve()) if adapter else None,
        version=version,
        now=now,
    )
    pushed = str(records[0]["version"])
    if activate:
        records += promote_model(fold(records, state), name, pushed, now=now + 1)
    _write(
        client, records, f"{name} version {pushed} registered" + (", serving" if activate else "")
    )


@registry_app.command("promote")
def registry_promote(name: str, version: str) -> None:
    """Make VERSION the serving version of model NAME (the one before stays known-good)."""
    from undertow.services.registry.state import promote_model

    client = _client()
    records = promote_model(client.load(), name, version, now=_now(), reason="undertow registry")
    _write(client, records, f"{name} serves version {version}")


@registry_app.command("rollback")
def registry_rollback(
    name: str,
    expected: Annotated[
        str | None, typer.Option("--from", help="only if this version is serving")
    ] = None,
) -> None:
    """Return model NAME to its last known-good version, at once (no action worker)."""
    from undertow.services.registry.state import rollback_model

    client = _client()
    plan = rollback_model(
        client.load(), name, now=_now(), expected_version=expected, reason="undertow registry"
    )
    if plan.outcome != "rolled_back":
        console.print(f"{plan.outcome}: {plan.detail}", highlight=False)
        if plan.outcome == "failed":
            raise typer.Exit(1)
        return
    _write(client, plan.records, plan.detail)


@registry_app.command("retire")
def registry_retire(name: str, version: str) -> None:
    """Take a version that is not serving out of use for good."""
    from undertow.services.registry.state import retire_model

    client = _client()
    _write(
        client, retire_model(client.load(), name, version, now=_now()), f"{name}@{version} retired"
    )


# -- prompts ----------------------------------------------------------------------------------


@prompts_app.command("list")
def prompts_list() -> None:
    """Every prompt version with its labels, and the A/B tests."""
    state = _client().load()
    table = Table("prompt", "version", "labels", "registered", "characters")
    for name in state.names("prompt"):
        for v in state.versions("prompt", name):
            table.add_row(
                name,
                v.version,
                ", ".join(v.labels),
                _when(v.micros("registered_at")),
                str(len(v.template or "")),
            )
    console.print(table)


@prompts_app.command("show")
def prompts_show(
    name: str,
    version: Annotated[str | None, typer.Option(help="a version number")] = None,
    label: Annotated[str, typer.Option(help="the label to resolve")] = "production",
) -> None:
    """Print a prompt version's template (by version, else by label)."""
    v = _client().load().prompt(name, label=label, version=version)
    console.print(f"# {name} version {v.version} labels {list(v.labels)}", highlight=False)
    console.print(v.template or "", markup=False, highlight=False)


@prompts_app.command("push")
def prompts_push(
    name: str,
    file: Annotated[Path | None, typer.Option(help="read the template from this file")] = None,
    text: Annotated[str | None, typer.Option(help="the template text")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="labels to move to it")
    ] = None,
) -> None:
    """Register a new version of prompt NAME; {variables} are filled per request."""
    from undertow.services.registry.state import push_prompt

    if (file is None) == (text is None):
        raise typer.BadParameter("give the template with exactly one of --file and --text")
    template = file.read_text() if file is not None else str(text)
    client = _client()
    records = push_prompt(client.load(), name, template, labels=label or (), now=_now())
    version = next(str(r["version"]) for r in records if r["template"] == template)
    _write(client, records, f"prompt {name} version {version} registered, labels {label or []}")


@prompts_app.command("promote")
def prompts_promote(
    name: str,
    version: str,
    label: Annotated[str, typer.Option(help="the label to move")] = "production",
) -> None:
    """Move LABEL to VERSION of prompt NAME."""
    from undertow.services.registry.state import label_prompt

    client = _client()
    records = label_prompt(client.load(), name, version, label, now=_now())
    _write(client, records, f"prompt {name}: {label} is version {version}")


@prompts_app.command("rollback")
def prompts_rollback(
    name: str, label: Annotated[str, typer.Option(help="the label to move back")] = "production"
) -> None:
    """Move LABEL back to the version that held it before."""
    from undertow.services.registry.state import rollback_prompt

    client = _client()
    records, previous = rollback_prompt(client.load(), name, label, now=_now())
    _write(client, records, f"prompt {name}: {label} is version {previous} again")


# -- A/B tests --------------------------------------------------------------------------------


@ab_app.command("start")
def ab_start(
    test: Annotated[str, typer.Argument(help="a name for the test")],
    prompt: Annotated[str, typer.Option(help="the prompt under test")],
    variant: Annotated[
        list[str], typer.Option("--variant", "-v", help="NAME=PROMPT_VERSION, two or more")
    ],
    weight: Annotated[
        list[str] | None, typer.Option("--weight", "-w", help="NAME=WEIGHT (default equal)")
    ] = None,
    split_by: Annotated[str, typer.Option(help="sticky unit: user or session")] = "user",
    label: Annotated[str, typer.Option(help="the label the test takes over")] = "production",
    control: Annotated[str | None, typer.Option(help="the control variant")] = None,
    act: Annotated[
        bool,
        typer.Option(
            "--act",
            help="let the action service end the test by itself: promote the winner, or keep "
            "the control, once the report decides",
        ),
    ] = False,
) -> None:
    """Start an A/B test: requests for PROMPT at LABEL get a variant, sticky per unit."""
    from undertow.services.registry.state import start_experiment

    variants = parse_pairs(variant, "--variant")
    try:
        weights = {k: float(v) for k, v in parse_pairs(weight, "--weight").items()} or None
    except ValueError as exc:
        raise typer.BadParameter(f"--weight: {exc}") from None
    client = _client()
    records = start_experiment(
        client.load(),
        prompt,
        test,
        variants,
        weights=weights,
        split_by=split_by,
        label=label,
        control=control,
        act=act,
        now=_now(),
    )
    _write(client, records, f"A/B test {test} running on {prompt}@{label}: {variants}")


@ab_app.command("stop")
def ab_stop(test: str) -> None:
    """Stop an A/B test; its label serves the labelled version again."""
    from undertow.services.registry.state import stop_experiment

    client = _client()
    _write(client, stop_experiment(client.load(), test, now=_now()), f"A/B test {test} stopped")


@ab_app.command("list")
def ab_list() -> None:
    """Every A/B test with its variants and status."""
    table = Table("test", "prompt", "label", "status", "variants", "weights", "split by")
    for e in _client().load().experiments():
        table.add_row(
            e.test,
            e.prompt,
            e.label,
            e.status,
            ", ".join(f"{k}={v}" for k, v in e.variants.items()),
            ", ".join(f"{k}={w:.2f}" for k, w in e.weights.items()),
            e.split_by,
        )
    console.print(table)


@ab_app.command("report")
def ab_report(
    test: str,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help="NAME:higher|lower[:guardrail] (default: judge_relevance, feedback as "
            "primary; cost_usd and latency_ms as guardrails)",
        ),
    ] = None,
    alpha: Annotated[float, typer.Option(min=1e-6, max=0.5)] = 0.05,
    min_samples: Annotated[int, typer.Option(min=1)] = 100,
    act: Annotated[
        bool, typer.Option(help="request the decision as an action (promote the winner)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Promote, stop or continue, with the evidence: sequential statistics that stay valid
    however often the report is read."""
    from undertow.services.experiments.observations import parse_metrics
    from undertow.services.experiments.observations import report as ab_report_of

    client = _client()
    experiment = client.load().find_experiment(test)
    specs = parse_metrics(metric)
    report = ab_report_of(
        connections.warehouse(), experiment, specs, alpha=alpha, min_samples=min_samples
    )
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        _print_report(report)
    if act and report.decision != "continue":
        # With --json, stdout holds the report alone; what was requested goes to stderr.
        _request_ab_action(experiment, report, stderr_console() if as_json else console)


def _print_report(report: Any) -> None:
    data = report.to_dict()
    console.print(f"decision: [bold]{data['decision']}[/bold]  {data['reason']}")
    rows = data.get("metrics") or []
    if rows:
        table = Table(*rows[0].keys())
        for row in rows:
            table.add_row(*(cell(v) for v in row.values()))
        console.print(table)


def _request_ab_action(experiment: Any, report: Any, out: Console) -> None:
    from undertow.schemas import topics
    from undertow.schemas.codec import AvroCodec
    from undertow.schemas.events import action
    from undertow.services.bus import publish

    if report.decision == "promote" and report.winner:
        record = action(
            action_type="promote",
            target=experiment.prompt,
            reason=f"A/B test {experiment.test}: {report.reason}"[:1000],
            parameters={
                "kind": "prompt",
                "version": experiment.variants[report.winner],
                "label": experiment.label,
                "ab_test": experiment.test,
            },
        )
        what = f"promote of {experiment.prompt} version {experiment.variants[report.winner]}"
    else:
        out.print("decision is stop: stop the test with `undertow ab stop`", highlight=False)
        return
    publish(
        connections.bootstrap_servers(),
        topics.ACTIONS,
        [(experiment.prompt.encode(), AvroCodec().encode("action", record))],
    )
    out.print(f"requested {what} (request {record['event_id']})", highlight=False)
