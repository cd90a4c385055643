"""Loopback Slack, PagerDuty and webhook receivers for the tests that page through them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from undertow.services.alerts.receiver import PagerDutyReceiver, SlackReceiver, WebhookReceiver

Receivers = tuple[SlackReceiver, PagerDutyReceiver, WebhookReceiver]


@contextmanager
def loopback_receivers(routing_key: str, secret: str) -> Iterator[Receivers]:
    """The three receivers, started on loopback ports and stopped on exit."""
    slack = SlackReceiver().start()
    pagerduty = PagerDutyReceiver(routing_key=routing_key).start()
    webhook = WebhookReceiver(secret).start()
    try:
        yield slack, pagerduty, webhook
    finally:
        for receiver in (slack, pagerduty, webhook):
            receiver.stop()
