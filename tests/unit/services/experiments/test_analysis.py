"""The decision layer: error rates under continuous monitoring, power, guardrails, edge cases."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from undertow.services.experiments import (
    ArmStats,
    ExperimentError,
    ExperimentSpec,
    MetricSpec,
    analyze,
    mixture_test,
)

Arrays = dict[str, dict[str, npt.NDArray[np.float64]]]
JUDGE = MetricSpec("judge_score", better="higher")
COST = MetricSpec("cost_usd", better="lower", role="guardrail")
FEEDBACK = MetricSpec("feedback", better="higher")


def judge(
    rng: np.random.Generator, mean: float, n: int, sd: float = 0.2
) -> npt.NDArray[np.float64]:
    """Judge scores in (0, 1): a Beta with the given mean and standard deviation (skewed)."""
    k = mean * (1 - mean) / sd**2 - 1
    return rng.beta(mean * k, (1 - mean) * k, n)


def cost(rng: np.random.Generator, mean: float, n: int, cv: float = 0.5) -> npt.NDArray[np.float64]:
    """Cost per request: log-normal with the given mean and coefficient of variation."""
    s2 = np.log1p(cv**2)
    return rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), n)


def monitor(
    spec: ExperimentSpec,
    make: Callable[[np.random.Generator, int], Arrays],
    runs: int,
    seed: int,
    horizon: int = 2000,
    batch: int = 20,
) -> Counter[str]:
    """Decisions of ``runs`` experiments, each analysed after every ``batch`` per arm up to
    ``horizon``, stopping at the first decision that is not "continue"."""
    outcomes: Counter[str] = Counter()
    for run in range(runs):
        data = make(np.random.default_rng([seed, run]), horizon)
        outcome = "continue"
        for n in range(spec.min_samples, horizon + 1, batch):
            report = analyze(spec, {v: {m: x[:n] for m, x in d.items()} for v, d in data.items()})
            if report.decision != "continue":
                outcome = f"{report.decision}:{report.winner}" if report.winner else "stop"
                break
        outcomes[outcome] += 1
    return outcomes


def binomial_upper(runs: int, alpha: float) -> float:
    """The 99% one-sided upper bound on the fraction of ``runs`` erring when the rate is alpha."""
    return float(stats.binom.ppf(0.99, runs, alpha)) / runs


def test_a_a_ever_decides_at_most_alpha() -> None:
    """Equal variants, a look after every 20 per arm up to 2,000: decisions are errors."""
    spec = ExperimentSpec(control="v3", metrics=(JUDGE, COST), alpha=0.05)

    def same(rng: np.random.Generator, n: int) -> Arrays:
        return {
            v: {"judge_score": judge(rng, 0.7, n), "cost_usd": cost(rng, 0.002, n)}
            for v in ("v3", "v4")
        }

    runs = 300
    outcomes = monitor(spec, same, runs, seed=1)
    decided = runs - outcomes["continue"]
    assert decided / runs <= binomial_upper(runs, spec.alpha), outcomes


def test_better_judge_scores_are_promoted() -> None:
    spec = ExperimentSpec(control="v3", metrics=(JUDGE, COST))

    def better(rng: np.random.Generator, n: int) -> Arrays:
        return {
            "v3": {"judge_score": judge(rng, 0.70, n), "cost_usd": cost(rng, 0.002, n)},
            "v4": {"judge_score": judge(rng, 0.75, n), "cost_usd": cost(rng, 0.002, n)},
        }

    outcomes = monitor(spec, better, 100, seed=2)
    assert outcomes["promote:v4"] >= 95, outcomes


def test_worse_judge_scores_stop_the_experiment() -> None:
    spec = ExperimentSpec(control="v3", metrics=(JUDGE, COST))

    def worse(rng: np.random.Generator, n: int) -> Arrays:
        return {
            "v3": {"judge_score": judge(rng, 0.70, n), "cost_usd": cost(rng, 0.002, n)},
            "v4": {"judge_score": judge(rng, 0.65, n), "cost_usd": cost(rng, 0.002, n)},
        }

    outcomes = monitor(spec, worse, 100, seed=3)
    assert outcomes["stop"] >= 95, outcomes
    assert outcomes["promote:v4"] == 0, outcomes


def test_better_feedback_rate_is_promoted() -> None:
    spec = ExperimentSpec(control="v3", metrics=(FEEDBACK,))

    def thumbs(rng: np.random.Generator, n: int) -> Arrays:
        return {
            "v3": {"feedback": (rng.random(n) < 0.6).astype(np.float64)},
            "v4": {"feedback": (rng.random(n) < 0.7).astype(np.float64)},
        }

    outcomes = monitor(spec, thumbs, 100, seed=4)
    assert outcomes["promote:v4"] >= 95, outcomes


def test_cost_guardrail_blocks_a_better_but_dearer_prompt() -> None:
    """Judge +0.05 but cost +20% with 10% tolerated: no promote, the experiment stops."""
    tolerated = MetricSpec("cost_usd", better="lower", role="guardrail", min_effect=0.0002)
    spec = ExperimentSpec(control="v3", metrics=(JUDGE, tolerated))

    def dearer(rng: np.random.Generator, n: int) -> Arrays:
        return {
            "v3": {"judge_score": judge(rng, 0.70, n), "cost_usd": cost(rng, 0.0020, n)},
            "v4": {"judge_score": judge(rng, 0.75, n), "cost_usd": cost(rng, 0.0024, n)},
        }

    runs = 100
    outcomes = monitor(spec, dearer, runs, seed=5)
    assert outcomes["promote:v4"] / runs <= binomial_upper(runs, spec.alpha), outcomes
    assert outcomes["stop"] >= 90, outcomes

    # The same guardrail, cost unchanged: the tolerance is shown and v4 is promoted.
    def cheap(rng: np.random.Generator, n: int) -> Arrays:
        return {
            "v3": {"judge_score": judge(rng, 0.70, n), "cost_usd": cost(rng, 0.002, n)},
            "v4": {"judge_score": judge(rng, 0.75, n), "cost_usd": cost(rng, 0.002, n)},
        }

    assert monitor(spec, cheap, runs, seed=6)["promote:v4"] >= 95


def test_metric_results_are_the_sequential_test_at_the_bonferroni_level() -> None:
    rng = np.random.default_rng(8)
    data = {
        v: {"judge_score": judge(rng, 0.7, 300), "cost_usd": cost(rng, 0.002, 250)}
        for v in ("v3", "v4", "v5")
    }
    spec = ExperimentSpec(control="v3", metrics=(JUDGE, COST), alpha=0.1, tuning_samples=300)
    report = analyze(spec, data)
    assert [(r.treatment, r.metric) for r in report.metrics] == [
        ("v4", "judge_score"),
        ("v4", "cost_usd"),
        ("v5", "judge_score"),
        ("v5", "cost_usd"),
    ]
    for r in report.metrics:
        assert r.alpha == pytest.approx(0.1 / 4)
        direct = mixture_test(
            ArmStats.of(data["v3"][r.metric]),
            ArmStats.of(data[r.treatment][r.metric]),
            alpha=0.1 / 4,
            tuning_samples=300,
        )
        assert (r.lower, r.upper, r.p_value) == (direct.lower, direct.upper, direct.p_value)
        assert (r.n_control, r.n_treatment) == (direct.control.n, direct.treatment.n)


def test_the_best_of_two_better_treatments_wins() -> None:
    rng = np.random.default_rng(9)
    data = {
        "v3": {"judge_score": judge(rng, 0.60, 1500)},
        "v4": {"judge_score": judge(rng, 0.66, 1500)},
        "v5": {"judge_score": judge(rng, 0.75, 1500)},
    }
    report = analyze(ExperimentSpec(control="v3", metrics=(JUDGE,)), data)
    assert (report.decision, report.winner) == ("promote", "v5")
    assert [r.verdict for r in report.metrics] == ["better", "better"]
    assert "'v5'" in report.reason and "judge_score" in report.reason


def test_one_worse_treatment_does_not_stop_the_others() -> None:
    rng = np.random.default_rng(10)
    data = {
        "v3": {"judge_score": judge(rng, 0.70, 400)},
        "v4": {"judge_score": judge(rng, 0.55, 400)},
        "v5": {"judge_score": judge(rng, 0.70, 400)},
    }
    report = analyze(ExperimentSpec(control="v3", metrics=(JUDGE,)), data)
    assert report.decision == "continue"
    assert [r.verdict for r in report.metrics] == ["worse", "inconclusive"]
    data["v5"] = {"judge_score": judge(rng, 0.55, 400)}
    assert analyze(ExperimentSpec(control="v3", metrics=(JUDGE,)), data).decision == "stop"


def test_lower_is_better_metrics_are_oriented() -> None:
    rng = np.random.default_rng(11)
    latency = MetricSpec("latency_ms", better="lower")
    data = {
        "v3": {"latency_ms": rng.gamma(4.0, 300.0, 600)},
        "v4": {"latency_ms": rng.gamma(4.0, 240.0, 600)},
    }
    report = analyze(ExperimentSpec(control="v3", metrics=(latency,)), data)
    assert (report.decision, report.winner) == ("promote", "v4")
    (result,) = report.metrics
    assert result.upper is not None and result.upper < 0


def test_max_samples_without_a_decision_stops_with_no_winner() -> None:
    rng = np.random.default_rng(12)
    data = {v: {"judge_score": judge(rng, 0.7, 300)} for v in ("v3", "v4")}
    spec = ExperimentSpec(control="v3", metrics=(JUDGE,), max_samples=300)
    report = analyze(spec, data)
    assert (report.decision, report.winner) == ("stop", None)
    assert "300" in report.reason
    fewer = {v: {"judge_score": x["judge_score"][:299]} for v, x in data.items()}
    assert analyze(spec, fewer).decision == "continue"


def test_fewer_than_min_samples_never_decides() -> None:
    data = {"v3": {"judge_score": [0.1, 0.2] * 49}, "v4": {"judge_score": [0.9, 1.0] * 49}}
    report = analyze(ExperimentSpec(control="v3", metrics=(JUDGE,)), data)
    assert report.decision == "continue"
    assert report.metrics[0].verdict == "too_few"
    assert report.metrics[0].difference == pytest.approx(0.8)
    assert "98" in report.reason


def test_an_empty_arm_continues_with_no_statistics() -> None:
    data: dict[str, dict[str, list[float]]] = {"v3": {"judge_score": [0.5] * 200}, "v4": {}}
    report = analyze(ExperimentSpec(control="v3", metrics=(JUDGE,)), data)
    assert report.decision == "continue"
    (result,) = report.metrics
    assert (result.n_treatment, result.mean_treatment, result.p_value) == (0, None, None)
    assert result.verdict == "too_few"
    json.dumps(report.to_dict())


def test_zero_variance_arms() -> None:
    spec = ExperimentSpec(control="v3", metrics=(JUDGE,))
    same = analyze(spec, {"v3": {"judge_score": [1.0] * 150}, "v4": {"judge_score": [1.0] * 120}})
    assert same.decision == "continue"
    assert same.metrics[0].p_value == 1.0
    apart = analyze(spec, {"v3": {"judge_score": [0.5] * 150}, "v4": {"judge_score": [1.0] * 120}})
    assert (apart.decision, apart.winner) == ("promote", "v4")


def test_a_guardrail_without_enough_data_blocks_a_promote() -> None:
    rng = np.random.default_rng(13)
    data = {
        "v3": {"judge_score": judge(rng, 0.60, 800), "cost_usd": cost(rng, 0.002, 50)},
        "v4": {"judge_score": judge(rng, 0.75, 800), "cost_usd": cost(rng, 0.002, 50)},
    }
    report = analyze(ExperimentSpec(control="v3", metrics=(JUDGE, COST)), data)
    assert report.decision == "continue"
    assert "guardrail cost_usd" in report.reason


def test_report_to_dict_is_json() -> None:
    rng = np.random.default_rng(14)
    data = {v: {"judge_score": judge(rng, 0.7, 200).tolist()} for v in ("v3", "v4")}
    payload = json.loads(json.dumps(analyze(ExperimentSpec("v3", (JUDGE,)), data).to_dict()))
    assert payload["decision"] == "continue"
    assert payload["metrics"][0]["n_control"] == 200
    assert set(payload["metrics"][0]) >= {"lower", "upper", "p_value", "verdict", "difference"}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"v3": {"judge_score": [0.5, float("nan")]}, "v4": {}}, "'v3'/'judge_score'.*index 1"),
        ({"v4": {"judge_score": [0.5]}}, "expected the control variant 'v3'"),
        ({"v3": {"judge_score": [0.5]}}, "at least one treatment"),
    ],
)
def test_bad_observations_are_refused(data: dict[str, dict[str, list[float]]], needle: str) -> None:
    with pytest.raises(ExperimentError, match=needle):
        analyze(ExperimentSpec(control="v3", metrics=(JUDGE,)), data)


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: ExperimentSpec("v3", (COST,)), "at least one primary"),
        (lambda: ExperimentSpec("v3", (JUDGE, JUDGE)), "unique names"),
        (lambda: ExperimentSpec("v3", (JUDGE,), alpha=0.0), "alpha"),
        (lambda: ExperimentSpec("v3", (JUDGE,), min_samples=1), "min_samples"),
        (lambda: ExperimentSpec("v3", (JUDGE,), max_samples=50), "max_samples"),
        (lambda: MetricSpec("judge_score", better="up"), "'higher' or 'lower'"),
        (lambda: MetricSpec("judge_score", better="higher", min_effect=-1), "min_effect"),
    ],
)
def test_bad_specs_are_refused(build: Callable[[], object], needle: str) -> None:
    with pytest.raises(ExperimentError, match=needle):
        build()
