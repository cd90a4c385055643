"""The examples in the alert modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["alert", "channel", "notifier", "settings", "webhook"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"undertow.services.alerts.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
