"""The subscriber loop (services/alerts/subscriber.py) over in-memory Kafka doubles.

Deliveries go to the real loopback receivers; only the broker is simulated, so commits,
metadata, dead letters and pauses can be checked record by record. The same loop runs
against a real broker in tests/integration/test_alert_delivery.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from undertow.schemas.codec import AvroCodec
from undertow.services.alerts import Alert
from undertow.services.alerts.pagerduty import PagerDutyChannel
from undertow.services.alerts.receiver import PagerDutyReceiver, SlackReceiver
from undertow.services.alerts.settings import AlertSettings
from undertow.services.alerts.slack import SlackChannel
from undertow.services.alerts.subscriber import (
    METADATA_PREFIX,
    OffsetTracker,
    Subscriber,
    build_channels,
    decode_metadata,
    encode_metadata,
)

from .fixtures import ROUTING_KEY, WEBHOOK_SECRET, make_alert
from .kafka_doubles import FakeConsumer, FakeMessage, FakeProducer, ManualClock

TOPIC = "undertow.alerts.test"
CODEC = AvroCodec()


def message(offset: int, alert: Alert | None = None, raw: bytes | None = None) -> FakeMessage:
    value = raw if alert is None else CODEC.encode("alert", alert.to_record())
    return FakeMessage(TOPIC, 0, offset, value)


def settings(**fields: Any) -> AlertSettings:
    values: dict[str, Any] = {
        "alerts_topic": TOPIC,
        "group_window_s": 5,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "request_timeout_s": 2,
        "state_lookback": 0,
    }
    values.update(fields)
    return AlertSettings(**values)


def run(
    channel: Any,
    batches: list[list[FakeMessage]],
    *,
    committed: dict[int, tuple[int, str | None]] | None = None,
    **fields: Any,
) -> tuple[Subscriber, FakeConsumer, FakeProducer]:
    stop = threading.Event()
    clock = ManualClock()
    consumer = FakeConsumer(
        TOPIC, batches, stop, clock, tick=1.0, idle_turns=10, committed=committed
    )
    producer = FakeProducer()
    subscriber = Subscriber(
        settings(**fields),
        channel,
        bootstrap="fake:9092",
        clock=clock,
        consumer_factory=consumer,  # type: ignore[arg-type]
        producer_factory=producer,  # type: ignore[arg-type]
    )
    subscriber.run(stop)
    assert consumer.closed
    return subscriber, consumer, producer


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    with SlackReceiver() as receiver:
        yield receiver


def dead_letters(producer: FakeProducer) -> list[dict[str, Any]]:
    out = []
    for topic, value in producer.records:
        assert topic == "undertow.deadletter.v1"
        out.append(CODEC.decode(value, "dead_letter").record)
    return out


def test_alerts_are_delivered_and_garbage_is_dead_lettered(slack: SlackReceiver) -> None:
    a, b = make_alert("a", severity="warning"), make_alert("b", severity="critical")
    batch = [message(0, a), message(1, raw=b"junk!"), message(2, make_alert("a")), message(3, b)]
    subscriber, consumer, producer = run(SlackChannel(slack.url), [batch])

    # b (critical) went at once; a waited for its window; the repeat of a went nowhere.
    texts = [r.payload["text"] for r in slack.accepted]
    assert len(texts) == 2
    assert texts[0].startswith("[CRITICAL]") and "`b`" in str(slack.accepted[0].payload)
    assert "`a`" in str(slack.accepted[1].payload)
    (letter,) = dead_letters(producer)
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        TOPIC,
        0,
        1,
    )
    assert letter["processor"] == "alerts-slack" and letter["payload"] == b"junk!"
    assert letter["error_type"] == "DecodeError" and "unknown framing" in letter["reason"]
    # While a waited, the commit stayed at its offset and carried what was settled above it.
    assert (0, f"{METADATA_PREFIX}1-3") in [c[0][1:] for c in consumer.commits]
    assert consumer.last_commit() == (4, None)
    stats = subscriber.stats
    assert (stats.records, stats.dead_letters, stats.delivered) == (4, 1, 2)
    assert stats.notifier.duplicates == 1
    assert consumer.config["group.id"] == "undertow-alerts-slack"
    assert consumer.config["enable.auto.commit"] is False


def test_a_restart_skips_what_was_settled_before_it(slack: SlackReceiver) -> None:
    a, b = make_alert("a", severity="warning"), make_alert("b", severity="critical")
    replay = [
        message(0, a),
        message(1, raw=b"junk!"),
        message(2, make_alert("a")),
        message(3, b),
    ]
    resolved = [message(4, make_alert("b", "resolved", severity="critical"))]
    subscriber, consumer, producer = run(
        SlackChannel(slack.url),
        [replay, resolved],
        committed={0: (0, f"{METADATA_PREFIX}1-3")},
    )
    texts = [r.payload["text"] for r in slack.accepted]
    # b was paged before the restart: not again; its resolve still goes (b is known firing).
    assert len(texts) == 2
    assert texts[0].startswith("[RESOLVED]") and "`b`" in str(slack.accepted[0].payload)
    assert texts[1].startswith("[WARNING] firing") and "`a`" in str(slack.accepted[1].payload)
    assert producer.records == []  # the junk was dead-lettered before the restart
    assert subscriber.stats.skipped_settled == 3
    assert consumer.last_commit() == (5, None)


def test_a_permanent_refusal_is_dead_lettered_and_committed() -> None:
    with PagerDutyReceiver(routing_key=ROUTING_KEY) as pd:
        channel = PagerDutyChannel("W" * 32, events_url=pd.url)
        alert = make_alert("p", severity="critical")
        subscriber, consumer, producer = run(channel, [[message(0, alert)]])
        assert pd.requests == 1 and pd.accepted == []
    (letter,) = dead_letters(producer)
    assert letter["error_type"] == "DeliveryRefused"
    assert letter["reason"].startswith("pagerduty refused the notification: 400")
    assert letter["trace_id"] == alert.trace_id and letter["app"] == "chat"
    assert "W" * 32 not in letter["reason"]
    assert subscriber.stats.refused == 1 and consumer.last_commit() == (1, None)


def test_an_outage_pauses_then_delivers_everything_once_in_order(slack: SlackReceiver) -> None:
    slack.fail(7)
    first, second = make_alert("x", severity="critical"), make_alert("y", severity="critical")
    subscriber, consumer, _ = run(
        SlackChannel(slack.url),
        [[message(0, first), message(1, second)]],
        max_attempts=2,
        outage_backoff_max_s=1,
    )
    assert slack.requests == 9 and len(slack.accepted) == 2
    order = ["`x`" in str(r.payload) for r in slack.accepted]
    assert order == [True, False]
    assert consumer.paused == ["pause", "resume"]
    assert subscriber.stats.outage_rounds >= 3
    # Nothing was committed past a notification before it went through.
    positions = [c[0][1] for c in consumer.commits]
    assert positions == sorted(positions) and positions[-1] == 2


def test_stopping_sends_what_waits_in_a_window(slack: SlackReceiver) -> None:
    batch = [message(0, make_alert("a")), message(1, make_alert("b"))]
    stop = threading.Event()
    clock = ManualClock()
    consumer = FakeConsumer(TOPIC, [batch], stop, clock, idle_turns=0)
    subscriber = Subscriber(
        settings(group_window_s=600),
        SlackChannel(slack.url),
        bootstrap="fake:9092",
        clock=clock,
        consumer_factory=consumer,  # type: ignore[arg-type]
        producer_factory=FakeProducer(),  # type: ignore[arg-type]
    )
    subscriber.run(stop)
    (group,) = slack.accepted
    assert group.payload["blocks"][0]["text"]["text"] == ":rotating_light: 2 alerts firing"
    assert consumer.last_commit() == (2, None)


def test_stopping_during_an_outage_commits_nothing_undelivered(slack: SlackReceiver) -> None:
    slack.fail(100)
    batch = [message(0, make_alert("a", severity="critical")), message(1, make_alert("b"))]
    stop = threading.Event()
    clock = ManualClock()
    consumer = FakeConsumer(TOPIC, [batch], stop, clock, idle_turns=50, max_polls=3)
    subscriber = Subscriber(
        settings(max_attempts=1),
        SlackChannel(slack.url),
        bootstrap="fake:9092",
        clock=clock,
        consumer_factory=consumer,  # type: ignore[arg-type]
        producer_factory=FakeProducer(),  # type: ignore[arg-type]
    )
    subscriber.run(stop)
    assert slack.accepted == [] and slack.requests >= 2
    # Only the position of the first undelivered record is committed (so a new group with
    # auto.offset.reset=latest cannot skip it): the next owner reads both again.
    assert consumer.commits and all(c == [(0, 0, None)] for c in consumer.commits)
    assert consumer.paused == ["pause"]
    # Their state is undone, so the re-read is not taken for a repeat.
    assert subscriber.notifier.state("a") is None and subscriber.notifier.state("b") is None
    assert subscriber.notifier.waiting() == 0


def test_offset_tracker_commits_the_lowest_unsettled_offset() -> None:
    tracker = OffsetTracker()
    assert tracker.to_commit() == []
    for offset in (10, 11, 12, 13):
        tracker.seen("t", 0, offset)
    tracker.settle("t", 0, 11)
    tracker.settle("t", 0, 13)
    assert tracker.to_commit() == [("t", 0, 10, f"{METADATA_PREFIX}1,3")]
    tracker.committed(tracker.to_commit())
    assert tracker.to_commit() == []  # nothing moved
    tracker.settle("t", 0, 10)
    assert tracker.to_commit() == [("t", 0, 12, f"{METADATA_PREFIX}1")]
    tracker.settle("t", 0, 12)
    tracker.settle("t", 0, 99)  # never seen: ignored
    assert tracker.to_commit() == [("t", 0, 14, "")]
    assert tracker.unsettled() == 0
    tracker.forget("t", 0)
    assert tracker.to_commit() == []


def test_metadata_round_trips_and_refuses_garbage() -> None:
    done = {101, 102, 103, 105, 110, 111}
    text = encode_metadata(100, done)
    assert text == f"{METADATA_PREFIX}1-3,5,10-11"
    assert decode_metadata(100, text) == done
    assert encode_metadata(100, set()) == ""
    for garbage in (None, "", "other:1-3", f"{METADATA_PREFIX}x", f"{METADATA_PREFIX}0-2"):
        assert decode_metadata(100, garbage) == set()
    assert decode_metadata(-1001, text) == set()
    # Too many ranges for the broker's metadata limit: cut, never over.
    sparse = set(range(1, 20_000, 2))
    long_text = encode_metadata(0, sparse)
    assert len(long_text) <= 3000 and decode_metadata(0, long_text) < sparse


def test_build_channels_from_settings() -> None:
    s = AlertSettings(
        slack_webhook_url="https://hooks.slack.com/services/T/B/x",
        pagerduty_routing_key=ROUTING_KEY,
        webhook_url="https://hooks.example.com/u",
        webhook_secret=WEBHOOK_SECRET,
    )
    assert [c.name for c in build_channels(s)] == ["slack", "pagerduty", "webhook"]
    assert [c.name for c in build_channels(s, ["webhook"])] == ["webhook"]
    with pytest.raises(Exception, match="no alert channel configured"):
        build_channels(AlertSettings())
