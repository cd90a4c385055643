"""Two-sample confirmation tests: level, power, determinism, reported threshold."""

from __future__ import annotations

import numpy as np
import pytest

from undertow.streams.drift.base import DriftError
from undertow.streams.drift.confirm import (
    median_bandwidth,
    mmd_test,
    novelty_test,
    rank_test,
    squared_distances,
)


def unit(rng: np.random.Generator, n: int, dim: int = 16, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    x[:, 0] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mmd_holds_its_level_on_samples_of_one_distribution() -> None:
    rng = np.random.default_rng(0)
    reference = unit(rng, 200)
    rejected = [mmd_test(reference, unit(rng, 60), alpha=0.05, seed=s).reject for s in range(40)]
    assert sum(rejected) <= 5  # 2 expected at the 5% level


def test_mmd_finds_a_moved_sample_and_reports_a_consistent_threshold() -> None:
    rng = np.random.default_rng(1)
    result = mmd_test(unit(rng, 200), unit(rng, 60, shift=1.0), seed=3)
    assert result.reject and result.p_value == pytest.approx(1 / 201)
    assert result.statistic > result.threshold
    assert (result.reference_size, result.window_size, result.test) == (200, 60, "mmd")
    assert result.bandwidth is not None and result.bandwidth > 0


def test_mmd_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(2)
    a, b = unit(rng, 100), unit(rng, 40, shift=0.3)
    assert mmd_test(a, b, seed=7) == mmd_test(a, b, seed=7)


def test_the_median_heuristic_is_the_median_distance() -> None:
    z = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=np.float32)
    assert median_bandwidth(squared_distances(z)) == pytest.approx(4.0)


def test_mmd_refuses_what_it_cannot_test() -> None:
    rng = np.random.default_rng(3)
    with pytest.raises(DriftError, match="permutations"):
        mmd_test(unit(rng, 10), unit(rng, 10), alpha=0.001, permutations=100)
    with pytest.raises(DriftError, match="dimensions"):
        mmd_test(unit(rng, 10, dim=4), unit(rng, 10, dim=5))
    with pytest.raises(DriftError, match="2-d"):
        mmd_test(unit(rng, 10)[0], unit(rng, 10))


def test_novelty_sees_a_tenth_of_far_events_and_not_the_same_traffic() -> None:
    rng = np.random.default_rng(4)
    reference = rng.exponential(size=500)
    same = rng.exponential(size=150)
    moved = np.concatenate([rng.exponential(size=135), 4.6 + rng.exponential(size=15)])
    assert not novelty_test(reference, same, alpha=0.005, seed=1).reject
    result = novelty_test(reference, moved, alpha=0.005, seed=1)
    assert result.reject and result.statistic > result.threshold
    assert novelty_test(reference, moved, seed=1) == novelty_test(reference, moved, seed=1)


def test_the_rank_test_on_scalars() -> None:
    rng = np.random.default_rng(6)
    reference = rng.lognormal(size=400)
    assert not rank_test(reference, rng.lognormal(size=100)).reject
    result = rank_test(reference, 2.0 * rng.lognormal(size=100))
    assert result.reject and result.statistic > result.threshold
    assert not rank_test(np.zeros(50), np.zeros(20)).reject  # nothing to tell apart
    with pytest.raises(DriftError):
        rank_test([1.0], [2.0, 3.0])
