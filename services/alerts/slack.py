"""Slack: an incoming-webhook message with Block Kit blocks and a plain ``text`` fallback.

One firing alert renders as::

    header   ":red_circle: CRITICAL  <summary>"            (plain_text, at most 150 chars)
    section  fields: Severity, Status, App, Segment, Rule, Since
    section  the summary in full                            (mrkdwn, at most 3000 chars)
    section  *Evidence*: one line per key                   (cut with "…and N more")
    section  *Query*: the SQL in a code block               (the fence survives the cut)
    actions  "Open runbook" button                          (only for an http(s) URL)
    context  dedup key, event id, trace id

A resolved alert gets a ":white_check_mark: Resolved" header, the fields and the context. A
group (an alert storm) is one message: a header with the count, a fields section counting
severities, apps and rules, then one line per alert (the first ``max_listed``) packed into
sections, and "…and N more". ``text`` is always set: Slack shows it in notifications and where
blocks cannot render.

Every size stays inside Slack's documented limits (:data:`LIMITS`), whatever the alert holds:
mrkdwn text is escaped (``&``, ``<``, ``>``) and cut after escaping, so a cut never splits an
entity; plain_text is cut by characters. Slack answers ``200 ok``; 4xx answers
(``invalid_payload``, ``invalid_blocks``, ``no_service``, ``channel_is_archived``) are permanent,
429 and 5xx are retried (:meth:`Channel.outcome`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from undertow.services.alerts.alert import Alert
from undertow.services.alerts.channel import (
    Channel,
    HttpRequest,
    Notification,
    as_notification,
    is_web_url,
    json_body,
    json_headers,
    register,
    require_endpoint,
    secret_value,
    truncate,
)

# Slack's documented limits for messages (Block Kit reference: blocks, elements, objects).
HEADER_TEXT_MAX = 150
SECTION_TEXT_MAX = 3000
SECTION_FIELDS_MAX = 10
FIELD_TEXT_MAX = 2000
BLOCKS_MAX = 50
CONTEXT_ELEMENTS_MAX = 10
ACTIONS_ELEMENTS_MAX = 25
BUTTON_TEXT_MAX = 75
BUTTON_URL_MAX = 3000
BUTTON_VALUE_MAX = 2000
BLOCK_ID_MAX = 255
ACTION_ID_MAX = 255
IMAGE_URL_MAX = 3000
ALT_TEXT_MAX = 2000
MESSAGE_TEXT_MAX = 40_000  # Slack truncates longer top-level text
LIMITS: dict[str, int] = {
    "header.text": HEADER_TEXT_MAX,
    "section.text": SECTION_TEXT_MAX,
    "section.fields": SECTION_FIELDS_MAX,
    "section.field.text": FIELD_TEXT_MAX,
    "message.blocks": BLOCKS_MAX,
    "context.elements": CONTEXT_ELEMENTS_MAX,
    "actions.elements": ACTIONS_ELEMENTS_MAX,
    "button.text": BUTTON_TEXT_MAX,
    "button.url": BUTTON_URL_MAX,
    "message.text": MESSAGE_TEXT_MAX,
}

# What this channel writes, tighter than Slack's ceilings so a message stays readable.
FALLBACK_TEXT_MAX = 3000
EVIDENCE_LINE_MAX = 300
GROUP_LINE_MAX = 500
LIST_FIELD_MAX = 200

_EMOJI = {
    "critical": ":red_circle:",
    "error": ":large_orange_circle:",
    "warning": ":large_yellow_circle:",
    "info": ":large_blue_circle:",
}
_RESOLVED = ":white_check_mark:"
_STORM = ":rotating_light:"
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: ``&``, ``<`` and ``>`` as entities."""
    return "".join(_ESCAPES.get(c, c) for c in text)


def mrkdwn(text: str, limit: int, ellipsis: str = "…") -> str:
    """``text`` escaped for mrkdwn and cut to ``limit`` characters without splitting an entity."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    budget = limit - len(ellipsis)
    out: list[str] = []
    used = 0
    for char in text:
        piece = _ESCAPES.get(char, char)
        if used + len(piece) > budget:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + ellipsis


def code_block(code: str, limit: int) -> str:
    """``code`` in a mrkdwn code block of at most ``limit`` characters, fences intact."""
    body = code.strip("\n").replace("```", "`\u200b``")  # a fence inside would end the block
    return "```\n" + mrkdwn(body, limit - 8) + "\n```"


def one_line(text: str) -> str:
    """Whitespace runs (newlines included) as single spaces: headers are one line."""
    return " ".join(text.split())


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def md(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _field(title: str, value: str) -> dict[str, Any]:
    head = f"*{title}*\n"
    return md(head + mrkdwn(value or "—", FIELD_TEXT_MAX - len(head)))


def _since(alert: Alert) -> str:
    """A Slack date token (shown in the reader's time zone) with the UTC ISO time as fallback."""
    ts = int(alert.event_time.timestamp())
    iso = alert.event_time.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<!date^{ts}^{{date_short_pretty}} {{time_secs}}|{iso}>"


def _link(url: str | None, label: str) -> str:
    if not is_web_url(url) or url is None or any(c in url for c in "|<>"):
        return ""
    return f"<{url}|{label}>"


@register("slack")
class SlackChannel(Channel):
    """Posts to a Slack incoming webhook (``https://hooks.slack.com/services/...``).

    The webhook URL is the credential: it is kept as a SecretStr and never logged.
    ``max_listed`` bounds the alerts a group message lists one by one.
    """

    grouping = "window"

    def __init__(
        self,
        webhook_url: SecretStr | str,
        *,
        max_listed: int = 20,
        username: str | None = None,
        icon_emoji: str | None = None,
    ) -> None:
        self._url = SecretStr(require_endpoint(secret_value(webhook_url), "slack webhook_url"))
        if not 1 <= max_listed <= 40:
            raise ValueError(f"max_listed: expected 1..40, got {max_listed}")
        self.max_listed = max_listed
        self.username = username
        self.icon_emoji = icon_emoji

    def request(
        self, notification: Notification | Alert, *, at: float | None = None
    ) -> HttpRequest:
        note = as_notification(notification)
        return HttpRequest(
            "POST",
            self._url.get_secret_value(),
            json_headers(),
            json_body(self.message(note)),
            note.key,
        )

    def message(self, notification: Notification | Alert) -> dict[str, Any]:
        """The JSON payload: ``text`` plus ``blocks``."""
        note = as_notification(notification)
        if note.grouped:
            text, blocks = self._group(note)
        elif note.status == "resolved":
            text, blocks = self._resolved(note.alerts[0])
        else:
            text, blocks = self._firing(note.alerts[0])
        payload: dict[str, Any] = {"text": text, "blocks": blocks[:BLOCKS_MAX]}
        if self.username:
            payload["username"] = self.username
        if self.icon_emoji:
            payload["icon_emoji"] = self.icon_emoji
        return payload

    # -- one alert --------------------------------------------------------------------------

    def _fields(self, alert: Alert, when: str) -> dict[str, Any]:
        where = alert.app if not alert.environment else f"{alert.app} ({alert.environment})"
        fields = [
            _field("Severity", alert.severity),
            _field("Status", alert.status),
            _field("App", where),
            _field("Segment", alert.segment),
            _field("Rule", alert.rule),
        ]
        fields.append(md(f"*{when}*\n{_since(alert)}"))
        return {"type": "section", "fields": fields[:SECTION_FIELDS_MAX]}

    @staticmethod
    def _context(alert: Alert) -> dict[str, Any]:
        parts = [f"dedup `{alert.dedup_key}`", f"event `{alert.event_id}`"]
        if alert.trace_id:
            parts.append(f"trace `{alert.trace_id}`")
        return {"type": "context", "elements": [md(mrkdwn(" · ".join(parts), SECTION_TEXT_MAX))]}

    def _firing(self, alert: Alert) -> tuple[str, list[dict[str, Any]]]:
        emoji = _EMOJI[alert.severity]
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": plain(
                    truncate(
                        f"{emoji} {alert.severity.upper()}  {one_line(alert.summary)}",
                        HEADER_TEXT_MAX,
                    )
                ),
            },
            self._fields(alert, "Since"),
            {"type": "section", "text": md(mrkdwn(alert.summary, SECTION_TEXT_MAX))},
        ]
        if alert.evidence:
            blocks.append({"type": "section", "text": md(_evidence(alert.evidence))})
        if alert.sql:
            head = "*Query*\n"
            blocks.append(
                {
                    "type": "section",
                    "text": md(head + code_block(alert.sql, SECTION_TEXT_MAX - len(head))),
                }
            )
        if is_web_url(alert.runbook_url, BUTTON_URL_MAX):
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": plain("Open runbook"),
                            "url": alert.runbook_url,
                            "action_id": "runbook",
                            **({"style": "danger"} if alert.severity == "critical" else {}),
                        }
                    ],
                }
            )
        elif alert.runbook_url:
            blocks.append(
                {
                    "type": "section",
                    "text": md("*Runbook*\n" + mrkdwn(alert.runbook_url, SECTION_TEXT_MAX - 20)),
                }
            )
        blocks.append(self._context(alert))
        text = f"[{alert.severity.upper()}] firing: {alert.summary} ({_where(alert)})"
        return mrkdwn(text, FALLBACK_TEXT_MAX), blocks

    def _resolved(self, alert: Alert) -> tuple[str, list[dict[str, Any]]]:
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": plain(
                    truncate(f"{_RESOLVED} Resolved  {one_line(alert.summary)}", HEADER_TEXT_MAX)
                ),
            },
            self._fields(alert, "Resolved"),
            self._context(alert),
        ]
        text = f"[RESOLVED] {alert.summary} ({_where(alert)})"
        return mrkdwn(text, FALLBACK_TEXT_MAX), blocks

    # -- a storm ----------------------------------------------------------------------------

    def _group(self, note: Notification) -> tuple[str, list[dict[str, Any]]]:
        alerts = note.alerts
        count = len(alerts)
        verb = "firing" if note.status == "firing" else "resolved"
        emoji = _STORM if note.status == "firing" else _RESOLVED
        header = truncate(f"{emoji} {count} alerts {verb}", HEADER_TEXT_MAX)
        severities: Counter[str] = Counter(a.severity for a in alerts)
        fields = [
            _field(sev.capitalize(), str(severities[sev]))
            for sev in ("critical", "error", "warning", "info")
            if severities[sev]
        ]
        fields.append(_field("Apps", _listing(a.app for a in alerts)))
        fields.append(_field("Rules", _listing(a.rule for a in alerts)))
        first = min(alerts, key=lambda a: a.event_time)
        fields.append(md(f"*First*\n{_since(first)}"))
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": plain(header)},
            {"type": "section", "fields": fields[:SECTION_FIELDS_MAX]},
        ]
        listed = sorted(alerts, key=lambda a: (-a.rank, a.event_time))[: self.max_listed]
        room = BLOCKS_MAX - len(blocks) - 1  # keep one block for the closing context
        for text in _pack((_line(a) for a in listed), SECTION_TEXT_MAX):
            if room == 0:
                break
            blocks.append({"type": "section", "text": md(text)})
            room -= 1
        closing = [f"{count} alerts grouped"]
        if count > len(listed):
            closing.append(f"…and {count - len(listed)} more not listed")
        blocks.append({"type": "context", "elements": [md(" · ".join(closing))]})
        summaries = "; ".join(truncate(one_line(a.summary), 150) for a in listed[:5])
        text = f"{count} alerts {verb}: {summaries}" + ("; …" if count > 5 else "")
        return mrkdwn(text, FALLBACK_TEXT_MAX), blocks


def _where(alert: Alert) -> str:
    return "/".join(part for part in (alert.app, alert.environment, alert.segment) if part)


def _evidence(evidence: Mapping[str, str]) -> str:
    """``*Evidence*`` and one line per key, sorted; cut with "…and N more" to fit a section."""
    items = sorted(evidence.items())
    lines = ["*Evidence*"]
    used = len(lines[0])
    for index, (key, value) in enumerate(items):
        line = "• " + mrkdwn(f"{key}: {value}", EVIDENCE_LINE_MAX)
        # Room for the "…and N more" line, in case the next item no longer fits.
        reserve = len(f"\n…and {len(items)} more") if index + 1 < len(items) else 0
        if used + 1 + len(line) + reserve > SECTION_TEXT_MAX:
            lines.append(f"…and {len(items) - index} more")
            break
        lines.append(line)
        used += 1 + len(line)
    return "\n".join(lines)


def _line(alert: Alert) -> str:
    """One alert of a group, at most GROUP_LINE_MAX characters (each part is capped)."""
    line = (
        f"{_EMOJI[alert.severity]} *{mrkdwn(alert.summary, 160)}* · {mrkdwn(_where(alert), 80)}"
        f" · rule `{mrkdwn(alert.rule, 50)}` · key `{mrkdwn(alert.dedup_key, 60)}`"
    )
    link = _link(alert.runbook_url, "runbook")
    if link and len(line) + 3 + len(link) <= GROUP_LINE_MAX:
        line += f" · {link}"
    return line


def _listing(values: Iterable[str]) -> str:
    counts = Counter(v or "—" for v in values)
    text = ", ".join(f"{v} ({n})" if n > 1 else v for v, n in counts.most_common())
    return truncate(text, LIST_FIELD_MAX)


def _pack(lines: Iterable[str], limit: int) -> list[str]:
    """Lines (each at most ``limit`` characters) joined into chunks of at most ``limit``."""
    chunks: list[str] = []
    current = ""
    for line in lines:
        if current and len(current) + 1 + len(line) > limit:
            chunks.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return chunks
