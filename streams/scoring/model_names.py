"""Model names as events carry them, matched against configured names and glob patterns.

Providers and gateways spell one model many ways: dated snapshots (``gpt-4o-2024-08-06``),
provider prefixes (``openai/gpt-4o``), hub names (``HuggingFaceTB/SmolLM2-135M-Instruct``),
different case. Token counting and pricing both need "which configured entry is this", so they
share one rule: names compare case-insensitively; an exact name beats any pattern; among glob
patterns (``fnmatch`` syntax) the most specific wins, i.e. the one with the most literal
characters, so ``gpt-4o-mini*`` beats ``gpt-4o*`` whatever the order they were written in.
A name with a ``provider/`` prefix is tried whole first, then without the prefix.

>>> best_match("openai/gpt-4o-mini-2024-07-18", ["gpt-4o*", "gpt-4o-mini*"])
'gpt-4o-mini*'
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

_WILDCARDS = frozenset("*?[]")


def normalise(model: str) -> str:
    """The form names are compared in: stripped and lower case."""
    return model.strip().lower()


def candidates(model: str) -> list[str]:
    """The spellings of ``model`` tried in turn: whole, then without a ``provider/`` prefix."""
    name = normalise(model)
    short = name.rsplit("/", 1)[-1]
    return [name] if short == name else [name, short]


def is_pattern(name: str) -> bool:
    return any(c in _WILDCARDS for c in name)


def _specificity(pattern: str) -> int:
    return sum(1 for c in pattern if c not in _WILDCARDS)


def best_match(model: str, names: Iterable[str]) -> str | None:
    """The entry of ``names`` (exact names or glob patterns) that ``model`` matches best.

    Returns the entry as given, or None when nothing matches. Ties between equally specific
    patterns go to the one listed first.
    """
    entries = list(names)
    for name in candidates(model):
        for entry in entries:
            if not is_pattern(entry) and normalise(entry) == name:
                return entry
        best: str | None = None
        for entry in entries:
            if (
                is_pattern(entry)
                and fnmatchcase(name, normalise(entry))
                and (best is None or _specificity(entry) > _specificity(best))
            ):
                best = entry
        if best is not None:
            return best
    return None
