"""Rules over scores and drift that raise alerts: the pure core of the policy processor.

* :mod:`.rules`: the YAML rule format and its validation (``load_rules``, ``parse_rules``);
  ``streams/rules.yaml`` holds the defaults shipped with Undertow.
* :mod:`.engine`: :class:`PolicyEngine`, which turns scored and drift events into alert
  records, with state that saves to and restores from JSON-compatible dicts.
* :mod:`.windows` and :mod:`.sketch`: event-time buckets and the mergeable quantile sketch
  behind window rules; :mod:`.alerts` and :mod:`.sql`: alert records and their SQL.

The Faust agent decodes records, calls ``observe_scored``/``observe_drift`` per record and
``tick`` on a timer, produces every returned alert to ``undertow.alerts.v1`` keyed by its
``dedup_key``, and stores ``state()`` in a table.
"""

from undertow.streams.policy.engine import (
    STATE_FORMAT,
    PolicyEngine,
    PolicyInputError,
    PolicyStateError,
)
from undertow.streams.policy.rules import (
    BudgetRule,
    DriftRule,
    Escalation,
    EventRule,
    PercentileRule,
    PolicyError,
    RateRule,
    Rule,
    RuleError,
    RuleSet,
    load_rules,
    parse_rules,
    sql_parameters,
)

__all__ = [
    "STATE_FORMAT",
    "BudgetRule",
    "DriftRule",
    "Escalation",
    "EventRule",
    "PercentileRule",
    "PolicyEngine",
    "PolicyError",
    "PolicyInputError",
    "PolicyStateError",
    "RateRule",
    "Rule",
    "RuleError",
    "RuleSet",
    "load_rules",
    "parse_rules",
    "sql_parameters",
]
