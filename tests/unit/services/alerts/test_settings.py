"""AlertSettings (services/alerts/settings.py): environment, validation, derived values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from undertow.services.alerts.errors import ChannelError
from undertow.services.alerts.pagerduty import EVENTS_URL
from undertow.services.alerts.settings import AlertSettings

from .fixtures import ROUTING_KEY, WEBHOOK_SECRET

SLACK_URL = "https://hooks.slack.com/services/T000/B000/very-secret-token"


def test_defaults_configure_no_channel_and_the_public_pagerduty_url() -> None:
    s = AlertSettings()
    assert s.channel_names() == ()
    assert s.pagerduty_events_url == EVENTS_URL == "https://events.pagerduty.com/v2/enqueue"
    assert s.alerts_topic == "undertow.alerts.v1"
    assert s.deadletter_topic == "undertow.deadletter.v1"
    assert s.auto_offset_reset == "latest"
    with pytest.raises(ChannelError, match="not configured"):
        s.channel_options("slack")


def test_read_from_the_environment_with_secrets_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDERTOW_ALERTS_SLACK_WEBHOOK_URL", SLACK_URL)
    monkeypatch.setenv("UNDERTOW_ALERTS_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    monkeypatch.setenv("UNDERTOW_ALERTS_WEBHOOK_URL", "https://hooks.example.com/x")
    monkeypatch.setenv("UNDERTOW_ALERTS_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("UNDERTOW_ALERTS_GROUP_WINDOW_S", "5")
    monkeypatch.setenv("UNDERTOW_ALERTS_MAX_ATTEMPTS", "3")
    s = AlertSettings()
    assert s.channel_names() == ("slack", "pagerduty", "webhook")
    assert s.group_window_s == 5.0 and s.retry_policy().max_attempts == 3
    text = repr(s) + str(s.model_dump())
    for secret in ("very-secret-token", ROUTING_KEY, WEBHOOK_SECRET):
        assert secret not in text
    assert s.channel_options("pagerduty")["routing_key"].get_secret_value() == ROUTING_KEY


def test_consumer_groups_are_per_channel() -> None:
    s = AlertSettings(group_prefix="team-a-alerts")
    assert s.consumer_group("slack") == "team-a-alerts-slack"
    assert AlertSettings().consumer_group("pagerduty") == "undertow-alerts-pagerduty"
    assert AlertSettings().processor("webhook") == "alerts-webhook"


def test_the_retry_policy_mirrors_the_settings() -> None:
    policy = AlertSettings(
        request_timeout_s=3,
        connect_timeout_s=1,
        max_attempts=4,
        backoff_initial_s=0.1,
        backoff_max_s=2,
        delivery_deadline_s=9,
        max_retry_after_s=7,
    ).retry_policy()
    assert (policy.request_timeout_s, policy.connect_timeout_s, policy.max_attempts) == (3, 1, 4)
    assert (policy.backoff_initial_s, policy.backoff_max_s) == (0.1, 2)
    assert (policy.deadline_s, policy.max_retry_after_s) == (9, 7)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pagerduty_routing_key": "short"}, "32 characters, got 5"),
        ({"webhook_url": "https://hooks.example.com/x"}, "set both or neither"),
        ({"webhook_url": "https://h.example.com/x", "webhook_secret": "short"}, "at least 16"),
        ({"slack_webhook_url": "http://hooks.slack.com/services/x"}, "https"),
        ({"pagerduty_events_url": "ftp://events.pagerduty.com"}, "https"),
        ({"backoff_initial_s": 5, "backoff_max_s": 1}, "backoff_max_s"),
        ({"auto_offset_reset": "middle"}, "earliest"),
        ({"group_window_s": -1}, "greater than or equal"),
    ],
)
def test_invalid_values_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlertSettings(**fields)


def test_loopback_http_is_allowed_for_local_receivers() -> None:
    s = AlertSettings(slack_webhook_url="http://127.0.0.1:8080/services/x")
    assert s.channel_names() == ("slack",)


def test_frozen() -> None:
    s = AlertSettings()
    with pytest.raises(ValidationError):
        s.group_window_s = 1  # type: ignore[misc]
