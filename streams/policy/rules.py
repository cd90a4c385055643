"""Alert rules: the YAML format, the pydantic models that validate it, and loading.

A rule file is a mapping with ``version: 1``, engine settings (``allowed_lateness``,
``idle_after``) and a list of ``rules``. Each rule has a ``kind``:

* ``event``: one scored event whose value is above ``threshold`` (an injection attempt);
  ``min_count`` hits within ``window`` when one is not enough.
* ``drift``: a drift event (``detected: true`` unless ``require_detected: false``), optionally
  with ``statistic`` above ``threshold``.
* ``rate``: the fraction of events whose value is above ``event_above`` is above ``threshold``
  over a sliding ``window`` (toxic completions), given at least ``min_count`` events.
* ``budget``: the sum of a value (``cost_usd`` by default) over the window is above ``threshold``.
* ``percentile``: the ``quantile`` of a value (``latency_ms`` by default) over the window is
  above ``threshold``.

``event`` and ``drift`` rules open an incident per group on a hit and resolve it once no hit
came for ``clear_after``; later hits join the incident (a burst is one alert, with a count).
Window rules are evaluated every ``step`` on the window ending there: they fire once the
condition held for ``for`` and resolve once it has been clear for ``clear_after``.
Rules over scored events may set their own ``allowed_lateness`` (the file's otherwise): a
rule over live traffic, such as users' ratings, need not wait as long as one over replayed
traffic. "Above" is strictly greater everywhere. Durations are seconds or strings like
``90s``, ``5m``, ``1h30m``.

>>> rules = parse_rules({"rules": [{"name": "slow", "kind": "percentile", "quantile": 0.95,
...                                 "threshold": 2000, "window": "5m"}]})
>>> rules.rules[0].value, rules.rules[0].step_size
('latency_ms', datetime.timedelta(seconds=60))
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from undertow.errors import UndertowError
from undertow.streams.config_file import read_yaml
from undertow.streams.policy.sql import placeholders

Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error", "critical")
SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}
KINDS: tuple[str, ...] = ("event", "drift", "rate", "budget", "percentile")
SCORED_KINDS = frozenset({"event", "rate", "budget", "percentile"})
WINDOW_KINDS = frozenset({"rate", "budget", "percentile"})

# Scored-event fields rules filter and group on; ``attributes.<key>`` reaches the attributes.
SCORED_FIELDS: tuple[str, ...] = (
    "app",
    "environment",
    "event_type",
    "model",
    "prompt_name",
    "prompt_version",
)
# Drift-event fields; any other name is looked up in the drift event's ``segment_fields``.
DRIFT_FIELDS: tuple[str, ...] = (
    "app",
    "environment",
    "segment",
    "stream",
    "detector",
    "baseline_version",
)
# Numeric scored-event fields a rule may measure; ``scores.<name>`` reaches the scores map.
NUMERIC_FIELDS: tuple[str, ...] = (
    "latency_ms",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
)
EVENT_TYPES = frozenset({"prompt", "retrieval", "completion", "feedback"})
# SQL template parameters every alert has (see ``sql_parameters`` for the rest).
COMMON_SQL_PARAMETERS: frozenset[str] = frozenset(
    {
        "rule",
        "severity",
        "status",
        "dedup_key",
        "alert_segment",
        "window_start",
        "window_end",
        "event_ids",
    }
)
DEFAULT_RULES = "rules.yaml"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_.-]+)?")


class PolicyError(UndertowError):
    """Root of the policy engine's errors."""


class RuleError(PolicyError):
    """A rule file that cannot be read or does not validate; the message names rule and field."""


def parse_duration(value: Any) -> timedelta:
    """``90``, ``"90s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a timedelta, as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m or 1h, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {value!r}")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
    raise ValueError(f"expected a duration like 30s, 5m or 1h, got {value!r}")


def format_duration(delta: timedelta) -> str:
    """The shortest of ``1h``, ``5m``, ``90s``, ``250ms`` that says ``delta`` exactly."""
    micros = delta // timedelta(microseconds=1)
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000)):
        if micros and micros % size == 0:
            return f"{micros // size}{unit}"
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    return f"{micros / 1000:g}ms"


def _non_negative(delta: timedelta) -> timedelta:
    if delta < timedelta(0):
        raise ValueError(f"must not be negative, got {format_duration(delta)}")
    return delta


def _positive(delta: timedelta) -> timedelta:
    if delta <= timedelta(0):
        raise ValueError("must be longer than zero")
    if delta % timedelta(microseconds=1):
        raise ValueError("must be a whole number of microseconds")
    return delta


def _check_value_ref(ref: str) -> str:
    if ref in NUMERIC_FIELDS:
        return ref
    if ref.startswith("scores.") and len(ref) > len("scores."):
        return ref
    raise ValueError(f"expected scores.<name> or one of {', '.join(NUMERIC_FIELDS)}, got {ref!r}")


def _filters(value: Any) -> Any:
    """``{field: value or [values]}`` as ``{field: (values, ...)}``, values as strings."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return value  # pydantic reports the type
    out: dict[str, tuple[str, ...]] = {}
    for name, allowed in value.items():
        items = allowed if isinstance(allowed, list | tuple) else [allowed]
        if not items:
            raise ValueError(f"filter {name!r} lists no values")
        for item in items:
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise ValueError(f"filter {name!r}: expected strings, got {item!r}")
        out[str(name)] = tuple(str(item) for item in items)
    return out


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_non_negative)]
PositiveDuration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]
ValueRef = Annotated[str, AfterValidator(_check_value_ref)]
Filters = Annotated[dict[str, tuple[str, ...]], BeforeValidator(_filters)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Escalation(BaseModel):
    """A higher severity once the observed value is above ``threshold`` and/or at least
    ``min_count`` hits (event and drift rules) or events (window rules) were counted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Severity
    threshold: FiniteFloat | None = None
    min_count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _has_condition(self) -> Escalation:
        if self.threshold is None and self.min_count is None:
            raise ValueError("an escalation needs a threshold, a min_count or both")
        return self


class ActionSpec(BaseModel):
    """An action a rule requests when it fires (not on escalation or resolution): a record on
    the actions topic for the action workers. ``target`` and ``parameters`` may name the
    alert's ``{app}``, ``{environment}``, ``{segment}``, its group fields and evidence keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=50)
    target: str = Field(min_length=1, max_length=200)
    parameters: dict[str, str] = Field(default_factory=dict)


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    severity: Severity = "warning"
    filters: Filters = Field(default_factory=dict)
    group_by: tuple[str, ...] = ("app", "environment")
    clear_after: Duration = timedelta(minutes=5)
    escalate: tuple[Escalation, ...] = ()
    runbook_url: str | None = None
    sql: str | None = None
    max_examples: int = Field(default=5, ge=0, le=50)
    actions: tuple[ActionSpec, ...] = ()

    @property
    def scored(self) -> bool:
        """Whether the rule reads scored events (else drift events)."""
        return getattr(self, "kind", "") in SCORED_KINDS

    def severity_for(self, value: float, count: int) -> Severity:
        """The severity for an observed value and count: the base, or the highest escalation
        whose conditions hold."""
        best: Severity = self.severity
        for level in self.escalate:
            if level.threshold is not None and not value > level.threshold:
                continue
            if level.min_count is not None and count < level.min_count:
                continue
            if SEVERITY_RANK[level.severity] > SEVERITY_RANK[best]:
                best = level.severity
        return best

    @model_validator(mode="after")
    def _check_common(self) -> _Rule:
        kind = getattr(self, "kind", "")
        scored = kind in SCORED_KINDS
        for where, names in (("filters", list(self.filters)), ("group_by", list(self.group_by))):
            for name in names:
                _check_field(where, name, scored)
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError(f"group_by: lists a field twice: {list(self.group_by)}")
        bad_types = set(self.filters.get("event_type", ())) - EVENT_TYPES
        if scored and bad_types:
            raise ValueError(
                f"filters.event_type: expected {', '.join(sorted(EVENT_TYPES))}, "
                f"got {', '.join(sorted(bad_types))}"
            )
        for i, level in enumerate(self.escalate):
            if SEVERITY_RANK[level.severity] <= SEVERITY_RANK[self.severity]:
                raise ValueError(
                    f"escalate[{i}].severity: {level.severity} is not above the rule's "
                    f"severity {self.severity}"
                )
        if self.sql is not None:
            allowed = sql_parameters(self)
            unknown = sorted(placeholders(self.sql) - allowed)
            if unknown:
                raise ValueError(
                    f"sql: unknown parameter(s) {', '.join(unknown)}; "
                    f"this rule has {', '.join(sorted(allowed))}"
                )
        return self


def _check_field(where: str, name: str, scored: bool) -> None:
    if scored:
        if name in SCORED_FIELDS or (name.startswith("attributes.") and len(name) > 11):
            return
        raise ValueError(
            f"{where}: unknown field {name!r}; expected one of {', '.join(SCORED_FIELDS)} "
            "or attributes.<key>"
        )
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: {name!r} is not a field name; expected one of {', '.join(DRIFT_FIELDS)} "
            "or a segment field name"
        )


class _TriggerRule(_Rule):
    """A rule that fires on single events: ``min_count`` hits within ``window``."""

    min_count: int = Field(default=1, ge=1, le=1000)
    window: PositiveDuration = timedelta(minutes=5)


class EventRule(_TriggerRule):
    """A scored event whose ``value`` is above ``threshold``."""

    kind: Literal["event"]
    value: ValueRef
    threshold: FiniteFloat
    # how late an event may come and still count for this rule; the file's when None
    allowed_lateness: Duration | None = None


class DriftRule(_TriggerRule):
    """A drift event that matches the filters and reports a detection (or a statistic above
    ``threshold``). Group fields other than the drift event's own come from its segment."""

    kind: Literal["drift"]
    group_by: tuple[str, ...] = ("segment", "stream")
    require_detected: bool = True
    threshold: FiniteFloat | None = None

    @model_validator(mode="after")
    def _has_condition(self) -> DriftRule:
        if not self.require_detected and self.threshold is None:
            raise ValueError("threshold: needed when require_detected is false")
        return self


class _WindowRule(_Rule):
    """A rule over a sliding event-time window, evaluated every ``step``."""

    window: PositiveDuration = timedelta(minutes=5)
    step: PositiveDuration | None = None
    for_: Duration = Field(default=timedelta(0), alias="for")
    threshold: FiniteFloat
    clear_threshold: FiniteFloat | None = None
    min_count: int = Field(default=1, ge=1)
    # how late an event may come and still count, and so how long a window waits before it
    # is evaluated; the file's when None
    allowed_lateness: Duration | None = None

    @model_validator(mode="after")
    def _check_window(self) -> _WindowRule:
        step = self.step_size
        if self.window % step:
            raise ValueError(
                f"step: {format_duration(step)} does not divide window "
                f"{format_duration(self.window)}"
            )
        if self.window // step > 1440:
            raise ValueError("step: more than 1440 steps per window; use a longer step")
        if self.clear_threshold is not None and self.clear_threshold > self.threshold:
            raise ValueError(
                f"clear_threshold: {self.clear_threshold:g} is above threshold {self.threshold:g}"
            )
        for i, level in enumerate(self.escalate):
            if level.threshold is not None and level.threshold < self.threshold:
                raise ValueError(
                    f"escalate[{i}].threshold: {level.threshold:g} is below the rule's "
                    f"threshold {self.threshold:g}"
                )
        return self

    @property
    def step_size(self) -> timedelta:
        """The evaluation step, which is also the size of the buckets the window is made of:
        ``step``, or by default one minute where that divides a longer window, else the window.
        """
        if self.step is not None:
            return self.step
        minute = timedelta(minutes=1)
        if self.window > minute and self.window % minute == timedelta(0):
            return minute
        return self.window


class RateRule(_WindowRule):
    """More than ``threshold`` (a fraction) of the window's events have ``value`` above
    ``event_above`` (toxic completions) or below ``event_below`` (bad feedback); events
    without the value are not counted at all."""

    kind: Literal["rate"]
    value: ValueRef
    event_above: FiniteFloat | None = None
    event_below: FiniteFloat | None = None
    threshold: FiniteFloat = Field(ge=0, lt=1)
    min_count: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _one_bound(self) -> RateRule:
        if (self.event_above is None) == (self.event_below is None):
            raise ValueError("a rate rule needs exactly one of event_above and event_below")
        return self

    def hit(self, value: float) -> bool:
        """Whether one event's value counts toward the rate."""
        if self.event_above is not None:
            return value > self.event_above
        return self.event_below is not None and value < self.event_below

    def condition(self) -> str:
        """``above 0.5`` or ``below 0.5``: what a hit is, for summaries."""
        if self.event_above is not None:
            return f"above {self.event_above:g}"
        return f"below {self.event_below:g}"


class BudgetRule(_WindowRule):
    """The sum of ``value`` over the window is above ``threshold`` (USD for ``cost_usd``)."""

    kind: Literal["budget"]
    value: ValueRef = "cost_usd"
    window: PositiveDuration = timedelta(hours=1)
    threshold: FiniteFloat = Field(ge=0)


class PercentileRule(_WindowRule):
    """The ``quantile`` of ``value`` over the window is above ``threshold``.

    Quantiles come from a mergeable log-bucket sketch (:mod:`.sketch`) with 1% relative
    accuracy, so state stays small however busy the group is: keep thresholds a little
    more than 1% away from the values you need told apart.
    """

    kind: Literal["percentile"]
    value: ValueRef = "latency_ms"
    quantile: float = Field(gt=0, le=1)
    min_count: int = Field(default=20, ge=1)


Rule = Annotated[
    EventRule | DriftRule | RateRule | BudgetRule | PercentileRule,
    Field(discriminator="kind"),
]
WindowRule = RateRule | BudgetRule | PercentileRule
TriggerRule = EventRule | DriftRule
_RULE = TypeAdapter[EventRule | DriftRule | RateRule | BudgetRule | PercentileRule](Rule)


def sql_parameters(rule: _Rule) -> frozenset[str]:
    """The names an SQL template of ``rule`` may use as ``{{ name }}``.

    Every alert has ``rule``, ``severity``, ``status``, ``dedup_key``, ``alert_segment``,
    ``window_start``/``window_end`` (DateTime64 UTC; half-open: the evaluated window for
    window rules, the whole incident on resolution; for event and drift rules from the first
    hit to ``clear_after`` past the last) and ``event_ids`` (Array(String) of examples), plus
    the ``group_by`` fields. Scored rules add ``threshold`` and, when the value is a score,
    ``score`` (its name); rate rules ``event_above``, percentile rules ``quantile``. Drift
    rules add the last detection's ``segment``, ``stream``, ``detector`` and ``statistic``.
    """
    names = set(COMMON_SQL_PARAMETERS) | set(rule.group_by)
    kind = getattr(rule, "kind", "")
    if kind in SCORED_KINDS:
        names.add("threshold")
        if str(getattr(rule, "value", "")).startswith("scores."):
            names.add("score")
    if kind == "rate":
        names.add(
            "event_above" if getattr(rule, "event_above", None) is not None else "event_below"
        )
    if kind == "percentile":
        names.add("quantile")
    if kind == "drift":
        names.update({"segment", "stream", "detector", "statistic"})
    return frozenset(names)


class RuleSet(BaseModel):
    """A validated rule file: engine settings and the rules, in file order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    allowed_lateness: Duration = timedelta(minutes=1)
    idle_after: PositiveDuration = timedelta(minutes=1)
    rules: tuple[EventRule | DriftRule | RateRule | BudgetRule | PercentileRule, ...] = ()

    def rule(self, name: str) -> EventRule | DriftRule | RateRule | BudgetRule | PercentileRule:
        """The rule called ``name``; KeyError when there is none."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def load_rules(path: str | os.PathLike[str] | None = None) -> RuleSet:
    """Read a rule file; None reads the defaults shipped with Undertow (``rules.yaml``)."""
    data, source = read_yaml(
        path, package="undertow.streams", name=DEFAULT_RULES, what="rule", error=RuleError
    )
    return parse_rules(data, source=source)


def parse_rules(data: Any, *, source: str = "<rules>") -> RuleSet:
    """Validate the parsed YAML shape; a RuleError names the rule and the field at fault."""
    if not isinstance(data, Mapping):
        raise RuleError(f"{source}: expected a mapping with a list of rules, got {_kind(data)}")
    items = data.get("rules", [])
    if not isinstance(items, list):
        raise RuleError(f"{source}: rules: expected a list of rules, got {_kind(items)}")
    rules = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else None
        where = f"{source}: rule {name!r} (rules[{i}])" if name else f"{source}: rules[{i}]"
        if not isinstance(item, Mapping):
            raise RuleError(f"{where}: expected a mapping, got {_kind(item)}")
        kind = item.get("kind")
        if kind not in KINDS:
            raise RuleError(f"{where}: kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        try:
            rule = _RULE.validate_python(dict(item))
        except ValidationError as exc:
            raise RuleError(f"{where}: {_describe(exc, skip=1)}") from exc
        if rule.name in seen:
            raise RuleError(f"{where}: name: {rule.name!r} is also rules[{seen[rule.name]}]")
        seen[rule.name] = i
        rules.append(rule)
    settings = {k: v for k, v in data.items() if k != "rules"}
    try:
        return RuleSet.model_validate({**settings, "rules": rules})
    except ValidationError as exc:
        raise RuleError(f"{source}: {_describe(exc, skip=0)}") from exc


def _describe(exc: ValidationError, skip: int) -> str:
    """Pydantic's errors as ``field: message; ...`` (``skip`` drops the union tag)."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = error["loc"][skip:]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


__all__ = [
    "KINDS",
    "NUMERIC_FIELDS",
    "SCORED_FIELDS",
    "SEVERITIES",
    "SEVERITY_RANK",
    "BudgetRule",
    "DriftRule",
    "Escalation",
    "EventRule",
    "PercentileRule",
    "PolicyError",
    "RateRule",
    "Rule",
    "RuleError",
    "RuleSet",
    "Severity",
    "TriggerRule",
    "WindowRule",
    "format_duration",
    "load_rules",
    "parse_duration",
    "parse_rules",
    "sql_parameters",
]
