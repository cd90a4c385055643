"""``undertow ab report`` for real: an A/B test in the registry topic, its traffic in the real
ClickHouse (written by the worker's own sink), the report read back through the CLI.

Variant b's answers are rated better by users (80% thumbs up against 50%) and by the judge,
at the same cost: the report promotes b, and ``--act`` requests the promotion as an action.
On a copy where both variants are rated alike it continues. A test started with ``act`` ends
itself: the action service reviews it, requests the promotion and the promote worker moves the
label and stops the test.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from undertow.cli.registry import ab_app
from undertow.infra.process import wait_until
from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event, new_trace_id
from undertow.schemas.topics import ACTIONS
from undertow.services.actions.service import run_service
from undertow.services.actions.settings import ActionSettings
from undertow.services.bus import end_offsets, read_range
from undertow.services.registry.client import RegistryClient
from undertow.services.registry.state import RegistryState, push_prompt, start_experiment
from undertow.services.warehouse.client import connect
from undertow.settings import StackSettings
from undertow.streams.scoring.scored import Scored
from undertow.streams.sinks.warehouse import EventSink, SinkItem

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PER_ARM = 400


def traffic(test: str, prompt: str, rates: dict[str, float], seed: int) -> list[SinkItem]:
    """Per variant, PER_ARM completions with cost, latency, a user rating and a judge rating."""
    rng = random.Random(seed)
    items: list[SinkItem] = []
    for i in range(PER_ARM * len(rates)):
        variant = sorted(rates)[i % len(rates)]
        version = "1" if variant == "a" else "2"
        trace = new_trace_id()
        when = T0 + timedelta(seconds=i)
        attributes = {"ab.test": test, "ab.variant": variant}
        completion = event(
            "completion",
            {
                "text": "ok",
                "model": "m",
                "prompt_name": prompt,
                "prompt_version": version,
                "latency_ms": rng.gauss(800, 80),
                "finish_reason": "stop",
            },
            app="ab-app",
            trace_id=trace,
            event_time=when,
            attributes=attributes,
        )
        cost = Scored(scores={}, cost_usd=0.002 + rng.random() * 0.0002)
        items.append(SinkItem(completion, "undertow.events.v1", 0, len(items), cost))
        good = rng.random() < rates[variant]
        for source, label, score in (
            ("user", None, 1.0 if good else 0.0),
            ("judge", "relevance", min(1.0, max(0.0, rng.gauss(0.5 + 0.2 * good, 0.1)))),
        ):
            feedback = event(
                "feedback",
                {"score": score, "label": label, "source": source},
                app="ab-app",
                trace_id=trace,
                event_time=when + timedelta(seconds=1),
                attributes=attributes,
            )
            items.append(SinkItem(feedback, "undertow.events.v1", 0, len(items), Scored(scores={})))
    return items


def run_report(
    stack_settings: StackSettings, database: str, monkeypatch: pytest.MonkeyPatch, *args: str
) -> Any:
    monkeypatch.setenv("UNDERTOW_HOME", str(stack_settings.home))
    monkeypatch.setenv("UNDERTOW_CLICKHOUSE_DATABASE", database)
    result = CliRunner().invoke(ab_app, ["report", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


@pytest.mark.parametrize(
    ("rates", "decision"), [({"a": 0.5, "b": 0.8}, "promote"), ({"a": 0.6, "b": 0.6}, "continue")]
)
def test_the_report_decides_from_the_warehouse(
    stack: StackInfo,
    stack_settings: StackSettings,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    rates: dict[str, float],
    decision: str,
) -> None:
    test, prompt = f"tone-{decision}-{RUN}", f"greeting-{decision}-{RUN}"
    registry = RegistryClient(stack.bootstrap_servers)
    now = time.time_ns() // 1000
    registry.publish(push_prompt(registry.load(), prompt, "Hi.", labels=["production"], now=now))
    registry.publish(push_prompt(registry.load(), prompt, "Hello there.", now=now + 1))
    registry.publish(
        start_experiment(registry.load(), prompt, test, {"a": "1", "b": "2"}, now=now + 2)
    )
    client = connect(stack.clickhouse_url, database=database)
    sink = EventSink(lambda: client)
    try:
        result = asyncio.run(sink.write(traffic(test, prompt, rates, seed=len(decision))))
    finally:
        sink.close()
    assert not result.rejected

    before = end_offsets(stack.bootstrap_servers, ACTIONS)
    report = json.loads(run_report(stack_settings, database, monkeypatch, test, "--json", "--act"))
    assert report["decision"] == decision, report["reason"]
    metrics = {(m["metric"], m["role"]) for m in report["metrics"]}
    assert metrics == {
        ("judge_relevance", "primary"),
        ("feedback", "primary"),
        ("cost_usd", "guardrail"),
        ("latency_ms", "guardrail"),
    }
    feedback = next(m for m in report["metrics"] if m["metric"] == "feedback")
    assert (feedback["n_control"], feedback["n_treatment"]) == (PER_ARM, PER_ARM)
    assert feedback["mean_treatment"] - feedback["mean_control"] == pytest.approx(
        rates["b"] - rates["a"], abs=0.08
    )
    ends = end_offsets(stack.bootstrap_servers, ACTIONS)
    codec = AvroCodec()
    requests = [
        codec.decode(r.value).record
        for r in read_range(stack.bootstrap_servers, ACTIONS, before, ends)
    ]
    mine = [r for r in requests if r["parameters"].get("ab_test") == test]
    if decision == "promote":
        [promote] = mine
        assert (promote["action_type"], promote["target"]) == ("promote", prompt)
        assert promote["parameters"]["version"] == "2"
    else:
        assert mine == []


def test_a_test_marked_act_ends_itself_with_its_winner(
    stack: StackInfo, database: str, tmp_path: Path
) -> None:
    test, prompt = f"tone-auto-{RUN}", f"greeting-auto-{RUN}"
    registry = RegistryClient(stack.bootstrap_servers)
    now = time.time_ns() // 1000
    registry.publish(push_prompt(registry.load(), prompt, "Hi.", labels=["production"], now=now))
    registry.publish(push_prompt(registry.load(), prompt, "Hello there.", now=now + 1))
    registry.publish(
        start_experiment(registry.load(), prompt, test, {"a": "1", "b": "2"}, act=True, now=now + 2)
    )
    client = connect(stack.clickhouse_url, database=database)
    sink = EventSink(lambda: client)
    try:
        assert not asyncio.run(sink.write(traffic(test, prompt, {"a": 0.5, "b": 0.8}, 3))).rejected
    finally:
        sink.close()

    settings = ActionSettings(
        group_prefix=f"ab-auto-{RUN}",
        workers="promote",
        ab_review_interval_s=1,
        mirror_registry=False,
        finetune_output_dir=tmp_path,
    )
    stop = threading.Event()
    service = threading.Thread(
        target=run_service,
        args=(settings, stop),
        kwargs={
            "bootstrap": stack.bootstrap_servers,
            "warehouse": lambda: connect(stack.clickhouse_url, database=database),
        },
        daemon=True,
    )
    service.start()
    try:

        def ended() -> RegistryState | None:
            state = registry.load()
            return state if state.experiment(prompt, "production") is None else None

        state = wait_until(ended, 90, "the A/B test ending itself")
    finally:
        stop.set()
        service.join(60)
    assert state.prompt(prompt).version == "2"  # the winner holds the label
    rows = client.query(
        "SELECT phase, parameters['ab_decision'], parameters['version'] FROM actions FINAL "
        "WHERE target = {prompt:String} ORDER BY ingested_at",
        parameters={"prompt": prompt},
    ).result_rows
    assert [r[0] for r in rows] == ["requested", "started", "succeeded"], rows
    assert {(r[1], r[2]) for r in rows} == {("promote", "2")}
