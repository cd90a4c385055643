"""``undertow``: one command line for the local stack, the demo and the warehouse."""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from undertow import __version__
from undertow.baseline_cli import baseline_app
from undertow.errors import UndertowError
from undertow.registry_cli import ab_app, actions_app, prompts_app, registry_app
from undertow.settings import StackSettings
from undertow.ui_cli import ui

app = typer.Typer(
    help="Undertow: a streaming monitor for LLM applications (Kafka, Faust, river, ClickHouse).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
infra_app = typer.Typer(help="Start, inspect and stop the local stack.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
alerts_app = typer.Typer(
    help="Deliver alerts to Slack, PagerDuty and signed webhooks.", no_args_is_help=True
)
app.add_typer(alerts_app, name="alerts")
rules_app = typer.Typer(help="Alert rules (YAML) the policy processor runs.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(baseline_app, name="baseline")
app.add_typer(registry_app, name="registry")
app.add_typer(prompts_app, name="prompts")
app.add_typer(ab_app, name="ab")
app.add_typer(actions_app, name="actions")
app.command("ui")(ui)
console = Console()


@app.callback()
def _configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show debug logs")] = False,
) -> None:
    """Logs go to stderr through rich; Kafka client chatter only with --verbose."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    if not verbose:
        logging.getLogger("undertow.kafka.client").setLevel(logging.ERROR)


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


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="seed of the scenario's traffic")] = 7,
    scale: Annotated[
        float, typer.Option(min=0.1, max=10, help="multiplies the scenario's trace counts")
    ] = 1.0,
    report: Annotated[
        Path | None, typer.Option(help="where to write the HTML report (default: the run's folder)")
    ] = None,
) -> None:
    """Run the main job: the whole pipeline on the local stack, with planted incidents.

    Starts the local stack (or finds it running) and leaves it running; starts the workers,
    the action and alert services and the gateway for the run, plays a support assistant's
    traffic with a topic shift, an injection burst, rude answers, a cost spike and a bad model
    version, and shows what was caught, paged and done. Exits 1 if an incident was missed.
    """
    from undertow.demo import run_demo

    # Without a terminal (make demo piped or logged) rich would wrap the tables at 80 columns
    # and cut the incidents' names; a log has room for wide lines.
    wide = console.is_terminal or "COLUMNS" in os.environ
    out = console if wide else Console(width=160)
    result = run_demo(StackSettings(), seed=seed, scale=scale, report_path=report, console=out)
    if result.caught < len(result.outcomes):
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply pending ClickHouse migrations to the configured (or local) warehouse."""
    from undertow.infra.stack import LocalStack

    stack = LocalStack(StackSettings())
    url = stack.settings.clickhouse_url or stack.require().clickhouse_url
    from undertow.services.warehouse.migrations import apply_migrations

    applied = apply_migrations(stack.admin_client(url), stack.settings.clickhouse_database)
    console.print(f"{len(applied)} migrations applied" + "".join(f"\n  {m.name}" for m in applied))


@app.command()
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


@app.command()
def gateway(
    host: Annotated[str | None, typer.Option(help="interface to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="port to listen on")] = None,
    backend: Annotated[
        Literal["local", "openai"] | None,
        typer.Option(help="local (transformers model) or openai (upstream server)"),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible inference gateway, publishing every exchange as events.

    Settings come from UNDERTOW_GATEWAY_* variables; the options override them.
    The model loads before the port opens.
    Events go to UNDERTOW_GATEWAY_BOOTSTRAP_SERVERS, else to the local stack's broker.
    """
    from undertow.infra.stack import LocalStack
    from undertow.services.gateway.server import serve
    from undertow.services.gateway.settings import GatewaySettings

    overrides: dict[str, Any] = {"host": host, "port": port, "backend": backend}
    settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    bootstrap = settings.bootstrap_servers
    if bootstrap is None:
        stack = LocalStack(StackSettings())
        bootstrap = stack.settings.bootstrap_servers or stack.require().bootstrap_servers
    logging.getLogger("undertow.services.gateway").setLevel(logging.INFO)
    console.print(
        f"gateway on http://{settings.host}:{settings.port}/v1 "
        f"(backend {settings.backend}, events to {bootstrap})"
    )
    serve(settings, bootstrap)


@app.command()
def worker(
    role: Annotated[
        Literal["ingest", "drift", "policy", "judge"] | None,
        typer.Option(help="the processor to run (default: ingest)"),
    ] = None,
    log_batches: Annotated[
        bool, typer.Option(help="log one line per batch with the time of each step")
    ] = False,
) -> None:
    """Run a stream worker in the foreground until SIGTERM or Ctrl-C.

    ingest: events from Kafka into ClickHouse, scored (embeddings, toxicity, injection,
    tokens and cost, retrieval quality) into scores and embeddings and onto the scored topic;
    finished traces into traces; undecodable records to the dead-letter topic.

    drift: scored events per segment through online detectors against the segment's baseline
    (undertow baseline build); drift events into the drift table and onto the drift topic.

    policy: scored and drift events through the alert rules (undertow rules check); alerts
    into the alerts table and onto the alerts topic, for undertow alerts serve.

    judge: a sample of completions rated by a judge model (UNDERTOW_WORKER_JUDGE_*) by rubric
    into judge_scores, and onto the event topic as feedback events (source judge).

    Settings come from UNDERTOW_WORKER_* variables; Kafka and ClickHouse default to the local
    stack's. Offsets are committed only after the warehouse stored the rows.
    """
    from undertow.infra.stack import LocalStack
    from undertow.streams.app import (
        WorkerHealth,
        build_app,
        default_enricher,
        ensure_worker_topics,
        run_worker,
    )
    from undertow.streams.settings import WorkerSettings

    overrides: dict[str, Any] = {"role": role} if role else {}
    settings = WorkerSettings(**overrides)
    stack_settings = StackSettings()
    given = settings.model_fields_set
    defaults: dict[str, Any] = {}
    if "data_dir" not in given:
        defaults["data_dir"] = stack_settings.home / "worker"
    if "clickhouse_database" not in given:
        defaults["clickhouse_database"] = stack_settings.clickhouse_database
    if settings.bootstrap_servers is None or settings.clickhouse_url is None:
        stack = LocalStack(stack_settings)
        bootstrap = stack_settings.bootstrap_servers
        url = stack_settings.clickhouse_url
        if (settings.bootstrap_servers or bootstrap) is None or (
            settings.clickhouse_url or url
        ) is None:
            info = stack.require()
            bootstrap, url = bootstrap or info.bootstrap_servers, url or info.clickhouse_url
        defaults["bootstrap_servers"] = settings.bootstrap_servers or bootstrap
        defaults["clickhouse_url"] = settings.clickhouse_url or url
    settings = settings.model_copy(update=defaults)
    logging.getLogger("undertow.streams").setLevel(logging.DEBUG if log_batches else logging.INFO)
    if log_batches:  # with Faust's own account of rebalances and table recovery
        logging.getLogger("faust").setLevel(logging.INFO)
    if logging.getLogger().level > logging.DEBUG:
        # The sink reports outages itself, once per interval; the HTTP client would per try.
        for noisy in ("urllib3", "clickhouse_connect"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    health = WorkerHealth()
    partitions = ensure_worker_topics(settings)
    began = time.perf_counter()
    faust_app = build_app(
        settings,
        enricher=default_enricher(settings) if settings.role == "ingest" else None,
        health=health,
        partitions=partitions,
    )
    if settings.role == "ingest":
        source = settings.events_topic
        doing = (
            f"scoring with {settings.embedder}, {settings.toxicity or 'no toxicity'}, "
            f"{settings.injection or 'no injection'}"
            if settings.enrich
            else "scoring off"
        )
    elif settings.role == "drift":
        source, doing = settings.scored_topic, f"drift events to {settings.drift_topic}"
    elif settings.role == "judge":
        source = settings.events_topic
        doing = (
            f"judging {settings.judge_sample_rate:.0%} of completions with "
            f"{settings.judge_model} at {settings.judge_base_url}"
        )
    else:
        source = f"{settings.scored_topic} + {settings.drift_topic}"
        doing = f"alerts to {settings.alerts_topic}"
    console.print(
        f"worker {settings.role} (group {settings.consumer_group}): "
        f"{source} on {settings.bootstrap_servers} -> "
        f"{settings.clickhouse_url}/{settings.clickhouse_database}; {doing} "
        f"(ready in {time.perf_counter() - began:.1f} s)",
        highlight=False,
    )
    code = run_worker(faust_app, health)
    if code:
        raise typer.Exit(code)


@alerts_app.command("serve")
def alerts_serve(
    channel: Annotated[
        list[str] | None,
        typer.Option("--channel", "-c", help="only these channels (default: every configured one)"),
    ] = None,
) -> None:
    """Run the alert subscribers (one consumer group per channel) until SIGTERM or Ctrl-C.

    Settings come from UNDERTOW_ALERTS_* variables; Kafka defaults to the local stack's broker.
    Offsets are committed only once a notification was delivered or refused for good.
    """
    import signal
    import threading

    from undertow.infra.stack import LocalStack
    from undertow.services.alerts.settings import AlertSettings
    from undertow.services.alerts.subscriber import run_subscribers

    settings = AlertSettings()
    bootstrap = settings.bootstrap_servers
    if bootstrap is None:
        stack_settings = StackSettings()
        bootstrap = (
            stack_settings.bootstrap_servers
            or LocalStack(stack_settings).require().bootstrap_servers
        )
    names = channel or list(settings.channel_names())
    if not names:
        raise typer.BadParameter(
            "no channel is configured: set UNDERTOW_ALERTS_SLACK_WEBHOOK_URL, "
            "UNDERTOW_ALERTS_PAGERDUTY_ROUTING_KEY or UNDERTOW_ALERTS_WEBHOOK_URL (+ _SECRET)"
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("undertow.services.alerts").setLevel(logging.INFO)
    console.print(
        f"alerts: {settings.alerts_topic} on {bootstrap} -> {', '.join(names)}", highlight=False
    )
    stats = run_subscribers(settings, stop, bootstrap_servers=bootstrap, channels=channel or None)
    for name, counts in stats.items():
        console.print(
            f"{name}: {counts.records} records, {counts.delivered} notifications delivered, "
            f"{counts.refused} refused, {counts.dead_letters} dead letters",
            highlight=False,
        )


@alerts_app.command("receivers")
def alerts_receivers() -> None:
    """Run local Slack, PagerDuty and webhook receivers (demos, trials); prints the settings
    that point the subscribers at them."""
    from undertow.services.alerts.receiver import main as receivers_main

    receivers_main()


@alerts_app.command("test")
def alerts_test(
    channel: Annotated[str, typer.Argument(help="slack, pagerduty or webhook")],
) -> None:
    """Send one sample alert through a configured channel (with retries) and report."""
    from undertow.services.alerts import Alert, alert_record, create
    from undertow.services.alerts.settings import AlertSettings

    settings = AlertSettings()
    record = alert_record(
        rule="undertow_test",
        severity="info",
        status="firing",
        dedup_key="undertow-test",
        summary="Undertow test alert",
        app="undertow",
    )
    result = create(channel, **settings.channel_options(channel)).deliver(
        Alert.from_record(record), settings.retry_policy()
    )
    console.print(
        f"{channel}: {result.result} after {len(result.attempts)} attempt(s): {result.reason}",
        highlight=False,
    )
    if not result.delivered:
        raise typer.Exit(1)


@rules_app.command("check")
def rules_check(
    path: Annotated[
        str | None, typer.Argument(help="a rule file (default: the rules shipped with Undertow)")
    ] = None,
) -> None:
    """Validate a rule file and list its rules; a bad rule prints its name and field."""
    from undertow.streams.policy import load_rules

    rules = load_rules(path)
    table = Table("rule", "kind", "severity", "group by")
    for rule in rules.rules:
        table.add_row(rule.name, rule.kind, rule.severity, ", ".join(rule.group_by))
    console.print(table)
    console.print(f"{len(rules.rules)} rules valid", highlight=False)


@app.command()
def version() -> None:
    """Print the Undertow version."""
    console.print(__version__)


def main() -> None:
    """Entry point: Undertow errors print as one clear line and exit 1."""
    try:
        app()
    except UndertowError as exc:
        # The message is text, not markup: it may quote logs and paths such as "[/tmp/x]".
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
