"""PagerDuty: Events API v2 alert events (``POST https://events.pagerduty.com/v2/enqueue``).

A firing alert is a ``trigger``::

    {"routing_key": "<32 chars>", "event_action": "trigger", "dedup_key": "<alert dedup_key>",
     "payload": {"summary": "<= 1024 chars", "source": "<app>/<environment>",
                 "severity": "critical|error|warning|info", "timestamp": "<ISO 8601>",
                 "component": "<app>", "group": "<segment or environment>", "class": "<rule>",
                 "custom_details": {<evidence>..., "sql": ..., "undertow": {...}}},
     "links": [{"href": "<runbook>", "text": "Runbook"}],
     "client": "Undertow", "client_url": "<optional>"}

A resolved alert is ``{"routing_key", "event_action": "resolve", "dedup_key"}`` and nothing else.
The incident is the dedup key: PagerDuty folds triggers with one key into one alert, so this
channel groups by key (``grouping = "incident"``) and never mixes keys in one event. A key over
PagerDuty's 255 characters is shortened to a prefix plus its SHA-256, the same for the trigger
and the resolve.

Answers, as PagerDuty documents them: 202 accepted; 400 invalid event (permanent: sending it
again cannot help); 429 throttled and 5xx (retried with backoff, honouring Retry-After).
Events are capped well under PagerDuty's 512 KB: each evidence value at 4 KiB, at most 100
evidence entries, the SQL at 16 KiB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import SecretStr

from undertow.services.alerts.alert import Alert
from undertow.services.alerts.channel import (
    Channel,
    HttpRequest,
    Notification,
    Outcome,
    as_notification,
    header,
    is_web_url,
    json_body,
    json_headers,
    json_object,
    parse_retry_after,
    register,
    require_endpoint,
    secret_value,
    short_body,
    truncate,
)
from undertow.services.alerts.errors import ChannelError

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ROUTING_KEY_CHARS = 32
DEDUP_KEY_MAX = 255
SUMMARY_MAX = 1024
PAYLOAD_MAX_BYTES = 512 * 1024
EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
PD_SEVERITIES = ("critical", "error", "warning", "info")
PdSeverity = Literal["critical", "error", "warning", "info"]

# Undertow's severities onto PagerDuty's. The names coincide today; the table is the contract,
# so a severity added to the schema later must be placed here deliberately.
SEVERITY_MAP: dict[str, PdSeverity] = {
    "critical": "critical",
    "error": "error",
    "warning": "warning",
    "info": "info",
}
EVIDENCE_VALUE_MAX = 4096
EVIDENCE_ITEMS_MAX = 100
SQL_MAX = 16 * 1024


def pd_severity(severity: str) -> PdSeverity:
    """PagerDuty's severity for an Undertow one; an unknown one pages as ``error``."""
    return SEVERITY_MAP.get(severity, "error")


def pd_dedup_key(key: str) -> str:
    """``key`` when it fits PagerDuty's 255 characters; else a prefix plus its SHA-256."""
    if len(key) <= DEDUP_KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return key[: DEDUP_KEY_MAX - len(digest) - 1] + "~" + digest


@register("pagerduty")
class PagerDutyChannel(Channel):
    """Sends Events API v2 events to one integration (its routing key).

    The routing key is a SecretStr; it is in the request body, so bodies are never logged.
    """

    grouping = "incident"

    def __init__(
        self,
        routing_key: SecretStr | str,
        *,
        events_url: str = EVENTS_URL,
        client: str = "Undertow",
        client_url: str | None = None,
    ) -> None:
        key = secret_value(routing_key)
        if len(key) != ROUTING_KEY_CHARS:
            raise ChannelError(
                f"pagerduty routing_key: expected {ROUTING_KEY_CHARS} characters, got {len(key)}"
            )
        self._routing_key = SecretStr(key)
        self.events_url = require_endpoint(events_url, "pagerduty events_url")
        self.client = client
        if client_url is not None and not is_web_url(client_url):
            raise ChannelError("pagerduty client_url: expected an http(s) URL")
        self.client_url = client_url

    def request(
        self, notification: Notification | Alert, *, at: float | None = None
    ) -> HttpRequest:
        note = as_notification(notification)
        return HttpRequest(
            "POST", self.events_url, json_headers(), json_body(self.event(note)), note.key
        )

    def event(self, notification: Notification | Alert) -> dict[str, Any]:
        """The Events API v2 event for one incident (one dedup key)."""
        note = as_notification(notification)
        if len(note.dedup_keys) != 1:
            raise ChannelError(
                f"pagerduty sends one event per dedup key, got {len(note.dedup_keys)} keys "
                "in one notification"
            )
        alert = max(note.alerts, key=lambda a: (a.rank, a.event_time))
        routing = self._routing_key.get_secret_value()
        dedup_key = pd_dedup_key(alert.dedup_key)
        if note.status == "resolved":
            return {"routing_key": routing, "event_action": "resolve", "dedup_key": dedup_key}
        summary = " ".join(alert.summary.split()) or alert.rule or "Undertow alert"
        payload: dict[str, Any] = {
            "summary": truncate(summary, SUMMARY_MAX),
            "source": truncate(f"{alert.app or 'undertow'}/{alert.environment}", 255),
            "severity": pd_severity(alert.severity),
            "timestamp": alert.event_time.isoformat(),
        }
        for name, value in (
            ("component", alert.app),
            ("group", alert.segment or alert.environment),
            ("class", alert.rule),
        ):
            if value:
                payload[name] = truncate(value, 255)
        payload["custom_details"] = _details(alert, len(note.alerts))
        event: dict[str, Any] = {
            "routing_key": routing,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": payload,
            "client": self.client,
        }
        if self.client_url:
            event["client_url"] = self.client_url
        if is_web_url(alert.runbook_url):
            event["links"] = [{"href": alert.runbook_url, "text": "Runbook"}]
        return event

    def outcome(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        """202 delivered; 400 permanent, with PagerDuty's ``errors``; 429 and 5xx retry."""
        if status == 400:
            answer = json_object(body) or {}
            errors = answer.get("errors")
            detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
            reason = f"400 {answer.get('message') or 'invalid event'}: {detail or short_body(body)}"
            return Outcome("permanent", truncate(reason, 300), status)
        if status == 429:
            retry = parse_retry_after(header(headers, "retry-after"))
            return Outcome("retry", "429 throttled", status, retry)
        return super().outcome(status, headers, body)


def _details(alert: Alert, count: int) -> dict[str, Any]:
    """``custom_details``: the evidence (flat), the SQL, and Undertow's own fields."""
    details: dict[str, Any] = {}
    for key, value in sorted(alert.evidence.items())[:EVIDENCE_ITEMS_MAX]:
        name = key if key not in ("sql", "undertow") else f"evidence.{key}"
        details[name] = truncate(value, EVIDENCE_VALUE_MAX)
    if len(alert.evidence) > EVIDENCE_ITEMS_MAX:
        details["evidence_omitted"] = str(len(alert.evidence) - EVIDENCE_ITEMS_MAX)
    if alert.sql:
        details["sql"] = truncate(alert.sql, SQL_MAX)
    details["undertow"] = {
        "rule": alert.rule,
        "severity": alert.severity,
        "segment": alert.segment,
        "environment": alert.environment,
        "event_id": alert.event_id,
        "trace_id": alert.trace_id,
        "runbook_url": alert.runbook_url,
        "alerts_in_notification": count,
    }
    return details
