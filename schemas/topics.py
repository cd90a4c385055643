"""Topic names of the architecture. Partitions, retention and compaction: infra/topics.yaml."""

EVENTS = "undertow.events.v1"
SCORED = "undertow.scored.v1"
DRIFT = "undertow.drift.v1"
ALERTS = "undertow.alerts.v1"
ACTIONS = "undertow.actions.v1"
REGISTRY = "undertow.registry.v1"
DEADLETTER = "undertow.deadletter.v1"

ALL = (EVENTS, SCORED, DRIFT, ALERTS, ACTIONS, REGISTRY, DEADLETTER)
