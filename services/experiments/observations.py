"""An A/B test's observations from the warehouse, per variant and metric, and its report.

The gateway records the test and variant of every request in the events' attributes
(``ab.test``, ``ab.variant``). Per completion of the test this reads, in completion order:

* ``latency_ms`` (events) and ``cost_usd`` (scores);
* ``feedback``: people's latest rating of the completion's trace (feedback events);
* ``judge_<rubric>``: the LLM judge's rating of it (feedback events with source ``judge``).

The report is :func:`~undertow.services.experiments.analysis.analyze` over them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from undertow.services.experiments.analysis import (
    ExperimentError,
    ExperimentSpec,
    MetricSpec,
    Report,
    analyze,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from undertow.services.registry.state import Experiment

DEFAULT_PRIMARIES = ("judge_relevance", "feedback")
DEFAULT_GUARDRAILS = (("cost_usd", "lower"), ("latency_ms", "lower"))
GUARDRAIL_TOLERANCE = 0.1

COMPLETIONS_SQL = """
SELECT toString(event_id), trace_id, attributes['ab.variant'] AS variant, latency_ms
FROM events FINAL
WHERE event_type = 'completion' AND attributes['ab.test'] = {test:String}
  AND prompt_name = {prompt:String} AND ifNull(finish_reason, '') != 'error'
ORDER BY event_time, event_id
"""
COSTS_SQL = """
SELECT toString(event_id), cost_usd
FROM scores FINAL
WHERE event_type = 'completion' AND prompt_name = {prompt:String} AND cost_usd IS NOT NULL
  AND event_id IN (
      SELECT event_id FROM events FINAL
      WHERE event_type = 'completion' AND attributes['ab.test'] = {test:String})
"""
FEEDBACK_SQL = """
SELECT trace_id, ifNull(feedback_source, 'user') AS source, ifNull(feedback_label, '') AS label,
       argMax(feedback_score, event_time) AS score
FROM events FINAL
WHERE event_type = 'feedback' AND feedback_score IS NOT NULL
  AND trace_id IN (
      SELECT trace_id FROM events FINAL
      WHERE event_type = 'completion' AND attributes['ab.test'] = {test:String})
GROUP BY trace_id, source, label
"""


def parse_metrics(values: Sequence[str] | None) -> tuple[MetricSpec, ...] | None:
    """``NAME:higher|lower[:guardrail]`` options as metric specs (None: the defaults)."""
    if not values:
        return None
    specs = []
    for value in values:
        parts = value.split(":")
        if len(parts) not in (2, 3) or parts[1] not in ("higher", "lower"):
            raise ExperimentError(f"metric: expected NAME:higher|lower[:guardrail], got {value!r}")
        if len(parts) == 3 and parts[2] not in ("primary", "guardrail"):
            raise ExperimentError(f"metric {value!r}: the role is primary or guardrail")
        role = parts[2] if len(parts) == 3 else "primary"
        specs.append(MetricSpec(parts[0], parts[1], role))  # type: ignore[arg-type]
    return tuple(specs)


def observations(client: Client, experiment: Experiment) -> dict[str, dict[str, list[float]]]:
    """``{variant: {metric: values in completion order}}`` for the test's completions."""
    params = {"test": experiment.test, "prompt": experiment.prompt}
    completions = client.query(COMPLETIONS_SQL, parameters=params).result_rows
    costs: dict[str, float] = {
        str(k): float(v) for k, v in client.query(COSTS_SQL, parameters=params).result_rows
    }
    ratings: dict[str, dict[str, float]] = defaultdict(dict)
    for trace_id, source, label, score in client.query(FEEDBACK_SQL, parameters=params).result_rows:
        metric = f"judge_{label or 'score'}" if source == "judge" else "feedback"
        ratings[trace_id][metric] = float(score)
    out: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in experiment.variants}
    for event_id, trace_id, variant, latency in completions:
        if variant not in out:
            continue
        values = out[variant]
        if latency is not None:
            values["latency_ms"].append(float(latency))
        if costs.get(event_id) is not None:
            values["cost_usd"].append(float(costs[event_id]))
        for metric, score in ratings.get(trace_id, {}).items():
            values[metric].append(score)
    return {v: dict(m) for v, m in out.items()}


def default_metrics(
    data: dict[str, dict[str, list[float]]], control: str
) -> tuple[MetricSpec, ...]:
    """The primary metrics that have data (judge relevance, feedback; else any judge rubric),
    with cost and latency as guardrails that tolerate 10% of the control's mean: a guardrail
    that tolerates nothing blocks a promote only once harm is shown, which can come too late
    (bench/ab_simulation.py: 17% of runs with a 20% cost rise promoted)."""
    seen = {m for metrics in data.values() for m, values in metrics.items() if values}
    primaries = [m for m in DEFAULT_PRIMARIES if m in seen] or sorted(
        m for m in seen if m.startswith("judge_")
    )
    if not primaries:
        primaries = ["feedback"]  # nothing rated yet: the report says so and continues
    guardrails = []
    for name, better in DEFAULT_GUARDRAILS:
        values = data.get(control, {}).get(name) or []
        if name in seen and values:
            tolerance = GUARDRAIL_TOLERANCE * abs(sum(values) / len(values))
            guardrails.append(MetricSpec(name, better, "guardrail", tolerance))  # type: ignore[arg-type]
    return (*(MetricSpec(m, "higher") for m in primaries), *guardrails)


def report(
    client: Client,
    experiment: Experiment,
    metrics: tuple[MetricSpec, ...] | None,
    *,
    alpha: float = 0.05,
    min_samples: int = 100,
) -> Report:
    """The A/B test's decision now, from the warehouse."""
    data = observations(client, experiment)
    spec = ExperimentSpec(
        control=experiment.control,
        metrics=metrics or default_metrics(data, experiment.control),
        alpha=alpha,
        min_samples=min_samples,
    )
    return analyze(spec, data)
