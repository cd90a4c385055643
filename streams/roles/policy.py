"""The policy processor: scored and drift events per app through the rules, alerts out.

The worker's ``policy`` role runs two stages (wired by :func:`add`):

1. **rekey**: scored events (keyed by trace_id) and drift events (keyed by segment) are
   forwarded unchanged to ``<group>-apps-repartition``, keyed by their ``app``, so one worker
   sees every event of an app, which every rule group lies within (checked by
   :func:`check_partitioning`);
2. **police** (:class:`PolicyProcessor`): one :class:`~undertow.streams.policy.PolicyEngine`
   per app observes each record; the alerts it returns, and those of the periodic
   :meth:`PolicyProcessor.tick` (windows that close and incidents that clear while traffic is
   quiet), are stored in the ``alerts`` table and published to ``undertow.alerts.v1`` (key:
   dedup_key), where the Slack, PagerDuty and webhook subscribers pick them up.

Each app's engine state is checkpointed to a Faust table keyed by app
(:mod:`undertow.streams.state.checkpoint`). Alerts are a deterministic function of the input and
that state, with derived ids, so the replay after a crash emits the same alerts again (the
table deduplicates them, the subscribers do not page twice for a known transition).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from undertow.errors import ConfigError
from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.services.warehouse.rows import ACTION_COLUMNS, ALERT_COLUMNS, action_row, alert_row
from undertow.streams.policy import PolicyEngine, PolicyError, RuleSet
from undertow.streams.policy.actions import action_requests
from undertow.streams.policy.rules import DriftRule
from undertow.streams.records import SourceRecord, letter
from undertow.streams.roles import rekey
from undertow.streams.sinks.warehouse import digest, warehouse_sink
from undertow.streams.state.checkpoint import CheckpointError, KeyedStates

if TYPE_CHECKING:
    from undertow.streams.runtime.worker import Runtime

logger = logging.getLogger(__name__)

PROCESSOR = "policy"
INPUT_TYPES = ("scored_event", "drift_event")


def check_partitioning(rules: RuleSet) -> None:
    """The policy worker partitions its input by app: every rule must group within an app.

    Scored rules need ``app`` in ``group_by``; drift rules ``app`` or ``segment`` (a drift
    segment names its app)."""
    for rule in rules.rules:
        allowed = {"app", "segment"} if isinstance(rule, DriftRule) else {"app"}
        if not allowed & set(rule.group_by):
            raise ConfigError(
                f"rule {rule.name!r} groups by {list(rule.group_by)}: the policy worker "
                f"partitions events by app, so group_by must include {' or '.join(sorted(allowed))}"
            )


def app_record_key(record: dict[str, Any]) -> str:
    """The repartition key of a scored or drift event: its app."""
    return str(record.get("app") or "")


@dataclass
class PolicyOutput:
    """What one micro-batch (or tick) came to."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, object]] = field(default_factory=list)
    events: int = 0
    replayed: int = 0
    # Events older than the engine's watermark (every rule's allowed lateness): left out.
    late: int = 0
    # Rule evaluations left out because the event was too late for that rule only.
    late_for_rule: int = 0


class PolicyProcessor:
    """One :class:`PolicyEngine` per app over repartitioned scored and drift events.

    ``origins``: the partitions scored events are first read from (``topic:partition``);
    each engine's event time waits for all of them (:meth:`PolicyEngine.expect_origins`).
    """

    def __init__(
        self,
        rules: RuleSet,
        states: KeyedStates,
        codec: AvroCodec | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        origins: Sequence[str] = (),
    ) -> None:
        check_partitioning(rules)
        self.rules = rules
        self.states = states
        self.codec = codec or AvroCodec()
        self.clock = clock
        self.origins = tuple(origins)
        self.engines: dict[str, PolicyEngine] = {}

    def process(self, records: Sequence[SourceRecord], generation: int) -> PolicyOutput:
        out = PolicyOutput()
        for rec in records:
            if rec.key is None:
                out.dead_letters.append(
                    letter(rec, "repartitioned record without an app key", "KeyError", PROCESSOR)
                )
                continue
            key = rec.key.decode("utf-8", "replace")
            engine = self._engine(key, rec.partition, generation)
            origin, origin_offset = rec.source
            if not self.states.fresh(key, origin, origin_offset):
                out.replayed += 1
                continue
            try:
                if rec.value is None:
                    raise DecodeError("empty value (tombstone): expected a scored or drift event")
                decoded = self.codec.decode(rec.value)
                if decoded.type_name not in INPUT_TYPES:
                    raise DecodeError(
                        f"record type {decoded.type_name}; the policy processor takes "
                        f"{' and '.join(INPUT_TYPES)} records"
                    )
                if app_record_key(decoded.record) != key:
                    raise DecodeError(f"app key {key!r} does not match the record's app")
                late, late_for_rule = (engine.metrics[m] for m in ("late_events", "late_for_rule"))
                if decoded.type_name == "scored_event":
                    alerts = engine.observe_scored(decoded.record, origin)
                else:
                    alerts = engine.observe_drift(decoded.record, origin)
            except (DecodeError, PolicyError) as exc:
                out.dead_letters.append(letter(rec, str(exc), type(exc).__name__, PROCESSOR))
                continue
            out.late += engine.metrics["late_events"] - late
            out.late_for_rule += engine.metrics["late_for_rule"] - late_for_rule
            self.states.folded(key, origin, origin_offset)
            out.alerts.extend(alerts)
            out.events += 1
        out.actions = action_requests(out.alerts, self.rules)
        return out

    def tick(self, generation: int, now: datetime | None = None) -> PolicyOutput:
        """Let time move on in every app's engine (quiet streams); the alerts that follow."""
        out = PolicyOutput()
        for key in self.states.keys(generation):
            engine = self.engines.get(key)
            if engine is None:
                continue
            alerts = engine.tick(now)
            if alerts:
                self.states.touch(key)
                out.alerts.extend(alerts)
        out.actions = action_requests(out.alerts, self.rules)
        return out

    def _engine(self, key: str, partition: int, generation: int) -> PolicyEngine:
        if self.states.current(key, generation) and key in self.engines:
            return self.engines[key]
        try:
            saved = self.states.load(key, partition, generation)
        except CheckpointError as exc:
            logger.error("app %s: policy checkpoint unreadable, starting afresh: %s", key, exc)
            saved = None
        engine = PolicyEngine(self.rules, self.clock)
        if saved is not None:
            try:
                engine.restore(saved.state)
            except PolicyError as exc:
                logger.error("app %s: policy state not restorable, starting afresh: %s", key, exc)
                engine = PolicyEngine(self.rules, self.clock)
                self.states.touch(key)
        engine.expect_origins(self.origins)
        self.engines[key] = engine
        return engine

    def state_of(self, key: str) -> dict[str, Any] | None:
        engine = self.engines.get(key)
        return None if engine is None else engine.state()

    def forget(self, generation: int) -> None:
        for key in self.states.forget(lambda k: not self.states.current(k, generation)):
            self.engines.pop(key, None)


def add(runtime: Runtime, partitions: int) -> None:
    """Wire the policy role: rekey scored and drift events by app, run
    :class:`PolicyProcessor` on the repartition topic (``partitions``) with checkpointed
    state, store and publish alerts and action requests, and tick quiet streams."""
    from undertow.streams.policy import load_rules

    settings = runtime.settings
    rules = load_rules(settings.rules_file)
    stage = runtime.keyed("policy", partitions, "policy engine state by app")
    codec = AvroCodec()
    # The repartition topic has as many partitions as the scored topic (ensure_worker_topics).
    origins = [f"{settings.scored_topic}:{p}" for p in range(partitions)]
    processor = PolicyProcessor(rules, stage.states, codec, origins=origins)
    sink = warehouse_sink(settings)
    rekey.add(
        runtime,
        (settings.scored_topic, settings.drift_topic),
        ("scored_event", "drift_event"),
        app_record_key,
    )

    async def emit(output: PolicyOutput) -> None:
        if output.late or output.late_for_rule:
            logger.warning(
                "policy: %d events came later than every rule's allowed lateness and were left "
                "out; %d rule evaluations were left out as too late for that rule",
                output.late,
                output.late_for_rule,
            )
        alerts = output.alerts
        if alerts:
            rows = [alert_row(a) for a in alerts]
            token = digest("alerts:" + ",".join(str(a["event_id"]) for a in alerts))
            await sink.insert_rows("alerts", ALERT_COLUMNS, rows, token)
            messages = [(str(a["dedup_key"]).encode(), codec.encode("alert", a)) for a in alerts]
            await runtime.publish(settings.alerts_topic, messages, "alerts")
            for a in alerts:
                logger.info(
                    "alert %s %s %s (%s)", a["status"], a["severity"], a["rule"], a["dedup_key"]
                )
        if output.actions:
            # Requests land in the table and on the topic before the alerts' offsets commit;
            # their ids derive from the alerts', so a replay requests nothing twice.
            acts = output.actions
            token = digest("actions:" + ",".join(str(a["event_id"]) for a in acts))
            await sink.insert_rows("actions", ACTION_COLUMNS, [action_row(a) for a in acts], token)
            messages = [(str(a["target"]).encode(), codec.encode("action", a)) for a in acts]
            await runtime.publish(settings.actions_topic, messages, "actions")
            for a in acts:
                logger.info("action requested: %s %s", a["action_type"], a["target"])
        letters = [(None, codec.encode("dead_letter", d)) for d in output.dead_letters]
        await runtime.publish(settings.deadletter_topic, letters, "dead letters")

    stage.run(processor.process, emit, processor.state_of, processor.forget)

    async def tick() -> None:
        async with stage.lock:
            await emit(processor.tick(stage.generation))

    runtime.timer(settings.policy_tick_s, "undertow.streams.policy.tick", tick)


__all__ = [
    "INPUT_TYPES",
    "PROCESSOR",
    "PolicyOutput",
    "PolicyProcessor",
    "add",
    "app_record_key",
    "check_partitioning",
]
