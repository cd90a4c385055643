"""A topic shift through the whole pipeline, every part started through the CLI.

``undertow infra up`` starts the stack in a fresh state directory; ``undertow worker`` runs the
ingest (the real MiniLM, toxicity and injection scorers), drift and policy roles;
``undertow alerts serve`` delivers to loopback Slack, PagerDuty and webhook receivers. Prompts
of a tech-support assistant (chatterbot-corpus texts) are published as events; a baseline is
built from the warehouse with ``undertow baseline build``; more of the usual traffic raises no
detection; then the prompts move to general-knowledge questions, and the shift is detected,
alerted and paged.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.processes import UNDERTOW, Processes
from tests.receivers import Receivers, loopback_receivers
from undertow.infra.process import wait_until
from undertow.infra.stack import LocalStack
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event
from undertow.schemas.topics import EVENTS
from undertow.services.alerts.receiver import PagerDutyReceiver, SlackReceiver, WebhookReceiver
from undertow.services.bus import publish
from undertow.services.warehouse.client import connect
from undertow.settings import StackSettings
from undertow.streams.drift.corpus import ASSISTANT_TOPICS, GENERAL_TOPICS, load_topics

pytestmark = pytest.mark.e2e

APP = "helpdesk"
ROUTING_KEY = "E2eRoutingKey0123456789abcdefghi"
SECRET = "e2e-webhook-secret-0123456789abcdef"
CODEC = AvroCodec()


def prompts(texts: list[str], start: datetime) -> list[dict[str, Any]]:
    return [
        event(
            "prompt",
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful support assistant."},
                    {"role": "user", "content": text},
                ],
                "model": "smollm2-135m-instruct",
                "prompt_name": "support-answer",
                "prompt_version": "3",
            },
            app=APP,
            event_time=start + timedelta(milliseconds=50 * i),
        )
        for i, text in enumerate(texts)
    ]


@pytest.fixture()
def receivers() -> Iterator[Receivers]:
    with loopback_receivers(ROUTING_KEY, SECRET) as started:
        yield started


@pytest.mark.long(seconds=70)
def test_a_topic_shift_is_detected_alerted_and_paged(
    tmp_path: Path, receivers: tuple[SlackReceiver, PagerDutyReceiver, WebhookReceiver]
) -> None:
    slack, pagerduty, webhook = receivers
    home = tmp_path / "state"
    env = {**os.environ, "UNDERTOW_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    up = subprocess.run([*UNDERTOW, "infra", "up"], env=env, capture_output=True, timeout=300)
    assert up.returncode == 0, up.stdout.decode() + up.stderr.decode()
    procs = Processes(env, tmp_path)
    try:
        stack = LocalStack(StackSettings(home=home)).require()
        warehouse = connect(stack.clickhouse_url, database=StackSettings().clickhouse_database)
        fast = {
            "UNDERTOW_WORKER_SESSION_TIMEOUT_S": "6",
            "UNDERTOW_WORKER_HEARTBEAT_INTERVAL_S": "1",
            "UNDERTOW_WORKER_BASELINE_POLL_S": "1",
            "UNDERTOW_WORKER_CHECKPOINT_INTERVAL_S": "1",
        }
        for role in ("ingest", "drift", "policy"):
            procs.start(role, ["worker", "--role", role], **fast)
        procs.start(
            "alerts",
            ["alerts", "serve"],
            UNDERTOW_ALERTS_SLACK_WEBHOOK_URL=slack.url,
            UNDERTOW_ALERTS_PAGERDUTY_ROUTING_KEY=ROUTING_KEY,
            UNDERTOW_ALERTS_PAGERDUTY_EVENTS_URL=pagerduty.url,
            UNDERTOW_ALERTS_WEBHOOK_URL=webhook.url,
            UNDERTOW_ALERTS_WEBHOOK_SECRET=SECRET,
            UNDERTOW_ALERTS_GROUP_WINDOW_S="2",
        )

        usual = [u.text for u in load_topics(ASSISTANT_TOPICS) if len(u.text) <= 100]
        general = load_topics(GENERAL_TOPICS, exclude=set(usual))
        new = [u.text for u in general if len(u.text) <= 100]
        rng = np.random.default_rng(5)

        def pick(texts: list[str], n: int) -> list[str]:
            return [texts[i] for i in rng.integers(0, len(texts), n)]

        def stored() -> int:
            return int(
                warehouse.query(
                    "SELECT uniqExact(event_id) FROM scores WHERE app = {a:String}",
                    parameters={"a": APP},
                ).result_rows[0][0]
            )

        def wait_scored(n: int) -> None:
            wait_until(
                lambda: True if stored() >= n else None,
                timeout=240,
                what=f"{n} scored events",
                alive=procs.alive,
                interval=0.5,
            )

        def send(batch: list[dict[str, Any]]) -> None:
            encoded = [(e["trace_id"].encode(), CODEC.encode("event", e)) for e in batch]
            publish(stack.bootstrap_servers, EVENTS, encoded)

        # 1. The usual traffic, then a baseline from it.
        since = datetime.now(UTC) - timedelta(minutes=1)
        send(prompts(pick(usual, 600), datetime.now(UTC)))
        wait_scored(600)
        build = subprocess.run(
            [
                *UNDERTOW,
                "baseline",
                "build",
                "--since",
                since.isoformat(),
                "--until",
                (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
                "--app",
                APP,
                "--calibration-events",
                "300000",
                "--target-rate",
                "1e-4",
            ],
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert build.returncode == 0, build.stdout.decode() + build.stderr.decode()
        wait_until(
            lambda: True if "baselines changed for app=helpdesk" in procs.log("drift") else None,
            timeout=60,
            what="the drift worker taking the new baseline",
            alive=procs.alive,
        )

        # 2. More of the usual: no detection. 3. The shift: detected, alerted, paged.
        send(prompts(pick(usual, 400), datetime.now(UTC)))
        wait_scored(1000)
        shifted_at = datetime.now(UTC)
        send(prompts(pick(new, 300), datetime.now(UTC)))

        def detections() -> list[tuple[Any, ...]]:
            return list(
                warehouse.query(
                    "SELECT event_time, stream, nearest_topics FROM drift FINAL "
                    "WHERE app = {a:String} AND detected",
                    parameters={"a": APP},
                ).result_rows
            )

        found = wait_until(
            lambda: detections() or None,
            timeout=240,
            what="a drift detection",
            alive=procs.alive,
            interval=0.5,
        )
        # ClickHouse returns naive UTC datetimes.
        early = [row for row in found if row[0].replace(tzinfo=UTC) < shifted_at]
        assert not early, f"detections before the shift: {early}"
        assert any(row[1].endswith(".prompt") for row in found), found
        wait_until(
            lambda: next(
                (p for p in pagerduty.accepted if "drift_detected" in p.payload["dedup_key"]), None
            ),
            timeout=120,
            what="a drift page at PagerDuty",
            alive=procs.alive,
        )
        wait_until(
            lambda: True if slack.accepted and webhook.accepted else None,
            timeout=120,
            what="the drift alert at Slack and the webhook",
            alive=procs.alive,
        )
        # The drift alert in the warehouse, with the SQL that shows its evidence (and runs).
        rows = warehouse.query(
            "SELECT sql, runbook_url, evidence FROM alerts FINAL "
            "WHERE app = {a:String} AND rule = 'drift_detected' AND status = 'firing'",
            parameters={"a": APP},
        ).result_rows
        assert rows, "no drift_detected alert in the alerts table"
        sql, runbook, evidence = rows[0]
        assert runbook and evidence["detected"] == "true"
        assert warehouse.query(sql).result_rows, f"the alert's SQL shows nothing: {sql}"
    except Exception as exc:
        tails = "\n".join(f"--- {n}\n{procs.log(n)[-1500:]}" for n in procs.running)
        raise AssertionError(f"{exc}\n{procs.dead() or 'all processes up'}\n{tails}") from exc
    finally:
        procs.stop()
        down = subprocess.run([*UNDERTOW, "infra", "down"], env=env, capture_output=True)
    assert down.returncode == 0, down.stderr.decode()
