"""The command line's output: the consoles the commands print to, and how an error and a table
cell are written."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape

console = Console()
"""Results and tables (stdout)."""
err_console = Console(stderr=True)
"""Warnings and notices of long-running commands (stderr)."""


def stderr_console() -> Console:
    """A console on stderr as it is now: rich reads whether the stream is a terminal (and so
    whether to colour) when a console is made, and tests swap the stream after import."""
    return Console(stderr=True)


def print_error(message: str) -> None:
    """Print ``error: message`` on stderr; the message is text, not rich markup (it may quote
    logs and paths such as ``[/tmp/x]``)."""
    stderr_console().print(f"[red]error:[/] {escape(message)}")


def cell(value: Any) -> str:
    """A table cell: floats to four significant digits, mappings and lists as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)
