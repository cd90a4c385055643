"""Actions requested by firing alerts: the records the policy processor puts on the actions
topic for the action workers (rollback, fine-tune, ...).

A rule lists its ``actions`` (see :class:`undertow.streams.policy.rules.ActionSpec`). When an
alert of that rule starts firing (not on escalation or resolution), each action becomes one
``action`` record with ``phase="requested"``. Its id derives from the alert's id, which the
engine derives from the incident, so a replayed batch requests nothing new: the workers and
the ``actions`` table see the same id again.

>>> render("{app}-model", {"app": "support"})
'support-model'
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from undertow.schemas.events import action
from undertow.streams.policy.rules import RuleSet

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.-]+)\}")
ACTION_NAMESPACE = uuid.UUID("3a8e1f0e-7c9b-4d52-a0f4-5b8f6c1d2e90")


def render(template: str, fields: Mapping[str, str]) -> str:
    """``template`` with ``{name}`` replaced from ``fields`` (names may hold dots, as group
    fields like ``attributes.model`` do); unknown names stay as written."""
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), template)


def _fields(alert: Mapping[str, Any]) -> dict[str, str]:
    fields = {str(k): str(v) for k, v in (alert.get("evidence") or {}).items()}
    segment = str(alert.get("segment") or "")
    for part in segment.split("/"):  # "app=support/environment=production"
        name, sep, value = part.partition("=")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    fields.update(
        app=str(alert.get("app", "")),
        environment=str(alert.get("environment", "")),
        segment=segment,
        rule=str(alert.get("rule", "")),
        severity=str(alert.get("severity", "")),
        dedup_key=str(alert.get("dedup_key", "")),
    )
    return fields


def action_requests(alerts: Sequence[Mapping[str, Any]], rules: RuleSet) -> list[dict[str, Any]]:
    """The action records the newly firing alerts among ``alerts`` request."""
    by_name = {r.name: r for r in rules.rules}
    out: list[dict[str, Any]] = []
    for alert in alerts:
        rule = by_name.get(str(alert.get("rule")))
        evidence = alert.get("evidence") or {}
        if rule is None or not rule.actions or alert.get("status") != "firing":
            continue
        if "previous_severity" in evidence:  # an escalation of an incident already acted on
            continue
        fields = _fields(alert)
        for spec in rule.actions:
            target = render(spec.target, fields)
            parameters = {k: render(v, fields) for k, v in spec.parameters.items()}
            parameters.update(
                alert_event_id=str(alert["event_id"]),
                rule=rule.name,
                dedup_key=str(alert.get("dedup_key", "")),
                severity=str(alert.get("severity", "")),
            )
            for name in ("window_start", "window_end", "fired_at"):
                if name in evidence:
                    parameters[name] = str(evidence[name])
            ident = f"{alert['event_id']}:{spec.type}:{target}"
            out.append(
                action(
                    action_type=spec.type,
                    target=target,
                    app=str(alert.get("app", "")),
                    environment=str(alert.get("environment", "production")),
                    reason=str(alert.get("summary", ""))[:1000],
                    parameters=parameters,
                    event_id=str(uuid.uuid5(ACTION_NAMESPACE, ident)),
                    event_time=alert.get("event_time"),
                    trace_id=str(alert.get("trace_id") or "") or None,
                )
            )
    return out
