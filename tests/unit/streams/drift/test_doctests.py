"""The examples in the drift modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "base",
    "baseline",
    "calibration",
    "confirm",
    "quantity",
    "segment",
    "sketch",
    "vectors",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"undertow.streams.drift.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
