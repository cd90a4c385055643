"""Alert builders shared by the alert tests: plain ones, and ones that push every limit."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from undertow.services.alerts.alert import Alert, Severity, Status

ROUTING_KEY = "R0UTINGKEY0123456789abcdefUNDRTW"  # 32 characters
WEBHOOK_SECRET = "whsec-undertow-test-secret-0123456789"
T0 = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
_ids = itertools.count(1)

# Text that breaks naive renderers: mrkdwn specials, code fences, quotes, many scripts, emoji.
NASTY = 'Tox <script>&amp; `a` ```x``` *b* _c_ "q" café 日本語 🙂 \u200b |pipe| <http://x|y>'


def make_alert(
    key: str = "tox:chat",
    status: Status = "firing",
    severity: Severity = "warning",
    *,
    summary: str = "Toxic answers above threshold",
    **fields: Any,
) -> Alert:
    """An alert with a fresh event id; ``fields`` override any other attribute."""
    n = next(_ids)
    values: dict[str, Any] = {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "dedup_key": key,
        "rule": "toxicity_p95 > 0.8",
        "severity": severity,
        "status": status,
        "summary": summary,
        "app": "chat",
        "environment": "production",
        "segment": "model=gpt-x/prompt=v3",
        "event_time": T0 + timedelta(seconds=n),
        "evidence": {"toxicity_p95": "0.91", "window": "5m", "events": "1200"},
        "sql": "SELECT count() FROM scores WHERE toxicity > 0.8 AND app = 'chat'",
        "runbook_url": "https://runbooks.example.com/toxicity",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    }
    values.update(fields)
    return Alert(**values)


def huge_alert(status: Status = "firing", severity: Severity = "critical", **fields: Any) -> Alert:
    """Every text far past every documented limit, full of characters that need escaping."""
    values: dict[str, Any] = {
        "summary": (NASTY + " ") * 400,
        "rule": "r" * 5000,
        "app": "a" * 3000,
        "segment": "<&>" * 2000,
        "dedup_key": "k" * 1000,
        "evidence": {f"metric_{i:03d}<&>": (NASTY * 20) for i in range(300)},
        "sql": ("SELECT '<&>' AS x, ```fence``` FROM t WHERE a < b && c > d\n" * 500),
        "runbook_url": "https://runbooks.example.com/" + "p" * 2990,  # 3019 chars: no button
    }
    values.update(fields)
    return make_alert(status=status, severity=severity, **values)
