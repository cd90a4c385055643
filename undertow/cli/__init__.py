"""``undertow``: one command line for the local stack, the demo and the warehouse.

One module per command group (:mod:`~undertow.cli.infra`, :mod:`~undertow.cli.registry`,
...); this module assembles them into :data:`app`. Commands import what they run when they
run, so that ``undertow --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from undertow import __version__
from undertow.cli.actions import actions_app
from undertow.cli.alerts import alerts_app
from undertow.cli.baseline import baseline_app
from undertow.cli.console import console, print_error, stderr_console
from undertow.cli.demo import demo
from undertow.cli.gateway import gateway
from undertow.cli.infra import infra_app
from undertow.cli.registry import ab_app, prompts_app, registry_app
from undertow.cli.rules import rules_app
from undertow.cli.ui import ui
from undertow.cli.warehouse import migrate, sql
from undertow.cli.worker import worker
from undertow.errors import UndertowError

app = typer.Typer(
    help="Undertow: a streaming monitor for LLM applications (Kafka, Faust, river, ClickHouse).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(infra_app, name="infra")
app.add_typer(alerts_app, name="alerts")
app.add_typer(rules_app, name="rules")
app.add_typer(baseline_app, name="baseline")
app.add_typer(registry_app, name="registry")
app.add_typer(prompts_app, name="prompts")
app.add_typer(ab_app, name="ab")
app.add_typer(actions_app, name="actions")
app.command("ui")(ui)
app.command()(demo)
app.command()(migrate)
app.command()(sql)
app.command()(gateway)
app.command()(worker)


@app.callback()
def _configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show debug logs")] = False,
) -> None:
    """Logs go to stderr through rich; Kafka client chatter only with --verbose."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=stderr_console(), show_path=False)],
    )
    if not verbose:
        logging.getLogger("undertow.kafka.client").setLevel(logging.ERROR)


@app.command()
def version() -> None:
    """Print the Undertow version."""
    console.print(__version__)


def main() -> None:
    """Entry point: Undertow errors print as one clear line and exit 1."""
    try:
        app()
    except UndertowError as exc:
        print_error(str(exc))
        sys.exit(1)


__all__ = ["app", "main"]
