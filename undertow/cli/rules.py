"""``undertow rules``: check the alert rules the policy processor runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from undertow.cli.console import console

rules_app = typer.Typer(help="Alert rules (YAML) the policy processor runs.", no_args_is_help=True)


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
