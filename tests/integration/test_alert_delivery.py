"""Alert subscribers against the real broker and the loopback receivers (services/alerts).

Alerts are published to a topic of this test's own; ``run_subscribers`` runs the three
channels (one consumer group each) while the receivers first fail with 500s and hang past the
client timeout. Checked:

* each alert arrives exactly once per channel, in the format the receiver validates (Slack
  Block Kit, PagerDuty Events API v2, signed webhook); the duplicate firing pages nobody;
* the storm of five is one Slack message and one webhook call, and five PagerDuty incidents;
* the resolve reaches PagerDuty with the trigger's dedup key;
* the malformed record is in ``undertow.deadletter.v1`` once per channel, with its reason,
  topic, partition and offset;
* every offset of every group is committed, so nothing waits or is lost;
* after a restart, a repeat of an alert paged before the restart pages nobody (the dedup
  state is rebuilt from the topic), and its resolve still goes.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.receivers import Receivers, loopback_receivers
from undertow.infra.kafka import TopicSpec, ensure_topics
from undertow.infra.process import wait_until
from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.topics import DEADLETTER
from undertow.services.alerts import alert_record
from undertow.services.alerts.receiver import (
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    WebhookReceiver,
)
from undertow.services.alerts.settings import AlertSettings
from undertow.services.alerts.subscriber import SubscriberStats, run_subscribers
from undertow.services.bus import BusError, end_offsets, publish, read_range

pytestmark = pytest.mark.integration

ROUTING_KEY = "IntegrationRoutingKey0123456789a"
SECRET = "integration-webhook-secret-0123456789"
CODEC = AvroCodec()
WAIT_S = 90


def offsets(bootstrap: str, topic: str) -> dict[int, int]:
    def probe() -> dict[int, int] | None:
        try:
            return end_offsets(bootstrap, topic)
        except BusError:
            return None

    return wait_until(probe, timeout=60, what=f"{topic} partition leaders", interval=0.2)


def encoded(key: str, status: str = "firing", severity: str = "warning", **fields: Any) -> bytes:
    record = alert_record(
        rule=fields.pop("rule", "toxicity_p95 > 0.8"),
        severity=severity,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        dedup_key=key,
        summary=fields.pop("summary", f"{key} is {status}"),
        app="chat",
        segment="model=m/prompt=v1",
        evidence={"p95": "0.93", "events": "812"},
        sql="SELECT quantile(0.95)(toxicity) FROM scores WHERE app = 'chat'",
        runbook_url="https://runbooks.example.com/toxicity",
        **fields,
    )
    return CODEC.encode("alert", record)


def caught_up(bootstrap: str, group: str, topic: str, end: dict[int, int]) -> bool | None:
    """True once ``group`` committed ``end`` for every partition that holds records."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in end], timeout=10)
    finally:
        consumer.close()
    done = {tp.partition: tp.offset for tp in tps}
    return True if all(done[p] == stop for p, stop in end.items() if stop > 0) else None


class Subscribers:
    """``run_subscribers`` on a thread, stopped (and its stats kept) on exit."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.stats: dict[str, SubscriberStats] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="alert-subscribers", daemon=True)

    def _run(self) -> None:
        try:
            self.stats = run_subscribers(self.settings, self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Subscribers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)
        assert not self.thread.is_alive(), "subscribers did not stop"
        assert self.error is None, self.error

    def alive(self) -> bool:
        return self.thread.is_alive()


def wait_accepted(receiver: Receiver, count: int, subscribers: Subscribers) -> None:
    wait_until(
        lambda: True if len(receiver.accepted) >= count else None,
        timeout=WAIT_S,
        what=f"{count} deliveries at the {receiver.channel} receiver",
        alive=subscribers.alive,
    )


@pytest.fixture()
def receivers() -> Iterator[Receivers]:
    with loopback_receivers(ROUTING_KEY, SECRET) as started:
        yield started


def make_settings(
    bootstrap: str,
    topic: str,
    group_prefix: str,
    slack: SlackReceiver | None,
    pagerduty: PagerDutyReceiver | None,
    webhook: WebhookReceiver | None,
) -> AlertSettings:
    channels: dict[str, Any] = {}
    if slack is not None:
        channels["slack_webhook_url"] = slack.url
    if pagerduty is not None:
        channels.update(pagerduty_routing_key=ROUTING_KEY, pagerduty_events_url=pagerduty.url)
    if webhook is not None:
        channels.update(webhook_url=webhook.url, webhook_secret=SECRET)
    return AlertSettings(
        **channels,
        bootstrap_servers=bootstrap,
        alerts_topic=topic,
        group_prefix=group_prefix,
        auto_offset_reset="earliest",
        group_window_s=4,
        request_timeout_s=1,
        connect_timeout_s=1,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        max_attempts=6,
        delivery_deadline_s=30,
        session_timeout_s=10,
        state_lookback=1000,
    )


def test_alerts_arrive_once_per_channel_through_failures(
    stack: StackInfo, receivers: tuple[SlackReceiver, PagerDutyReceiver, WebhookReceiver]
) -> None:
    bootstrap = stack.bootstrap_servers
    slack, pagerduty, webhook = receivers
    run = uuid.uuid4().hex[:8]
    topic = f"undertow.alerts.it-{run}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3)])
    dead_start = offsets(bootstrap, DEADLETTER)
    settings = make_settings(
        bootstrap, topic, f"undertow-alerts-it-{run}", slack, pagerduty, webhook
    )
    # Every channel misbehaves first: two 500s; a hang past the 1 s timeout; both.
    slack.fail(2)
    pagerduty.hang(1, seconds=30)
    webhook.fail(1)
    webhook.hang(1, seconds=30)

    storm = [f"storm-{run}-{i}" for i in range(5)]
    page = f"page-{run}"
    with Subscribers(settings) as subscribers:
        # 1. A critical page, and the same page again (a duplicate firing).
        publish(
            bootstrap,
            topic,
            [
                (page.encode(), encoded(page, severity="critical", summary="Injection spike")),
                (page.encode(), encoded(page, severity="critical", summary="Injection spike")),
            ],
        )
        for receiver in (slack, pagerduty, webhook):
            wait_accepted(receiver, 1, subscribers)
        # 2. A storm of five warnings and a record that is no alert at all.
        publish(bootstrap, topic, [(k.encode(), encoded(k)) for k in storm])
        publish(bootstrap, topic, [(b"junk", b"this is not an alert record")])
        wait_accepted(slack, 2, subscribers)
        wait_accepted(webhook, 2, subscribers)
        wait_accepted(pagerduty, 6, subscribers)
        # 3. The page clears.
        resolved = encoded(page, "resolved", "critical", summary="Injection spike")
        publish(bootstrap, topic, [(page.encode(), resolved)])
        for receiver, count in ((slack, 3), (webhook, 3), (pagerduty, 7)):
            wait_accepted(receiver, count, subscribers)
        # Every record of every group settled and committed: nothing waits, nothing lost.
        end = offsets(bootstrap, topic)
        assert sum(end.values()) == 9
        for channel in ("slack", "pagerduty", "webhook"):
            group = settings.consumer_group(channel)
            wait_until(
                lambda g=group: caught_up(bootstrap, g, topic, end),
                timeout=WAIT_S,
                what=f"{group} committed to the end of {topic}",
            )

    for receiver in (slack, pagerduty, webhook):
        assert receiver.rejected == [], receiver.rejected
        assert receiver.faults_left == 0
    assert len(slack.faulted) == 2 and len(pagerduty.faulted) == 1 and len(webhook.faulted) == 2

    # Slack: the page, the storm as one message, the resolve; nothing else.
    page_msg, storm_msg, resolve_msg = (r.payload for r in slack.accepted)
    assert len(slack.accepted) == 3
    assert page_msg["text"].startswith("[CRITICAL] firing: Injection spike")
    assert page_msg["blocks"][0]["type"] == "header"
    assert storm_msg["blocks"][0]["text"]["text"] == ":rotating_light: 5 alerts firing"
    assert all(f"`{k}`" in str(storm_msg["blocks"]) for k in storm)
    assert resolve_msg["text"].startswith("[RESOLVED] Injection spike")

    # PagerDuty: one trigger per incident, the resolve with the trigger's dedup key.
    events = [r.payload for r in pagerduty.accepted]
    actions = Counter((e["dedup_key"], e["event_action"]) for e in events)
    assert actions == Counter(
        {(page, "trigger"): 1, (page, "resolve"): 1, **{(k, "trigger"): 1 for k in storm}}
    )
    assert events[0]["dedup_key"] == page and events[0]["payload"]["severity"] == "critical"
    assert events[-1] == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": page}
    assert pagerduty.incidents == {page: "resolved", **{k: "triggered" for k in storm}}

    # Webhook: three signed notifications, each idempotency key once, the storm grouped.
    bodies = [r.payload for r in webhook.accepted]
    assert [(b["type"], b["count"]) for b in bodies] == [
        ("alert.firing", 1),
        ("alert.firing", 5),
        ("alert.resolved", 1),
    ]
    assert webhook.duplicates == []
    assert len({r.header("Idempotency-Key") for r in webhook.accepted}) == 3

    # The malformed record: one dead letter per channel, with its reason and coordinates.
    source = read_range(bootstrap, topic, {p: 0 for p in end}, end)
    (junk,) = [r for r in source if r.key == b"junk"]
    letters = [
        CODEC.decode(r.value, "dead_letter").record
        for r in read_range(bootstrap, DEADLETTER, dead_start, offsets(bootstrap, DEADLETTER))
    ]
    ours = [d for d in letters if d["source_topic"] == topic]
    assert sorted(d["processor"] for d in ours) == [
        "alerts-pagerduty",
        "alerts-slack",
        "alerts-webhook",
    ]
    for letter in ours:
        assert (letter["source_partition"], letter["source_offset"]) == (
            junk.partition,
            junk.offset,
        )
        assert letter["error_type"] == "DecodeError" and "unknown framing" in letter["reason"]
        assert letter["payload"] == b"this is not an alert record" and letter["key"] == b"junk"

    stats = subscribers.stats
    assert set(stats) == {"slack", "pagerduty", "webhook"}
    for name, s in stats.items():
        assert (s.records, s.dead_letters, s.refused) == (9, 1, 0), name
        assert s.notifier.duplicates == 1, name
    assert (stats["slack"].delivered, stats["webhook"].delivered) == (3, 3)
    assert stats["pagerduty"].delivered == 7


def test_a_restart_does_not_page_again(
    stack: StackInfo, receivers: tuple[SlackReceiver, PagerDutyReceiver, WebhookReceiver]
) -> None:
    bootstrap = stack.bootstrap_servers
    _, pagerduty, _ = receivers
    run = uuid.uuid4().hex[:8]
    topic = f"undertow.alerts.it-{run}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3)])
    settings = make_settings(bootstrap, topic, f"undertow-alerts-it-{run}", None, pagerduty, None)
    key = f"incident-{run}"
    with Subscribers(settings) as first:
        publish(bootstrap, topic, [(key.encode(), encoded(key, severity="critical"))])
        wait_accepted(pagerduty, 1, first)
    assert first.stats["pagerduty"].delivered == 1

    # The same alert again, then its resolve, read by a new process in the same group.
    publish(
        bootstrap,
        topic,
        [
            (key.encode(), encoded(key, severity="critical")),
            (key.encode(), encoded(key, "resolved", "critical")),
        ],
    )
    with Subscribers(settings) as second:
        wait_accepted(pagerduty, 2, second)
        end = offsets(bootstrap, topic)
        group = settings.consumer_group("pagerduty")
        wait_until(
            lambda: caught_up(bootstrap, group, topic, end),
            timeout=WAIT_S,
            what=f"{group} committed to the end",
        )
    actions = [(e.payload["dedup_key"], e.payload["event_action"]) for e in pagerduty.accepted]
    assert actions == [(key, "trigger"), (key, "resolve")]
    stats = second.stats["pagerduty"]
    assert stats.hydrated == 1 and stats.records == 2 and stats.notifier.duplicates == 1
