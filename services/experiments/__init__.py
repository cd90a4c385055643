"""Prompt A/B experiments: anytime-valid sequential statistics and the promote/stop decision.

Traffic is split between prompt variants; per variant we observe per-request numbers (judge
scores, feedback, cost, latency). :func:`analyze` turns them into a decision that stays valid
however often it is asked for; :func:`mixture_test` is the two-sample test underneath.

>>> spec = ExperimentSpec(control="v3", metrics=(MetricSpec("judge_score", better="higher"),))
>>> analyze(spec, {"v3": {"judge_score": [0.7] * 10}, "v4": {"judge_score": [0.8] * 10}}).decision
'continue'
"""

from undertow.services.experiments.analysis import (
    ExperimentSpec,
    MetricResult,
    MetricSpec,
    Report,
    analyze,
)
from undertow.services.experiments.sequential import (
    ArmStats,
    DifferenceTest,
    ExperimentError,
    mixture_bounds,
    mixture_test,
    optimal_rate,
)

__all__ = [
    "ArmStats",
    "DifferenceTest",
    "ExperimentError",
    "ExperimentSpec",
    "MetricResult",
    "MetricSpec",
    "Report",
    "analyze",
    "mixture_bounds",
    "mixture_test",
    "optimal_rate",
]
