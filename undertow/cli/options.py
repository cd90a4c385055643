"""Option values the commands parse beyond what typer does."""

from __future__ import annotations

from collections.abc import Sequence

import typer


def parse_pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a mapping; ``what`` names the option in the error.

    >>> parse_pairs(["a=1", " b = x "], "--param")
    {'a': '1', 'b': 'x'}
    """
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{what}: expected NAME=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out
