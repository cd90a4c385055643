"""The decision layer of a prompt A/B test: promote a treatment, stop, or keep collecting.

Why: analysts run ``undertow ab report`` whenever they like; every report must be safe to act
on. Each (treatment, metric) pair gets the anytime-valid confidence sequence of
:mod:`undertow.services.experiments.sequential`, and the decision reads only those.

Decisions, for one report (``K`` treatments, ``M`` metrics, each sequence at level
``1 - alpha / (K * M)``, Bonferroni). "Lies above/below" is in the metric's better direction:

* a treatment is *dropped* when any metric is ``"worse"``: a primary whose confidence sequence
  lies below zero, or a guardrail whose sequence lies below ``-min_effect``;
* a treatment *qualifies* when it is not dropped, every primary metric is ``"better"`` (its
  sequence lies above ``min_effect``), and every guardrail with ``min_effect > 0`` is shown
  ``"non_inferior"`` (its sequence lies above ``-min_effect``: the degradation is shown to be
  smaller than the tolerance). A guardrail with ``min_effect == 0`` blocks only when shown
  worse, which is a race: in ``bench/ab_simulation.py`` (judge +0.05, cost +20%) a cost
  guardrail with tolerance 0 let 84 of 500 runs promote before the harm was shown; with a 10%
  tolerance none of 500 did. A metric that must not degrade but need not improve is a guardrail.
* ``"promote"`` when a treatment qualifies (the one with the highest lower bound on the first
  primary metric, when several do); ``"stop"`` (keep control) when every treatment is dropped,
  or when every arm holds ``max_samples`` observations of every primary metric; else
  ``"continue"``. No metric gives a verdict before both arms hold ``min_samples`` of it.

Error rates: by Bonferroni and the time-uniform coverage of each sequence, with probability at
least ``1 - alpha`` every sequence in every report, at every look, covers its true difference.
On that event (1) no treatment is promoted unless each primary metric truly improves by more
than its ``min_effect`` and each guardrail with a tolerance truly degrades by less than it;
(2) no treatment is dropped unless a primary truly got worse or a guardrail truly degraded by
more than its ``min_effect``. So, however often reports are taken, P(ever a wrong promote or a
wrong stop) <= alpha; on an A/A test, P(ever promote or stop before max_samples) <= alpha. The
guarantee is exact for Gaussian data with known variances and asymptotic with the plug-in
variances used here. The report is stateless: act on the first one that is not
``"continue"`` (a later report may say ``"continue"`` again; the guarantee counted that look).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from undertow.services.experiments.sequential import (
    ArmStats,
    ExperimentError,
    mixture_test,
)

__all__ = [
    "Decision",
    "Direction",
    "ExperimentError",
    "ExperimentSpec",
    "MetricResult",
    "MetricSpec",
    "Report",
    "Role",
    "Verdict",
    "analyze",
]

Direction = Literal["higher", "lower"]
Role = Literal["primary", "guardrail"]
Decision = Literal["promote", "stop", "continue"]
Verdict = Literal["better", "worse", "non_inferior", "inconclusive", "too_few"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the experiment.

    ``min_effect`` (in the metric's units, >= 0): for a primary metric, the improvement a
    treatment must be shown to exceed; for a guardrail, the degradation tolerated: when > 0 a
    promote needs the degradation shown smaller than it, when 0 only a shown harm blocks.
    """

    name: str
    better: Direction
    role: Role = "primary"
    min_effect: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ExperimentError("metric name: expected a non-empty string, got ''")
        if self.better not in ("higher", "lower"):
            raise ExperimentError(
                f"metric {self.name!r}: better expected 'higher' or 'lower', got {self.better!r}"
            )
        if self.role not in ("primary", "guardrail"):
            raise ExperimentError(
                f"metric {self.name!r}: role expected 'primary' or 'guardrail', got {self.role!r}"
            )
        if not 0.0 <= self.min_effect < float("inf"):
            raise ExperimentError(
                f"metric {self.name!r}: min_effect expected a finite value >= 0, "
                f"got {self.min_effect}"
            )


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment: the control variant, the metrics, the error level and sample limits.

    ``min_samples`` and ``max_samples`` count observations per arm and metric.
    ``tuning_samples`` is the per-arm size at which the confidence sequences are narrowest
    (roughly where decisions are expected); it changes power, never the error bound.
    """

    control: str
    metrics: tuple[MetricSpec, ...]
    alpha: float = 0.05
    min_samples: int = 100
    max_samples: int | None = None
    tuning_samples: int = 500

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if not any(m.role == "primary" for m in self.metrics):
            raise ExperimentError(f"metrics: expected at least one primary metric, got {names}")
        if len(set(names)) != len(names):
            raise ExperimentError(f"metrics: expected unique names, got {names}")
        if not 0.0 < self.alpha < 1.0:
            raise ExperimentError(f"alpha: expected a level in (0, 1), got {self.alpha}")
        if self.min_samples < 2:
            raise ExperimentError(f"min_samples: expected >= 2, got {self.min_samples}")
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ExperimentError(
                f"max_samples: expected None or >= min_samples ({self.min_samples}), "
                f"got {self.max_samples}"
            )
        if self.tuning_samples < 1:
            raise ExperimentError(f"tuning_samples: expected >= 1, got {self.tuning_samples}")

    @property
    def primaries(self) -> tuple[MetricSpec, ...]:
        """The primary metrics, in the order given."""
        return tuple(m for m in self.metrics if m.role == "primary")


@dataclass(frozen=True)
class MetricResult:
    """One metric for one treatment against control at this look.

    ``difference`` is ``mean_treatment - mean_control`` in the metric's units, ``[lower,
    upper]`` its confidence sequence at level ``1 - alpha`` (``alpha`` already divided for
    multiplicity), ``p_value`` the anytime-valid p-value for "no difference". Statistics are
    ``None`` while an arm holds fewer than two observations.
    """

    metric: str
    role: Role
    better: Direction
    min_effect: float
    treatment: str
    n_control: int
    n_treatment: int
    mean_control: float | None
    mean_treatment: float | None
    difference: float | None
    lower: float | None
    upper: float | None
    p_value: float | None
    alpha: float
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class Report:
    """The decision at this look, one sentence saying why, and every metric's numbers."""

    decision: Decision
    winner: str | None
    reason: str
    metrics: tuple[MetricResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "decision": self.decision,
            "winner": self.winner,
            "reason": self.reason,
            "metrics": [m.to_dict() for m in self.metrics],
        }


def analyze(
    spec: ExperimentSpec, observations: Mapping[str, Mapping[str, Sequence[float]]]
) -> Report:
    """Decide from ``observations[variant][metric]`` (values in arrival order) at this look.

    Variants other than ``spec.control`` are the treatments; a metric missing for a variant
    counts as no observations yet; metrics not in ``spec`` are ignored. Raises
    :class:`ExperimentError` for a missing control, no treatment, or non-finite values.
    """
    if spec.control not in observations:
        raise ExperimentError(
            f"observations: expected the control variant {spec.control!r}, "
            f"got variants {sorted(observations)}"
        )
    treatments = sorted(v for v in observations if v != spec.control)
    if not treatments:
        raise ExperimentError(
            f"observations: expected at least one treatment besides control {spec.control!r}, "
            "got none"
        )
    alpha = spec.alpha / (len(treatments) * len(spec.metrics))
    stats = {
        variant: {
            m.name: ArmStats.of(
                observations[variant].get(m.name, ()), label=f"{variant!r}/{m.name!r}"
            )
            for m in spec.metrics
        }
        for variant in [spec.control, *treatments]
    }
    results = tuple(
        _compare(
            spec,
            metric,
            treatment,
            stats[spec.control][metric.name],
            stats[treatment][metric.name],
            alpha,
        )
        for treatment in treatments
        for metric in spec.metrics
    )
    return _decide(spec, treatments, results, stats)


def _compare(
    spec: ExperimentSpec,
    metric: MetricSpec,
    treatment: str,
    control: ArmStats,
    arm: ArmStats,
    alpha: float,
) -> MetricResult:
    base: dict[str, Any] = {
        "metric": metric.name,
        "role": metric.role,
        "better": metric.better,
        "min_effect": metric.min_effect,
        "treatment": treatment,
        "n_control": control.n,
        "n_treatment": arm.n,
        "alpha": alpha,
    }
    if control.n < 2 or arm.n < 2:
        return MetricResult(
            **base,
            mean_control=control.mean if control.n else None,
            mean_treatment=arm.mean if arm.n else None,
            difference=None,
            lower=None,
            upper=None,
            p_value=None,
            verdict="too_few",
        )
    test = mixture_test(control, arm, alpha=alpha, tuning_samples=spec.tuning_samples)
    # Orient so that positive means "treatment is better".
    sign = 1.0 if metric.better == "higher" else -1.0
    low, high = sorted((sign * test.lower, sign * test.upper))
    # Primary: better above min_effect, worse below 0; guardrail: worse below -min_effect.
    above = metric.min_effect if metric.role == "primary" else 0.0
    below = 0.0 if metric.role == "primary" else -metric.min_effect
    verdict: Verdict
    if control.n < spec.min_samples or arm.n < spec.min_samples:
        verdict = "too_few"
    elif low > above:
        verdict = "better"
    elif high < below:
        verdict = "worse"
    elif metric.role == "guardrail" and metric.min_effect > 0 and low > below:
        verdict = "non_inferior"
    else:
        verdict = "inconclusive"
    return MetricResult(
        **base,
        mean_control=control.mean,
        mean_treatment=arm.mean,
        difference=test.difference,
        lower=test.lower,
        upper=test.upper,
        p_value=test.p_value,
        verdict=verdict,
    )


def _decide(
    spec: ExperimentSpec,
    treatments: list[str],
    results: tuple[MetricResult, ...],
    stats: Mapping[str, Mapping[str, ArmStats]],
) -> Report:
    by_arm = {t: [r for r in results if r.treatment == t] for t in treatments}
    first = spec.primaries[0].name
    dropped = {t: next((r for r in rs if r.verdict == "worse"), None) for t, rs in by_arm.items()}
    qualified = [t for t, rs in by_arm.items() if dropped[t] is None and all(map(_clears, rs))]
    if qualified:
        lead = {
            t: _oriented_lower(next(r for r in by_arm[t] if r.metric == first)) for t in qualified
        }
        winner = max(qualified, key=lambda t: (lead[t], t))
        wins = "; ".join(_describe(r) for r in by_arm[winner] if r.role == "primary")
        guards = "; ".join(
            f"{r.verdict} on {_describe(r)}" for r in by_arm[winner] if r.role == "guardrail"
        )
        return Report(
            decision="promote",
            winner=winner,
            reason=f"promote {winner!r}: better than {spec.control!r} on {wins}"
            + (f"; guardrails: {guards}." if guards else "."),
            metrics=results,
        )
    if all(dropped[t] is not None for t in treatments):
        why = "; ".join(f"{t!r} worse on {_describe(r)}" for t, r in dropped.items() if r)
        return Report(
            decision="stop",
            winner=None,
            reason=f"stop and keep {spec.control!r}: {why}.",
            metrics=results,
        )
    fewest = min(stats[v][m.name].n for v in stats for m in spec.primaries)
    if spec.max_samples is not None and fewest >= spec.max_samples:
        best = _leader(by_arm, first, dropped)
        return Report(
            decision="stop",
            winner=None,
            reason=f"stop and keep {spec.control!r}: every arm holds at least "
            f"{spec.max_samples} observations of each primary metric and no treatment is "
            f"shown better (best {best}).",
            metrics=results,
        )
    if fewest < spec.min_samples:
        reason = (
            f"continue: an arm holds {fewest} observations of a primary metric, "
            f"fewer than the {spec.min_samples} needed before any decision."
        )
    elif blocked := [
        r
        for t, rs in by_arm.items()
        if all(_clears(r) for r in rs if r.role == "primary")
        for r in rs
        if not _clears(r)
    ]:
        reason = (
            f"continue: {blocked[0].treatment!r} is better on every primary metric but "
            f"guardrail {_describe(blocked[0])} is {blocked[0].verdict}, not yet within "
            f"tolerance {blocked[0].min_effect:g}."
        )
    else:
        best = _leader(by_arm, first, dropped)
        reason = f"continue: no treatment shown better or worse yet (best {best})."
    return Report(decision="continue", winner=None, reason=reason, metrics=results)


def _clears(result: MetricResult) -> bool:
    """Whether ``result`` allows a promote: primaries shown better, guardrails not blocking."""
    if result.role == "primary":
        return result.verdict == "better"
    if result.min_effect > 0:
        return result.verdict in ("better", "non_inferior")
    return result.verdict in ("better", "inconclusive")


def _oriented_lower(result: MetricResult) -> float:
    if result.lower is None or result.upper is None:
        return float("-inf")
    return result.lower if result.better == "higher" else -result.upper


def _leader(
    by_arm: Mapping[str, list[MetricResult]],
    metric: str,
    dropped: Mapping[str, MetricResult | None],
) -> str:
    """The not-dropped treatment with the highest lower bound on ``metric``, described."""
    live = [next(r for r in rs if r.metric == metric) for t, rs in by_arm.items() if not dropped[t]]
    if not live:
        return "none left"
    top = max(live, key=lambda r: (_oriented_lower(r), r.treatment))
    return f"{top.treatment!r} on {_describe(top)}"


def _describe(r: MetricResult) -> str:
    """``judge_score 0.751 vs 0.700 (+0.051, CS [+0.012, +0.090], p=0.004, n 412/409)``."""
    if r.difference is None or r.lower is None or r.upper is None or r.p_value is None:
        return f"{r.metric} (n {r.n_treatment}/{r.n_control}, too few to compare)"
    return (
        f"{r.metric} {r.mean_treatment:.4g} vs {r.mean_control:.4g} "
        f"({r.difference:+.4g}, {100 * (1 - r.alpha):.4g}% CS [{r.lower:+.4g}, {r.upper:+.4g}], "
        f"p={r.p_value:.3g}, n {r.n_treatment}/{r.n_control})"
    )
