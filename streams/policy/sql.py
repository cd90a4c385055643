"""SQL templates of alert rules: ``{{ name }}`` placeholders filled with ClickHouse literals.

Every value is rendered as a literal of its type, quoted and escaped, so a template never
quotes anything itself and an app or model name cannot break out of its string:
strings become ``'...'``, numbers plain numbers, datetimes ``toDateTime64('...', 6, 'UTC')``
and lists of strings ``['a', 'b']``. The analyst pastes the result into ClickHouse as is.

>>> render("SELECT count() FROM scores WHERE app = {{ app }} AND toxicity > {{threshold}}",
...        {"app": "it's", "threshold": 0.5})
"SELECT count() FROM scores WHERE app = 'it\\\\'s' AND toxicity > 0.5"
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


def placeholders(template: str) -> set[str]:
    """The parameter names a template uses."""
    return set(PLACEHOLDER.findall(template))


def literal(value: object) -> str:
    """``value`` as a ClickHouse literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo is None else value.astimezone(UTC)
        return f"toDateTime64('{moment:%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC')"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Sequence):
        if not value:
            return "CAST([], 'Array(String)')"
        return "[" + ", ".join(literal(item) for item in value) + "]"
    raise TypeError(f"no ClickHouse literal for {type(value).__name__}")


def render(template: str, parameters: Mapping[str, object]) -> str:
    """The template with each placeholder replaced by the literal of its parameter.

    A placeholder without a parameter raises KeyError; rules are checked for that when they
    are loaded (``rules.sql_parameters``), so it means a bug, not a bad rule file.
    """
    return PLACEHOLDER.sub(lambda match: literal(parameters[match.group(1)]), template)


__all__ = ["PLACEHOLDER", "literal", "placeholders", "render"]
