"""The rule file format: the shipped defaults, and errors that name the rule and the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from undertow.streams.policy import (
    BudgetRule,
    DriftRule,
    EventRule,
    PercentileRule,
    RateRule,
    RuleError,
    load_rules,
    parse_rules,
    sql_parameters,
)
from undertow.streams.policy.rules import format_duration, parse_duration
from undertow.streams.policy.sql import placeholders

RATE: dict[str, Any] = {
    "name": "tox",
    "kind": "rate",
    "value": "scores.toxicity",
    "event_above": 0.5,
    "threshold": 0.02,
}


def test_shipped_rules_cover_every_kind_with_runbook_and_sql() -> None:
    rules = load_rules()
    kinds = {rule.kind for rule in rules.rules}
    assert kinds == {"event", "drift", "rate", "budget", "percentile"}
    assert (rules.allowed_lateness, rules.idle_after) == (timedelta(minutes=1),) * 2
    for rule in rules.rules:
        assert rule.runbook_url and rule.runbook_url.startswith("https://")
        assert rule.sql and placeholders(rule.sql) <= sql_parameters(rule)
    injection = rules.rule("prompt_injection")
    assert isinstance(injection, EventRule)
    assert (injection.severity, injection.value, injection.threshold) == (
        "critical",
        "scores.injection",
        0.8,
    )
    toxicity = rules.rule("toxicity_rate")
    assert isinstance(toxicity, RateRule)
    assert (toxicity.threshold, toxicity.event_above, toxicity.window) == (
        0.02,
        0.5,
        timedelta(minutes=5),
    )
    assert isinstance(rules.rule("hourly_spend"), BudgetRule)
    latency = rules.rule("completion_latency_p95")
    assert isinstance(latency, PercentileRule)
    assert (latency.quantile, latency.group_by, latency.for_) == (
        0.95,
        ("app", "environment", "model"),
        timedelta(minutes=2),
    )
    assert isinstance(rules.rule("drift_detected"), DriftRule)


def test_defaults_and_normalised_filters() -> None:
    rules = parse_rules(
        {
            "rules": [
                {**RATE, "filters": {"event_type": "completion", "app": ["a", "b"]}},
                {"name": "spend", "kind": "budget", "threshold": 10},
                {"name": "d", "kind": "drift"},
                {
                    "name": "odd",
                    "kind": "percentile",
                    "quantile": 0.5,
                    "threshold": 1,
                    "window": "90s",
                },
            ]
        }
    )
    rate, budget, drift, odd = rules.rules
    assert isinstance(rate, RateRule) and isinstance(budget, BudgetRule)
    assert isinstance(odd, PercentileRule)
    assert rate.filters == {"event_type": ("completion",), "app": ("a", "b")}
    assert (rate.group_by, rate.severity, rate.min_count) == (("app", "environment"), "warning", 20)
    assert (rate.step_size, rate.clear_after) == (timedelta(minutes=1), timedelta(minutes=5))
    assert (budget.value, budget.window, budget.step_size) == (
        "cost_usd",
        timedelta(hours=1),
        timedelta(minutes=1),
    )
    assert drift.group_by == ("segment", "stream")
    assert odd.step_size == timedelta(seconds=90)  # a minute does not divide 90 s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_duration_formatting() -> None:
    assert [format_duration(timedelta(seconds=s)) for s in (300, 3600, 90, 0.25)] == [
        "5m",
        "1h",
        "90s",
        "250ms",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "ratio"}, "rule 'tox' (rules[0]): kind: expected one of event, drift, rate"),
        ({"threshold": None}, "rule 'tox' (rules[0]): threshold: Input should be a valid number"),
        ({"threshold": 1.5}, "rule 'tox' (rules[0]): threshold: Input should be less than 1"),
        ({"event_above": None}, "rule 'tox' (rules[0]): a rate rule needs exactly one of"),
        ({"event_below": 0.5}, "rule 'tox' (rules[0]): a rate rule needs exactly one of"),
        ({"actions": [{"type": "Roll back", "target": "m"}]}, "actions[0].type: String should"),
        ({"thresold": 0.1}, "rule 'tox' (rules[0]): thresold: unknown field"),
        ({"window": "5 minutes"}, "rule 'tox' (rules[0]): window: expected a duration like"),
        ({"window": "0s"}, "rule 'tox' (rules[0]): window: must be longer than zero"),
        ({"clear_after": "-5m"}, "clear_after: expected a duration"),
        ({"step": "2m"}, "step: 2m does not divide window 5m"),
        ({"severity": "urgent"}, "rule 'tox' (rules[0]): severity: Input should be 'info'"),
        ({"value": "toxicity"}, "value: expected scores.<name> or one of latency_ms"),
        ({"filters": {"tenant": "x"}}, "filters: unknown field 'tenant'; expected one of app"),
        ({"filters": {"event_type": "completions"}}, "filters.event_type: expected completion"),
        ({"filters": {"app": []}}, "filter 'app' lists no values"),
        ({"group_by": ["app", "app"]}, "group_by: lists a field twice"),
        ({"group_by": ["user"]}, "group_by: unknown field 'user'"),
        ({"sql": "SELECT {{ modle }}"}, "sql: unknown parameter(s) modle; this rule has"),
        (
            {"escalate": [{"severity": "info", "threshold": 0.5}]},
            "escalate[0].severity: info is not above the rule's severity warning",
        ),
        ({"escalate": [{"severity": "error"}]}, "escalate[0]: an escalation needs a threshold"),
        (
            {"escalate": [{"severity": "error", "threshold": 0.01}]},
            "escalate[0].threshold: 0.01 is below the rule's threshold 0.02",
        ),
        ({"clear_threshold": 0.5}, "clear_threshold: 0.5 is above threshold 0.02"),
        ({"for": "soon"}, "rule 'tox' (rules[0]): for: expected a duration"),
        ({"name": "has space"}, "rule 'has space' (rules[0]): name: String should match"),
    ],
)
def test_errors_name_the_rule_and_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules({"rules": [{**RATE, **change}]}, source="rules.yaml")
    assert str(caught.value).startswith("rules.yaml: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "rules.yaml: expected a mapping with a list of rules, got list"),
        ({"rules": {"a": 1}}, "rules.yaml: rules: expected a list of rules, got dict"),
        ({"rules": ["tox"]}, "rules.yaml: rules[0]: expected a mapping, got str"),
        ({"rules": [RATE, RATE]}, "rule 'tox' (rules[1]): name: 'tox' is also rules[0]"),
        ({"rules": [], "allowed_lateness": "later"}, "allowed_lateness: expected a duration"),
        ({"rules": [], "version": 2}, "version: Input should be 1"),
        ({"rules": [], "lateness": "1m"}, "rules.yaml: lateness: unknown field"),
        (
            {"rules": [{"name": "d", "kind": "drift", "require_detected": False}]},
            "rule 'd' (rules[0]): threshold: needed when require_detected is false",
        ),
        (
            {"rules": [{"name": "e", "kind": "event", "value": "latency_ms"}]},
            "rule 'e' (rules[0]): threshold: Field required",
        ),
        (  # drift events are never dropped as late: no lateness to set
            {"rules": [{"name": "d", "kind": "drift", "allowed_lateness": "5s"}]},
            "rule 'd' (rules[0]): allowed_lateness: unknown field",
        ),
        (
            {"rules": [{**RATE, "allowed_lateness": "-5s"}]},
            "rule 'tox' (rules[0]): allowed_lateness:",
        ),
    ],
)
def test_file_level_errors(data: Any, message: str) -> None:
    with pytest.raises(RuleError, match=r"^rules\.yaml: ") as caught:
        parse_rules(data, source="rules.yaml")
    assert message in str(caught.value)


def test_drift_rules_group_on_segment_fields() -> None:
    rules = parse_rules(
        {"rules": [{"name": "d", "kind": "drift", "group_by": ["model", "stream"]}]}
    )
    assert sql_parameters(rules.rules[0]) >= {"model", "stream", "segment", "detector"}
    with pytest.raises(RuleError, match="group_by: 'a b' is not a field name"):
        parse_rules({"rules": [{"name": "d", "kind": "drift", "group_by": ["a b"]}]})


def test_sql_parameters_depend_on_the_kind() -> None:
    rules = parse_rules(
        {
            "rules": [
                RATE,
                {"name": "p", "kind": "percentile", "quantile": 0.9, "threshold": 5},
                {"name": "e", "kind": "event", "value": "scores.injection", "threshold": 0.5},
            ]
        }
    )
    rate, percentile, event = (sql_parameters(rule) for rule in rules.rules)
    assert {"event_above", "score", "threshold", "app", "window_start"} <= rate
    assert "quantile" in percentile and "score" not in percentile
    assert "event_above" not in event and "score" in event and "segment" not in event


def test_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(RuleError, match=r"cannot read the rule file .*rules\.yaml"):
        load_rules(bad)
    with pytest.raises(RuleError, match="cannot read the rule file"):
        load_rules(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("rules:\n  - {name: spend, kind: budget, threshold: 5}\n")
    assert load_rules(good).rules[0].name == "spend"


def test_scored_rules_may_set_their_own_lateness() -> None:
    rules = parse_rules(
        {
            "allowed_lateness": "2m",
            "rules": [
                {**RATE, "allowed_lateness": "10s"},
                {"name": "inj", "kind": "event", "value": "scores.injection", "threshold": 0.8},
            ],
        }
    )
    assert rules.rule("tox").allowed_lateness == timedelta(seconds=10)
    assert rules.rule("inj").allowed_lateness is None  # the file's
    assert rules.allowed_lateness == timedelta(minutes=2)
