"""The channel interface: turn alerts into one HTTP request, and read the answer.

A channel is two pure functions and a name:

* :meth:`Channel.request` renders a :class:`Notification` (one alert, or a group of alerts
  that arrived together) as an :class:`HttpRequest` (method, URL, headers, body). Same input,
  same request: retries send the same bytes (only a signature timestamp may move).
* :meth:`Channel.outcome` reads the receiver's answer as *delivered*, *retry* (429, 5xx,
  timeouts) or *permanent* (the receiver refused the request and would refuse it again).

The I/O (timeouts, retries with backoff, Retry-After) lives in
:mod:`undertow.services.alerts.delivery`, and the decision of *what* to send *when* (dedup,
resolves, storm grouping) in :mod:`undertow.services.alerts.notifier`; both are the same for
every channel. Implementations register by name, so configuration picks them and one contract
test runs them all (``tests/unit/services/alerts/test_channel_contract.py``).

>>> from undertow.services.alerts import available
>>> available()
['pagerduty', 'slack', 'webhook']
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import SecretStr

from undertow import __version__
from undertow.services.alerts.alert import SEVERITIES, Alert, Severity, Status
from undertow.services.alerts.errors import ChannelError

if TYPE_CHECKING:
    from undertow.services.alerts.delivery import DeliveryResult, RetryPolicy

Grouping = Literal["window", "incident"]
OutcomeKind = Literal["delivered", "retry", "permanent"]
USER_AGENT = f"undertow-alerts/{__version__}"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_REASON_MAX = 300


@dataclass(frozen=True)
class Notification:
    """What one request carries: one alert, or several of one status grouped together.

    ``refs`` are opaque handles of the records behind the alerts (the subscriber keeps Kafka
    coordinates there); they take no part in equality or rendering.
    """

    alerts: tuple[Alert, ...]
    refs: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.alerts:
            raise ChannelError("a notification needs at least one alert")
        statuses = {a.status for a in self.alerts}
        if len(statuses) != 1:
            raise ChannelError(f"a notification holds alerts of one status, got {statuses}")

    @classmethod
    def of(cls, *alerts: Alert) -> Notification:
        return cls(tuple(alerts))

    @property
    def status(self) -> Status:
        return self.alerts[0].status

    @property
    def grouped(self) -> bool:
        """True when several alerts go out as one message."""
        return len(self.alerts) > 1

    @property
    def severity(self) -> Severity:
        """The highest severity among the alerts."""
        return SEVERITIES[max(a.rank for a in self.alerts)]

    @property
    def dedup_keys(self) -> tuple[str, ...]:
        """The distinct dedup keys, in arrival order."""
        return tuple(dict.fromkeys(a.dedup_key for a in self.alerts))

    @property
    def key(self) -> str:
        """The idempotency key: the event id of a single alert, a digest of a group's ids.

        Stable across retries and across a replay of the same records, so a receiver that
        keeps keys can drop a repeat.
        """
        if not self.grouped:
            return self.alerts[0].event_id
        digest = hashlib.sha256("\n".join(sorted(a.event_id for a in self.alerts)).encode())
        return "group-" + digest.hexdigest()[:32]


@dataclass(frozen=True)
class HttpRequest:
    """A rendered request. ``url`` and ``body`` may hold secrets: use :attr:`target` in logs."""

    method: str
    url: str = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    idempotency_key: str = ""

    @property
    def target(self) -> str:
        """``scheme://host[:port]/…``: where it goes, without path or query (tokens live there)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Outcome:
    """How a receiver answered one attempt."""

    kind: OutcomeKind
    reason: str
    status: int | None = None
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.kind == "delivered"


class Channel(ABC):
    """One alert destination. Subclasses set ``grouping`` and implement :meth:`request`.

    ``grouping`` tells the notifier how to batch alert storms for this channel: ``"window"``
    groups every alert of one status arriving within the window into one message (chat,
    webhooks); ``"incident"`` keeps one notification per dedup key (PagerDuty, where the key
    is the incident).
    """

    name: ClassVar[str] = ""
    grouping: ClassVar[Grouping] = "window"

    @abstractmethod
    def request(
        self, notification: Notification | Alert, *, at: float | None = None
    ) -> HttpRequest:
        """Render the request; ``at`` is the Unix time to sign with (now when None)."""

    def outcome(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        """Classify an HTTP answer: 2xx delivered; 408, 429 and 5xx retry; other 4xx permanent."""
        reason = f"{status} {short_body(body)}".strip()
        if 200 <= status < 300:
            return Outcome("delivered", reason, status)
        if status in (408, 425, 429) or status >= 500:
            return Outcome(
                "retry", reason, status, parse_retry_after(header(headers, "retry-after"))
            )
        return Outcome("permanent", reason, status)

    def deliver(
        self, notification: Notification | Alert, policy: RetryPolicy | None = None
    ) -> DeliveryResult:
        """Send with retries now, on a client of its own (one-off use: a CLI test, a demo)."""
        from undertow.services.alerts.delivery import Deliverer, RetryPolicy

        with Deliverer(self, policy or RetryPolicy()) as deliverer:
            return deliverer.deliver(as_notification(notification))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# -- registry ------------------------------------------------------------------------------

C = TypeVar("C", bound=type[Channel])
_CHANNELS: dict[str, type[Channel]] = {}


def register(name: str) -> Callable[[C], C]:
    """Register a channel class under ``name`` (its ``name`` attribute is set to it)."""

    def add(cls: C) -> C:
        if name in _CHANNELS:
            raise ChannelError(f"a channel named {name!r} is already registered")
        cls.name = name
        _CHANNELS[name] = cls
        return cls

    return add


def unregister(name: str) -> None:
    _CHANNELS.pop(name, None)


def available() -> list[str]:
    """The registered channel names."""
    return sorted(_CHANNELS)


def channel_class(name: str) -> type[Channel]:
    try:
        return _CHANNELS[name]
    except KeyError:
        raise ChannelError(f"no channel named {name!r}; registered: {available()}") from None


def create(name: str, **options: Any) -> Channel:
    """Build the channel registered as ``name`` with its options."""
    cls = channel_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ChannelError(f"channel {name!r}: bad options: {exc}") from exc


# -- helpers for implementations -----------------------------------------------------------


def as_notification(item: Notification | Alert) -> Notification:
    return item if isinstance(item, Notification) else Notification.of(item)


def secret_value(value: SecretStr | str | bytes) -> str:
    """The plain text of a secret given as SecretStr, str or UTF-8 bytes."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bytes):
        return value.decode()
    return value


def require_endpoint(url: str, what: str) -> str:
    """``url`` if it is https, or http on a loopback host (local receivers); else ChannelError."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        raise ChannelError(f"{what}: expected an http(s) URL with a host, got a malformed one")
    if parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS):
        return url
    raise ChannelError(
        f"{what}: expected https (or http on a loopback host), got {parts.scheme or 'no'} "
        f"scheme for host {host}"
    )


def is_web_url(url: str | None, max_chars: int = 3000) -> bool:
    """True for an absolute http(s) URL without spaces, at most ``max_chars`` long."""
    if not url or len(url) > max_chars or any(c.isspace() for c in url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def truncate(text: str, limit: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``limit`` characters, marked with ``ellipsis`` when cut."""
    if len(text) <= limit:
        return text
    if limit <= len(ellipsis):
        return text[:limit]
    return text[: limit - len(ellipsis)] + ellipsis


def json_body(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the same bytes for the same object."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def json_headers(idempotency_key: str = "") -> dict[str, str]:
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by case-insensitive name (plain dicts as well as httpx.Headers)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def short_body(body: bytes, limit: int = _REASON_MAX) -> str:
    """A response body for a log line or reason: one line, at most ``limit`` characters."""
    text = body.decode("utf-8", "replace").replace("\n", " ").strip()
    return truncate(text, limit)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return cast(dict[str, Any], data) if isinstance(data, dict) else None
