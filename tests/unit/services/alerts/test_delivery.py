"""Delivery with retries (services/alerts/delivery.py) against the real loopback receivers."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from undertow.services.alerts import Deliverer, RetryPolicy
from undertow.services.alerts.pagerduty import PagerDutyChannel
from undertow.services.alerts.receiver import PagerDutyReceiver, SlackReceiver, WebhookReceiver
from undertow.services.alerts.slack import SlackChannel
from undertow.services.alerts.webhook import IDEMPOTENCY_HEADER, WebhookChannel

from .fixtures import ROUTING_KEY, WEBHOOK_SECRET, make_alert

FAST = RetryPolicy(
    max_attempts=6,
    backoff_initial_s=0.02,
    backoff_max_s=0.1,
    deadline_s=20,
    request_timeout_s=0.5,
    connect_timeout_s=0.5,
)


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    with SlackReceiver() as receiver:
        yield receiver


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyReceiver]:
    with PagerDutyReceiver(routing_key=ROUTING_KEY) as receiver:
        yield receiver


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        yield receiver


def test_two_500s_then_ok_delivers_exactly_once(slack: SlackReceiver) -> None:
    slack.fail(2, status=500)
    with Deliverer(SlackChannel(SecretStr(slack.url)), FAST) as deliverer:
        result = deliverer.deliver(make_alert())
    assert result.delivered and len(result.attempts) == 3
    assert [a.status for a in result.attempts] == [500, 500, 200]
    assert all(a.wait_s > 0 for a in result.attempts[:2])
    assert len(slack.accepted) == 1 and slack.requests == 3 and slack.rejected == []
    # Every attempt carried the same message.
    assert {f.request.body for f in slack.faulted} == {slack.accepted[0].body}


def test_a_hang_past_the_timeout_is_retried_and_arrives_once(webhook: WebhookReceiver) -> None:
    webhook.hang(1, seconds=10)
    alert = make_alert()
    with Deliverer(WebhookChannel(webhook.url, WEBHOOK_SECRET), FAST) as deliverer:
        began = time.monotonic()
        result = deliverer.deliver(alert)
        took = time.monotonic() - began
    assert result.delivered
    assert [a.status for a in result.attempts] == [None, 200]
    assert "Timeout" in result.attempts[0].reason
    assert 0.5 <= took < 5  # one request timeout, one short backoff, one quick answer
    assert len(webhook.accepted) == 1 and webhook.duplicates == [] and len(webhook.faulted) == 1
    keys = {webhook.faulted[0].request.header(IDEMPOTENCY_HEADER)}
    keys.add(webhook.accepted[0].header(IDEMPOTENCY_HEADER))
    assert keys == {alert.event_id}


def test_both_faults_together_still_deliver_once(pagerduty: PagerDutyReceiver) -> None:
    pagerduty.fail(2)
    pagerduty.hang(1, seconds=10)
    channel = PagerDutyChannel(ROUTING_KEY, events_url=pagerduty.url)
    with Deliverer(channel, FAST) as deliverer:
        result = deliverer.deliver(make_alert(key="incident-1"))
    assert result.delivered and [a.status for a in result.attempts] == [500, 500, None, 202]
    assert len(pagerduty.accepted) == 1
    assert pagerduty.incidents == {"incident-1": "triggered"}


def test_a_400_from_pagerduty_is_permanent_and_not_retried(pagerduty: PagerDutyReceiver) -> None:
    wrong_key = "W" * 32
    channel = PagerDutyChannel(wrong_key, events_url=pagerduty.url)
    with Deliverer(channel, FAST) as deliverer:
        result = deliverer.deliver(make_alert())
    assert result.result == "permanent"
    assert len(result.attempts) == 1 and result.attempts[0].status == 400
    assert "Event object is invalid" in result.reason and "integration key" in result.reason
    assert pagerduty.requests == 1 and pagerduty.accepted == []
    assert len(pagerduty.rejected) == 1
    assert wrong_key not in result.reason


def test_retry_after_on_429_is_honoured(slack: SlackReceiver) -> None:
    slack.throttle(1, retry_after=1)
    waits: list[float] = []

    def sleep(seconds: float) -> bool:
        waits.append(seconds)
        time.sleep(seconds)  # the real wait the Deliverer asked for (the code under test)
        return False

    with Deliverer(SlackChannel(slack.url), FAST, sleep=sleep) as deliverer:
        result = deliverer.deliver(make_alert())
    assert result.delivered and [a.status for a in result.attempts] == [429, 200]
    assert waits == [1.0]  # not the 0.02 s backoff
    first, second = slack.faulted[0].request, slack.accepted[0]
    assert second.at - first.at >= 1.0


def test_retry_after_is_capped(slack: SlackReceiver) -> None:
    slack.throttle(1, retry_after=3600)
    waits: list[float] = []
    policy = RetryPolicy(max_retry_after_s=0.05, deadline_s=10, request_timeout_s=1)
    with Deliverer(
        SlackChannel(slack.url), policy, sleep=lambda s: bool(waits.append(s))
    ) as deliverer:
        assert deliverer.deliver(make_alert()).delivered
    assert waits == [0.05]


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(slack: SlackReceiver) -> None:
    slack.throttle(1, retry_after=60)
    policy = RetryPolicy(deadline_s=5, request_timeout_s=1)
    with Deliverer(SlackChannel(slack.url), policy) as deliverer:
        began = time.monotonic()
        result = deliverer.deliver(make_alert())
    assert time.monotonic() - began < 2
    assert result.result == "exhausted" and "out of time" in result.reason
    assert result.retry_after_s == 60.0
    assert slack.requests == 1


def test_attempts_are_bounded(slack: SlackReceiver) -> None:
    slack.fail(10, status=503)
    policy = RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02)
    with Deliverer(SlackChannel(slack.url), policy) as deliverer:
        result = deliverer.deliver(make_alert())
    assert result.result == "exhausted" and "out of attempts after 3" in result.reason
    assert slack.requests == 3 and slack.accepted == []


def test_total_time_is_bounded_when_every_attempt_hangs(webhook: WebhookReceiver) -> None:
    webhook.hang(10, seconds=10)
    policy = RetryPolicy(
        max_attempts=50, backoff_initial_s=0.01, deadline_s=1.5, request_timeout_s=0.4
    )
    with Deliverer(WebhookChannel(webhook.url, WEBHOOK_SECRET), policy) as deliverer:
        began = time.monotonic()
        result = deliverer.deliver(make_alert())
        took = time.monotonic() - began
    assert result.result == "exhausted"
    assert took < 2.5
    assert 2 <= len(result.attempts) <= 5
    assert webhook.accepted == []


def test_a_receiver_that_is_gone_is_retried_then_given_up() -> None:
    receiver = SlackReceiver().start()
    url = receiver.url
    receiver.stop()
    policy = RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02)
    with Deliverer(SlackChannel(url), policy) as deliverer:
        result = deliverer.deliver(make_alert())
    assert result.result == "exhausted"
    assert all(a.status is None and "ConnectError" in a.reason for a in result.attempts)


def test_stop_interrupts_a_backoff(slack: SlackReceiver) -> None:
    slack.fail(5)
    stop = threading.Event()
    stop.set()
    policy = RetryPolicy(backoff_initial_s=30, backoff_max_s=30)
    with Deliverer(SlackChannel(slack.url), policy, stop=stop) as deliverer:
        began = time.monotonic()
        result = deliverer.deliver(make_alert())
    assert time.monotonic() - began < 2
    assert result.result == "exhausted" and "stopped" in result.reason
    assert slack.requests == 1


def test_backoff_grows_with_equal_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff_initial_s=1, backoff_max_s=8, backoff_multiplier=2)
    rng = random.Random(7)
    for retry, cap in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (12, 8)]:
        for _ in range(50):
            assert cap / 2 <= policy.backoff(retry, rng) <= cap
    values = {round(policy.backoff(4, rng), 6) for _ in range(20)}
    assert len(values) > 10  # jittered, not a constant


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff_initial_s=2, backoff_max_s=1)
    with pytest.raises(ValueError, match="deadline_s"):
        RetryPolicy(deadline_s=0)


def test_logs_never_show_secrets_or_alert_text(
    slack: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack.fail(1)
    caplog.set_level("DEBUG", logger="undertow.services.alerts")
    alert = make_alert(summary="user said: my password is hunter2")
    with Deliverer(SlackChannel(slack.url), FAST) as deliverer:
        assert deliverer.deliver(alert).delivered
    text = caplog.text
    assert "retrying" in text and "delivered" in text
    assert "hunter2" not in text and SlackReceiver.path not in text
    assert "xoxLocalReceiverToken" not in text
