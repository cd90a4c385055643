"""Alert delivery: ``undertow.alerts.v1`` to Slack, PagerDuty and signed webhooks.

* :mod:`.alert`: the typed alert record; :mod:`.channel`: the channel interface and registry;
* :mod:`.slack`, :mod:`.pagerduty`, :mod:`.webhook`: one channel each (importing this package
  registers them);
* :mod:`.notifier`: what to send and when (dedup, resolves, storm grouping), pure;
* :mod:`.delivery`: HTTP with timeouts, retries, backoff and Retry-After;
* :mod:`.subscriber`: the Kafka consumers (one group per channel) and ``run_subscribers``;
* :mod:`.receiver`: local HTTP receivers that validate what the real services would;
* :mod:`.settings`: ``UNDERTOW_ALERTS_*``.

The Kafka side (:mod:`.subscriber`) is not imported here, so building and testing payloads
needs no broker client.
"""

from undertow.services.alerts import pagerduty, slack, webhook
from undertow.services.alerts.alert import SEVERITIES, STATUSES, Alert, alert_record
from undertow.services.alerts.channel import (
    Channel,
    HttpRequest,
    Notification,
    Outcome,
    available,
    channel_class,
    create,
    register,
)
from undertow.services.alerts.delivery import Deliverer, DeliveryResult, RetryPolicy
from undertow.services.alerts.errors import (
    AlertError,
    AlertsError,
    ChannelError,
    SignatureError,
    SubscriberError,
)
from undertow.services.alerts.notifier import Decision, Notifier

__all__ = [
    "SEVERITIES",
    "STATUSES",
    "Alert",
    "AlertError",
    "AlertsError",
    "Channel",
    "ChannelError",
    "Decision",
    "Deliverer",
    "DeliveryResult",
    "HttpRequest",
    "Notification",
    "Notifier",
    "Outcome",
    "RetryPolicy",
    "SignatureError",
    "SubscriberError",
    "alert_record",
    "available",
    "channel_class",
    "create",
    "pagerduty",
    "register",
    "slack",
    "webhook",
]
