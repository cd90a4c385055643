"""``undertow alerts``: deliver alerts to Slack, PagerDuty and signed webhooks, run local
receivers, send a test alert."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from undertow.cli.console import console
from undertow.settings import StackSettings

alerts_app = typer.Typer(
    help="Deliver alerts to Slack, PagerDuty and signed webhooks.", no_args_is_help=True
)


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
