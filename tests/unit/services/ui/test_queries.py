"""The dashboard's SQL layer (services/ui/queries.py): the statements and their guards.

The statements run against the real engine in tests/integration/test_ui.py; here only what
holds without one: every statement is a constant, read-only SELECT whose inputs are bound
parameters, and the helpers refuse what they must.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from undertow.services.ui import UIError
from undertow.services.ui.queries import (
    STATEMENTS,
    QueryError,
    alerts,
    rows,
    safe_link,
)
from undertow.services.ui.series import Window

WRITES = re.compile(
    r"\b(INSERT|ALTER|DROP|CREATE|DELETE|UPDATE|TRUNCATE|RENAME|OPTIMIZE|SYSTEM|SET|GRANT|KILL)\b",
    re.I,
)


@pytest.mark.parametrize("sql", STATEMENTS)
def test_every_statement_is_one_read_only_select(sql: str) -> None:
    assert sql.lstrip().upper().startswith("SELECT")
    assert ";" not in sql
    assert WRITES.search(sql) is None, WRITES.search(sql)


@pytest.mark.parametrize("sql", STATEMENTS)
def test_inputs_are_bound_parameters_never_text(sql: str) -> None:
    placeholders = re.findall(r"\{(\w+):([\w()0-9]+)\}", sql)
    assert placeholders, "a dashboard query always takes a window or a trace id"
    # No Python format fields survived into the SQL (they would be spliced text).
    assert re.search(r"\{\w+\}", sql) is None


class Refusing:
    """A client that must not be called: the guards act before any query."""

    def query(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the statement should have been refused before reaching the client")


def test_rows_runs_only_the_dashboards_own_statements() -> None:
    with pytest.raises(QueryError, match="dashboard's own statements"):
        rows(Refusing(), "SELECT 1", {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"status": "open"}, "expected a status"), ({"severity": "sev1"}, "expected a severity")],
)
def test_alert_filters_are_checked_before_querying(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UIError, match=message):
        alerts(Refusing(), Window.last("1h", 1_772_366_400_000), **kwargs)


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://runbooks.example/tox", "https://runbooks.example/tox"),
        (" http://wiki/x ", "http://wiki/x"),
        ("javascript:alert(1)", None),
        ("JavaScript:alert(1)", None),
        ("data:text/html,<b>", None),
        ("//evil.example", None),
        ("", None),
        (None, None),
    ],
)
def test_runbook_links_are_http_only(url: str | None, link: str | None) -> None:
    assert safe_link(url) == link
