"""Windowed two-sample tests that confirm an online detection against the baseline.

An online detector compares the stream with its own recent past; before a detection becomes a
drift event, the monitor asks a second, different question: does the recent window differ
from a sample of the *baseline*? That keeps alarms rare when the detector fires on a burst
that the baseline already knew, and it gives every drift event a statistic, a threshold and a
p-value that mean the same thing in every segment.

* :func:`mmd_test`: maximum mean discrepancy between reference and window embeddings, RBF
  kernel with the median heuristic bandwidth (sigma = the median pairwise distance of the
  pooled sample), unbiased estimate, p-value from seeded permutations. It sees any change of
  distribution, but its signal falls with the square of the share of traffic that moved, so it
  is slow to confirm a shift of a tenth of the traffic.
* :func:`novelty_test`: one-sided permutation test that the window's mean *surprise* (how
  improbable each event's distance to the nearest baseline topic is under the baseline, see
  :meth:`~undertow.streams.drift.baseline.EmbeddingProfile.surprise`) exceeds the reference
  rows' (measured out of fold). It looks only for traffic the baseline did not have, and its
  signal falls linearly with the share that moved.
* :func:`rank_test`: two-sided Mann-Whitney test for a scalar stream (toxicity, latency).

All are deterministic for a given seed; statistics are reported with the critical value at
``alpha`` as ``threshold``, so ``reject`` is ``statistic > threshold`` (up to ties).

>>> rng = np.random.default_rng(0)
>>> a, b = rng.normal(size=(200, 8)), rng.normal(size=(100, 8))
>>> mmd_test(a, b, seed=1).reject, mmd_test(a, b + 1.0, seed=1).reject
(False, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import DriftError

DEFAULT_ALPHA = 0.01
DEFAULT_PERMUTATIONS = 200


@dataclass(frozen=True)
class TestResult:
    """The outcome of one two-sample test: ``reject`` when ``p_value <= alpha``."""

    __test__ = False  # not a pytest class

    test: str
    statistic: float
    threshold: float
    p_value: float
    alpha: float
    reject: bool
    reference_size: int
    window_size: int
    bandwidth: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "reject": self.reject,
            "reference_size": self.reference_size,
            "window_size": self.window_size,
            "bandwidth": self.bandwidth,
        }


def _as_matrix(x: npt.ArrayLike, name: str) -> npt.NDArray[np.float32]:
    m = np.asarray(x, dtype=np.float32)
    if m.ndim != 2 or len(m) < 2:
        raise DriftError(f"expected {name} as a 2-d array of at least 2 rows, got shape {m.shape}")
    return m


def squared_distances(z: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Pairwise squared Euclidean distances of the rows of ``z`` (zero diagonal)."""
    sq = np.einsum("ij,ij->i", z, z)
    d: npt.NDArray[np.float32] = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def median_bandwidth(d2: npt.NDArray[np.floating[Any]]) -> float:
    """The median heuristic: the median distance between distinct points (from squared ones)."""
    upper = d2[np.triu_indices(len(d2), 1)]
    positive = upper[upper > 0]
    med = float(np.median(positive)) if len(positive) else 1.0
    return math.sqrt(med)


def mmd_test(
    reference: npt.ArrayLike,
    window: npt.ArrayLike,
    *,
    alpha: float = DEFAULT_ALPHA,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    bandwidth: float | None = None,
) -> TestResult:
    """Unbiased MMD² between ``reference`` and ``window`` (rows are vectors), RBF kernel
    ``exp(-|x-y|² / (2 sigma²))`` with sigma from the median heuristic unless given.

    The p-value is ``(1 + #{permuted >= observed}) / (1 + permutations)`` over seeded random
    splits of the pooled rows; ``threshold`` is the permuted statistic the observed one must
    exceed for ``p <= alpha``. Cost: one (n+m)² kernel and (n+m)²·permutations multiply-adds.
    """
    x, y = _as_matrix(reference, "reference"), _as_matrix(window, "window")
    if x.shape[1] != y.shape[1]:
        raise DriftError(f"reference has {x.shape[1]} dimensions, window {y.shape[1]}")
    allowed = math.floor(alpha * (permutations + 1)) - 1  # permuted values >= observed allowed
    if allowed < 0:
        raise DriftError(
            f"{permutations} permutations cannot give p <= {alpha}; use at least "
            f"{math.ceil(1 / alpha) - 1}"
        )
    n, m = len(x), len(y)
    z = np.vstack([x, y])
    d2 = squared_distances(z)
    sigma = float(bandwidth) if bandwidth else median_bandwidth(d2)
    k = np.exp(d2 * np.float32(-0.5 / sigma**2))
    np.fill_diagonal(k, 0.0)
    rng = np.random.default_rng(seed)
    size = n + m
    members = np.zeros((size, permutations + 1), dtype=np.float32)
    members[:n, 0] = 1.0  # column 0: the observed split
    for j in range(1, permutations + 1):
        members[rng.permutation(size)[:n], j] = 1.0
    others = 1.0 - members
    k_members = k @ members
    k_others = k @ others
    within_x = np.einsum("ij,ij->j", members, k_members, dtype=np.float64)
    between = np.einsum("ij,ij->j", others, k_members, dtype=np.float64)
    within_y = np.einsum("ij,ij->j", others, k_others, dtype=np.float64)
    stats = within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2.0 * between / (n * m)
    observed, permuted = float(stats[0]), np.sort(stats[1:])[::-1]
    return _permutation_result("mmd", observed, permuted, allowed, alpha, n, m, bandwidth=sigma)


def _permutation_result(
    test: str,
    observed: float,
    permuted: npt.NDArray[np.floating[Any]],
    allowed: int,
    alpha: float,
    n: int,
    m: int,
    *,
    bandwidth: float | None = None,
    tolerance: float = 0.0,
) -> TestResult:
    """The result of a permutation test from the observed statistic and the permuted ones
    (sorted, largest first): the p-value counts the observed statistic as one permutation."""
    p_value = (1 + int(np.sum(permuted >= observed - tolerance))) / (len(permuted) + 1)
    return TestResult(
        test=test,
        statistic=observed,
        threshold=float(permuted[allowed]),
        p_value=p_value,
        alpha=alpha,
        reject=p_value <= alpha,
        reference_size=n,
        window_size=m,
        bandwidth=bandwidth,
    )


def _mann_whitney(
    reference: npt.NDArray[np.float64],
    window: npt.NDArray[np.float64],
    alternative: Literal["greater", "two-sided"],
) -> tuple[float, float, float]:
    """(AUC = P(window > reference) + ties/2, p-value, standard deviation of the AUC under H0)."""
    from scipy.stats import mannwhitneyu

    n, m = len(window), len(reference)
    result = mannwhitneyu(window, reference, alternative=alternative, method="asymptotic")
    auc = float(result.statistic) / (n * m)
    sd = math.sqrt((n + m + 1) / (12.0 * n * m))
    p = float(result.pvalue)
    return auc, (1.0 if math.isnan(p) else p), sd


def _as_vector(x: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    v = np.asarray(x, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) < 2:
        raise DriftError(f"expected at least 2 finite {name} values, got {len(v)}")
    return v


def novelty_test(
    reference_surprise: npt.ArrayLike,
    window_surprise: npt.ArrayLike,
    *,
    alpha: float = DEFAULT_ALPHA,
    permutations: int = 999,
    seed: int = 0,
) -> TestResult:
    """One-sided permutation test that the window's mean surprise exceeds the reference's.
    ``statistic``: the difference of the means (window - reference); ``threshold``: the
    permuted difference it must exceed for ``p <= alpha``."""
    ref, win = _as_vector(reference_surprise, "reference"), _as_vector(window_surprise, "window")
    allowed = math.floor(alpha * (permutations + 1)) - 1
    if allowed < 0:
        raise DriftError(
            f"{permutations} permutations cannot give p <= {alpha}; use at least "
            f"{math.ceil(1 / alpha) - 1}"
        )
    pooled = np.concatenate([ref, win])
    n, m = len(ref), len(win)
    observed = float(win.mean() - ref.mean())
    rng = np.random.default_rng(seed)
    total = float(pooled.sum())
    picks = np.argsort(rng.random((permutations, n + m)), axis=1)[:, :m]
    window_sums = pooled[picks].sum(axis=1)
    permuted = np.sort(window_sums / m - (total - window_sums) / n)[::-1]
    return _permutation_result("novelty", observed, permuted, allowed, alpha, n, m, tolerance=1e-12)


def rank_test(
    reference: npt.ArrayLike, window: npt.ArrayLike, *, alpha: float = DEFAULT_ALPHA
) -> TestResult:
    """Two-sided Mann-Whitney test for a scalar stream. ``statistic``: ``|AUC - 0.5|``;
    ``threshold``: its critical value at ``alpha`` (normal approximation, no tie correction)."""
    from scipy.stats import norm

    ref, win = _as_vector(reference, "reference"), _as_vector(window, "window")
    if np.ptp(np.concatenate([ref, win])) == 0.0:  # all equal: nothing to tell apart
        auc, p, sd = 0.5, 1.0, math.sqrt((len(ref) + len(win) + 1) / (12.0 * len(ref) * len(win)))
    else:
        auc, p, sd = _mann_whitney(ref, win, "two-sided")
    return TestResult(
        test="rank",
        statistic=abs(auc - 0.5),
        threshold=float(norm.ppf(1 - alpha / 2)) * sd,
        p_value=p,
        alpha=alpha,
        reject=p <= alpha,
        reference_size=len(ref),
        window_size=len(win),
    )


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_PERMUTATIONS",
    "TestResult",
    "median_bandwidth",
    "mmd_test",
    "novelty_test",
    "rank_test",
    "squared_distances",
]
