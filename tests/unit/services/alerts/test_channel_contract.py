"""One contract for every registered channel (CONVENTIONS 3).

Each channel declares below how to build it against its local receiver; a registered channel
without a declaration, or without a receiver in ``RECEIVERS``, fails the first test. Every
channel then renders the same notifications (plain, minimal, far past every limit, resolved,
grouped, a storm) and each request is posted over loopback to the receiver that validates it
the way the real service does: it must be accepted, every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from undertow.services.alerts import Channel, Notification, available, channel_class, create
from undertow.services.alerts.alert import Alert
from undertow.services.alerts.errors import ChannelError
from undertow.services.alerts.receiver import RECEIVERS, Receiver

from .fixtures import ROUTING_KEY, WEBHOOK_SECRET, huge_alert, make_alert

CHANNEL_OPTIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    "slack": lambda url: {"webhook_url": SecretStr(url)},
    "pagerduty": lambda url: {"routing_key": SecretStr(ROUTING_KEY), "events_url": url},
    "webhook": lambda url: {"url": url, "secret": SecretStr(WEBHOOK_SECRET)},
}
RECEIVER_OPTIONS: dict[str, dict[str, Any]] = {
    "pagerduty": {"routing_key": ROUTING_KEY},
    "webhook": {"secret": WEBHOOK_SECRET},
}
SECRETS = (ROUTING_KEY, WEBHOOK_SECRET)


def _notifications(grouping: str) -> dict[str, Notification]:
    """The cases every channel renders. Incident channels get groups of one key."""

    def group(n: int, build: Callable[..., Alert], status: str = "firing") -> Notification:
        keys = [f"storm:{i}" for i in range(n)] if grouping == "window" else ["storm"] * n
        return Notification(tuple(build(key=k, status=status) for k in keys))

    return {
        "firing": Notification.of(make_alert()),
        "minimal": Notification.of(
            make_alert(evidence={}, sql=None, runbook_url=None, segment="", trace_id="")
        ),
        "huge": Notification.of(huge_alert()),
        "resolved": Notification.of(make_alert(status="resolved")),
        "resolved-huge": Notification.of(huge_alert(status="resolved")),
        "not-a-web-runbook": Notification.of(make_alert(runbook_url="ftp://x/y z|w>")),
        "group": group(3, lambda **kw: make_alert(severity="error", **kw)),
        "group-resolved": group(4, make_alert, status="resolved"),
        "storm-huge": group(
            60, lambda key, status: huge_alert(status=status, dedup_key=key, severity="warning")
        ),
    }


CASES = list(_notifications("window"))


@pytest.fixture(params=available(), scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Channel, Receiver]]:
    name: str = request.param
    receiver = RECEIVERS[name](**RECEIVER_OPTIONS.get(name, {}))
    with receiver:
        yield create(name, **CHANNEL_OPTIONS[name](receiver.url)), receiver


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def test_every_channel_declares_options_and_a_receiver() -> None:
    names = available()
    assert names == ["pagerduty", "slack", "webhook"]
    assert set(names) <= set(CHANNEL_OPTIONS), "declare how to build each channel"
    assert set(names) <= set(RECEIVERS), "each channel needs a receiver that validates it"
    for name in names:
        assert channel_class(name).name == name
        assert RECEIVERS[name].channel == name


@pytest.mark.parametrize("case", CASES)
def test_every_request_is_accepted_by_its_receiver(
    pair: tuple[Channel, Receiver], http: httpx.Client, case: str
) -> None:
    channel, receiver = pair
    note = _notifications(channel.grouping)[case]
    request = channel.request(note, at=time.time())
    before = len(receiver.accepted)
    response = http.request(
        request.method, request.url, headers=dict(request.headers), content=request.body
    )
    outcome = channel.outcome(response.status_code, response.headers, response.content)
    assert outcome.delivered, (response.status_code, response.text[:500])
    assert receiver.rejected == []
    assert len(receiver.accepted) == before + 1
    assert receiver.accepted[-1].body == request.body


@pytest.mark.parametrize("case", CASES)
def test_requests_are_pure_and_hide_secrets(pair: tuple[Channel, Receiver], case: str) -> None:
    channel, _ = pair
    note = _notifications(channel.grouping)[case]
    first = channel.request(note, at=1_900_000_000)
    again = channel.request(note, at=1_900_000_000)
    later = channel.request(note, at=1_900_000_600)
    assert (first.url, dict(first.headers), first.body) == (
        again.url,
        dict(again.headers),
        again.body,
    )
    # A retry later may re-sign, but carries the same body and idempotency key.
    assert later.body == first.body and later.idempotency_key == first.idempotency_key == note.key
    assert first.method == "POST" and first.headers["Content-Type"].startswith("application/json")
    assert isinstance(first.json(), dict)
    for text in (repr(channel), repr(first), first.target):
        assert not any(secret in text for secret in SECRETS)
        assert "Token" not in text  # the Slack receiver's URL token stays out of logs
    assert first.target.endswith("/…")


def test_incident_channels_refuse_to_mix_incidents(pair: tuple[Channel, Receiver]) -> None:
    channel, _ = pair
    mixed = Notification((make_alert(key="a"), make_alert(key="b")))
    if channel.grouping == "incident":
        with pytest.raises(ChannelError, match="per dedup key"):
            channel.request(mixed)
    else:
        assert len(channel.request(mixed).body) > 0


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (500, {}, "retry", None),
        (502, {}, "retry", None),
        (503, {"Retry-After": "12"}, "retry", 12.0),
        (429, {"Retry-After": "7"}, "retry", 7.0),
        (429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, "retry", 0.0),
        (408, {}, "retry", None),
        (400, {}, "permanent", None),
        (403, {}, "permanent", None),
        (404, {}, "permanent", None),
        (410, {}, "permanent", None),
    ],
)
def test_answers_are_classified_alike(
    pair: tuple[Channel, Receiver],
    status: int,
    headers: dict[str, str],
    kind: str,
    retry_after: float | None,
) -> None:
    channel, _ = pair
    outcome = channel.outcome(status, headers, b'{"message": "nope"}')
    assert outcome.kind == kind
    assert outcome.status == status
    assert outcome.retry_after_s == retry_after


def test_unknown_channels_and_bad_options_raise_channel_errors() -> None:
    with pytest.raises(ChannelError, match="no channel named 'sms'"):
        create("sms")
    with pytest.raises(ChannelError, match="bad options"):
        create("slack", hook="https://hooks.slack.com/services/x")
    with pytest.raises(ChannelError, match="https"):
        create("webhook", url="http://example.com/hook", secret=WEBHOOK_SECRET)
