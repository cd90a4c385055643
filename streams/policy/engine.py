"""The policy engine: scored and drift events in, alert records out.

The policy processor decodes records and hands them to :class:`PolicyEngine`; each call
returns the alerts it caused, ready to encode as ``alert`` records and produce to
``undertow.alerts.v1`` (key ``dedup_key``). The engine never looks at the wall clock for
its decisions: event time drives the windows, and ``tick`` only moves time on when a stream
has gone quiet. Its whole state is a JSON-compatible dict (``state``/``restore``) for a Faust
table, and the alerts are a deterministic function of the input and that state.

Time, per input stream (scored and drift each have a clock):

* The stream's *event-time now* is the latest event time of its slowest origin: the events
  of one app come from every partition of the topic they were first read from, forwarded
  through the repartition topic by several workers at their own pace, and each origin's
  events are in order. An origin that lags (its worker restarts, its partition is behind in
  a backlog) holds event time back, until it has been quiet for ``idle_after`` (processing
  time). Origins announced with ``expect_origins`` hold it too, until heard from or for
  ``idle_after`` (so a new engine does not let the first partition it hears from run
  ahead of the others). An engine fed without origins sees one. Scored events older than
  ``now - allowed_lateness`` (the watermark) are ignored and counted in
  ``metrics["late_events"]``; later ones count even when out of order. A rule with an
  ``allowed_lateness`` of its own has a watermark of its own: events older than it are left
  out of that rule (counted in ``metrics["late_for_rule"]``), and the engine's watermark is
  the earliest of all. Drift events are judgments already made upstream and are never
  dropped.
* A window ending at E is evaluated once the rule's watermark reaches E; an incident of an event or
  drift rule resolves once the watermark (drift: now) passes ``last hit + clear_after``.
* When no event arrived for ``idle_after`` on the processing clock, ``tick(now)`` lets
  event-time now advance with the processing clock (from the latest event time, by the time
  since it arrived), so windows close and incidents resolve when traffic stops. A consumer
  catching up on a backlog keeps receiving events, so it is never mistaken for idle.

Incidents: one per (rule, group) at a time, with a ``dedup_key`` made of the rule, the group
and the start time. An incident emits one ``firing`` alert, another ``firing`` alert only
when its severity escalates, and one ``resolved`` alert. Alert times are event times (the
window end, the hit, the end of the clear period), so the same input gives the same alerts.

One engine must see every event of a group: run it behind a repartition by the rules'
group fields (the scored topic is keyed by trace_id).

>>> from datetime import UTC, datetime
>>> from undertow.streams.policy.rules import parse_rules
>>> rules = parse_rules({"rules": [{"name": "injection", "kind": "event", "severity": "critical",
...     "value": "scores.injection", "threshold": 0.8}]})
>>> engine = PolicyEngine(rules, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
>>> alerts = engine.observe_scored({"event_id": "e1", "event_time": datetime(2026, 1, 1,
...     tzinfo=UTC), "app": "chat", "environment": "production", "event_type": "prompt",
...     "scores": {"injection": 0.97}})
>>> [(a["rule"], a["severity"], a["status"], a["evidence"]["value"]) for a in alerts]
[('injection', 'critical', 'firing', '0.97')]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from undertow.streams.policy.alerts import (
    build_alert,
    dedup_key,
    iso,
    joined,
    number,
    segment_of,
)
from undertow.streams.policy.clock import EventClock
from undertow.streams.policy.rules import (
    DRIFT_FIELDS,
    SEVERITY_RANK,
    BudgetRule,
    DriftRule,
    EventRule,
    PercentileRule,
    PolicyError,
    RateRule,
    RuleSet,
    TriggerRule,
    WindowRule,
    format_duration,
)
from undertow.streams.policy.sketch import DEFAULT_ACCURACY
from undertow.streams.policy.windows import (
    WindowAgg,
    ceil_to,
    floor_to,
    from_micros,
    to_micros,
)

AnyRule = EventRule | DriftRule | RateRule | BudgetRule | PercentileRule
ScoredRule = EventRule | RateRule | BudgetRule | PercentileRule
Alert = dict[str, Any]
STATE_FORMAT = "undertow.policy-state/1"
DEFAULT_MAX_GROUPS = 10_000
METRICS: tuple[str, ...] = (
    "scored_events",
    "drift_events",
    "late_events",
    "late_for_rule",
    "alerts_firing",
    "alerts_escalated",
    "alerts_resolved",
    "groups_over_limit",
    "incidents_dropped",
)


class PolicyInputError(PolicyError):
    """An event the engine cannot place in time (no or a malformed ``event_time``)."""


class PolicyStateError(PolicyError):
    """A saved state that cannot be read back."""


@dataclass
class _Incident:
    """One open incident. Times in microseconds; ``last``: the latest hit (event and drift
    rules) or window end where the condition held; ``count``: hits or such evaluations."""

    key: str
    started: int
    severity: str
    last: int
    count: int
    value: float
    peak: float
    examples: list[str]
    clear_since: int | None = None
    detail: dict[str, str] = field(default_factory=dict)


@dataclass
class _Group:
    """What a rule keeps for one group (one value of its ``group_by`` fields)."""

    fields: dict[str, str]
    app: str
    environment: str
    buckets: dict[int, WindowAgg] = field(default_factory=dict)
    pending_since: int | None = None
    recent: list[tuple[int, list[str]]] = field(default_factory=list)
    incident: _Incident | None = None

    def empty(self) -> bool:
        return (
            not self.buckets
            and self.pending_since is None
            and not self.recent
            and self.incident is None
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": dict(self.fields),
            "app": self.app,
            "environment": self.environment,
            "buckets": {str(start): agg.to_json() for start, agg in sorted(self.buckets.items())},
            "pending_since": self.pending_since,
            "recent": [[t, ids] for t, ids in self.recent],
            "incident": None if self.incident is None else dataclasses.asdict(self.incident),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Group:
        incident = data["incident"]
        return cls(
            fields=dict(data["fields"]),
            app=str(data["app"]),
            environment=str(data["environment"]),
            buckets={int(k): WindowAgg.from_json(v) for k, v in data["buckets"].items()},
            pending_since=data["pending_since"],
            recent=[(int(t), list(ids)) for t, ids in data["recent"]],
            incident=None if incident is None else _Incident(**incident),
        )


@dataclass
class _RuleState:
    groups: dict[str, _Group] = field(default_factory=dict)
    # Window rules: the next window end to evaluate. Event and drift rules: the earliest
    # time at which an incident may resolve or a recent hit expire (None: look now).
    next_end: int | None = None


class PolicyEngine:
    """Rules over scored and drift events; see the module doc for time and incidents.

    ``rules``: a :class:`RuleSet` (its ``allowed_lateness`` and ``idle_after`` apply unless
    given here) or rules. ``clock``: the processing clock, read when an event arrives and by
    ``tick()`` without an argument; the system clock by default. ``max_groups``: groups kept
    per rule; events of further groups are ignored and counted (a ``group_by`` on a field
    with unbounded values must not exhaust memory).
    """

    def __init__(
        self,
        rules: RuleSet | Iterable[AnyRule],
        clock: Callable[[], datetime] | None = None,
        *,
        allowed_lateness: timedelta | None = None,
        idle_after: timedelta | None = None,
        max_groups: int = DEFAULT_MAX_GROUPS,
    ) -> None:
        ruleset = rules if isinstance(rules, RuleSet) else RuleSet(rules=tuple(rules))
        self.rules: tuple[AnyRule, ...] = ruleset.rules
        self.allowed_lateness = (
            ruleset.allowed_lateness if allowed_lateness is None else allowed_lateness
        )
        self.idle_after = ruleset.idle_after if idle_after is None else idle_after
        self._idle = to_micros(self.idle_after)
        self.max_groups = max_groups
        self._clock = clock or (lambda: datetime.now(UTC))
        self._by_name = {rule.name: rule for rule in self.rules}
        self._scored: list[ScoredRule] = [r for r in self.rules if not isinstance(r, DriftRule)]
        self._drift: list[DriftRule] = [r for r in self.rules if isinstance(r, DriftRule)]
        self._states: dict[str, _RuleState] = {r.name: _RuleState() for r in self.rules}
        # each scored rule's lateness (micros), and the engine's: the longest
        self._lateness = {
            r.name: to_micros(
                self.allowed_lateness if r.allowed_lateness is None else r.allowed_lateness
            )
            for r in self._scored
        }
        self._max_lateness = max([to_micros(self.allowed_lateness), *self._lateness.values()])
        self._clocks = {"scored": EventClock(), "drift": EventClock()}
        self.metrics: dict[str, int] = dict.fromkeys(METRICS, 0)

    @classmethod
    def from_state(
        cls,
        rules: RuleSet | Iterable[AnyRule],
        state: Mapping[str, Any],
        clock: Callable[[], datetime] | None = None,
        **options: Any,
    ) -> PolicyEngine:
        """An engine over ``rules`` that carries on from a saved ``state``."""
        engine = cls(rules, clock, **options)
        engine.restore(state)
        return engine

    # -- input ------------------------------------------------------------------------------

    def expect_origins(self, origins: Iterable[str]) -> None:
        """The origins scored events will come from (every partition of the topic they are
        first read from): event time waits for each until it is heard from, or for
        ``idle_after`` (see the module doc on time)."""
        self._clocks["scored"].expect(origins, to_micros(self._clock()))

    def observe_scored(self, event: Mapping[str, Any], origin: str = "") -> list[Alert]:
        """Count one scored event (``schemas/avro/scored_event.v1.avsc`` as a dict) read
        from ``origin`` (the partition it came from; see the module doc on time); the alerts
        it fired and the windows its time closed."""
        t = _event_time(event)
        self.metrics["scored_events"] += 1
        watermark = self._watermark()
        if watermark is not None and t < watermark:
            self.metrics["late_events"] += 1
            return []
        self._clocks["scored"].observe(t, to_micros(self._clock()), origin, self._idle)
        event_id = str(event.get("event_id", ""))
        out: list[Alert] = []
        for rule in self._scored:
            if not _matches(rule, event, _scored_field):
                continue
            rule_watermark = self._watermark(rule)
            if rule_watermark is not None and t < rule_watermark:
                self.metrics["late_for_rule"] += 1
                continue
            value = _value(event, rule.value)
            if value is None or (isinstance(rule, EventRule) and not value > rule.threshold):
                continue
            group = self._group(rule, event, _scored_field)
            if group is None:
                continue
            if isinstance(rule, EventRule):
                detail = {
                    "event_type": str(event.get("event_type") or ""),
                    "last_event_id": event_id,
                    "last_trace_id": str(event.get("trace_id") or ""),
                }
                out += self._hit(rule, group, t, value, [event_id], detail)
            else:
                self._add(rule, group, t, value, event_id)
        out += self._advance()
        return _ordered(out)

    def observe_drift(self, event: Mapping[str, Any], origin: str = "") -> list[Alert]:
        """Take one drift event (``schemas/avro/drift_event.v1.avsc`` as a dict) read from
        ``origin``; the alerts it fired or resolved."""
        t = _event_time(event)
        self.metrics["drift_events"] += 1
        self._clocks["drift"].observe(t, to_micros(self._clock()), origin, self._idle)
        statistic = _number(event.get("statistic"))
        out: list[Alert] = []
        for rule in self._drift:
            if rule.require_detected and not event.get("detected"):
                continue
            if rule.threshold is not None and not (
                statistic is not None and statistic > rule.threshold
            ):
                continue
            if not _matches(rule, event, _drift_field):
                continue
            group = self._group(rule, event, _drift_field)
            if group is None:
                continue
            detail = {
                "segment": str(event.get("segment") or ""),
                "stream": str(event.get("stream") or ""),
                "detector": str(event.get("detector") or ""),
                "statistic": number(statistic),
                "detector_threshold": number(_number(event.get("threshold"))),
                "detected": "true" if event.get("detected") else "false",
                "window_reference": str(event.get("window_reference", "")),
                "window_current": str(event.get("window_current", "")),
                "baseline_version": str(event.get("baseline_version") or ""),
                "nearest_topics": "; ".join(event.get("nearest_topics") or []),
                "last_drift_event_id": str(event.get("event_id", "")),
            }
            examples = [str(i) for i in event.get("example_event_ids") or []]
            out += self._hit(rule, group, t, statistic or 0.0, examples, detail)
        out += self._advance()
        return _ordered(out)

    def tick(self, now: datetime | None = None) -> list[Alert]:
        """Move time on (see the module doc on idle streams) and return the alerts of the
        windows that closed and the incidents that resolved. ``now``: the processing clock,
        by default ``clock()``."""
        wall = to_micros(now if now is not None else self._clock())
        for clock in self._clocks.values():
            clock.idle(wall, self._idle)
        return _ordered(self._advance())

    # -- introspection ----------------------------------------------------------------------

    def watermark(self) -> datetime | None:
        """The scored stream's watermark: older scored events are ignored as late."""
        watermark = self._watermark()
        return None if watermark is None else from_micros(watermark)

    def incidents(self) -> list[dict[str, Any]]:
        """The open incidents: rule, dedup_key, segment, severity, started, count."""
        out = []
        for rule in self.rules:
            for group in self._states[rule.name].groups.values():
                if group.incident is not None:
                    out.append(
                        {
                            "rule": rule.name,
                            "dedup_key": group.incident.key,
                            "segment": segment_of(group.fields),
                            "severity": group.incident.severity,
                            "started": from_micros(group.incident.started),
                            "count": group.incident.count,
                        }
                    )
        return out

    # -- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the engine knows, as JSON-compatible data (for a Faust table)."""
        return {
            "format": STATE_FORMAT,
            "clocks": {name: dataclasses.asdict(clock) for name, clock in self._clocks.items()},
            "metrics": dict(self.metrics),
            "rules": {
                rule.name: {
                    "kind": rule.kind,
                    "fingerprint": _fingerprint(rule),
                    "next_end": self._states[rule.name].next_end,
                    "groups": {
                        key: group.to_json()
                        for key, group in sorted(self._states[rule.name].groups.items())
                    },
                }
                for rule in self.rules
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Carry on from ``state()`` of an engine, possibly under edited rules.

        A rule that changed keeps its open incidents (so they still resolve) and loses its
        windows; one that changed kind, or is gone, loses everything (counted in
        ``metrics["incidents_dropped"]``). The idle timer restarts at ``clock()``: a worker
        that takes over reads its backlog before it takes a stream for quiet.
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise PolicyStateError(f"expected policy state {STATE_FORMAT!r}, got {found!r}")
        try:
            clocks = {name: EventClock(**state["clocks"][name]) for name in self._clocks}
            metrics = dict.fromkeys(METRICS, 0)
            metrics.update({k: int(v) for k, v in state["metrics"].items() if k in metrics})
            states = {rule.name: _RuleState() for rule in self.rules}
            for name, saved in state["rules"].items():
                groups = {k: _Group.from_json(v) for k, v in saved["groups"].items()}
                rule = self._by_name.get(name)
                if rule is None or rule.kind != saved["kind"]:
                    metrics["incidents_dropped"] += sum(
                        g.incident is not None for g in groups.values()
                    )
                    continue
                restored = _RuleState(groups, saved["next_end"])
                if saved["fingerprint"] != _fingerprint(rule):
                    restored = self._keep_incidents(rule, groups, clocks)
                states[name] = restored
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PolicyStateError(f"policy state is incomplete or malformed: {exc!r}") from exc
        wall = to_micros(self._clock())
        for clock in clocks.values():
            clock.restarted(wall)
        self._clocks, self.metrics, self._states = clocks, metrics, states

    def _keep_incidents(
        self, rule: AnyRule, groups: dict[str, _Group], clocks: dict[str, EventClock]
    ) -> _RuleState:
        kept: dict[str, _Group] = {}
        for key, group in groups.items():
            if group.incident is not None:
                kept[key] = _Group(group.fields, group.app, group.environment)
                kept[key].incident = group.incident
        next_end = None  # event and drift rules: look at once
        if kept and isinstance(rule, RateRule | BudgetRule | PercentileRule):
            step = to_micros(rule.step_size)
            now = clocks["scored"].now or 0
            next_end = floor_to(now - self._lateness[rule.name], step) + step
        return _RuleState(kept, next_end)

    # -- groups -----------------------------------------------------------------------------

    def _group(
        self, rule: AnyRule, event: Mapping[str, Any], get: Callable[[Mapping[str, Any], str], str]
    ) -> _Group | None:
        values = [get(event, name) for name in rule.group_by]
        key = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
        groups = self._states[rule.name].groups
        group = groups.get(key)
        if group is not None:
            return group
        if len(groups) >= self.max_groups:
            self.metrics["groups_over_limit"] += 1
            return None
        fields = dict(zip(rule.group_by, values, strict=True))
        group = _Group(
            fields,
            app=_fixed(rule, fields, "app", event if not rule.scored else None),
            environment=_fixed(rule, fields, "environment", event if not rule.scored else None),
        )
        groups[key] = group
        return group

    # -- event and drift rules --------------------------------------------------------------

    def _hit(
        self,
        rule: TriggerRule,
        group: _Group,
        t: int,
        value: float,
        examples: list[str],
        detail: dict[str, str],
    ) -> list[Alert]:
        out: list[Alert] = []
        clear = to_micros(rule.clear_after)
        state = self._states[rule.name]
        due = t + min(clear, to_micros(rule.window) + 1)
        state.next_end = due if state.next_end is None else min(state.next_end, due)
        incident = group.incident
        if incident is not None and t >= incident.last + clear:
            out.append(self._resolve(rule, group, incident.last + clear))
            incident = None
        if incident is not None:
            incident.count += 1
            incident.last = max(incident.last, t)
            incident.value = value
            incident.peak = max(incident.peak, value)
            incident.detail = detail
            room = rule.max_examples - len(incident.examples)
            incident.examples += [i for i in examples if i not in incident.examples][:room]
            severity = rule.severity_for(value, incident.count)
            if SEVERITY_RANK[severity] > SEVERITY_RANK[incident.severity]:
                previous, incident.severity = incident.severity, severity
                out.append(self._trigger_alert(rule, group, "firing", t, previous=previous))
            return out
        if rule.min_count > 1:
            group.recent.append((t, examples))
            group.recent.sort(key=lambda item: item[0])
            del group.recent[: -rule.min_count]
            first, last = group.recent[0][0], group.recent[-1][0]
            if len(group.recent) < rule.min_count or last - first > to_micros(rule.window):
                return out
            started, t = first, last
            examples = [i for _, ids in group.recent for i in ids]
            group.recent = []
        else:
            started = t
        count = rule.min_count
        group.incident = _Incident(
            key=dedup_key(rule.name, segment_of(group.fields), from_micros(started)),
            started=started,
            severity=rule.severity_for(value, count),
            last=t,
            count=count,
            value=value,
            peak=value,
            examples=list(dict.fromkeys(examples))[: rule.max_examples],
            detail=detail,
        )
        out.append(self._trigger_alert(rule, group, "firing", t))
        return out

    def _resolve(self, rule: TriggerRule, group: _Group, at: int) -> Alert:
        alert = self._trigger_alert(rule, group, "resolved", at)
        group.incident = None
        return alert

    def _advance_trigger(self, rule: TriggerRule, watermark: int) -> list[Alert]:
        out: list[Alert] = []
        state = self._states[rule.name]
        if state.next_end is not None and state.next_end > watermark:
            return out  # nothing can resolve or expire yet
        clear, window = to_micros(rule.clear_after), to_micros(rule.window)
        horizon = watermark - window
        due: list[int] = []
        for key in sorted(state.groups):
            group = state.groups[key]
            if group.incident is not None:
                if group.incident.last + clear <= watermark:
                    out.append(self._resolve(rule, group, group.incident.last + clear))
                else:
                    due.append(group.incident.last + clear)
            group.recent = [item for item in group.recent if item[0] >= horizon]
            due += [item[0] + window + 1 for item in group.recent[:1]]
            if group.empty():
                del state.groups[key]
        state.next_end = min(due, default=None)
        return out

    # -- window rules -----------------------------------------------------------------------

    def _add(self, rule: WindowRule, group: _Group, t: int, value: float, event_id: str) -> None:
        step = to_micros(rule.step_size)
        start = floor_to(t, step)
        bucket = group.buckets.get(start)
        if bucket is None:
            bucket = group.buckets[start] = WindowAgg()
        hit = isinstance(rule, RateRule) and rule.hit(value)
        bucket.add(
            value,
            event_id,
            hit=hit,
            example=hit or not isinstance(rule, RateRule),
            keep=rule.max_examples,
            sketch=isinstance(rule, PercentileRule),
        )
        state = self._states[rule.name]
        end = start + step
        state.next_end = end if state.next_end is None else min(state.next_end, end)

    def _advance_window(self, rule: WindowRule, watermark: int) -> list[Alert]:
        out: list[Alert] = []
        state = self._states[rule.name]
        step = to_micros(rule.step_size)
        while state.next_end is not None and state.next_end <= watermark:
            end = state.next_end
            first = min((s for g in state.groups.values() for s in g.buckets), default=None)
            if first is None or first >= end:
                # No data in any window from here to ``first``: evaluate those in one go.
                until = watermark if first is None else min(watermark, first)
                out += self._evaluate_empty(rule, state, end, until)
                state.next_end = floor_to(until, step) + step
            else:
                out += self._evaluate(rule, state, end)
                state.next_end = end + step
            if not state.groups:
                state.next_end = None
        return out

    def _evaluate(self, rule: WindowRule, state: _RuleState, end: int) -> list[Alert]:
        out: list[Alert] = []
        window, step = to_micros(rule.window), to_micros(rule.step_size)
        for key in sorted(state.groups):
            group = state.groups[key]
            agg = WindowAgg.merged(
                (group.buckets[s] for s in sorted(group.buckets) if end - window <= s < end),
                keep=rule.max_examples,
            )
            out += self._transition(rule, group, end, agg)
            for start in [s for s in group.buckets if s < end + step - window]:
                del group.buckets[start]
            if group.empty():
                del state.groups[key]
        return out

    def _evaluate_empty(
        self, rule: WindowRule, state: _RuleState, end: int, until: int
    ) -> list[Alert]:
        """The evaluations at every window end in [end, until] when those windows are empty:
        nothing pends, and firing incidents resolve once clear for ``clear_after``."""
        out: list[Alert] = []
        step, clear = to_micros(rule.step_size), to_micros(rule.clear_after)
        for key in sorted(state.groups):
            group = state.groups[key]
            group.pending_since = None
            incident = group.incident
            if incident is not None:
                if incident.clear_since is None:
                    incident.clear_since = end
                at = max(end, ceil_to(incident.clear_since + clear, step))
                if at <= until:
                    out.append(self._window_alert(rule, group, "resolved", at, WindowAgg()))
                    group.incident = None
            if group.empty():
                del state.groups[key]
        return out

    def _transition(self, rule: WindowRule, group: _Group, end: int, agg: WindowAgg) -> list[Alert]:
        value = _measure(rule, agg)
        enough = value is not None and agg.n >= rule.min_count
        holds = enough and value is not None and value > rule.threshold
        incident = group.incident
        if incident is None:
            if not holds or value is None:
                group.pending_since = None
                return []
            if group.pending_since is None:
                group.pending_since = end
            if end - group.pending_since < to_micros(rule.for_):
                return []
            group.pending_since = None
            group.incident = _Incident(
                key=dedup_key(rule.name, segment_of(group.fields), from_micros(end)),
                started=end,
                severity=rule.severity_for(value, agg.n),
                last=end,
                count=1,
                value=value,
                peak=value,
                examples=agg.example_ids(),
            )
            return [self._window_alert(rule, group, "firing", end, agg)]
        if holds and value is not None:
            incident.clear_since = None
            incident.last = end
            incident.count += 1
            incident.value = value
            incident.peak = max(incident.peak, value)
            severity = rule.severity_for(value, agg.n)
            if SEVERITY_RANK[severity] > SEVERITY_RANK[incident.severity]:
                previous, incident.severity = incident.severity, severity
                incident.examples = agg.example_ids()
                return [self._window_alert(rule, group, "firing", end, agg, previous=previous)]
            return []
        clear_level = rule.threshold if rule.clear_threshold is None else rule.clear_threshold
        if enough and value is not None and value > clear_level:
            incident.clear_since = None  # between the two thresholds: neither worse nor clear
            return []
        if incident.clear_since is None:
            incident.clear_since = end
        if end - incident.clear_since >= to_micros(rule.clear_after):
            alert = self._window_alert(rule, group, "resolved", end, agg)
            group.incident = None
            return [alert]
        return []

    # -- time -------------------------------------------------------------------------------

    def _watermark(self, rule: ScoredRule | None = None) -> int | None:
        """The scored stream's watermark: ``rule``'s, or the engine's (the earliest)."""
        now = self._clocks["scored"].now
        if now is None:
            return None
        return now - (self._max_lateness if rule is None else self._lateness[rule.name])

    def _advance(self) -> list[Alert]:
        out: list[Alert] = []
        drift = self._clocks["drift"].now
        for rule in self.rules:
            if isinstance(rule, DriftRule):
                if drift is not None:
                    out += self._advance_trigger(rule, drift)
                continue
            scored = self._watermark(rule)
            if scored is None:
                continue
            if isinstance(rule, EventRule):
                out += self._advance_trigger(rule, scored)
            else:
                out += self._advance_window(rule, scored)
        return out

    # -- alerts -----------------------------------------------------------------------------

    def _trigger_alert(
        self, rule: TriggerRule, group: _Group, status: str, at: int, previous: str | None = None
    ) -> Alert:
        incident = group.incident
        assert incident is not None
        clear = to_micros(rule.clear_after)
        start, stop = incident.started, incident.last + clear
        evidence = {
            "kind": rule.kind,
            "value": number(incident.value),
            "peak_value": number(incident.peak),
            "count": str(incident.count),
            "min_count": str(rule.min_count),
            # hits less than clear_after apart are one incident: its dedup window
            "window": format_duration(rule.window if rule.min_count > 1 else rule.clear_after),
            "clear_after": format_duration(rule.clear_after),
            "window_start": iso(from_micros(start)),
            "window_end": iso(from_micros(stop)),
            "first_seen": iso(from_micros(incident.started)),
            "last_seen": iso(from_micros(incident.last)),
            "example_event_ids": joined(incident.examples),
            **incident.detail,
        }
        if isinstance(rule, EventRule):
            evidence["threshold"] = number(rule.threshold)
            evidence["value_name"] = rule.value
            what = f"{_label(rule.value)} {incident.value:.3g} above {rule.threshold:g}"
            if incident.count > 1:
                what += f", {incident.count} events since {iso(from_micros(incident.started))}"
        else:
            evidence["threshold"] = number(rule.threshold)
            what = (
                f"drift in {incident.detail.get('stream')} ({incident.detail.get('detector')}), "
                f"statistic {incident.value:.4g}"
            )
            limit = incident.detail.get("detector_threshold")
            what += f" over {limit}" if limit else ""
            if incident.count > 1:
                what += f", {incident.count} detections"
        params: dict[str, object] = {}
        if isinstance(rule, EventRule):
            params["threshold"] = rule.threshold
            if rule.value.startswith("scores."):
                params["score"] = rule.value.removeprefix("scores.")
        else:
            params.update(
                segment=incident.detail.get("segment", ""),
                stream=incident.detail.get("stream", ""),
                detector=incident.detail.get("detector", ""),
                statistic=incident.value,
            )
        return self._alert(
            rule, group, incident, status, at, previous, evidence, what, start, stop, params
        )

    def _window_alert(
        self,
        rule: WindowRule,
        group: _Group,
        status: str,
        at: int,
        agg: WindowAgg,
        previous: str | None = None,
    ) -> Alert:
        incident = group.incident
        assert incident is not None
        window = to_micros(rule.window)
        value = _measure(rule, agg)
        start = incident.started - window if status == "resolved" else at - window
        evidence = {
            "kind": rule.kind,
            "value": number(value),
            "threshold": number(rule.threshold),
            "count": str(agg.n),
            "min_count": str(rule.min_count),
            "window": format_duration(rule.window),
            "step": format_duration(rule.step_size),
            "window_start": iso(from_micros(at - window)),
            "window_end": iso(from_micros(at)),
            "value_name": rule.value,
            "peak_value": number(incident.peak),
            "fired_at": iso(from_micros(incident.started)),
            "example_event_ids": joined(
                incident.examples if status == "resolved" else agg.example_ids()
            ),
        }
        label = _label(rule.value)
        window_text = format_duration(rule.window)
        params: dict[str, object] = {"threshold": rule.threshold}
        if rule.value.startswith("scores."):
            params["score"] = rule.value.removeprefix("scores.")
        if isinstance(rule, RateRule):
            evidence["hits"] = str(agg.hits)
            if rule.event_above is not None:
                evidence["event_above"] = number(rule.event_above)
                params["event_above"] = rule.event_above
            else:
                evidence["event_below"] = number(rule.event_below)
                params["event_below"] = rule.event_below
            what = (
                f"{agg.hits} of {agg.n} events ({100 * (value or 0):.2f}%) with {label} "
                f"{rule.condition()} over {window_text}; threshold {100 * rule.threshold:g}%"
            )
        elif isinstance(rule, BudgetRule):
            evidence["sum"] = number(agg.total)
            what = (
                f"{label} {agg.total:.2f} over {window_text} from {agg.n} events; "
                f"budget {rule.threshold:g}"
            )
        else:
            evidence.update(quantile=number(rule.quantile), relative_accuracy=str(DEFAULT_ACCURACY))
            params["quantile"] = rule.quantile
            shown = "no data" if value is None else f"{value:.4g}"
            what = (
                f"p{100 * rule.quantile:g} {label} {shown} over {window_text} from {agg.n} "
                f"events; threshold {rule.threshold:g}"
            )
        return self._alert(
            rule, group, incident, status, at, previous, evidence, what, start, at, params
        )

    def _alert(
        self,
        rule: AnyRule,
        group: _Group,
        incident: _Incident,
        status: str,
        at: int,
        previous: str | None,
        evidence: dict[str, str],
        what: str,
        start: int,
        stop: int,
        params: dict[str, object],
    ) -> Alert:
        segment = segment_of(group.fields)
        if status == "resolved":
            self.metrics["alerts_resolved"] += 1
            summary = f"{rule.name} resolved after {format_duration(rule.clear_after)} clear"
            summary += f" (fired {iso(from_micros(incident.started))}): {what}"
        elif previous is not None:
            self.metrics["alerts_escalated"] += 1
            evidence["previous_severity"] = previous
            summary = f"{rule.name} escalated to {incident.severity}: {what}"
        else:
            self.metrics["alerts_firing"] += 1
            summary = f"{rule.name}: {what}"
        summary += f" [{segment}]"
        if rule.description:
            evidence["description"] = rule.description
        params.update(group.fields)
        params.update(
            rule=rule.name,
            severity=incident.severity,
            status=status,
            dedup_key=incident.key,
            alert_segment=segment,
            window_start=from_micros(start),
            window_end=from_micros(stop),
            event_ids=list(incident.examples if status == "resolved" else _examples(evidence)),
        )
        return build_alert(
            rule=rule.name,
            status=status,
            severity=incident.severity,
            key=incident.key,
            segment=segment,
            app=group.app,
            environment=group.environment,
            at=from_micros(at),
            summary=summary,
            evidence=evidence,
            attributes={
                "rule_kind": rule.kind,
                "incident_started": iso(from_micros(incident.started)),
            },
            sql_template=rule.sql,
            sql_parameters=params,
            runbook_url=rule.runbook_url,
        )


# -- event fields ---------------------------------------------------------------------------


def _event_time(event: Mapping[str, Any]) -> int:
    moment = event.get("event_time")
    if not isinstance(moment, datetime):
        raise PolicyInputError(
            f"event {event.get('event_id')!r}: event_time: expected a datetime, got {moment!r}"
        )
    return to_micros(moment)


def _scored_field(event: Mapping[str, Any], name: str) -> str:
    if name.startswith("attributes."):
        value = (event.get("attributes") or {}).get(name.removeprefix("attributes."))
    else:
        value = event.get(name)
    return "" if value is None else str(value)


def _drift_field(event: Mapping[str, Any], name: str) -> str:
    value = (
        event.get(name) if name in DRIFT_FIELDS else (event.get("segment_fields") or {}).get(name)
    )
    return "" if value is None else str(value)


def _matches(
    rule: AnyRule, event: Mapping[str, Any], get: Callable[[Mapping[str, Any], str], str]
) -> bool:
    return all(get(event, name) in allowed for name, allowed in rule.filters.items())


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _value(event: Mapping[str, Any], ref: str) -> float | None:
    if ref.startswith("scores."):
        return _number((event.get("scores") or {}).get(ref.removeprefix("scores.")))
    return _number(event.get(ref))


def _measure(rule: WindowRule, agg: WindowAgg) -> float | None:
    if agg.n == 0:
        return None
    if isinstance(rule, RateRule):
        return agg.hits / agg.n
    if isinstance(rule, BudgetRule):
        return agg.total
    return None if agg.sketch is None else agg.sketch.quantile(rule.quantile)


def _fixed(
    rule: AnyRule, fields: Mapping[str, str], name: str, event: Mapping[str, Any] | None
) -> str:
    """The app (or environment) of a group's alerts: its group value, else the one value its
    filter allows, else the drift event's own, else ``*`` (any)."""
    if name in fields:
        return fields[name]
    allowed = rule.filters.get(name, ())
    if len(allowed) == 1:
        return allowed[0]
    if event is not None and event.get(name):
        return str(event[name])
    return "*"


def _label(ref: str) -> str:
    return ref.removeprefix("scores.")


def _examples(evidence: Mapping[str, str]) -> list[str]:
    text = evidence.get("example_event_ids", "")
    return text.split(",") if text else []


def _fingerprint(rule: AnyRule) -> str:
    return hashlib.sha256(rule.model_dump_json().encode()).hexdigest()[:16]


def _ordered(alerts: list[Alert]) -> list[Alert]:
    """Alerts in event-time order (stable, so one incident's alerts keep theirs)."""
    return sorted(alerts, key=lambda alert: alert["event_time"])


__all__ = ["STATE_FORMAT", "PolicyEngine", "PolicyInputError", "PolicyStateError"]
