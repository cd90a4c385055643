"""The anytime-valid two-sample test: closed forms against direct computation, and validity."""

from __future__ import annotations

import math
import statistics

import numpy as np
import numpy.typing as npt
import pytest
from scipy import integrate, optimize, stats

from undertow.services.experiments.sequential import (
    ArmStats,
    ExperimentError,
    finite_array,
    mixture_bounds,
    mixture_test,
    optimal_rate,
)

CONTROL = [0.61, 0.74, 0.55, 0.92, 0.70]
TREATMENT = [0.81, 0.77, 0.95, 0.68, 0.88, 0.90, 0.73]


def binomial_upper(runs: int, alpha: float) -> float:
    """The 99% one-sided upper bound on the fraction of ``runs`` erring when the rate is alpha."""
    return float(stats.binom.ppf(0.99, runs, alpha)) / runs


def test_arm_stats_match_the_textbook_formulas() -> None:
    arm = ArmStats.of(TREATMENT)
    assert arm.n == len(TREATMENT)
    assert arm.mean == pytest.approx(statistics.fmean(TREATMENT))
    assert arm.variance == pytest.approx(statistics.variance(TREATMENT))


def test_evidence_equals_the_mixture_integral() -> None:
    """log Lambda in closed form equals the Gaussian mixture of likelihood ratios, integrated."""
    control, treatment = ArmStats.of(CONTROL), ArmStats.of(TREATMENT)
    alpha, tuning = 0.1, 6
    result = mixture_test(control, treatment, alpha=alpha, tuning_samples=tuning, null=0.02)

    v = statistics.variance(CONTROL) / 5 + statistics.variance(TREATMENT) / 7
    info = 1 / v
    z = (statistics.fmean(TREATMENT) - statistics.fmean(CONTROL) - 0.02) * info
    n_eff = (statistics.variance(CONTROL) + statistics.variance(TREATMENT)) * info
    tau2 = optimal_rate(alpha) * n_eff / tuning / info
    mixture, _ = integrate.quad(
        lambda lam: math.exp(lam * z - lam**2 * info / 2) * stats.norm.pdf(lam, 0, math.sqrt(tau2)),
        -np.inf,
        np.inf,
    )
    assert result.log_evidence == pytest.approx(math.log(mixture), rel=1e-6)
    assert result.p_value == pytest.approx(min(1.0, 1 / mixture), rel=1e-6)
    assert result.standard_error == pytest.approx(math.sqrt(v))


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_confidence_sequence_is_where_the_p_value_reaches_alpha(side: str) -> None:
    """Testing the null at either end of the sequence gives exactly p == alpha (duality)."""
    control, treatment = ArmStats.of(CONTROL), ArmStats.of(TREATMENT)
    result = mixture_test(control, treatment, alpha=0.05, tuning_samples=10)
    edge = getattr(result, side)
    at_edge = mixture_test(control, treatment, alpha=0.05, tuning_samples=10, null=edge)
    assert at_edge.p_value == pytest.approx(0.05, rel=1e-9)
    assert result.lower < result.difference < result.upper


def test_optimal_rate_minimises_the_boundary() -> None:
    for alpha in (0.01, 0.05, 0.2):
        width = lambda x, a=alpha: (1 + x) / x * (math.log1p(x) - 2 * math.log(a))  # noqa: E731
        best = optimize.minimize_scalar(width, bounds=(1e-3, 100), method="bounded")
        assert optimal_rate(alpha) == pytest.approx(float(best.x), rel=1e-4)


def test_sequence_is_narrowest_at_the_tuning_size() -> None:
    arm = ArmStats(n=500, mean=0.0, variance=1.0)

    def width(tuning: int) -> float:
        result = mixture_test(arm, arm, alpha=0.05, tuning_samples=tuning)
        return float(result.upper - result.lower)

    assert width(500) < width(250)
    assert width(500) < width(1000)


def test_unequal_variances_and_sizes_use_welch_variance() -> None:
    small = ArmStats(n=50, mean=1.0, variance=4.0)
    large = ArmStats(n=800, mean=1.5, variance=0.25)
    result = mixture_test(small, large, alpha=0.05, tuning_samples=100)
    assert result.standard_error == pytest.approx(math.sqrt(4.0 / 50 + 0.25 / 800))
    swapped = mixture_test(large, small, alpha=0.05, tuning_samples=100)
    assert swapped.difference == pytest.approx(-result.difference)
    assert swapped.p_value == pytest.approx(result.p_value)


def test_zero_variance_gives_a_point_sequence() -> None:
    same = mixture_test(ArmStats.of([0.5] * 4), ArmStats.of([0.5] * 6), tuning_samples=10)
    assert (same.lower, same.upper, same.p_value) == (0.0, 0.0, 1.0)
    apart = mixture_test(ArmStats.of([0.5] * 4), ArmStats.of([0.75] * 6), tuning_samples=10)
    assert apart.lower == apart.upper == pytest.approx(0.25)
    assert apart.p_value == 0.0


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ([0.1, float("nan"), 0.3], "nan at index 1"),
        ([0.1, 0.2, float("inf")], "inf at index 2"),
        ([[0.1, 0.2]], "flat sequence"),
        (["a", "b"], "expected numbers"),
    ],
)
def test_bad_values_are_refused_with_where(values: object, needle: str) -> None:
    with pytest.raises(ExperimentError, match=needle):
        finite_array(values, label="v4/judge")


def test_too_small_arms_and_bad_levels_are_refused() -> None:
    one = ArmStats.of([0.3])
    many = ArmStats.of(CONTROL)
    with pytest.raises(ExperimentError, match="at least 2 observations"):
        mixture_test(one, many)
    with pytest.raises(ExperimentError, match=r"alpha: expected a level in \(0, 1\), got 1.5"):
        mixture_test(many, many, alpha=1.5)
    with pytest.raises(ExperimentError, match="tuning_samples"):
        mixture_test(many, many, tuning_samples=0)


def crossings(
    control: npt.NDArray[np.float64],
    treatment: npt.NDArray[np.float64],
    looks_c: npt.NDArray[np.int64],
    looks_t: npt.NDArray[np.int64],
    truth: float,
    alpha: float,
) -> npt.NDArray[np.bool_]:
    """Per run (rows), whether the sequence ever excluded ``truth`` at any of the looks."""

    def at_looks(
        x: npt.NDArray[np.float64], looks: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        s1 = np.cumsum(x, axis=1)[:, looks - 1]
        s2 = np.cumsum(x**2, axis=1)[:, looks - 1]
        mean = s1 / looks
        return mean, (s2 - looks * mean**2) / (looks - 1)

    mc, vc = at_looks(control, looks_c)
    mt, vt = at_looks(treatment, looks_t)
    lower, upper, _ = mixture_bounds(
        looks_c, mc, vc, looks_t, mt, vt, alpha=alpha, tuning_samples=500
    )
    missed: npt.NDArray[np.bool_] = np.any((lower > truth) | (upper < truth), axis=1)
    return missed


@pytest.mark.parametrize("family", ["gaussian", "exponential", "bernoulli"])
def test_a_a_monitored_after_every_batch_errs_at_most_alpha(family: str) -> None:
    """Equal arms, unequal stream sizes (3:2), a look after every 20 control observations."""
    runs, alpha = 1000, 0.05
    rng = np.random.default_rng(20240611)

    def draw(n: int) -> npt.NDArray[np.float64]:
        if family == "gaussian":
            return rng.normal(0.7, 0.2, (runs, n))
        if family == "exponential":
            return rng.exponential(0.002, (runs, n))
        return (rng.random((runs, n)) < 0.3).astype(np.float64)

    looks_c = np.arange(100, 2001, 20)
    looks_t = looks_c * 2 // 3
    errors = crossings(draw(2000), draw(1334), looks_c, looks_t, 0.0, alpha)
    assert errors.mean() <= binomial_upper(runs, alpha), f"{family}: {errors.mean():.3f}"


def test_sequence_covers_a_true_difference_at_every_look() -> None:
    runs, alpha = 1000, 0.05
    rng = np.random.default_rng(7)
    control = rng.normal(0.70, 0.2, (runs, 2000))
    treatment = rng.normal(0.75, 0.3, (runs, 2000))
    looks = np.arange(100, 2001, 20)
    missed = crossings(control, treatment, looks, looks, 0.05, alpha)
    assert missed.mean() <= binomial_upper(runs, alpha)
    # The same runs against the wrong null of 0 reject almost always: the test has power.
    assert crossings(control, treatment, looks, looks, 0.0, alpha).mean() >= 0.95
