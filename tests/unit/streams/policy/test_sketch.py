"""The quantile sketch: within its relative accuracy of the exact quantile at the same rank,
mergeable, and stored as JSON."""

from __future__ import annotations

import json
import math
import random

import pytest

from undertow.streams.policy.sketch import QuantileSketch


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_within_one_percent_of_exact(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(6.5, 1.2) for _ in range(5000)]  # latencies, ms
    sketch = QuantileSketch()
    for value in values:
        sketch.add(value)
    for q in (0.0, 0.5, 0.9, 0.95, 0.99, 1.0):
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert estimate == pytest.approx(exact(values, q), rel=0.01)


def test_merge_equals_one_sketch_of_everything_and_survives_json() -> None:
    rng = random.Random(4)
    parts = [[rng.uniform(1, 5000) for _ in range(300)] for _ in range(5)]
    whole, merged = QuantileSketch(), QuantileSketch()
    for part in parts:
        piece = QuantileSketch()
        for value in part:
            piece.add(value)
            whole.add(value)
        merged.merge(QuantileSketch.from_json(json.loads(json.dumps(piece.to_json()))))
    assert merged.to_json() == whole.to_json()
    assert merged.count == 1500
    assert merged.quantile(0.95) == whole.quantile(0.95)


def test_zeros_empty_and_bounds() -> None:
    sketch = QuantileSketch()
    assert sketch.quantile(0.5) is None
    for value in (0.0, 0.0, -3.0, 10.0):
        sketch.add(value)
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(1.0) == pytest.approx(10.0, rel=0.01)
    with pytest.raises(ValueError):
        sketch.quantile(1.5)
    with pytest.raises(ValueError):
        sketch.merge(QuantileSketch(relative_accuracy=0.02))


def test_collapsing_low_buckets_keeps_high_quantiles() -> None:
    sketch = QuantileSketch(max_bins=50)
    values = [1.05**i for i in range(400)]  # far more distinct buckets than 50
    for value in values:
        sketch.add(value)
    assert len(sketch.bins) <= 50 and sketch.count == 400
    assert sketch.quantile(0.99) == pytest.approx(exact(values, 0.99), rel=0.01)
