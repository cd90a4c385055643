"""Prompt A/B decisions under continuous monitoring: error rates, power and samples to a decision.

.venv/bin/python bench/ab_simulation.py [--runs 500] [--horizon 2000] [--batch 20]
    [--alpha 0.05] [--min-samples 100] [--tuning-samples 500] [--seed 1]

Each run simulates one experiment, control "v3" against treatment "v4", and calls
``undertow.services.experiments.analyze`` after every ``batch`` observations per arm (from
``min_samples``) up to ``horizon`` per arm, stopping at the first report that is not
"continue": an analyst who looks after every batch and acts at once. Data, all seeded:

* judge_score: Beta with mean 0.70 (control) and standard deviation 0.2, skewed to the left;
* cost_usd: log-normal, mean $0.0020 per request, coefficient of variation 0.5;
* feedback: Bernoulli (thumbs up = 1), 0.60 for control.

Scenarios: A/A (judge primary, cost guardrail), judge +0.05 (0.70 -> 0.75), judge -0.05, feedback
+10 points (0.60 -> 0.70), and judge +0.05 with cost +20% under a cost guardrail that tolerates
nothing (blocks only when shown worse) or tolerates +$0.0002 (10%, must be shown within it).

Printed per scenario: the share of runs ending in promote / stop / continue (no decision by
the horizon), the share of wrong decisions with a 99% Clopper-Pearson upper bound against
alpha, and the median and 90th percentile of samples per arm at the decision (decided runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import numpy.typing as npt
from scipy import stats

from undertow.services.experiments import ExperimentSpec, MetricSpec, analyze

Arrays = dict[str, dict[str, npt.NDArray[np.float64]]]
JUDGE = MetricSpec("judge_score", better="higher")
FEEDBACK = MetricSpec("feedback", better="higher")
COST = MetricSpec("cost_usd", better="lower", role="guardrail")
COST_10 = MetricSpec("cost_usd", better="lower", role="guardrail", min_effect=0.0002)


def judge(rng: np.random.Generator, mean: float, n: int) -> npt.NDArray[np.float64]:
    """Judge scores in (0, 1): Beta with this mean and standard deviation 0.2."""
    k = mean * (1 - mean) / 0.04 - 1
    return rng.beta(mean * k, (1 - mean) * k, n)


def cost(rng: np.random.Generator, mean: float, n: int) -> npt.NDArray[np.float64]:
    """Cost per request: log-normal with this mean and coefficient of variation 0.5."""
    s2 = np.log1p(0.25)
    return rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), n)


def thumbs(rng: np.random.Generator, rate: float, n: int) -> npt.NDArray[np.float64]:
    return (rng.random(n) < rate).astype(np.float64)


def judged(judge_t: float, cost_t: float) -> Callable[[np.random.Generator, int], Arrays]:
    def make(rng: np.random.Generator, n: int) -> Arrays:
        return {
            "v3": {"judge_score": judge(rng, 0.70, n), "cost_usd": cost(rng, 0.002, n)},
            "v4": {"judge_score": judge(rng, judge_t, n), "cost_usd": cost(rng, cost_t, n)},
        }

    return make


def rated(rate_t: float) -> Callable[[np.random.Generator, int], Arrays]:
    def make(rng: np.random.Generator, n: int) -> Arrays:
        return {"v3": {"feedback": thumbs(rng, 0.6, n)}, "v4": {"feedback": thumbs(rng, rate_t, n)}}

    return make


@dataclass(frozen=True)
class Scenario:
    name: str
    metrics: tuple[MetricSpec, ...]
    make: Callable[[np.random.Generator, int], Arrays]
    right: str  # the correct outcome: "promote", "stop", or "none" (A/A: any decision is wrong)
    bounded: bool = True  # whether alpha bounds the wrong decisions here


SCENARIOS = (
    Scenario("A/A judge + cost guardrail", (JUDGE, COST), judged(0.70, 0.002), "none"),
    Scenario("A/A feedback", (FEEDBACK,), rated(0.6), "none"),
    Scenario("judge +0.05", (JUDGE, COST), judged(0.75, 0.002), "promote"),
    Scenario("judge -0.05", (JUDGE, COST), judged(0.65, 0.002), "stop"),
    Scenario("feedback +10 points", (FEEDBACK,), rated(0.7), "promote"),
    Scenario("judge +0.05, cost +20%, tol 0", (JUDGE, COST), judged(0.75, 0.0024), "stop", False),
    Scenario("judge +0.05, cost +20%, tol 10%", (JUDGE, COST_10), judged(0.75, 0.0024), "stop"),
    Scenario("judge +0.05, cost same, tol 10%", (JUDGE, COST_10), judged(0.75, 0.002), "promote"),
)


def simulate(
    scenario: Scenario, spec: ExperimentSpec, args: argparse.Namespace, seed: int
) -> tuple[list[str], list[int], int, float]:
    """Per run: its outcome and the samples per arm at it; the number of reports and seconds."""
    outcomes, sizes, reports, spent = [], [], 0, 0.0
    for run in range(args.runs):
        data = scenario.make(np.random.default_rng([seed, run]), args.horizon)
        outcome, size = "continue", args.horizon
        for n in range(spec.min_samples, args.horizon + 1, args.batch):
            looked = {v: {m: x[:n] for m, x in d.items()} for v, d in data.items()}
            began = time.perf_counter()
            report = analyze(spec, looked)
            spent += time.perf_counter() - began
            reports += 1
            if report.decision != "continue":
                outcome, size = report.decision, n
                break
        outcomes.append(outcome)
        sizes.append(size)
    return outcomes, sizes, reports, spent


def upper99(wrong: int, runs: int) -> float:
    """One-sided 99% Clopper-Pearson upper bound on a rate seen ``wrong`` times in ``runs``."""
    return 1.0 if wrong == runs else float(stats.beta.ppf(0.99, wrong + 1, runs - wrong))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--horizon", type=int, default=2000, help="max samples per arm")
    parser.add_argument("--batch", type=int, default=20, help="samples per arm between looks")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--min-samples", type=int, default=100)
    parser.add_argument("--tuning-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {version('scipy')}"
    )
    print("command: " + " ".join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{args.runs} runs per scenario; a look every {args.batch} per arm from "
        f"{args.min_samples} to {args.horizon}; alpha {args.alpha} (Bonferroni over metrics); "
        f"tuning_samples {args.tuning_samples}; no max_samples (runs end at the horizon)"
    )
    header = (
        f"{'scenario':34} {'promote':>8} {'stop':>6} {'contin.':>8} {'wrong':>7} "
        f"{'99% up':>7} {'n p50':>6} {'n p90':>6}"
    )
    print(header)
    print("-" * len(header))
    reports, spent = 0, 0.0
    for index, scenario in enumerate(SCENARIOS):
        spec = ExperimentSpec(
            control="v3",
            metrics=scenario.metrics,
            alpha=args.alpha,
            min_samples=args.min_samples,
            tuning_samples=args.tuning_samples,
        )
        outcomes, sizes, count, seconds = simulate(scenario, spec, args, args.seed * 100 + index)
        reports, spent = reports + count, spent + seconds
        share = {d: outcomes.count(d) / args.runs for d in ("promote", "stop", "continue")}
        if scenario.right == "none":
            wrong = sum(d != "continue" for d in outcomes)
        else:
            wrong = sum(d not in (scenario.right, "continue") for d in outcomes)
        decided = sorted(s for s, d in zip(sizes, outcomes, strict=True) if d != "continue")
        p50 = f"{np.percentile(decided, 50):.0f}" if decided else "-"
        p90 = f"{np.percentile(decided, 90):.0f}" if decided else "-"
        name = scenario.name + ("" if scenario.bounded else " *")
        print(
            f"{name:34} {share['promote']:8.1%} {share['stop']:6.1%} "
            f"{share['continue']:8.1%} {wrong / args.runs:7.1%} "
            f"{upper99(wrong, args.runs):7.1%} {p50:>6} {p90:>6}"
        )
    print(
        "wrong: A/A, any decision; otherwise, a decision other than the right one; alpha "
        "bounds it except where marked *: a guardrail that tolerates nothing blocks a promote "
        "only once its harm is shown, so a promote can come first"
    )
    print(
        f"analyze(): {reports:,} reports, "
        f"{1e6 * spent / reports:.0f} us per report on up to {args.horizon} values per arm"
    )


if __name__ == "__main__":
    main()
