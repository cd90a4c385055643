"""Real HTTP receivers on loopback that check what Slack, PagerDuty and a webhook would.

Each receiver is a ``ThreadingHTTPServer`` on ``127.0.0.1`` (an ephemeral port unless one is
given) that validates every request against the documented format of the service it stands
in for, answers the way that service answers, and records what it took and what it refused::

    with PagerDutyReceiver(routing_key="0" * 32) as pd:
        channel = PagerDutyChannel("0" * 32, events_url=pd.url)
        ...
        pd.wait_for(lambda r: len(r.accepted) == 1, timeout=10)

* :class:`SlackReceiver`: an incoming webhook. Needs ``text`` or ``blocks``; checks block types
  and Slack's limits (:data:`undertow.services.alerts.slack.LIMITS`); answers ``200 ok``, or
  ``400 no_text`` / ``invalid_blocks`` / ``invalid_payload`` like Slack.
* :class:`PagerDutyReceiver`: Events API v2. Checks the routing key (32 characters, and the
  configured one if given), ``event_action``, ``dedup_key`` (at most 255, required to resolve),
  a trigger's ``payload`` (summary at most 1024, source, severity, an ISO 8601 timestamp), links
  and images; answers ``202 {"status": "success", "message": "Event processed", "dedup_key"}``
  or ``400 {"status": "invalid event", "message": "Event object is invalid", "errors": [...]}``.
  It keeps the incidents (open or resolved) by dedup key.
* :class:`WebhookReceiver`: verifies the HMAC signature
  (:func:`undertow.services.alerts.webhook.verify`), 401 when it fails; checks the JSON shape;
  takes each ``Idempotency-Key`` once (a repeat is answered 200 and recorded as a duplicate).

Faults for tests and demos, consumed one per request in the order scripted: :meth:`fail`
(answer a status, 500 by default), :meth:`hang` (hold the request past the client's timeout,
then drop the connection unanswered: the request is not taken), :meth:`throttle` (429 with
Retry-After). Everything is guarded by one lock; :meth:`wait_for` waits on a condition with a
deadline, never a fixed sleep.

``python -m undertow.services.alerts.receiver`` starts all three and prints the settings that
point ``undertow alerts serve`` at them, for a local demo.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from undertow.services.alerts.alert import SEVERITIES, STATUSES
from undertow.services.alerts.channel import secret_value
from undertow.services.alerts.errors import SignatureError
from undertow.services.alerts.pagerduty import (
    DEDUP_KEY_MAX,
    EVENT_ACTIONS,
    PAYLOAD_MAX_BYTES,
    PD_SEVERITIES,
    ROUTING_KEY_CHARS,
    SUMMARY_MAX,
)
from undertow.services.alerts.slack import (
    ACTION_ID_MAX,
    ACTIONS_ELEMENTS_MAX,
    ALT_TEXT_MAX,
    BLOCK_ID_MAX,
    BLOCKS_MAX,
    BUTTON_TEXT_MAX,
    BUTTON_URL_MAX,
    BUTTON_VALUE_MAX,
    CONTEXT_ELEMENTS_MAX,
    FIELD_TEXT_MAX,
    HEADER_TEXT_MAX,
    IMAGE_URL_MAX,
    MESSAGE_TEXT_MAX,
    SECTION_FIELDS_MAX,
    SECTION_TEXT_MAX,
)
from undertow.services.alerts.webhook import BODY_MAX_BYTES as WEBHOOK_BODY_MAX
from undertow.services.alerts.webhook import (
    DEFAULT_TOLERANCE_S,
    IDEMPOTENCY_HEADER,
    PAYLOAD_VERSION,
    verify,
)

MAX_BODY_BYTES = 1024 * 1024
FaultKind = Literal["status", "hang", "throttle"]


# ----------------------------------------------------------------------------- validators


def validate_slack_message(message: Any) -> list[str]:
    """What Slack would refuse in an incoming-webhook payload (empty: acceptable)."""
    if not isinstance(message, dict):
        return [f"payload: expected a JSON object, got {type(message).__name__}"]
    errors: list[str] = []
    text = message.get("text")
    blocks = message.get("blocks")
    if text is not None and not isinstance(text, str):
        errors.append("text: expected a string")
    elif isinstance(text, str) and len(text) > MESSAGE_TEXT_MAX:
        errors.append(f"text: {len(text)} characters, at most {MESSAGE_TEXT_MAX}")
    if blocks is not None and not isinstance(blocks, list):
        errors.append("blocks: expected an array")
        blocks = None
    has_text = isinstance(text, str) and text.strip() != ""
    if not has_text and not blocks:
        errors.append("no_text: a message needs a non-empty text or blocks")
    if blocks:
        if len(blocks) > BLOCKS_MAX:
            errors.append(f"blocks: {len(blocks)} blocks, at most {BLOCKS_MAX}")
        seen_ids: set[str] = set()
        for index, block in enumerate(blocks):
            errors.extend(_slack_block(block, f"blocks[{index}]", seen_ids))
    return errors


_SLACK_BLOCK_TYPES = frozenset(
    {
        "actions",
        "context",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "video",
    }
)


def _slack_block(block: Any, where: str, seen_ids: set[str]) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where}: expected an object"]
    kind = block.get("type")
    if kind not in _SLACK_BLOCK_TYPES:
        return [f"{where}.type: unknown block type {kind!r}"]
    errors: list[str] = []
    block_id = block.get("block_id")
    if block_id is not None:
        if not isinstance(block_id, str) or not 1 <= len(block_id) <= BLOCK_ID_MAX:
            errors.append(f"{where}.block_id: expected 1..{BLOCK_ID_MAX} characters")
        elif block_id in seen_ids:
            errors.append(f"{where}.block_id: {block_id!r} is used twice")
        else:
            seen_ids.add(block_id)
    if kind == "header":
        errors.extend(
            _slack_text(block.get("text"), f"{where}.text", HEADER_TEXT_MAX, plain_only=True)
        )
    elif kind == "section":
        text, fields = block.get("text"), block.get("fields")
        if text is None and fields is None:
            errors.append(f"{where}: a section needs text or fields")
        if text is not None:
            errors.extend(_slack_text(text, f"{where}.text", SECTION_TEXT_MAX))
        if fields is not None:
            if not isinstance(fields, list) or not 1 <= len(fields) <= SECTION_FIELDS_MAX:
                errors.append(f"{where}.fields: expected 1..{SECTION_FIELDS_MAX} text objects")
            else:
                for i, item in enumerate(fields):
                    errors.extend(_slack_text(item, f"{where}.fields[{i}]", FIELD_TEXT_MAX))
        if block.get("accessory") is not None:
            errors.extend(_slack_element(block["accessory"], f"{where}.accessory"))
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= CONTEXT_ELEMENTS_MAX:
            errors.append(f"{where}.elements: expected 1..{CONTEXT_ELEMENTS_MAX} elements")
        else:
            for i, item in enumerate(elements):
                if isinstance(item, dict) and item.get("type") == "image":
                    errors.extend(_slack_image(item, f"{where}.elements[{i}]"))
                else:
                    errors.extend(_slack_text(item, f"{where}.elements[{i}]", SECTION_TEXT_MAX))
    elif kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= ACTIONS_ELEMENTS_MAX:
            errors.append(f"{where}.elements: expected 1..{ACTIONS_ELEMENTS_MAX} elements")
        else:
            for i, item in enumerate(elements):
                errors.extend(_slack_element(item, f"{where}.elements[{i}]"))
    elif kind == "divider":
        extra = set(block) - {"type", "block_id"}
        if extra:
            errors.append(f"{where}: a divider takes no {sorted(extra)}")
    elif kind == "image":
        errors.extend(_slack_image(block, where))
    return errors


def _slack_text(obj: Any, where: str, limit: int, *, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected a text object"]
    kind = obj.get("type")
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    errors: list[str] = []
    if kind not in allowed:
        errors.append(f"{where}.type: expected one of {list(allowed)}, got {kind!r}")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        errors.append(f"{where}.text: expected a non-empty string")
    elif len(text) > limit:
        errors.append(f"{where}.text: {len(text)} characters, at most {limit}")
    if "emoji" in obj and (kind != "plain_text" or not isinstance(obj["emoji"], bool)):
        errors.append(f"{where}.emoji: only a boolean, only on plain_text")
    if "verbatim" in obj and (kind != "mrkdwn" or not isinstance(obj["verbatim"], bool)):
        errors.append(f"{where}.verbatim: only a boolean, only on mrkdwn")
    return errors


def _slack_element(element: Any, where: str) -> list[str]:
    if not isinstance(element, dict):
        return [f"{where}: expected an object"]
    kind = element.get("type")
    if kind == "image":
        return _slack_image(element, where)
    if kind != "button":
        # Other interactive elements need a Slack app behind them: never in alert messages.
        return [f"{where}.type: expected a button or an image, got {kind!r}"]
    errors = _slack_text(element.get("text"), f"{where}.text", BUTTON_TEXT_MAX, plain_only=True)
    url = element.get("url")
    if url is not None and (not isinstance(url, str) or not 1 <= len(url) <= BUTTON_URL_MAX):
        errors.append(f"{where}.url: expected 1..{BUTTON_URL_MAX} characters")
    action_id = element.get("action_id")
    if action_id is not None and (
        not isinstance(action_id, str) or not 1 <= len(action_id) <= ACTION_ID_MAX
    ):
        errors.append(f"{where}.action_id: expected 1..{ACTION_ID_MAX} characters")
    value = element.get("value")
    if value is not None and (not isinstance(value, str) or len(value) > BUTTON_VALUE_MAX):
        errors.append(f"{where}.value: expected at most {BUTTON_VALUE_MAX} characters")
    style = element.get("style")
    if style is not None and style not in ("primary", "danger"):
        errors.append(f"{where}.style: expected primary or danger, got {style!r}")
    return errors


def _slack_image(element: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    url = element.get("image_url")
    if not isinstance(url, str) or not 1 <= len(url) <= IMAGE_URL_MAX:
        errors.append(f"{where}.image_url: expected 1..{IMAGE_URL_MAX} characters")
    alt = element.get("alt_text")
    if not isinstance(alt, str) or not 1 <= len(alt) <= ALT_TEXT_MAX:
        errors.append(f"{where}.alt_text: expected 1..{ALT_TEXT_MAX} characters")
    return errors


_PD_TOP = frozenset(
    {
        "routing_key",
        "event_action",
        "dedup_key",
        "payload",
        "images",
        "links",
        "client",
        "client_url",
    }
)
_PD_PAYLOAD = frozenset(
    {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}
)


def validate_pagerduty_event(event: Any, routing_key: str | None = None) -> list[str]:
    """What the Events API v2 would refuse in an alert event (empty: acceptable).

    ``routing_key``, when given, is the only key this integration knows.
    """
    if not isinstance(event, dict):
        return [f"event: expected a JSON object, got {type(event).__name__}"]
    errors: list[str] = []
    unknown = set(event) - _PD_TOP
    if unknown:
        errors.append(f"unknown field(s) {sorted(unknown)}")
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != ROUTING_KEY_CHARS:
        length = len(key) if isinstance(key, str) else "no"
        errors.append(
            f"Length of 'routing_key' is incorrect (should be {ROUTING_KEY_CHARS} characters, "
            f"got {length})"
        )
    elif routing_key is not None and key != routing_key:
        errors.append("'routing_key' is not a known integration key")
    action = event.get("event_action")
    if action not in EVENT_ACTIONS:
        errors.append(f"'event_action' must be one of {list(EVENT_ACTIONS)}, got {action!r}")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not 1 <= len(dedup) <= DEDUP_KEY_MAX):
        errors.append(f"'dedup_key' must be a string of 1..{DEDUP_KEY_MAX} characters")
    if action in ("acknowledge", "resolve") and dedup is None:
        errors.append(f"'dedup_key' is required to {action}")
    if action == "trigger":
        errors.extend(_pd_payload(event.get("payload")))
    for name in ("client", "client_url"):
        if name in event and not isinstance(event[name], str):
            errors.append(f"'{name}' must be a string")
    errors.extend(_pd_list(event.get("links"), "links", required="href", optional=("text",)))
    errors.extend(_pd_list(event.get("images"), "images", required="src", optional=("href", "alt")))
    return errors


def _pd_payload(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is required to trigger and must be an object"]
    errors: list[str] = []
    unknown = set(payload) - _PD_PAYLOAD
    if unknown:
        errors.append(f"unknown payload field(s) {sorted(unknown)}")
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors.append("'payload.summary' is missing or empty")
    elif len(summary) > SUMMARY_MAX:
        errors.append(f"'payload.summary' is {len(summary)} characters, at most {SUMMARY_MAX}")
    source = payload.get("source")
    if not isinstance(source, str) or not source.strip():
        errors.append("'payload.source' is missing or empty")
    if payload.get("severity") not in PD_SEVERITIES:
        errors.append(
            f"'payload.severity' must be one of {list(PD_SEVERITIES)}, "
            f"got {payload.get('severity')!r}"
        )
    timestamp = payload.get("timestamp")
    if timestamp is not None:
        try:
            if not isinstance(timestamp, str):
                raise ValueError(timestamp)
            datetime.fromisoformat(timestamp)
        except ValueError:
            errors.append(f"'payload.timestamp' is not an ISO 8601 time: {timestamp!r}")
    for name in ("component", "group", "class"):
        if name in payload and not isinstance(payload[name], str):
            errors.append(f"'payload.{name}' must be a string")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict | str):
        errors.append("'payload.custom_details' must be an object")
    return errors


def _pd_list(items: Any, name: str, *, required: str, optional: tuple[str, ...]) -> list[str]:
    if items is None:
        return []
    if not isinstance(items, list):
        return [f"'{name}' must be an array"]
    errors: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(required), str):
            errors.append(f"'{name}[{i}].{required}' is required")
            continue
        for key in set(item) - {required, *optional}:
            errors.append(f"'{name}[{i}].{key}' is not a known field")
    return errors


_WEBHOOK_ALERT_FIELDS = {
    "event_id": str,
    "dedup_key": str,
    "status": str,
    "severity": str,
    "rule": str,
    "summary": str,
    "app": str,
    "environment": str,
    "segment": str,
    "event_time": str,
    "evidence": dict,
    "truncated": bool,
}


def validate_webhook_payload(payload: Any) -> list[str]:
    """What is wrong with a webhook body by the format in :mod:`.webhook` (empty: fine)."""
    if not isinstance(payload, dict):
        return [f"body: expected a JSON object, got {type(payload).__name__}"]
    errors: list[str] = []
    kind = payload.get("type")
    if kind not in ("alert.firing", "alert.resolved"):
        errors.append(f"type: expected alert.firing or alert.resolved, got {kind!r}")
    if payload.get("version") != PAYLOAD_VERSION:
        errors.append(f"version: expected {PAYLOAD_VERSION}, got {payload.get('version')!r}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        return [*errors, "alerts: expected a non-empty array"]
    count, omitted = payload.get("count"), payload.get("omitted")
    if not isinstance(omitted, int) or omitted < 0 or count != len(alerts) + omitted:
        errors.append(f"count: {count!r} is not {len(alerts)} alerts + {omitted!r} omitted")
    if payload.get("grouped") is not (isinstance(count, int) and count > 1):
        errors.append("grouped: must be true exactly when there are several alerts")
    if not isinstance(payload.get("key"), str) or not payload["key"]:
        errors.append("key: expected the idempotency key")
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            errors.append(f"alerts[{i}]: expected an object")
            continue
        for name, typ in _WEBHOOK_ALERT_FIELDS.items():
            if not isinstance(alert.get(name), typ):
                errors.append(f"alerts[{i}].{name}: expected {typ.__name__}")
        if alert.get("severity") not in SEVERITIES:
            errors.append(f"alerts[{i}].severity: unknown {alert.get('severity')!r}")
        if alert.get("status") not in STATUSES or f"alert.{alert.get('status')}" != kind:
            errors.append(f"alerts[{i}].status: {alert.get('status')!r} does not match type")
        try:
            datetime.fromisoformat(str(alert.get("event_time")))
        except ValueError:
            errors.append(f"alerts[{i}].event_time: not ISO 8601")
    return errors


# ------------------------------------------------------------------------------ receivers


@dataclass(frozen=True)
class Received:
    """One request as it arrived. ``payload`` is the parsed JSON (None when not JSON)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    payload: Any = field(repr=False)
    at: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Rejected:
    """A request refused as invalid, with the reasons, and the status it was answered with."""

    request: Received
    status: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for the next request."""

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    hang_s: float = 30.0


@dataclass(frozen=True)
class Faulted:
    """A request answered (or dropped) by a fault instead of being handled."""

    request: Received
    fault: Fault


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds

    def do_POST(self) -> None:
        self.server.receiver._serve(self)

    def do_GET(self) -> None:
        self._plain(405, b"method not allowed")

    do_PUT = do_DELETE = do_PATCH = do_GET

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the receiver records requests itself."""


class Receiver(ABC):
    """A local stand-in for one channel's service. Start it, point a channel at :attr:`url`."""

    channel: ClassVar[str] = ""
    path: ClassVar[str] = "/"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Condition()
        self._release = threading.Event()
        self._faults: list[Fault] = []
        self._accepted: list[Received] = []
        self._rejected: list[Rejected] = []
        self._faulted: list[Faulted] = []
        self._requests = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Receiver:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = int(server.server_address[1])
        self._release.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"receiver-{self.channel}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests, stop serving, close the socket."""
        self._release.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"the {self.channel} receiver is not started")
        return f"http://{self.host}:{self.port}{self.path}"

    # -- faults ---------------------------------------------------------------------------

    def fail(self, times: int = 1, status: int = 500) -> None:
        """Answer the next ``times`` requests with ``status``."""
        self._script([Fault("status", status=status)] * times)

    def hang(self, times: int = 1, seconds: float = 30.0) -> None:
        """Hold the next ``times`` requests ``seconds`` (or until stop), then drop them."""
        self._script([Fault("hang", hang_s=seconds)] * times)

    def throttle(self, times: int = 1, retry_after: float = 1.0) -> None:
        """Answer the next ``times`` requests 429 with ``Retry-After: retry_after``."""
        self._script([Fault("throttle", status=429, retry_after=retry_after)] * times)

    def _script(self, faults: list[Fault]) -> None:
        with self._lock:
            self._faults.extend(faults)

    # -- what came ------------------------------------------------------------------------

    @property
    def accepted(self) -> list[Received]:
        with self._lock:
            return list(self._accepted)

    @property
    def rejected(self) -> list[Rejected]:
        with self._lock:
            return list(self._rejected)

    @property
    def faulted(self) -> list[Faulted]:
        with self._lock:
            return list(self._faulted)

    @property
    def requests(self) -> int:
        """Requests that arrived, however they were answered."""
        with self._lock:
            return self._requests

    @property
    def faults_left(self) -> int:
        with self._lock:
            return len(self._faults)

    def wait_for(self, condition: Callable[[Receiver], bool], timeout: float) -> None:
        """Block until ``condition(self)`` holds (checked on every request), or raise."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.channel} receiver: condition not met within {timeout:.1f} s "
                        f"({self._summary()})"
                    )
                self._lock.wait(left)

    def wait_accepted(self, count: int, timeout: float) -> list[Received]:
        """Wait until at least ``count`` requests were accepted; return them all."""
        self.wait_for(lambda r: len(r._accepted) >= count, timeout)
        return self.accepted

    def _summary(self) -> str:
        return (
            f"{self._requests} requests: {len(self._accepted)} accepted, "
            f"{len(self._rejected)} rejected {[r.reasons for r in self._rejected][:3]}, "
            f"{len(self._faulted)} faulted"
        )

    # -- serving --------------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        received, too_large = self._read(handler)
        with self._lock:
            self._requests += 1
            fault = self._faults.pop(0) if self._faults else None
            if fault is not None:
                self._faulted.append(Faulted(received, fault))
            self._lock.notify_all()
        if fault is not None:
            self._misbehave(handler, fault)
            return
        if too_large:
            response = self.refuse(received, [f"body over {MAX_BODY_BYTES} bytes"])
        else:
            response = self.handle(received)
        self._respond(handler, response)
        with self._lock:
            self._lock.notify_all()

    def _read(self, handler: _Handler) -> tuple[Received, bool]:
        length = int(handler.headers.get("Content-Length") or 0)
        too_large = length > MAX_BODY_BYTES
        body = b"" if too_large else handler.rfile.read(length)
        if too_large:
            handler.close_connection = True
        try:
            payload = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            payload = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        return Received("POST", handler.path, headers, body, payload, time.monotonic()), too_large

    def _misbehave(self, handler: _Handler, fault: Fault) -> None:
        if fault.kind == "hang":
            self._release.wait(fault.hang_s)
            handler.close_connection = True  # never answered: the client saw a timeout
            return
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        body = b"rate_limited" if fault.kind == "throttle" else b"internal error"
        self._respond(handler, Response(fault.status, body, headers))

    @staticmethod
    def _respond(handler: _Handler, response: Response) -> None:
        with contextlib.suppress(OSError):  # the client may have gone (its timeout passed)
            handler.send_response(response.status)
            content_type = "application/json" if response.body[:1] in (b"{", b"[") else "text/plain"
            handler.send_header("Content-Type", content_type)
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(response.body)))
            handler.end_headers()
            handler.wfile.write(response.body)

    def accept(self, received: Received, response: Response) -> Response:
        with self._lock:
            self._accepted.append(received)
        return response

    def refuse(self, received: Received, reasons: list[str], status: int = 400) -> Response:
        with self._lock:
            self._rejected.append(Rejected(received, status, tuple(reasons)))
        return self.invalid(reasons, status)

    def invalid(self, reasons: list[str], status: int) -> Response:
        return Response(status, "; ".join(reasons).encode())

    @abstractmethod
    def handle(self, received: Received) -> Response:
        """Validate and answer one request (faults were applied before)."""


class SlackReceiver(Receiver):
    """An incoming webhook: ``200 ok``, or 400 with Slack's error token."""

    channel = "slack"
    path = "/services/T0UNDERTOW/B0ALERTS/xoxLocalReceiverToken"

    def handle(self, received: Received) -> Response:
        if received.payload is None:
            return self.refuse(received, ["invalid_payload: body is not JSON"])
        errors = validate_slack_message(received.payload)
        if errors:
            return self.refuse(received, errors)
        return self.accept(received, Response(200, b"ok"))

    def invalid(self, reasons: list[str], status: int) -> Response:
        if any(r.startswith("no_text") for r in reasons):
            token = b"no_text"
        elif any(r.startswith("blocks") for r in reasons):
            token = b"invalid_blocks"
        else:
            token = b"invalid_payload"
        return Response(status, token)


class PagerDutyReceiver(Receiver):
    """Events API v2 ``/v2/enqueue``; keeps incidents by dedup key."""

    channel = "pagerduty"
    path = "/v2/enqueue"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, routing_key: SecretStr | str | None = None
    ) -> None:
        super().__init__(host, port)
        self.routing_key = secret_value(routing_key) if routing_key is not None else None
        self._incidents: dict[str, str] = {}

    @property
    def incidents(self) -> dict[str, str]:
        """dedup key -> ``triggered`` or ``resolved``."""
        with self._lock:
            return dict(self._incidents)

    def handle(self, received: Received) -> Response:
        if len(received.body) > PAYLOAD_MAX_BYTES:
            return self.refuse(received, [f"event over {PAYLOAD_MAX_BYTES} bytes"])
        if received.payload is None:
            return self.refuse(received, ["body is not valid JSON"])
        errors = validate_pagerduty_event(received.payload, self.routing_key)
        if errors:
            return self.refuse(received, errors)
        event = received.payload
        dedup_key = event.get("dedup_key") or uuid.uuid4().hex
        with self._lock:
            if event["event_action"] == "trigger":
                self._incidents[dedup_key] = "triggered"
            elif event["event_action"] == "resolve" and dedup_key in self._incidents:
                self._incidents[dedup_key] = "resolved"
        body = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        return self.accept(received, Response(202, json.dumps(body).encode()))

    def invalid(self, reasons: list[str], status: int) -> Response:
        body = {"status": "invalid event", "message": "Event object is invalid", "errors": reasons}
        return Response(status, json.dumps(body).encode())


class WebhookReceiver(Receiver):
    """A signed-webhook endpoint: 401 on a bad signature, each idempotency key taken once."""

    channel = "webhook"
    path = "/hooks/undertow"

    def __init__(
        self,
        secret: SecretStr | str,
        host: str = "127.0.0.1",
        port: int = 0,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
    ) -> None:
        super().__init__(host, port)
        self._secret = SecretStr(secret_value(secret))
        self.tolerance_s = tolerance_s
        self._keys: set[str] = set()
        self._duplicates: list[Received] = []

    @property
    def duplicates(self) -> list[Received]:
        """Requests whose idempotency key was already taken (answered 200, not processed)."""
        with self._lock:
            return list(self._duplicates)

    def handle(self, received: Received) -> Response:
        if len(received.body) > WEBHOOK_BODY_MAX:
            return self.refuse(received, [f"body over {WEBHOOK_BODY_MAX} bytes"], status=413)
        try:
            verify(self._secret, received.headers, received.body, self.tolerance_s)
        except SignatureError as exc:
            return self.refuse(received, [f"signature: {exc}"], status=401)
        errors = validate_webhook_payload(received.payload)
        key = received.header(IDEMPOTENCY_HEADER)
        if not key:
            errors.append(f"{IDEMPOTENCY_HEADER}: missing")
        elif isinstance(received.payload, dict) and received.payload.get("key") != key:
            errors.append(f"{IDEMPOTENCY_HEADER}: differs from the body's key")
        if errors:
            return self.refuse(received, errors)
        assert key is not None
        with self._lock:
            if key in self._keys:
                self._duplicates.append(received)
                return Response(200, b'{"ok":true,"duplicate":true}')
            self._keys.add(key)
        return self.accept(received, Response(200, b'{"ok":true}'))

    def invalid(self, reasons: list[str], status: int) -> Response:
        return Response(status, json.dumps({"ok": False, "errors": reasons}).encode())


RECEIVERS: dict[str, type[Receiver]] = {
    "slack": SlackReceiver,
    "pagerduty": PagerDutyReceiver,
    "webhook": WebhookReceiver,
}


def main() -> None:
    """Run the three receivers until Ctrl-C and print how to point Undertow at them."""
    secret = uuid.uuid4().hex
    routing_key = uuid.uuid4().hex
    receivers: list[Receiver] = [
        SlackReceiver(),
        PagerDutyReceiver(routing_key=routing_key),
        WebhookReceiver(secret),
    ]
    for receiver in receivers:
        receiver.start()
    slack, pagerduty, webhook = receivers
    print("Local alert receivers are up. Point the subscribers at them with:")
    print(f"  export UNDERTOW_ALERTS_SLACK_WEBHOOK_URL={slack.url}")
    print(f"  export UNDERTOW_ALERTS_PAGERDUTY_ROUTING_KEY={routing_key}")
    print(f"  export UNDERTOW_ALERTS_PAGERDUTY_EVENTS_URL={pagerduty.url}")
    print(f"  export UNDERTOW_ALERTS_WEBHOOK_URL={webhook.url}")
    print(f"  export UNDERTOW_ALERTS_WEBHOOK_SECRET={secret}")
    counts = [0, 0, 0]
    try:
        while True:
            for index, receiver in enumerate(receivers):
                seen = len(receiver.accepted) + len(receiver.rejected)
                if seen != counts[index]:
                    counts[index] = seen
                    print(
                        f"{receiver.channel}: {len(receiver.accepted)} accepted, "
                        f"{len(receiver.rejected)} rejected"
                    )
            time.sleep(1.0)  # a console status line, not synchronisation
    except KeyboardInterrupt:
        pass
    finally:
        for receiver in receivers:
            receiver.stop()


if __name__ == "__main__":
    main()
