"""Quantile summaries: exact at their levels, interpolated between, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from undertow.streams.drift.base import DriftError
from undertow.streams.drift.sketch import Quantiles


def test_quantiles_are_exact_at_their_levels() -> None:
    x = np.random.default_rng(0).exponential(size=10_001)
    q = Quantiles.from_values(x)
    assert q.count == 10_001 and len(q.levels) == 101
    for level in (0.0, 0.25, 0.5, 0.99, 1.0):
        assert q.quantile(level) == pytest.approx(float(np.quantile(x, level)))
    assert q.mean == pytest.approx(float(x.mean())) and q.std == pytest.approx(float(x.std()))


def test_cdf_inverts_quantile_and_handles_ties_and_ends() -> None:
    x = np.random.default_rng(1).normal(size=5000)
    q = Quantiles.from_values(x)
    assert q.cdf(q.quantile(0.3)) == pytest.approx(0.3, abs=1e-9)
    assert q.cdf(-1e9) == 0.0 and q.cdf(1e9) == 1.0
    zeros = Quantiles.from_values([0.0] * 90 + list(range(1, 11)))
    assert zeros.cdf(0.0) >= 0.89  # the flat stretch counts fully


def test_non_finite_values_are_dropped_and_empty_is_allowed() -> None:
    q = Quantiles.from_values([1.0, float("nan"), float("inf"), 3.0], levels=3)
    assert q.count == 2 and q.values == (1.0, 2.0, 3.0)
    assert Quantiles.from_values([]).count == 0


def test_json_round_trip_and_bad_documents() -> None:
    q = Quantiles.from_values(np.arange(100.0))
    assert Quantiles.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    with pytest.raises(DriftError):
        Quantiles.from_dict({"count": 1})
    with pytest.raises(DriftError):
        Quantiles.from_dict({**q.to_dict(), "values": [1.0]})
