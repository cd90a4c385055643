"""The dashboard's SQL: read-only, parameterised statements over the Undertow tables.

Every statement is a constant ``SELECT`` with ClickHouse bound parameters (``{name:Type}``),
so nothing a visitor sends is ever spliced into SQL text; an empty filter (``''``, ``0``)
means "any". Times go in and out as epoch micro/milliseconds (see :mod:`.series`). Event
tables are read with ``FINAL`` so a redelivered event counts once.

Each function takes a clickhouse-connect client and returns JSON-ready dicts for one page.
Texts (prompts, completions, documents) appear only in :func:`trace`, capped in length; the
page renders them as text, never as HTML, and nothing here logs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from undertow.services.ui import UIError
from undertow.services.ui import series as S
from undertow.services.ui.series import Window

TEXT_CAP = 4000  # characters of a prompt message or completion shown on a trace page
DOC_CAP = 600  # characters of a retrieved document

_WINDOW = """event_time >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
  AND event_time < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')"""
_E_WINDOW = """e.event_time >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
  AND e.event_time < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')"""
_BUCKET = "intDiv(toUnixTimestamp64Milli(event_time), {bucket_ms:Int64}) * {bucket_ms:Int64}"

TRAFFIC_SQL = f"""
SELECT {_BUCKET} AS bucket, toString(event_type) AS kind, count() AS n
FROM events FINAL
WHERE {_WINDOW} AND ({{app:String}} = '' OR app = {{app:String}})
GROUP BY bucket, kind
ORDER BY bucket, kind"""

LATENCY_SQL = f"""
SELECT {_BUCKET} AS bucket, count() AS n,
       quantile(0.5)(latency_ms) AS p50, quantile(0.95)(latency_ms) AS p95
FROM events FINAL
WHERE {_WINDOW} AND event_type = 'completion'
  AND ({{app:String}} = '' OR app = {{app:String}})
GROUP BY bucket
ORDER BY bucket"""

COST_SQL = f"""
SELECT {_BUCKET} AS bucket, sum(ifNull(cost_usd, 0)) AS cost
FROM scores FINAL
WHERE {_WINDOW} AND event_type = 'completion'
  AND ({{app:String}} = '' OR app = {{app:String}})
GROUP BY bucket
ORDER BY bucket"""

SCORE_BINS_SQL = f"""
SELECT name, least(toUInt32(greatest(floor(value * {S.HISTOGRAM_BINS}), 0)),
                   {S.HISTOGRAM_BINS - 1}) AS bin, count() AS n
FROM scores FINAL
ARRAY JOIN ['toxicity', 'injection'] AS name, [toxicity, injection] AS value
WHERE {_WINDOW} AND value IS NOT NULL AND ({{app:String}} = '' OR app = {{app:String}})
GROUP BY name, bin
ORDER BY name, bin"""

TOTALS_SQL = f"""
SELECT count() AS events, uniqExact(trace_id) AS traces,
       countIf(event_type = 'completion') AS completions,
       quantileIf(0.5)(latency_ms, event_type = 'completion') AS p50,
       quantileIf(0.95)(latency_ms, event_type = 'completion') AS p95
FROM events FINAL
WHERE {_WINDOW} AND ({{app:String}} = '' OR app = {{app:String}})"""

TOTAL_COST_SQL = f"""
SELECT sum(ifNull(cost_usd, 0)) FROM scores FINAL
WHERE {_WINDOW} AND ({{app:String}} = '' OR app = {{app:String}})"""

FACETS_SQL = f"""
SELECT arraySort(groupUniqArray(200)(toString(app))),
       arraySort(groupUniqArrayIf(200)(toString(model), model != ''))
FROM events
WHERE {_WINDOW}"""

DRIFT_SQL = f"""
SELECT segment, toString(stream), toString(detector), toUnixTimestamp64Milli(event_time),
       statistic, threshold, detected
FROM drift FINAL
WHERE {_WINDOW} AND ({{app:String}} = '' OR app = {{app:String}})
ORDER BY segment, stream, detector, event_time
LIMIT {{limit:UInt32}}"""

ALERTS_SQL = f"""
SELECT dedup_key,
       toString(argMax(rule, event_time)) AS last_rule,
       toString(argMax(severity, event_time)) AS last_severity,
       toString(argMax(status, event_time)) AS last_status,
       toUnixTimestamp64Milli(min(event_time)) AS first_ms,
       toUnixTimestamp64Milli(max(event_time)) AS last_ms,
       argMax(summary, event_time) AS last_summary,
       toString(argMax(app, event_time)) AS last_app,
       argMax(segment, event_time) AS last_segment,
       argMax(ifNull(runbook_url, ''), event_time) AS last_runbook,
       argMax(trace_id, event_time) AS last_trace,
       count() AS updates
FROM alerts FINAL
WHERE {_WINDOW} AND ({{app:String}} = '' OR app = {{app:String}})
GROUP BY dedup_key
HAVING ({{status:String}} = '' OR last_status = {{status:String}})
   AND ({{severity:String}} = '' OR last_severity = {{severity:String}})
ORDER BY last_status = 'firing' DESC,
         indexOf(['critical', 'error', 'warning', 'info'], last_severity) = 0,
         indexOf(['critical', 'error', 'warning', 'info'], last_severity),
         last_ms DESC
LIMIT {{limit:UInt32}}"""

TRACES_SQL = f"""
SELECT e.trace_id AS trace_id,
       toString(any(e.app)) AS app,
       toUnixTimestamp64Milli(min(e.event_time)) AS start_ms,
       toUnixTimestamp64Milli(max(e.event_time)) AS end_ms,
       count() AS spans,
       groupUniqArray(toString(e.event_type)) AS kinds,
       arraySort(groupUniqArrayIf(toString(e.model), e.model != '')) AS models,
       arraySort(groupUniqArrayIf(toString(e.prompt_version), e.prompt_version != '')) AS pvs,
       sumIf(ifNull(e.latency_ms, 0), e.event_type IN ('retrieval', 'completion')) AS latency,
       sum(ifNull(e.input_tokens, 0) + ifNull(e.output_tokens, 0)) AS tokens,
       sum(ifNull(s.cost_usd, 0)) AS cost,
       max(s.toxicity) AS max_toxicity,
       max(s.injection) AS max_injection,
       avgIf(e.feedback_score, e.event_type = 'feedback') AS feedback
FROM events AS e FINAL
LEFT JOIN (
    SELECT event_id, cost_usd, toxicity, injection FROM scores FINAL WHERE {_WINDOW}
) AS s ON e.event_id = s.event_id
WHERE {_E_WINDOW}
  AND ({{app:String}} = '' OR e.app = {{app:String}})
  AND startsWith(e.trace_id, {{trace_prefix:String}})
GROUP BY e.trace_id
HAVING ({{model:String}} = '' OR has(models, {{model:String}}))
   AND ({{min_toxicity:Float64}} <= 0 OR ifNull(max_toxicity, 0) >= {{min_toxicity:Float64}})
   AND ({{min_injection:Float64}} <= 0 OR ifNull(max_injection, 0) >= {{min_injection:Float64}})
ORDER BY start_ms DESC, trace_id
LIMIT {{limit:UInt32}}"""

SPANS_SQL = """
SELECT toString(e.event_id), toString(e.event_type), e.span_id, e.parent_span_id,
       toUnixTimestamp64Milli(e.event_time), toString(e.app), toString(e.environment),
       toString(e.model), toString(e.prompt_name), toString(e.prompt_version),
       toString(e.model_version), toString(e.adapter), e.latency_ms,
       e.prompt_messages, e.retrieval_query, e.retrieval_documents, toString(e.retrieval_store),
       e.completion_text, e.input_tokens, e.output_tokens, e.finish_reason,
       e.feedback_score, e.feedback_label, e.feedback_comment, e.feedback_source,
       s.scores, s.cost_usd, e.truncated
FROM events AS e FINAL
LEFT JOIN (
    SELECT event_id, scores, cost_usd FROM scores FINAL WHERE trace_id = {trace_id:String}
) AS s ON e.event_id = s.event_id
WHERE e.trace_id = {trace_id:String}
ORDER BY e.event_time
LIMIT 2000"""

JUDGE_SQL = """
SELECT toString(completion_event_id), toString(rubric), score, toString(judge_model),
       parse_error
FROM judge_scores FINAL
WHERE trace_id = {trace_id:String}
ORDER BY rubric"""

STATEMENTS: tuple[str, ...] = (
    TRAFFIC_SQL,
    LATENCY_SQL,
    COST_SQL,
    SCORE_BINS_SQL,
    TOTALS_SQL,
    TOTAL_COST_SQL,
    FACETS_SQL,
    DRIFT_SQL,
    ALERTS_SQL,
    TRACES_SQL,
    SPANS_SQL,
    JUDGE_SQL,
)
ALERT_KEYS = (
    "dedup_key",
    "rule",
    "severity",
    "status",
    "first_ms",
    "last_ms",
    "summary",
    "app",
    "segment",
    "runbook_url",
    "trace_id",
    "updates",
)
TRACE_KEYS = (
    "trace_id",
    "app",
    "start_ms",
    "end_ms",
    "spans",
    "kinds",
    "models",
    "prompt_versions",
    "latency_ms",
    "tokens",
    "cost_usd",
    "max_toxicity",
    "max_injection",
    "feedback",
)
SEVERITIES = ("critical", "error", "warning", "info")
ALERT_STATUSES = ("firing", "resolved")


class QueryError(UIError):
    """The warehouse refused or failed a dashboard query."""


def rows(client: Any, sql: str, parameters: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    """Run one of :data:`STATEMENTS` with bound parameters; warehouse errors become
    :class:`QueryError` (naming the statement by its first table, never its values)."""
    if sql not in STATEMENTS:
        raise QueryError("expected one of the dashboard's own statements, got another SQL text")
    try:
        result = client.query(sql, parameters=dict(parameters))
    except ClickHouseError as exc:
        table = sql.split("FROM", 1)[1].split()[0] if "FROM" in sql else "?"
        raise QueryError(f"the warehouse failed a query on {table}: {exc}") from exc
    return list(result.result_rows)


def overview(client: Any, window: Window, app: str = "") -> dict[str, Any]:
    """Traffic by event type, completion cost and latency per bucket, score distributions and
    totals for the window, optionally for one app."""
    p = {**window.parameters(), "app": app}
    latency = {int(b): (n, p50, p95) for b, n, p50, p95 in rows(client, LATENCY_SQL, p)}
    cost = {int(b): float(c) for b, c in rows(client, COST_SQL, p)}
    merged = []
    for b in sorted(set(latency) | set(cost)):
        n, p50, p95 = latency.get(b, (0, None, None))
        merged.append((b, int(n), cost.get(b, 0.0), p50, p95))
    [(events, traces, n_completions, p50, p95)] = rows(client, TOTALS_SQL, p)
    [(total_cost,)] = rows(client, TOTAL_COST_SQL, p)
    return {
        "window": _window(window),
        "traffic": S.traffic(window, rows(client, TRAFFIC_SQL, p)),
        "completions": S.completions(window, merged),
        "scores": S.histogram(rows(client, SCORE_BINS_SQL, p)),
        "totals": {
            "events": int(events),
            "traces": int(traces),
            "completions": int(n_completions),
            "cost_usd": float(total_cost or 0.0),
            "latency_p50_ms": S.number(p50) if n_completions else None,
            "latency_p95_ms": S.number(p95) if n_completions else None,
        },
    }


def facets(client: Any, window: Window) -> dict[str, Any]:
    """The apps and models seen in the window, for the filters' drop-downs."""
    [(apps, models)] = rows(client, FACETS_SQL, window.parameters())
    return {"apps": list(apps), "models": list(models)}


def drift(client: Any, window: Window, app: str = "", limit: int = 50_000) -> dict[str, Any]:
    """Every drift series (segment, stream, detector) in the window with its detections."""
    p = {**window.parameters(), "app": app, "limit": limit}
    series = S.drift(rows(client, DRIFT_SQL, p))
    return {
        "window": _window(window),
        "series": series,
        # A trace series repeats its stream's detections: not counted twice.
        "detections": sum(len(s["detections"]["t"]) for s in series if not s["trace"]),
    }


def alerts(
    client: Any,
    window: Window,
    *,
    app: str = "",
    status: str = "",
    severity: str = "",
    limit: int = 500,
) -> dict[str, Any]:
    """Incidents (alerts grouped by dedup key) seen in the window: firing first, then by
    severity and recency; each with its latest state and runbook."""
    if status and status not in ALERT_STATUSES:
        raise UIError(f"expected a status among {ALERT_STATUSES}, got {status!r}")
    if severity and severity not in SEVERITIES:
        raise UIError(f"expected a severity among {SEVERITIES}, got {severity!r}")
    p = {**window.parameters(), "app": app, "status": status, "severity": severity}
    found = rows(client, ALERTS_SQL, {**p, "limit": limit})
    incidents = [dict(zip(ALERT_KEYS, r, strict=True)) for r in found]
    for i in incidents:
        i["first_seen"], i["last_seen"] = S.iso(i["first_ms"]), S.iso(i["last_ms"])
        i["runbook_url"] = safe_link(i["runbook_url"])
    return {
        "window": _window(window),
        "incidents": incidents,
        "firing": sum(1 for i in incidents if i["status"] == "firing"),
    }


@dataclass(frozen=True)
class TraceFilter:
    """What the trace list is narrowed to; empty or zero fields do not filter."""

    app: str = ""
    model: str = ""
    trace_prefix: str = ""
    min_toxicity: float = 0.0
    min_injection: float = 0.0
    limit: int = 100


def traces(client: Any, window: Window, where: TraceFilter | None = None) -> dict[str, Any]:
    """The newest traces in the window matching ``where``, one summary row each."""
    w = where or TraceFilter()
    p = {
        **window.parameters(),
        "app": w.app,
        "model": w.model,
        "trace_prefix": w.trace_prefix,
        "min_toxicity": w.min_toxicity,
        "min_injection": w.min_injection,
        "limit": w.limit,
    }
    out = []
    for r in rows(client, TRACES_SQL, p):
        t = dict(zip(TRACE_KEYS, r, strict=True))
        t["start"] = S.iso(t["start_ms"])
        t["kinds"] = [k for k in S.EVENT_TYPES if k in t["kinds"]] + sorted(
            set(t["kinds"]) - set(S.EVENT_TYPES)
        )
        for k in ("latency_ms", "cost_usd", "max_toxicity", "max_injection", "feedback"):
            t[k] = S.number(t[k])
        out.append(t)
    return {"window": _window(window), "traces": out}


def trace(client: Any, trace_id: str) -> dict[str, Any]:
    """One trace: its spans in order (prompt, retrieval, completion, feedback) with their
    texts (capped), scores, tokens, cost and latency, judge ratings, and the waterfall."""
    p = {"trace_id": trace_id}
    judged: dict[str, list[dict[str, Any]]] = {}
    for event_id, rubric, score, judge_model, parse_error in rows(client, JUDGE_SQL, p):
        judged.setdefault(event_id, []).append(
            {
                "rubric": rubric,
                "score": S.number(score),
                "judge_model": judge_model,
                "parse_error": parse_error,
            }
        )
    spans = sorted((_span(r, judged) for r in rows(client, SPANS_SQL, p)), key=S.span_order)
    if not spans:
        return {"trace_id": trace_id, "found": False, "spans": [], "waterfall": S.waterfall([])}
    priced = [s["cost_usd"] for s in spans if s["cost_usd"] is not None]
    return {
        "trace_id": trace_id,
        "found": True,
        "app": spans[0]["app"],
        "environment": spans[0]["environment"],
        "start": spans[0]["time"],
        "spans": spans,
        "totals": {
            "spans": len(spans),
            "latency_ms": sum(
                s["latency_ms"] or 0.0
                for s in spans
                if s["event_type"] in ("retrieval", "completion")
            ),
            "tokens": sum((s["input_tokens"] or 0) + (s["output_tokens"] or 0) for s in spans),
            "cost_usd": sum(priced) if priced else None,
        },
        "waterfall": S.waterfall(spans),
    }


def safe_link(url: str | None) -> str | None:
    """``url`` when it is an http(s) link, else None: a runbook link must never run script
    (``javascript:``) however the alert was written."""
    if not url:
        return None
    lowered = url.strip().lower()
    return url.strip() if lowered.startswith(("https://", "http://")) else None


def _fields(item: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    """The fields of a ClickHouse named tuple, which clickhouse-connect returns as a dict (or,
    by its settings, as a plain tuple)."""
    if isinstance(item, Mapping):
        return tuple(item.get(n) for n in names)
    return tuple(item)


def _cap(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"… [{len(text) - limit} more characters]"


def _span(r: Sequence[Any], judged: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (
        event_id,
        kind,
        span_id,
        parent,
        time_ms,
        app,
        environment,
        model,
        prompt_name,
        prompt_version,
        model_version,
        adapter,
        latency,
        messages,
        query,
        documents,
        store,
        completion,
        input_tokens,
        output_tokens,
        finish_reason,
        feedback_score,
        feedback_label,
        feedback_comment,
        feedback_source,
        scores,
        cost,
        truncated,
    ) = r
    span: dict[str, Any] = {
        "event_id": event_id,
        "event_type": kind,
        "span_id": span_id,
        "parent_span_id": parent,
        "time_ms": int(time_ms),
        "time": S.iso(time_ms),
        "app": app,
        "environment": environment,
        "model": model,
        "prompt_name": prompt_name,
        "prompt_version": prompt_version,
        "model_version": model_version,
        "adapter": adapter,
        "latency_ms": S.number(latency),
        "input_tokens": None if input_tokens is None else int(input_tokens),
        "output_tokens": None if output_tokens is None else int(output_tokens),
        "cost_usd": S.number(cost),
        "scores": {str(k): S.number(v) for k, v in sorted(dict(scores or {}).items())},
        "judge": judged.get(event_id, []),
        "truncated": bool(truncated),
    }
    if kind == "prompt":
        span["messages"] = [
            {"role": str(role), "content": _cap(content, TEXT_CAP)}
            for role, content in (_fields(m, ("role", "content")) for m in messages)
        ]
    elif kind == "retrieval":
        span["query"] = _cap(query, TEXT_CAP)
        span["store"] = store
        span["documents"] = [
            {
                "id": doc_id,
                "score": S.number(score),
                "text": _cap(text, DOC_CAP),
                "source": source,
            }
            for doc_id, score, text, source in (
                _fields(d, ("id", "score", "text", "source")) for d in documents
            )
        ]
    elif kind == "completion":
        span["text"] = _cap(completion, TEXT_CAP)
        span["finish_reason"] = finish_reason
    elif kind == "feedback":
        span["feedback"] = {
            "score": S.number(feedback_score),
            "label": feedback_label,
            "comment": _cap(feedback_comment, TEXT_CAP),
            "source": feedback_source,
        }
    return span


def _window(window: Window) -> dict[str, Any]:
    return {
        "start": S.iso(window.start_ms),
        "end": S.iso(window.end_ms),
        "bucket_s": window.bucket_ms // 1000,
    }
