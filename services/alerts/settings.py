"""Frozen settings of the alert subscribers, read once from ``UNDERTOW_ALERTS_*`` variables.

A channel is on when its endpoint is set: Slack with ``slack_webhook_url``, PagerDuty with
``pagerduty_routing_key``, the webhook with ``webhook_url`` and ``webhook_secret``. Each channel
runs its own Kafka consumer group (``undertow-alerts-<channel>``), so a slow or broken channel
never holds back the others, and each restarts from its own committed offsets.

>>> s = AlertSettings(slack_webhook_url="https://hooks.slack.com/services/T/B/x")
>>> s.channel_names(), s.consumer_group("slack")
(('slack',), 'undertow-alerts-slack')
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from undertow.schemas import topics
from undertow.services.alerts.channel import require_endpoint
from undertow.services.alerts.delivery import RetryPolicy
from undertow.services.alerts.errors import ChannelError
from undertow.services.alerts.pagerduty import EVENTS_URL, ROUTING_KEY_CHARS
from undertow.services.alerts.webhook import MIN_SECRET_CHARS

ChannelName = Literal["slack", "pagerduty", "webhook"]
CHANNEL_ORDER: tuple[ChannelName, ...] = ("slack", "pagerduty", "webhook")


class AlertSettings(BaseSettings):
    """Where alerts come from, where they go, and how hard delivery tries."""

    model_config = SettingsConfigDict(env_prefix="UNDERTOW_ALERTS_", frozen=True, extra="ignore")

    # -- channels ---------------------------------------------------------------------------
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="Slack incoming webhook URL (the URL is the credential)"
    )
    slack_max_listed: int = Field(default=20, ge=1, le=40, description="alerts listed per group")
    pagerduty_routing_key: SecretStr | None = Field(
        default=None, description="Events API v2 integration key (32 characters)"
    )
    pagerduty_events_url: str = EVENTS_URL
    pagerduty_client: str = "Undertow"
    pagerduty_client_url: str | None = Field(
        default=None, description="link shown in PagerDuty next to the client name"
    )
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = Field(
        default=None, description=f"HMAC-SHA256 key, at least {MIN_SECRET_CHARS} characters"
    )

    # -- delivery ---------------------------------------------------------------------------
    request_timeout_s: float = Field(default=10.0, gt=0, description="one attempt's read limit")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=100)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    delivery_deadline_s: float = Field(
        default=120.0, gt=0, description="bound on one delivery's attempts and waits together"
    )
    max_retry_after_s: float = Field(default=300.0, gt=0)
    outage_backoff_max_s: float = Field(
        default=60.0, gt=0, description="longest pause between rounds while a channel is down"
    )

    # -- decisions --------------------------------------------------------------------------
    group_window_s: float = Field(
        default=30.0, ge=0, le=3600, description="storm grouping window; 0 sends each at once"
    )
    max_group_size: int = Field(default=50, ge=1, le=1000)
    dedup_memory: int = Field(default=100_000, ge=1, description="dedup keys kept per channel")
    state_lookback: int = Field(
        default=10_000,
        ge=0,
        description="records per partition read back on assignment to rebuild dedup state",
    )

    # -- Kafka ------------------------------------------------------------------------------
    bootstrap_servers: str | None = Field(
        default=None, description="Kafka; None = the local stack's broker (the CLI resolves it)"
    )
    alerts_topic: str = topics.ALERTS
    deadletter_topic: str = topics.DEADLETTER
    group_prefix: str = Field(default="undertow-alerts", min_length=1)
    schema_registry_url: str | None = None
    # A channel added later must not page a month of history: a new group starts at the end.
    auto_offset_reset: Literal["earliest", "latest"] = "latest"
    poll_timeout_s: float = Field(default=0.5, gt=0, le=10)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    session_timeout_s: float = Field(default=30.0, ge=1)
    max_poll_interval_s: float = Field(default=600.0, ge=10)

    @model_validator(mode="after")
    def _check(self) -> AlertSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if (self.webhook_url is None) != (self.webhook_secret is None):
            raise ValueError("webhook_url and webhook_secret go together: set both or neither")
        secret = self.webhook_secret
        if secret is not None and len(secret.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"webhook_secret: at least {MIN_SECRET_CHARS} characters")
        if self.pagerduty_routing_key is not None:
            length = len(self.pagerduty_routing_key.get_secret_value())
            if length != ROUTING_KEY_CHARS:
                raise ValueError(
                    f"pagerduty_routing_key: expected {ROUTING_KEY_CHARS} characters, got {length}"
                )
        endpoints = [("pagerduty_events_url", self.pagerduty_events_url)]
        if self.slack_webhook_url is not None:
            endpoints.append(("slack_webhook_url", self.slack_webhook_url.get_secret_value()))
        if self.webhook_url is not None:
            endpoints.append(("webhook_url", self.webhook_url))
        for name, url in endpoints:
            try:
                require_endpoint(url, name)
            except ChannelError as exc:
                raise ValueError(str(exc)) from None
        return self

    def channel_names(self) -> tuple[ChannelName, ...]:
        """The channels whose endpoints are set, in a fixed order."""
        configured = {
            "slack": self.slack_webhook_url is not None,
            "pagerduty": self.pagerduty_routing_key is not None,
            "webhook": self.webhook_url is not None,
        }
        return tuple(name for name in CHANNEL_ORDER if configured[name])

    def channel_options(self, name: str) -> dict[str, Any]:
        """The keyword arguments of channel ``name`` (secrets stay SecretStr)."""
        if name == "slack" and self.slack_webhook_url is not None:
            return {"webhook_url": self.slack_webhook_url, "max_listed": self.slack_max_listed}
        if name == "pagerduty" and self.pagerduty_routing_key is not None:
            return {
                "routing_key": self.pagerduty_routing_key,
                "events_url": self.pagerduty_events_url,
                "client": self.pagerduty_client,
                "client_url": self.pagerduty_client_url,
            }
        if name == "webhook" and self.webhook_url is not None and self.webhook_secret:
            return {"url": self.webhook_url, "secret": self.webhook_secret}
        raise ChannelError(f"channel {name!r} is not configured (set its UNDERTOW_ALERTS_* URL)")

    def consumer_group(self, channel: str) -> str:
        """The Kafka consumer group of one channel's subscriber."""
        return f"{self.group_prefix}-{channel}"

    def processor(self, channel: str) -> str:
        """The ``processor`` named in this channel's dead letters."""
        return f"alerts-{channel}"

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
            deadline_s=self.delivery_deadline_s,
            request_timeout_s=self.request_timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            max_retry_after_s=self.max_retry_after_s,
        )
