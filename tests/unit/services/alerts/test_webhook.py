"""Signed webhooks (services/alerts/webhook.py): the signature scheme and the JSON body."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from pydantic import SecretStr

from undertow.services.alerts import Notification
from undertow.services.alerts.errors import ChannelError, SignatureError
from undertow.services.alerts.receiver import validate_webhook_payload
from undertow.services.alerts.webhook import (
    BODY_MAX_BYTES,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookChannel,
    sign,
    signature_headers,
    verify,
)

from .fixtures import WEBHOOK_SECRET, huge_alert, make_alert

URL = "https://hooks.example.com/undertow"
NOW = 1_900_000_000
BODY = b'{"type":"alert.firing","alerts":[]}'


@pytest.fixture
def hook() -> WebhookChannel:
    return WebhookChannel(URL, SecretStr(WEBHOOK_SECRET))


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(
        WEBHOOK_SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256
    ).hexdigest()
    assert sign(WEBHOOK_SECRET, NOW, BODY) == f"sha256={expected}"
    assert sign(SecretStr(WEBHOOK_SECRET), NOW, BODY) == sign(WEBHOOK_SECRET.encode(), NOW, BODY)
    headers = signature_headers(WEBHOOK_SECRET, BODY, at=NOW + 0.9)
    assert headers == {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: f"sha256={expected}"}


def test_a_good_signature_verifies_whatever_the_header_case() -> None:
    headers = signature_headers(WEBHOOK_SECRET, BODY, at=NOW)
    assert verify(WEBHOOK_SECRET, headers, BODY, now=NOW) == NOW
    lowered = {k.lower(): v for k, v in headers.items()}
    assert verify(WEBHOOK_SECRET, lowered, BODY, tolerance_s=300, now=NOW + 299) == NOW


def test_a_tampered_body_fails() -> None:
    headers = signature_headers(WEBHOOK_SECRET, BODY, at=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(WEBHOOK_SECRET, headers, BODY.replace(b"firing", b"resolved"), now=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(WEBHOOK_SECRET, headers, BODY + b" ", now=NOW)


def test_a_moved_timestamp_fails_even_when_fresh() -> None:
    headers = signature_headers(WEBHOOK_SECRET, BODY, at=NOW)
    headers[TIMESTAMP_HEADER] = str(NOW + 1)
    with pytest.raises(SignatureError, match="does not match"):
        verify(WEBHOOK_SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize("offset", [301, -301, 86_400])
def test_a_stale_or_future_timestamp_fails(offset: int) -> None:
    headers = signature_headers(WEBHOOK_SECRET, BODY, at=NOW)
    with pytest.raises(SignatureError, match="tolerance is 300 s"):
        verify(WEBHOOK_SECRET, headers, BODY, tolerance_s=300, now=NOW + offset)


def test_a_wrong_secret_and_bad_headers_fail() -> None:
    headers = signature_headers(WEBHOOK_SECRET, BODY, at=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify("another-secret-0123456789", headers, BODY, now=NOW)
    with pytest.raises(SignatureError, match="missing header"):
        verify(WEBHOOK_SECRET, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}, BODY, now=NOW)
    with pytest.raises(SignatureError, match="Unix seconds"):
        verify(WEBHOOK_SECRET, {**headers, TIMESTAMP_HEADER: "soon"}, BODY, now=NOW)
    with pytest.raises(SignatureError, match="sha256="):
        verify(WEBHOOK_SECRET, {**headers, SIGNATURE_HEADER: "md5=abc"}, BODY, now=NOW)


def test_any_of_several_signatures_verifies_during_a_rotation() -> None:
    old = sign("old-secret-0123456789", NOW, BODY)
    new = sign(WEBHOOK_SECRET, NOW, BODY)
    headers = {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: f"{old}, {new}"}
    assert verify(WEBHOOK_SECRET, headers, BODY, now=NOW) == NOW
    assert verify("old-secret-0123456789", headers, BODY, now=NOW) == NOW


def test_a_request_is_signed_and_carries_its_idempotency_key(hook: WebhookChannel) -> None:
    alert = make_alert()
    request = hook.request(alert, at=NOW)
    assert request.url == URL
    assert request.headers[IDEMPOTENCY_HEADER] == alert.event_id == request.idempotency_key
    assert request.headers["Undertow-Event"] == "alert.firing"
    assert verify(WEBHOOK_SECRET, request.headers, request.body, now=NOW) == NOW
    # A retry a minute later is signed afresh over the same body.
    retry = hook.request(alert, at=NOW + 60)
    assert retry.body == request.body
    assert retry.headers[TIMESTAMP_HEADER] == str(NOW + 60)
    assert retry.headers[SIGNATURE_HEADER] != request.headers[SIGNATURE_HEADER]
    assert verify(WEBHOOK_SECRET, retry.headers, retry.body, now=NOW + 60) == NOW + 60


def test_the_body_holds_every_alert_field(hook: WebhookChannel) -> None:
    alerts = (make_alert(key="a"), make_alert(key="b", severity="critical"))
    body = json.loads(hook.request(Notification(alerts), at=NOW).body)
    assert body["type"] == "alert.firing" and body["version"] == 1
    assert (body["count"], body["omitted"], body["grouped"]) == (2, 0, True)
    assert body["key"].startswith("group-")
    first = body["alerts"][0]
    assert first["dedup_key"] == "a" and first["evidence"] == dict(alerts[0].evidence)
    assert first["event_time"] == alerts[0].event_time.isoformat()
    assert first["truncated"] is False
    assert validate_webhook_payload(body) == []


def test_a_huge_storm_stays_under_the_body_cap(hook: WebhookChannel) -> None:
    alerts = tuple(huge_alert(dedup_key=f"k{i}") for i in range(40))
    request = hook.request(Notification(alerts), at=NOW)
    body = json.loads(request.body)
    assert len(request.body) <= BODY_MAX_BYTES
    assert body["count"] == 40 and 0 < body["omitted"] < 40
    assert len(body["alerts"]) == 40 - body["omitted"]
    assert all(a["truncated"] for a in body["alerts"])
    assert validate_webhook_payload(body) == []


def test_secrets_and_reserved_headers_are_checked() -> None:
    with pytest.raises(ChannelError, match="at least 16"):
        WebhookChannel(URL, "short")
    with pytest.raises(ChannelError, match="set by the channel"):
        WebhookChannel(URL, WEBHOOK_SECRET, headers={"undertow-signature": "x"})
    extra = WebhookChannel(URL, WEBHOOK_SECRET, headers={"X-Api-Key": "k"})
    assert extra.request(make_alert(), at=NOW).headers["X-Api-Key"] == "k"


def test_the_payload_validator_finds_shape_errors() -> None:
    good = WebhookChannel.payload(make_alert())
    assert validate_webhook_payload(good) == []
    assert validate_webhook_payload([]) == ["body: expected a JSON object, got list"]
    broken = {**good, "count": 3}
    assert any("count" in e for e in validate_webhook_payload(broken))
    wrong_status = {**good, "type": "alert.resolved"}
    assert any("does not match type" in e for e in validate_webhook_payload(wrong_status))
    no_alerts = {**good, "alerts": []}
    assert "alerts: expected a non-empty array" in validate_webhook_payload(no_alerts)
