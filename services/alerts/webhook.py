"""A generic JSON webhook, signed with HMAC-SHA256 so the receiver knows it came from Undertow.

The request
-----------
``POST <url>`` with ``Content-Type: application/json`` and this body::

    {"type": "alert.firing" | "alert.resolved", "version": 1,
     "key": "<idempotency key>", "count": N, "omitted": M, "grouped": N > 1,
     "alerts": [{"event_id", "dedup_key", "status", "severity", "rule", "summary", "app",
                 "environment", "segment", "event_time" (ISO 8601), "evidence", "sql",
                 "runbook_url", "trace_id", "span_id", "attributes", "truncated"}, ...]}

The body stays under 512 KiB: texts are capped (summary 4 KiB, SQL 16 KiB, 50 evidence entries
of 1 KiB, ...; ``truncated`` marks an alert that was cut), and a group too large lists the
alerts that fit (``count - omitted`` of them).

and these headers:

``Undertow-Timestamp``
    Unix time in whole seconds when the request was signed (each retry is signed afresh).
``Undertow-Signature``
    ``sha256=<hex>``: HMAC-SHA256 keyed with the shared secret over the bytes
    ``"{timestamp}.{body}"``, the timestamp header's value, a dot, and the raw body exactly as
    received. Several comma-separated ``sha256=`` values may appear while a secret is rotated;
    one match is enough.
``Idempotency-Key``
    The notification's key (the alert's event id, or a digest of a group's ids). The same on
    every retry and on a replay after a crash: a receiver that remembers keys for a day
    processes each notification once.

Verifying (what :func:`verify` does, and what a receiver in another language should do)
---------------------------------------------------------------------------------------
1. Read both headers; reject when either is missing or the timestamp is not an integer.
2. Reject when the timestamp is more than the tolerance (default 300 s) away from now: a
   captured request cannot be replayed later.
3. Compute ``HMAC-SHA256(secret, timestamp + "." + raw_body)`` as lowercase hex and compare
   it with each ``sha256=`` value in constant time (``hmac.compare_digest``).
4. Only then parse the JSON. Answer 2xx when the notification was taken (a repeat of a known
   ``Idempotency-Key`` too), 4xx to refuse it for good, 5xx or 429 to have it sent again.

>>> headers = signature_headers("s3cret", b'{"x":1}', at=1_700_000_000)
>>> headers["Undertow-Signature"][:7]
'sha256='
>>> verify("s3cret", headers, b'{"x":1}', now=1_700_000_010)
1700000000
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from undertow.services.alerts.alert import Alert
from undertow.services.alerts.channel import (
    Channel,
    HttpRequest,
    Notification,
    as_notification,
    header,
    json_body,
    json_headers,
    register,
    require_endpoint,
    secret_value,
    truncate,
)
from undertow.services.alerts.errors import ChannelError, SignatureError

TIMESTAMP_HEADER = "Undertow-Timestamp"
SIGNATURE_HEADER = "Undertow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "Undertow-Event"
SCHEME = "sha256"
DEFAULT_TOLERANCE_S = 300.0
PAYLOAD_VERSION = 1
MIN_SECRET_CHARS = 16
# Size caps: a body stays under BODY_MAX_BYTES whatever the alerts hold; a group too large
# for it lists the alerts that fit and counts the rest in "omitted".
BODY_MAX_BYTES = 512 * 1024
MAP_ITEMS_MAX = 50
MAP_VALUE_MAX = 1024
_FIELD_CAPS = {
    "summary": 4096,
    "rule": 1024,
    "app": 1024,
    "environment": 256,
    "segment": 1024,
    "dedup_key": 1024,
    "sql": 16 * 1024,
    "runbook_url": 4096,
}


def _key(secret: SecretStr | str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    return secret_value(secret).encode()


def sign(secret: SecretStr | str | bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` over ``"{timestamp}.{body}"``."""
    mac = hmac.new(_key(secret), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def signature_headers(
    secret: SecretStr | str | bytes, body: bytes, at: float | None = None
) -> dict[str, str]:
    """The timestamp and signature headers for ``body`` signed at Unix time ``at`` (now)."""
    timestamp = int(time.time() if at is None else at)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(
    secret: SecretStr | str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a request's signature; return its timestamp or raise SignatureError saying why.

    ``headers`` are looked up without regard to case; ``body`` must be the raw bytes received.
    """
    raw_ts = header(headers, TIMESTAMP_HEADER)
    raw_sig = header(headers, SIGNATURE_HEADER)
    if raw_ts is None or raw_sig is None:
        missing = [n for n, v in ((TIMESTAMP_HEADER, raw_ts), (SIGNATURE_HEADER, raw_sig)) if not v]
        raise SignatureError(f"missing header(s): {', '.join(missing)}")
    try:
        timestamp = int(raw_ts.strip())
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER}: expected Unix seconds, got {raw_ts!r}") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(
            f"timestamp {timestamp} is {current - timestamp:+.0f} s from now; "
            f"the tolerance is {tolerance_s:.0f} s"
        )
    expected = sign(secret, timestamp, body)
    offered = [part.strip() for part in raw_sig.split(",") if part.strip()]
    if not any(p.startswith(f"{SCHEME}=") for p in offered):
        raise SignatureError(f"{SIGNATURE_HEADER}: expected '{SCHEME}=<hex>' values")
    if not any(hmac.compare_digest(p.encode(), expected.encode()) for p in offered):
        raise SignatureError("signature does not match the body and timestamp")
    return timestamp


@register("webhook")
class WebhookChannel(Channel):
    """POSTs signed JSON to any HTTP endpoint (a runbook automation, an incident bot, ...).

    ``secret`` is the shared HMAC key (at least 16 characters); ``headers`` adds fixed headers
    (an API gateway's key, say), which cannot replace the signature headers.
    """

    grouping = "window"

    def __init__(
        self,
        url: str,
        secret: SecretStr | str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = require_endpoint(url, "webhook url")
        self._secret = SecretStr(secret_value(secret))
        if len(self._secret.get_secret_value()) < MIN_SECRET_CHARS:
            raise ChannelError(f"webhook secret: expected at least {MIN_SECRET_CHARS} characters")
        reserved = {TIMESTAMP_HEADER.lower(), SIGNATURE_HEADER.lower(), IDEMPOTENCY_HEADER.lower()}
        clash = [h for h in headers or {} if h.lower() in reserved]
        if clash:
            raise ChannelError(f"webhook headers: {clash} are set by the channel itself")
        self.extra_headers = dict(headers or {})

    def request(
        self, notification: Notification | Alert, *, at: float | None = None
    ) -> HttpRequest:
        note = as_notification(notification)
        body = json_body(self.payload(note))
        headers = {
            **self.extra_headers,
            **json_headers(note.key),
            EVENT_HEADER: f"alert.{note.status}",
            **signature_headers(self._secret, body, at),
        }
        return HttpRequest("POST", self.url, headers, body, note.key)

    @staticmethod
    def payload(notification: Notification | Alert) -> dict[str, Any]:
        """The JSON body (see the module docstring), at most ``BODY_MAX_BYTES`` long."""
        note = as_notification(notification)
        alerts: list[dict[str, Any]] = []
        size = 0
        for alert in note.alerts:
            item = capped_json(alert)
            item_size = len(json_body(item)) + 1
            if alerts and size + item_size > BODY_MAX_BYTES - 1024:
                break  # the first alert always goes: capped, it fits on its own
            alerts.append(item)
            size += item_size
        return {
            "type": f"alert.{note.status}",
            "version": PAYLOAD_VERSION,
            "key": note.key,
            "count": len(note.alerts),
            "omitted": len(note.alerts) - len(alerts),
            "grouped": note.grouped,
            "alerts": alerts,
        }


def capped_json(alert: Alert) -> dict[str, Any]:
    """``alert.to_json()`` with each text cut to the caps above; ``truncated`` says if any was."""
    item = alert.to_json()
    cut = False

    def fit(value: str | None, limit: int) -> str | None:
        nonlocal cut
        if value is None or len(value) <= limit:
            return value
        cut = True
        return truncate(value, limit)

    for name, limit in _FIELD_CAPS.items():
        item[name] = fit(item[name], limit)
    for name in ("evidence", "attributes"):
        entries = sorted(item[name].items())
        if len(entries) > MAP_ITEMS_MAX:
            cut = True
        item[name] = {
            fit(k, 256) or "": fit(v, MAP_VALUE_MAX) or "" for k, v in entries[:MAP_ITEMS_MAX]
        }
    item["truncated"] = cut
    return item
