"""Anytime-valid two-sample test for a difference in means: mixture SPRT and confidence sequence.

Why: analysts look at a running A/B test whenever they like. A fixed-sample t-test checked
after every batch rejects a true null far more often than its alpha; the statistics here keep
their error rate under any number of looks, at any data-dependent stopping time.

The method, in closed form (numpy and scipy only; see "Why not a library" below):

* Let ``d = mean_T - mean_C`` and ``v = s_C^2 / n_C + s_T^2 / n_T`` (Welch's variance of ``d``).
  For either arm the sample means at later sizes are correlated so that, whatever the sizes
  ``(n_C, n_T)`` at successive looks (as long as neither shrinks), ``Z = (d - theta) / v`` as a
  function of the information ``I = 1 / v`` has independent Gaussian increments with variance
  ``I``: a Brownian motion in information time (Jennison & Turnbull 2000, "Group sequential
  methods", Section 11.1, the canonical joint distribution). So unequal streams per arm need
  no pairing.
* Mixing the likelihood ratio ``exp(lambda * Z - lambda^2 * I / 2)`` over ``lambda ~ N(0, tau^2)``
  gives the mixture SPRT statistic (Johari, Koomen, Pekelis & Walsh 2022, "Always valid
  inference: continuous monitoring of A/B tests", Operations Research 70(3); their mSPRT with
  a normal mixing distribution, whose closed form for two streams of normal data with
  ``V = 2 sigma^2`` is the special case ``n_C = n_T``)::

      Lambda = (1 + r)^(-1/2) * exp(r * z^2 / (2 * (1 + r))),   r = tau^2 / v,
      z = (d - theta_0) / sqrt(v).

  ``Lambda`` is a nonnegative martingale with mean 1 under ``theta = theta_0``; Ville's
  inequality gives ``P(exists look: Lambda >= 1 / alpha) <= alpha``. The anytime-valid p-value
  is ``min(1, 1 / Lambda)``; ``P(exists look: p <= alpha) <= alpha`` (it need not be monotone;
  the running minimum over one's own looks is also valid).
* Inverting ``Lambda < 1 / alpha`` in ``theta_0`` gives the confidence sequence::

      d -/+ sqrt(v) * sqrt((1 + r) / r * (log(1 + r) + 2 * log(1 / alpha))),

  the two-sided Gaussian-mixture ("Robbins") boundary, which is the asymptotic confidence
  sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas 2024, "Time-uniform central limit
  theory and asymptotic confidence sequences", Annals of Statistics 52(6), Section 2 (their
  ``sqrt(2 (t s^2 rho^2 + 1) / (t^2 rho^2) * log(sqrt(t s^2 rho^2 + 1) / alpha))`` with
  ``t s^2 rho^2 = r``). ``theta_0`` lies outside it exactly when ``p <= alpha``.

Variance: each arm's unbiased sample variance (``ddof=1``) over all its observations so far,
recomputed at every look (plug-in, unpooled, so arms may have different variances). With known
variances and Gaussian data the guarantee is exact; with plug-in variances and any data of
finite variance it is asymptotic (Waudby-Smith et al. 2024): the error is bounded in the limit,
which is why decisions wait for a minimum sample per arm. The simulations in
``tests/unit/services/experiments`` and ``bench/ab_simulation.py`` measure it on skewed data.

Tuning: ``tau^2`` is set so that the boundary is narrowest when each arm holds
``tuning_samples`` observations: ``r = x* * n_eff / tuning_samples`` with
``n_eff = (s_C^2 + s_T^2) / v`` (``= n`` for equal arms) and ``x* = -W_{-1}(-alpha^2 / e) - 1``,
the exact minimiser of the boundary (Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2), the
normal-mixture boundary's tuning; approximately ``-2 log alpha + log(1 - 2 log alpha)``).

Why not a library: ``savvi`` 0.3.1 (one maintainer, last release 2024-10) has no two-sample
test for unequal streams other than its regression t-test, updates one observation at a time
in Python and pulls in ``cvxpy``; ``confseq`` 0.0.11 (last release 2023-01) ships only a
source archive that compiles C++ against boost, and pulls in matplotlib. The closed forms are a
dozen lines and are checked against a direct computation in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import lambertw

from undertow.errors import UndertowError

FloatArray = npt.NDArray[np.float64]


class ExperimentError(UndertowError):
    """An experiment's specification or observations cannot be analysed as given."""


def optimal_rate(alpha: float) -> float:
    """The ``r = tau^2 I`` at which the two-sided mixture boundary at level ``alpha`` is narrowest.

    Minimises ``(1 + x) / x * (log(1 + x) - 2 log alpha)`` over ``x > 0``: setting the derivative
    to zero gives ``x = log(1 + x) - 2 log alpha``, solved by ``x = -W_{-1}(-alpha^2 / e) - 1``.

    >>> round(optimal_rate(0.05), 2)
    8.21
    """
    _check_alpha(alpha)
    return float(-lambertw(-(alpha**2) / math.e, k=-1).real - 1.0)


@dataclass(frozen=True)
class ArmStats:
    """What the test needs from one arm: count, mean and unbiased sample variance (ddof=1)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float] | npt.ArrayLike, *, label: str = "values") -> ArmStats:
        """Summarise ``values``; refuses NaN and infinite values, naming ``label`` and the index.

        Fewer than two values give variance 0.0 (and an empty arm mean 0.0): callers must not
        test an arm that small; :func:`mixture_test` refuses it.
        """
        array = finite_array(values, label=label)
        n = int(array.size)
        mean = float(array.mean()) if n else 0.0
        variance = float(array.var(ddof=1)) if n > 1 else 0.0
        return cls(n=n, mean=mean, variance=variance)


def finite_array(values: Sequence[float] | npt.ArrayLike, *, label: str = "values") -> FloatArray:
    """``values`` as a 1-d float array; an :class:`ExperimentError` names the first bad value."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ExperimentError(f"{label}: expected numbers, got {type(values).__name__}") from exc
    if array.ndim != 1:
        raise ExperimentError(f"{label}: expected a flat sequence, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        first = int(bad[0])
        raise ExperimentError(
            f"{label}: expected finite numbers, got {float(array[first])} at index {first} "
            f"({bad.size} non-finite of {array.size})"
        )
    return array


@dataclass(frozen=True)
class DifferenceTest:
    """The anytime-valid comparison of two arms at one look.

    ``difference`` is ``treatment.mean - control.mean``; ``[lower, upper]`` its confidence
    sequence at level ``1 - alpha``; ``p_value`` the anytime-valid p-value for
    ``difference == null``; ``log_evidence`` is ``log Lambda`` (an e-value's log) for that null.
    """

    control: ArmStats
    treatment: ArmStats
    difference: float
    standard_error: float
    lower: float
    upper: float
    p_value: float
    log_evidence: float
    alpha: float
    null: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "n_control": self.control.n,
            "n_treatment": self.treatment.n,
            "mean_control": self.control.mean,
            "mean_treatment": self.treatment.mean,
            "difference": self.difference,
            "standard_error": self.standard_error,
            "lower": self.lower,
            "upper": self.upper,
            "p_value": self.p_value,
            "log_evidence": self.log_evidence,
            "alpha": self.alpha,
            "null": self.null,
        }


def mixture_bounds(
    n_control: npt.ArrayLike,
    mean_control: npt.ArrayLike,
    var_control: npt.ArrayLike,
    n_treatment: npt.ArrayLike,
    mean_treatment: npt.ArrayLike,
    var_treatment: npt.ArrayLike,
    *,
    alpha: float,
    tuning_samples: float,
    null: float = 0.0,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vectorised core: ``(lower, upper, log_evidence)`` for arrays of per-look arm statistics.

    Broadcasts its array arguments, so one call evaluates every look of many simulated runs.
    A look where both variances are zero has a point confidence sequence at the difference and
    evidence 0 (no difference) or infinity (any difference): the data show no noise at all.
    """
    _check_alpha(alpha)
    if not tuning_samples > 0:
        raise ExperimentError(f"tuning_samples: expected > 0, got {tuning_samples}")
    nc, nt = np.asarray(n_control, np.float64), np.asarray(n_treatment, np.float64)
    if np.any(nc < 2) or np.any(nt < 2):
        raise ExperimentError(
            f"expected at least 2 observations per arm, got {int(nc.min())} (control) and "
            f"{int(nt.min())} (treatment)"
        )
    vc, vt = np.asarray(var_control, np.float64), np.asarray(var_treatment, np.float64)
    diff = np.asarray(mean_treatment, np.float64) - np.asarray(mean_control, np.float64)
    v = vc / nc + vt / nt
    noisy = v > 0
    safe_v = np.where(noisy, v, 1.0)
    # Effective per-arm size: (s_C^2 + s_T^2) / v; equals n for equal arms of any variances.
    n_eff = (vc + vt) / safe_v
    r = np.where(noisy, optimal_rate(alpha) * n_eff / tuning_samples, 1.0)
    radius = np.sqrt(safe_v * (1.0 + r) / r * (np.log1p(r) + 2.0 * math.log(1.0 / alpha)))
    z2 = (diff - null) ** 2 / safe_v
    log_evidence = -0.5 * np.log1p(r) + r * z2 / (2.0 * (1.0 + r))
    flat_evidence = np.where(diff == null, 0.0, np.inf)
    return (
        np.where(noisy, diff - radius, diff),
        np.where(noisy, diff + radius, diff),
        np.where(noisy, log_evidence, flat_evidence),
    )


def mixture_test(
    control: ArmStats,
    treatment: ArmStats,
    *,
    alpha: float = 0.05,
    tuning_samples: int = 500,
    null: float = 0.0,
) -> DifferenceTest:
    """Compare two arms at the current look; valid however often it is called as data arrive.

    ``tuning_samples`` is the per-arm size at which the confidence sequence is narrowest; it
    changes power, never validity.

    >>> c = ArmStats(n=400, mean=0.70, variance=0.04)
    >>> t = ArmStats(n=400, mean=0.75, variance=0.04)
    >>> result = mixture_test(c, t, alpha=0.05, tuning_samples=400)
    >>> result.lower > 0, result.p_value < 0.05
    (True, True)
    """
    lower, upper, log_evidence = mixture_bounds(
        control.n,
        control.mean,
        control.variance,
        treatment.n,
        treatment.mean,
        treatment.variance,
        alpha=alpha,
        tuning_samples=tuning_samples,
        null=null,
    )
    evidence = float(log_evidence)
    return DifferenceTest(
        control=control,
        treatment=treatment,
        difference=treatment.mean - control.mean,
        standard_error=math.sqrt(control.variance / control.n + treatment.variance / treatment.n),
        lower=float(lower),
        upper=float(upper),
        p_value=min(1.0, math.exp(-evidence)),
        log_evidence=evidence,
        alpha=alpha,
        null=null,
    )


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha: expected a level in (0, 1), got {alpha}")
