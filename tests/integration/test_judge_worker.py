"""The judge worker (``undertow worker --role judge``) on the real stack, judged by SmolLM2.

The judge model is Undertow's own gateway serving SmolLM2-135M-Instruct on CPU, in a thread
of this test; it publishes its own exchanges to the same event topic under an app the worker
excludes (so the judge never judges itself). An app publishes traces through the SDK: four
with retrieved documents, four without, one failed completion, and one whose prompt is only
in the warehouse (written straight to ``events``, as after a worker restart), which the
worker must find there. Sample rate 1.0. Checked:

* ``judge_scores`` (FINAL) has exactly one row per judged completion and applicable rubric,
  none for the failed completion, none for the judge's own traffic, no groundedness row for
  the traces without documents; each row has a score in 0..1 or a parse_error, never both;
* every scored row is a feedback event on the topic (source judge, label = rubric, the row's
  deterministic id, parent span = the completion's span), and unreadable ones are not;
* the worker stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from undertow.infra.kafka import TopicSpec, ensure_topics
from undertow.infra.process import wait_until
from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event, event_body, event_type
from undertow.services.bus import read_range
from undertow.services.gateway.app import create_app
from undertow.services.gateway.backends.local import LocalBackend
from undertow.services.gateway.server import ServerThread
from undertow.services.gateway.settings import GatewaySettings
from undertow.services.sdk import SdkConfig, Undertow
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.rows import insert_events
from undertow.settings import StackSettings
from undertow.streams.judge import load_rubrics
from undertow.streams.roles.judge import judge_id

from .test_worker import WorkerProcess, offsets

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
MODEL = "SmolLM2-135M-Instruct"
KEY = "judge-key-0123456789"
RUBRICS = {r.name: r for r in load_rubrics()}

# (question, answer, documents or None)
TRAFFIC: list[tuple[str, str, list[str] | None]] = [
    (
        "What is the capital of France?",
        "The capital of France is Paris.",
        ["Paris is the capital and largest city of France."],
    ),
    (
        "How long do refunds take?",
        "Refunds take about five business days.",
        ["Refunds are processed within 5 business days of the return."],
    ),
    (
        "Can I change my delivery address?",
        "Yes, you can change it in your account settings before shipping.",
        ["Delivery addresses can be edited under Account > Orders until the order ships."],
    ),
    (
        "What is the boiling point of water?",
        "Bananas are yellow.",
        ["Water boils at 100 degrees Celsius at sea level."],
    ),
    ("Name three colours.", "Red, green and blue.", None),
    ("What is 2 + 2?", "2 + 2 equals 4.", None),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", None),
    ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side.", None),
]


@pytest.fixture()
def run() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture()
def warehouse(stack: StackInfo, stack_settings: StackSettings) -> Client:
    client: Client = connect(stack.clickhouse_url, database=stack_settings.clickhouse_database)
    return client


@pytest.fixture()
def topic(stack: StackInfo, run: str) -> str:
    name = f"test.events.judge.{run}"
    ensure_topics(stack.bootstrap_servers, [TopicSpec(name, 3)])
    offsets(stack.bootstrap_servers, name)  # partition leaders are there
    return name


@pytest.fixture()
def judge_gateway(stack: StackInfo, topic: str, run: str) -> Iterator[ServerThread]:
    """SmolLM2 behind the gateway, publishing its own exchanges as app ``judge-<run>``."""
    settings = GatewaySettings(
        api_keys=KEY, max_tokens=64, default_max_tokens=16, default_temperature=0.0
    )
    backend = LocalBackend.from_settings(settings)
    config = SdkConfig(app=f"judge-{run}", bootstrap_servers=stack.bootstrap_servers, topic=topic)
    with Undertow(config) as sdk, ServerThread(create_app(settings, backend, sdk)) as server:
        yield server


@pytest.fixture()
def worker(
    stack: StackInfo,
    stack_settings: StackSettings,
    judge_gateway: ServerThread,
    topic: str,
    run: str,
    tmp_path: Path,
) -> Iterator[WorkerProcess]:
    env = {
        **os.environ,
        "UNDERTOW_HOME": str(stack_settings.home),
        "UNDERTOW_WORKER_ROLE": "judge",
        "UNDERTOW_WORKER_GROUP_ID": f"test-judge-{run}",
        "UNDERTOW_WORKER_EVENTS_TOPIC": topic,
        "UNDERTOW_WORKER_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "UNDERTOW_WORKER_CLICKHOUSE_URL": stack.clickhouse_url,
        "UNDERTOW_WORKER_CLICKHOUSE_DATABASE": stack_settings.clickhouse_database,
        "UNDERTOW_WORKER_DATA_DIR": str(tmp_path / "faust"),
        "UNDERTOW_WORKER_SESSION_TIMEOUT_S": "6",
        "UNDERTOW_WORKER_HEARTBEAT_INTERVAL_S": "1",
        "UNDERTOW_WORKER_COMMIT_INTERVAL_S": "0.5",
        "UNDERTOW_WORKER_RETRY_BACKOFF_MAX_S": "1",
        "UNDERTOW_WORKER_JUDGE_BASE_URL": judge_gateway.url + "/v1",
        "UNDERTOW_WORKER_JUDGE_MODEL": MODEL,
        "UNDERTOW_WORKER_JUDGE_API_KEY": KEY,
        "UNDERTOW_WORKER_JUDGE_SAMPLE_RATE": "1.0",
        "UNDERTOW_WORKER_JUDGE_MAX_TOKENS": "16",
        "UNDERTOW_WORKER_JUDGE_CONCURRENCY": "2",
        "UNDERTOW_WORKER_JUDGE_LOOKUP_WAIT_S": "120",
        "UNDERTOW_WORKER_JUDGE_EXCLUDE_APPS": f'["judge-{run}"]',
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    process = WorkerProcess(env, tmp_path / "judge.log")
    yield process
    if process.alive:
        process.kill()


def publish_traffic(sdk: Undertow, run: str) -> None:
    for i, (question, answer, documents) in enumerate(TRAFFIC):
        trace = uuid.uuid5(uuid.NAMESPACE_DNS, f"{run}/{i}").hex
        root = f"{i:02d}00000000000a01"
        if documents is not None:
            sdk.record_retrieval(
                trace_id=trace,
                span_id=f"{i:02d}00000000000b01",
                parent_span_id=root,
                query=question,
                documents=[{"id": f"doc-{i}", "score": 0.8, "text": t} for t in documents],
                store="kb",
                latency_ms=4.0,
            )
        sdk.record_prompt(
            trace_id=trace,
            span_id=f"{i:02d}00000000000c01",
            parent_span_id=root,
            messages=[{"role": "user", "content": question}],
            model="support-model",
            prompt_name="faq",
            prompt_version="3",
        )
        sdk.record_completion(
            trace_id=trace,
            span_id=f"{i:02d}00000000000d01",
            parent_span_id=f"{i:02d}00000000000c01",
            model="support-model",
            model_version="2025-01",
            text=answer,
            latency_ms=250.0,
            finish_reason="stop",
            prompt_name="faq",
            prompt_version="3",
            attributes={"ab.variant": "B" if i % 2 else "A"},
        )
    failed = uuid.uuid5(uuid.NAMESPACE_DNS, f"{run}/failed").hex
    sdk.record_prompt(
        trace_id=failed,
        span_id="ff00000000000c01",
        parent_span_id=None,
        messages=[{"role": "user", "content": "Hello?"}],
    )
    sdk.record_completion(
        trace_id=failed,
        span_id="ff00000000000d01",
        parent_span_id="ff00000000000c01",
        model="support-model",
        text="",
        latency_ms=30_000.0,
        finish_reason="error",
    )


@pytest.mark.long(seconds=30)
def test_judge_worker_scores_sampled_completions_and_publishes_feedback(
    stack: StackInfo,
    warehouse: Client,
    topic: str,
    worker: WorkerProcess,
    run: str,
) -> None:
    bootstrap = stack.bootstrap_servers
    app = f"shop-{run}"
    start = offsets(bootstrap, topic)
    with Undertow(
        SdkConfig(app=app, bootstrap_servers=bootstrap, topic=topic, builtin_redactions=())
    ) as sdk:
        publish_traffic(sdk, run)
        # A trace whose prompt only the warehouse has (as if read before a restart).
        late = uuid.uuid5(uuid.NAMESPACE_DNS, f"{run}/warehouse").hex
        sdk.record_completion(
            trace_id=late,
            span_id="ee00000000000d01",
            parent_span_id="ee00000000000c01",
            model="support-model",
            text="Our store opens at nine in the morning.",
            latency_ms=200.0,
            finish_reason="stop",
        )
        assert sdk.flush(timeout=30.0), f"SDK did not deliver in time: {sdk.stats()}"
    began = time.monotonic()
    worker.start()
    prompt = event(
        "prompt",
        {"messages": [{"role": "user", "content": "When does the store open?"}]},
        app=app,
        trace_id=late,
        span_id="ee00000000000c01",
        event_time=datetime.now(UTC),
    )
    insert_events(warehouse, [(prompt, "elsewhere", 0, 0)])

    published = [
        CODEC.decode(r.value, "event").record
        for r in read_range(bootstrap, topic, start, offsets(bootstrap, topic))
    ]
    completions = {
        str(c["event_id"]): c
        for c in published
        if event_type(c) == "completion" and event_body(c)["finish_reason"] != "error"
    }
    assert len(completions) == len(TRAFFIC) + 1
    with_documents = {f"{i:02d}00000000000d01" for i, t in enumerate(TRAFFIC) if t[2]}
    expected = {
        (event_id, rubric)
        for event_id, c in completions.items()
        for rubric in RUBRICS
        if rubric != "groundedness" or c["span_id"] in with_documents
    }
    assert len(expected) == 4 * 3 + 4 * 2 + 2

    def rows() -> list[dict[str, Any]]:
        result = warehouse.query(
            "SELECT * FROM judge_scores FINAL WHERE trace_id IN {traces:Array(String)}",
            parameters={"traces": sorted({c["trace_id"] for c in published})},
        )
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def all_rows() -> list[dict[str, Any]] | None:
        found = rows()
        return found if len(found) >= len(expected) else None

    stored = wait_until(
        all_rows,
        timeout=420,
        what=f"{len(expected)} judge_scores rows",
        alive=lambda: worker.alive,
        interval=1.0,
    )
    assert {(str(r["completion_event_id"]), r["rubric"]) for r in stored} == expected
    assert not any(r["app"] == f"judge-{run}" for r in stored)
    for r in stored:
        completion = completions[str(r["completion_event_id"])]
        rubric = RUBRICS[r["rubric"]]
        assert str(r["id"]) == judge_id(
            str(completion["event_id"]), rubric.name, rubric.rubric_version
        )
        assert r["rubric_version"] == rubric.rubric_version
        assert r["trace_id"] == completion["trace_id"] and r["app"] == app
        assert r["judge_model"] == MODEL and r["scale"] == "1..5"
        assert dict(r["attributes"]) == dict(completion["attributes"])
        if r["score"] is None:
            assert r["parse_error"], r
        else:
            assert r["parse_error"] is None, r
            assert 0.0 <= r["score"] <= 1.0
            assert r["raw_score"] is not None and 1 <= r["raw_score"] <= 5
        assert r["latency_ms"] is not None and r["latency_ms"] > 0, r
    late_rows = [r for r in stored if r["trace_id"] == late]
    assert {r["rubric"] for r in late_rows} == {"relevance", "coherence"}
    assert not any((r["parse_error"] or "").startswith("missing input") for r in late_rows), (
        "the prompt in the warehouse was not found"
    )

    # Feedback: one event per scored row, with the row's id, on the topic.
    scored = {str(r["id"]): r for r in stored if r["score"] is not None}
    # Greedy decoding makes SmolLM2's replies repeatable; it gave 2 readable scores of 22 here.
    assert scored, "no reply of the judge was readable: the feedback checks would be void"

    def feedback() -> dict[str, dict[str, Any]] | None:
        records = read_range(bootstrap, topic, start, offsets(bootstrap, topic))
        found = {}
        for rec in records:
            decoded = CODEC.decode(rec.value, "event").record
            if event_type(decoded) == "feedback" and event_body(decoded)["source"] == "judge":
                found[str(decoded["event_id"])] = decoded
        return found if len(found) >= len(scored) else None

    events = wait_until(feedback, timeout=60, what="the judge's feedback events", interval=0.5)
    judged_at = time.monotonic() - began
    everything = read_range(bootstrap, topic, start, offsets(bootstrap, topic))
    own = [r for r in everything if CODEC.decode(r.value, "event").record["app"] == f"judge-{run}"]
    assert own, "the judge gateway published nothing: the exclusion was not tested"
    assert set(events) == set(scored)
    for event_id, fb in events.items():
        row = scored[event_id]
        body = event_body(fb)
        assert body["label"] == row["rubric"]
        assert body["score"] == pytest.approx(row["score"])
        completion = completions[str(row["completion_event_id"])]
        assert fb["parent_span_id"] == completion["span_id"]
        assert fb["trace_id"] == completion["trace_id"]
        assert fb["attributes"]["judge.rubric_version"] == row["rubric_version"]
        assert fb["attributes"].get("ab.variant") == completion["attributes"].get("ab.variant")
    print(
        f"judge: {len(stored)} rows, {len(scored)} scored, "
        f"{len(stored) - len(scored)} unreadable replies, {judged_at:.0f} s from worker start"
    )
    assert worker.terminate() == 0, worker.log()[-3000:]
