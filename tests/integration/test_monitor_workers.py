"""The drift and policy workers (``undertow worker --role drift|policy``) on the real stack.

Scored events of a tech-support assistant (chatterbot-corpus texts embedded with the real
MiniLM) go onto a scored topic of this test, first its usual topics, then general-knowledge
questions (a topic shift). The baseline is built from the usual topics and stored in the
warehouse's ``baselines`` table, where the drift worker reads it. Checked:

* the drift worker detects the shift, and its drift events in ``drift`` (under FINAL) and on
  the drift topic are exactly those of an in-process :class:`DriftMonitor` that saw the same
  events without interruption, although the worker was SIGKILLed mid-stream and restarted:
  it resumed its detectors from the checkpointed state;
* the policy worker turns the detection, and a prompt-injection attempt, into alerts in
  ``alerts`` and on the alerts topic, and the subscribers page Slack, PagerDuty and the
  signed webhook (loopback receivers that validate the documented formats);
* a malformed record on the scored topic becomes a dead letter of each role; the workers go on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client

from tests.receivers import Receivers, loopback_receivers
from undertow.infra.kafka import TopicSpec, ensure_topics
from undertow.infra.process import wait_until
from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.topics import DEADLETTER
from undertow.services.alerts.receiver import PagerDutyReceiver, SlackReceiver, WebhookReceiver
from undertow.services.bus import publish, read_range
from undertow.services.warehouse.baselines import BaselineStore
from undertow.services.warehouse.client import connect
from undertow.settings import StackSettings
from undertow.streams.drift import (
    BaselineConfig,
    CalibrationConfig,
    DriftMonitor,
    MonitorConfig,
    build_baseline,
)
from undertow.streams.drift.corpus import ASSISTANT_TOPICS, GENERAL_TOPICS, load_topics

from .test_alert_delivery import ROUTING_KEY, Subscribers, make_settings
from .test_worker import WorkerProcess, offsets

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
WINDOW = 300  # the drift worker's window (UNDERTOW_WORKER_DRIFT_WINDOW below)
STABLE = 1200
SHIFTED = 400
KILL_AFTER = 700  # events of the first part, before the SIGKILL


def scored_event(
    run: str, i: int, vector: np.ndarray, when: datetime, injection: float = 0.01
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/{i}")),
        "trace_id": uuid.uuid5(uuid.NAMESPACE_DNS, f"{run}/{i}").hex,
        "span_id": uuid.uuid5(uuid.NAMESPACE_OID, f"{run}/{i}").hex[:16],
        "parent_span_id": None,
        "event_time": when,
        "app": f"assist-{run}",
        "environment": "production",
        "user_hash": None,
        "session_hash": None,
        "attributes": {"test_run": run},
        "event_type": "prompt",
        "model": "smollm2",
        "prompt_name": "support",
        "prompt_version": "v1",
        "scores": {"injection": injection, "toxicity": 0.0},
        "scorer_versions": {},
        "embedding": [float(x) for x in vector],
        "embedding_model": "minilm",
        "input_tokens": None,
        "output_tokens": None,
        "cached_tokens": None,
        "cost_usd": None,
        "price_table_version": None,
        "latency_ms": None,
    }


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """MiniLM vectors of the usual topics' texts and of the shift's."""
    from undertow.streams.scoring.base import create_embedder

    usual = [u.text for u in load_topics(ASSISTANT_TOPICS) if len(u.text) <= 100][::3][:200]
    general = load_topics(GENERAL_TOPICS, exclude=set(usual))
    new = [u.text for u in general if len(u.text) <= 100][::4][:100]
    vectors = create_embedder("minilm").embed(usual + new)
    return vectors[: len(usual)], vectors[len(usual) :]


@pytest.fixture()
def run() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture()
def warehouse(stack: StackInfo, stack_settings: StackSettings) -> Client:
    return connect(stack.clickhouse_url, database=stack_settings.clickhouse_database)


@pytest.fixture()
def receivers() -> Iterator[Receivers]:
    from .test_alert_delivery import SECRET

    with loopback_receivers(ROUTING_KEY, SECRET) as started:
        yield started


def worker_env(
    stack: StackInfo, stack_settings: StackSettings, tmp_path: Path, **settings: str
) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "UNDERTOW_HOME": str(stack_settings.home),
        "UNDERTOW_WORKER_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "UNDERTOW_WORKER_CLICKHOUSE_URL": stack.clickhouse_url,
        "UNDERTOW_WORKER_CLICKHOUSE_DATABASE": stack_settings.clickhouse_database,
        "UNDERTOW_WORKER_DATA_DIR": str(tmp_path / "faust"),
        "UNDERTOW_WORKER_SESSION_TIMEOUT_S": "6",
        "UNDERTOW_WORKER_HEARTBEAT_INTERVAL_S": "1",
        "UNDERTOW_WORKER_COMMIT_INTERVAL_S": "0.5",
        "UNDERTOW_WORKER_CHECKPOINT_INTERVAL_S": "0.5",
        "UNDERTOW_WORKER_RETRY_BACKOFF_MAX_S": "1",
        "UNDERTOW_WORKER_BATCH_SIZE": "100",
        "UNDERTOW_WORKER_BASELINE_POLL_S": "1",
        "UNDERTOW_WORKER_DRIFT_WINDOW": str(WINDOW),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        **{f"UNDERTOW_WORKER_{k.upper()}": v for k, v in settings.items()},
    }


@pytest.fixture()
def start() -> Iterator[Callable[[dict[str, str], str, Path], WorkerProcess]]:
    """Starts workers of a role; kills whatever still runs at the end, failed test or not."""
    started: list[WorkerProcess] = []

    def run(env: dict[str, str], role: str, log: Path) -> WorkerProcess:
        worker = WorkerProcess({**env, "UNDERTOW_WORKER_ROLE": role}, log).start()
        started.append(worker)
        return worker

    yield run
    for worker in started:
        if worker.alive:
            worker.kill()


@pytest.mark.long(seconds=35)
def test_drift_is_detected_resumed_after_sigkill_alerted_and_paged(
    stack: StackInfo,
    stack_settings: StackSettings,
    warehouse: Client,
    corpus: tuple[np.ndarray, np.ndarray],
    receivers: tuple[SlackReceiver, PagerDutyReceiver, WebhookReceiver],
    run: str,
    tmp_path: Path,
    start: Callable[[dict[str, str], str, Path], WorkerProcess],
) -> None:
    bootstrap = stack.bootstrap_servers
    usual, new = corpus
    slack, pagerduty, webhook = receivers
    scored_topic, drift_topic, alerts_topic = (
        f"test.{name}.{run}" for name in ("scored", "drift", "alerts")
    )
    ensure_topics(
        bootstrap,
        [TopicSpec(scored_topic, 6), TopicSpec(drift_topic, 3), TopicSpec(alerts_topic, 3)],
    )
    dead_start = offsets(bootstrap, DEADLETTER)

    # The traffic: usual topics, then all questions from the new ones. One trace key, so the
    # events stay in order on one partition and the worker sees the order the test does.
    rng = np.random.default_rng(7)
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    rows = [usual[i] for i in rng.integers(0, len(usual), STABLE)]
    rows += [new[i] for i in rng.integers(0, len(new), SHIFTED)]
    events = [
        scored_event(run, i, v, t0 + timedelta(milliseconds=100 * i)) for i, v in enumerate(rows)
    ]
    # What the worker sees: the records as Avro carries them (float32 vectors).
    decoded = [CODEC.decode(CODEC.encode("scored_event", e)).record for e in events]

    reference = usual[np.random.default_rng(1).integers(0, len(usual), 3000)]
    baseline = build_baseline(
        {"app": f"assist-{run}", "model": "smollm2", "prompt_version": "v1"},
        embeddings={"prompt": reference},
        config=BaselineConfig(topics=16, reference_size=256),
        calibration=CalibrationConfig(events=300_000, statistics=("topic_surprise",), seed=3),
    )
    expected = DriftMonitor([baseline], MonitorConfig(window=WINDOW)).update_many(decoded)
    detections = [d for d in expected if d["detected"]]
    assert detections, "the in-process monitor missed the planted shift: the test is void"
    assert all(int(d["attributes"]["confirmed_at"]) >= STABLE for d in detections)
    BaselineStore(warehouse).save(baseline)

    env = worker_env(
        stack,
        stack_settings,
        tmp_path,
        scored_topic=scored_topic,
        drift_topic=drift_topic,
        alerts_topic=alerts_topic,
    )
    drift_env = {**env, "UNDERTOW_WORKER_GROUP_ID": f"test-drift-{run}"}
    policy_env = {**env, "UNDERTOW_WORKER_GROUP_ID": f"test-policy-{run}"}
    changelog = f"test-drift-{run}-drift-changelog"
    key = f"trace-{run}".encode()

    def encoded(part: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
        return [(key, CODEC.encode("scored_event", e)) for e in part]

    publish(bootstrap, scored_topic, [*encoded(events[:KILL_AFTER]), (key, b"not avro")])
    first = start(drift_env, "drift", tmp_path / "drift-0.log")
    # SIGKILL once a checkpoint exists, mid-stream: the rest of the traffic is not sent yet.
    wait_until(
        lambda: sum(offsets(bootstrap, changelog).values()) > 0 or None,
        timeout=120,
        what="a checkpoint of the drift state",
        alive=lambda: first.alive,
        interval=0.2,
    )
    first.kill()

    publish(bootstrap, scored_topic, encoded(events[KILL_AFTER:]))
    second = start(drift_env, "drift", tmp_path / "drift-1.log")
    policy = start(policy_env, "policy", tmp_path / "policy.log")

    def drift_rows() -> list[tuple[str, str, bool]]:
        return [
            (str(r[0]), str(r[1]), bool(r[2]))
            for r in warehouse.query(
                "SELECT event_id, stream, detected FROM drift FINAL WHERE app = {app:String} "
                "AND detector != 'window_mean' ORDER BY event_id",
                parameters={"app": f"assist-{run}"},
            ).result_rows
        ]

    want = sorted((str(d["event_id"]), str(d["stream"]), bool(d["detected"])) for d in expected)
    try:
        wait_until(
            lambda: True if len(drift_rows()) >= len(want) else None,
            timeout=180,
            what=f"{len(want)} drift events of the run",
            alive=lambda: second.alive,
            interval=0.5,
        )
    except Exception as exc:
        raise AssertionError(
            f"drift rows {drift_rows()} != expected {want}\n{second.log()[-3000:]}"
        ) from exc
    records = read_range(bootstrap, drift_topic, {}, offsets(bootstrap, drift_topic))
    got = [CODEC.decode(r.value).record for r in records]
    assert drift_rows() == want, (
        "the restarted worker did not resume the detector state: "
        f"{[(d['event_id'], d['attributes']) for d in got]} != "
        f"{[(d['event_id'], d['attributes']) for d in expected]}\n"
        + "\n".join(line for line in second.log().splitlines() if "resumed" in line)
    )

    on_topic = {str(d["event_id"]) for d in got}
    assert on_topic == {w[0] for w in want}  # the trace rows stay off the topic
    traced = warehouse.query(
        "SELECT stream, count() FROM drift FINAL WHERE app = {app:String} "
        "AND detector = 'window_mean' AND NOT detected GROUP BY stream",
        parameters={"app": f"assist-{run}"},
    ).result_rows
    assert traced and all(n >= 2 for _, n in traced), traced  # the statistic over time
    assert {r.key for r in records} == {baseline.segment_key.encode()}

    # The policy worker alerts on the detection; then a prompt-injection attempt.
    attack = scored_event(run, 10_000, usual[0], datetime.now(UTC), injection=0.99)
    publish(bootstrap, scored_topic, [(key, CODEC.encode("scored_event", attack))])

    def alert_rules() -> set[str]:
        return {
            str(r[0])
            for r in warehouse.query(
                "SELECT rule FROM alerts FINAL WHERE app = {app:String} AND status = 'firing'",
                parameters={"app": f"assist-{run}"},
            ).result_rows
        }

    wait_until(
        lambda: True if {"drift_detected", "prompt_injection"} <= alert_rules() else None,
        timeout=120,
        what="drift and injection alerts in the warehouse",
        alive=lambda: policy.alive,
        interval=0.5,
    )
    alerts = [
        CODEC.decode(r.value).record
        for r in read_range(bootstrap, alerts_topic, {}, offsets(bootstrap, alerts_topic))
    ]
    drift_alert = next(a for a in alerts if a["rule"] == "drift_detected")
    assert drift_alert["evidence"]["last_drift_event_id"] in {w[0] for w in want if w[2]}
    assert (
        drift_alert["segment"].startswith(f"app=assist-{run}")
        or baseline.segment_key in (drift_alert["segment"])
    )
    injection = next(a for a in alerts if a["rule"] == "prompt_injection")
    assert injection["severity"] == "critical"
    assert injection["evidence"]["last_event_id"] == attack["event_id"]

    # Paged: the subscribers deliver both to Slack, PagerDuty and the signed webhook.
    settings = make_settings(
        bootstrap, alerts_topic, f"test-alerts-{run}", slack, pagerduty, webhook
    )
    with Subscribers(settings) as subscribers:
        for receiver in (slack, pagerduty, webhook):
            wait_until(
                lambda r=receiver: True if len(r.accepted) >= 1 else None,
                timeout=90,
                what=f"a page at the {receiver.channel} receiver",
                alive=subscribers.alive,
            )
        wait_until(
            lambda: True if len(pagerduty.accepted) >= 2 else None,
            timeout=90,
            what="two PagerDuty incidents (drift, injection)",
            alive=subscribers.alive,
        )
    keys = {p.payload["dedup_key"] for p in pagerduty.accepted}
    assert {drift_alert["dedup_key"], injection["dedup_key"]} <= keys

    # The malformed record: a dead letter of the drift role's rekey stage; workers still up.
    letters = [
        CODEC.decode(r.value).record
        for r in read_range(bootstrap, DEADLETTER, dead_start, offsets(bootstrap, DEADLETTER))
    ]
    mine = [d for d in letters if d["source_topic"] == scored_topic]
    assert {d["processor"] for d in mine} >= {"drift.rekey", "policy.rekey"}
    assert all(d["source_offset"] == KILL_AFTER for d in mine)
    assert second.alive and policy.alive
    second.terminate()
    policy.terminate()
