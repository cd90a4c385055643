"""Inputs for the policy tests: scored and drift records shaped exactly as the worker and the
drift processor publish them, a manual clock, and a seeded scenario over the default rules."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import EventType, envelope, event
from undertow.streams.policy import PolicyEngine, parse_rules
from undertow.streams.scoring.scored import Scored, scored_record

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CODEC = AvroCodec()
_IDS = iter(range(1, 10**9))


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def new_id() -> str:
    """A fresh, readable UUID (00000000-0000-0000-0000-000000000017)."""
    return str(uuid.UUID(int=next(_IDS)))


class ManualClock:
    """The processing clock of a test: it only moves when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def scored(
    when: datetime | float,
    kind: EventType = "completion",
    *,
    app: str = "chat",
    environment: str = "production",
    model: str = "gpt-4o",
    scores: Mapping[str, float] | None = None,
    latency_ms: float = 800.0,
    cost_usd: float | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A ScoredEvent record as ``scored_record`` builds it for the scored topic."""
    moment = when if isinstance(when, datetime) else at(when)
    body: dict[str, Any]
    if kind == "prompt":
        body = {"messages": [{"role": "user", "content": "hi"}], "model": model}
    elif kind == "retrieval":
        body = {"query": "q", "store": "docs", "latency_ms": latency_ms}
    elif kind == "completion":
        body = {"model": model, "text": "hello", "latency_ms": latency_ms}
    else:
        body = {"score": 1.0}
    record = event(
        kind,
        body,
        app=app,
        environment=environment,
        event_time=moment,
        event_id=event_id or new_id(),
    )
    return scored_record(record, Scored(scores=dict(scores or {}), cost_usd=cost_usd))


def drift(
    when: datetime | float,
    *,
    detected: bool = True,
    stream: str = "embedding_distance",
    detector: str = "adwin",
    segment: str = "app=chat/model=gpt-4o",
    statistic: float = 0.42,
    threshold: float = 0.3,
    examples: Iterable[str] = (),
) -> dict[str, Any]:
    """A DriftEvent record (schemas/avro/drift_event.v1.avsc)."""
    moment = when if isinstance(when, datetime) else at(when)
    fields = dict(part.split("=", 1) for part in segment.split("/"))
    record = envelope(fields.get("app", "chat"), event_time=moment, event_id=new_id())
    record.update(
        segment=segment,
        segment_fields=fields,
        stream=stream,
        detector=detector,
        statistic=statistic,
        threshold=threshold,
        detected=detected,
        window_reference=500,
        window_current=200,
        baseline_version="b1",
        example_event_ids=list(examples),
        nearest_topics=["refunds"],
    )
    return record


def encodes(alerts: Iterable[Mapping[str, Any]]) -> None:
    """Every alert encodes as an ``alert`` record and decodes back to itself."""
    for alert in alerts:
        decoded = dict(CODEC.decode(CODEC.encode("alert", alert), "alert").record)
        decoded["event_id"] = str(decoded["event_id"])
        assert decoded == alert, (decoded, alert)


def engine(
    rules: list[dict[str, Any]], clock: ManualClock | None = None, **settings: Any
) -> PolicyEngine:
    """An engine over rules given as YAML-shaped dicts (lateness 0 unless given)."""
    settings.setdefault("allowed_lateness", 0)
    return PolicyEngine(parse_rules({"rules": rules, **settings}), clock or ManualClock())


@dataclass
class Step:
    """One call in a scenario: ``observe_scored``, ``observe_drift`` or ``tick``."""

    call: str
    at: datetime
    record: dict[str, Any] | None = None


def run(policy: PolicyEngine, clock: ManualClock, steps: Iterable[Step]) -> list[dict[str, Any]]:
    """Feed the steps (the processing clock at each step's time); every alert, checked to
    encode."""
    out: list[dict[str, Any]] = []
    for step in steps:
        clock.now = step.at
        if step.call == "scored":
            assert step.record is not None
            out += policy.observe_scored(step.record)
        elif step.call == "drift":
            assert step.record is not None
            out += policy.observe_drift(step.record)
        else:
            out += policy.tick(step.at)
    encodes(out)
    return out


def feed(policy: PolicyEngine, clock: ManualClock, records: Iterable[dict[str, Any]]) -> list[Any]:
    """Observe scored or drift records, arriving at their event times."""
    steps = [Step("drift" if "detector" in r else "scored", r["event_time"], r) for r in records]
    return run(policy, clock, steps)


def scenario(seed: int = 7, minutes: int = 40) -> list[Step]:
    """A seeded day in the life of app ``chat`` that trips every default rule.

    Every 5 s a prompt, a completion and (every 15 s) a retrieval. Completions cost $0.25
    (the hourly budget of $50 is passed after ~17 minutes), are toxic in 5% of cases in
    minutes 10-15 and 20% in minutes 15-17, and slow (15 s) in 20% of cases in minutes 5-12.
    Injection bursts at minutes 3-4 and 30; a poisoned document at minute 6; drift detections
    at minutes 8, 9 and 20. Events arrive up to 20 s out of order; a tick every minute, and
    three hours of quiet at the end.
    """
    rng = random.Random(seed)
    steps: list[Step] = []
    for tick in range(0, minutes * 60, 5):
        minute = tick / 60
        toxic_rate = 0.2 if 15 <= minute < 17 else 0.05 if 10 <= minute < 15 else 0.0
        slow = 5 <= minute < 12 and rng.random() < 0.2
        jitter = rng.uniform(0, 20)
        when = at(tick - jitter) if tick > 20 else at(tick)
        injection = 0.95 if (3 <= minute < 4 and tick % 15 == 0) or tick == 1800 else 0.02
        steps.append(
            Step("scored", at(tick), scored(when, "prompt", scores={"injection": injection}))
        )
        steps.append(
            Step(
                "scored",
                at(tick),
                scored(
                    when,
                    scores={"toxicity": 0.9 if rng.random() < toxic_rate else 0.01},
                    latency_ms=15000.0 if slow else rng.uniform(400, 1200),
                    cost_usd=0.25,
                ),
            )
        )
        if tick % 15 == 0:
            documents = 0.97 if tick == 360 else 0.05
            steps.append(
                Step(
                    "scored",
                    at(tick),
                    scored(when, "retrieval", scores={"injection_documents_max": documents}),
                )
            )
        if tick in (480, 540, 720, 1200):
            steps.append(Step("drift", at(tick), drift(at(tick), detected=tick != 720)))
        if tick % 60 == 0:
            steps.append(Step("tick", at(tick)))
    end = at(minutes * 60)
    steps += [Step("tick", end + timedelta(minutes=m)) for m in (1, 2, 5, 30, 60, 180)]
    return steps


def by_rule(alerts: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """(rule, status, severity) of each alert, in order."""
    for alert in alerts:
        yield alert["rule"], alert["status"], alert["severity"]
