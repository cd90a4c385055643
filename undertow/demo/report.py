"""The demo's report: one self-contained HTML page of what happened, read from the warehouse.

The page holds a header with the run summary, a table of the planted incidents (caught or not,
how late, the alert, the channels that got the page, the action taken, the SQL to look at it)
and four plotly figures over event time:

1. drift: each stream's traced statistic with its detections marked (a detector's own statistic
   against its threshold for streams without a trace);
2. scores: per-minute mean toxicity and injection, and the share of events above 0.5 and 0.8;
3. cost and latency per segment (model, prompt version): per-minute cost, p50 and p95 latency;
4. timeline: traffic per minute by event type, each incident's period shaded, its catch marked.

It opens offline: plotly's JavaScript is inlined once, and each figure's JSON sits in its own
``<script type="application/json" class="undertow-figure">`` block (with ``<``, ``>`` and
``&`` escaped) that a few lines of script hand to ``Plotly.newPlot``. Every text that comes from
data is HTML-escaped, in the page and in the figures (plotly renders a subset of HTML in text).

Reading (:func:`read_report_data`, parameterised SQL with ``FINAL``), figures
(:func:`report_plots`) and the page (:func:`render_report`) are separate steps, so each can be
tested alone; :func:`build_report` chains them.

>>> html = render_report(app="chat", since=datetime(2026, 3, 1, 12, tzinfo=UTC),
...     until=datetime(2026, 3, 1, 13, tzinfo=UTC), incidents=[], summary={"run": "r1"},
...     plots=report_plots(ReportData(), []))
>>> html.count('class="undertow-figure"')
4
"""

from __future__ import annotations

import html as html_lib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any, Final

import plotly.graph_objects as go
import plotly.offline
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from plotly.io.json import to_json_plotly
from plotly.subplots import make_subplots

from undertow.errors import UndertowError
from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.rows import DRIFT_TRACE_DETECTOR

# Thresholds of the "share of events above" series in the scores figure.
SHARE_THRESHOLDS: Final = (0.5, 0.8)
NO_DATA: Final = "no data"

_PLOT_CONFIG: Final = {"responsive": True, "displaylogo": False}
_CAUGHT_COLOUR: Final = "rgba(255, 165, 0, 0.18)"
_MISSED_COLOUR: Final = "rgba(220, 20, 60, 0.18)"
_DETECTED_MARKER: Final = {"symbol": "x", "size": 11, "color": "crimson"}
_UNCONFIRMED_MARKER: Final = {"symbol": "circle-open", "size": 10, "color": "grey"}


class ReportError(UndertowError):
    """The report cannot be built or written (bad window, unwritable path)."""


@dataclass(frozen=True)
class IncidentOutcome:
    """A planted incident and what the pipeline did about it."""

    kind: str  # topic_shift, injection, toxicity, cost_spike, quality_regression
    description: str
    started: datetime  # event time the incident's traffic began
    ended: datetime  # event time it ended
    caught_by: str  # the rule (or drift_detected) expected to catch it
    caught_at: datetime | None  # event time of the first alert/detection that caught it
    delay_events: int | None  # traces of the incident sent before it was caught
    alert: str | None  # the alert's summary
    delivered: tuple[str, ...]  # channels that received the page (slack, pagerduty, webhook)
    action: str | None  # e.g. "rollback SmolLM2 2 -> 1: succeeded"
    sql: str | None  # the SQL to look at it

    @property
    def caught(self) -> bool:
        return self.caught_at is not None


# -- rows read from the warehouse --------------------------------------------------------------


@dataclass(frozen=True)
class DriftPoint:
    """One ``drift`` row: a statistic of a segment's stream at an event time."""

    segment: str
    stream: str
    detector: str
    event_time: datetime
    statistic: float
    threshold: float
    detected: bool


@dataclass(frozen=True)
class ScoreMinute:
    """Per-minute toxicity and injection: means, and the share of scored events above
    :data:`SHARE_THRESHOLDS` (None where no event of the minute had that score)."""

    minute: datetime
    toxicity_mean: float | None
    injection_mean: float | None
    toxicity_above: tuple[float | None, ...]  # one per SHARE_THRESHOLDS
    injection_above: tuple[float | None, ...]


@dataclass(frozen=True)
class SegmentMinute:
    """Per-minute cost and latency of one segment's completions."""

    model: str
    prompt_version: str
    minute: datetime
    completions: int
    cost_usd: float | None  # None when no completion of the minute was priced
    latency_p50_ms: float | None
    latency_p95_ms: float | None

    @property
    def segment(self) -> str:
        return f"model={self.model or '-'} prompt_version={self.prompt_version or '-'}"


@dataclass(frozen=True)
class TrafficMinute:
    """Events of one type in one minute."""

    minute: datetime
    event_type: str
    events: int


@dataclass(frozen=True)
class ReportData:
    """Everything the figures are drawn from."""

    drift: Sequence[DriftPoint] = ()
    scores: Sequence[ScoreMinute] = ()
    segments: Sequence[SegmentMinute] = ()
    traffic: Sequence[TrafficMinute] = ()


@dataclass(frozen=True)
class Plot:
    """One figure of the page: ``key`` names its element ids; ``empty`` when it had no data."""

    key: str
    title: str
    figure: go.Figure
    empty: bool
    note: str = ""
    sql: str = field(default="", repr=False)


# -- reading -----------------------------------------------------------------------------------

_WINDOW: Final = (
    "app = {app:String}"
    " AND event_time >= {since:DateTime64(6, 'UTC')}"
    " AND event_time < {until:DateTime64(6, 'UTC')}"
)
DRIFT_SQL: Final = (
    "SELECT segment, stream, detector, event_time, statistic, threshold, detected"
    f" FROM drift FINAL WHERE {_WINDOW}"
    " ORDER BY segment, stream, detector, event_time, event_id"
)
_SHARES: Final = ", ".join(
    f"avg({name} > {t}) AS {name}_above_{i}"
    for name in ("toxicity", "injection")
    for i, t in enumerate(SHARE_THRESHOLDS)
)
SCORES_SQL: Final = (
    "SELECT toStartOfMinute(event_time) AS minute, avg(toxicity), avg(injection), "
    f"{_SHARES} FROM scores FINAL WHERE {_WINDOW}"
    " AND (toxicity IS NOT NULL OR injection IS NOT NULL)"
    " GROUP BY minute ORDER BY minute"
)
SEGMENTS_SQL: Final = (
    "SELECT model, prompt_version, toStartOfMinute(event_time) AS minute, count(),"
    " sum(cost_usd), quantileExactInclusive(0.5)(latency_ms),"
    " quantileExactInclusive(0.95)(latency_ms), count(cost_usd), count(latency_ms)"
    f" FROM scores FINAL WHERE {_WINDOW} AND event_type = 'completion'"
    " GROUP BY model, prompt_version, minute ORDER BY model, prompt_version, minute"
)
TRAFFIC_SQL: Final = (
    "SELECT toStartOfMinute(event_time) AS minute, event_type, count()"
    f" FROM events FINAL WHERE {_WINDOW}"
    " GROUP BY minute, event_type ORDER BY minute, event_type"
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bound(name: str, value: datetime) -> str:
    if value.tzinfo is None:
        raise ReportError(f"{name} must be a timezone-aware datetime, got {value.isoformat()}")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _number(value: Any) -> float | None:
    """A float, or None for NULL and NaN (what ClickHouse gives an aggregate of nothing)."""
    if value is None:
        return None
    number = float(value)
    return None if number != number else number


def _query(client: Client, sql: str, parameters: Mapping[str, Any], what: str) -> list[Any]:
    try:
        return list(client.query(sql, parameters=dict(parameters)).result_rows)
    except ClickHouseError as exc:
        raise WarehouseError(f"reading {what} for the report failed: {exc}") from exc


def read_report_data(client: Client, *, app: str, since: datetime, until: datetime) -> ReportData:
    """The figures' data for ``app`` over event times in [since, until), from ``drift``,
    ``scores`` and ``events`` (all with FINAL, so redelivered rows count once)."""
    start, end = _bound("since", since), _bound("until", until)
    if until <= since:
        raise ReportError(f"expected since before until, got {since} and {until}")
    parameters = {"app": app, "since": start, "until": end}
    drift = [
        DriftPoint(str(s), str(st), str(d), _utc(t), float(v), float(th), bool(det))
        for s, st, d, t, v, th, det in _query(client, DRIFT_SQL, parameters, "drift")
    ]
    n = len(SHARE_THRESHOLDS)
    scores = [
        ScoreMinute(
            minute=_utc(row[0]),
            toxicity_mean=_number(row[1]),
            injection_mean=_number(row[2]),
            toxicity_above=tuple(_number(v) for v in row[3 : 3 + n]),
            injection_above=tuple(_number(v) for v in row[3 + n : 3 + 2 * n]),
        )
        for row in _query(client, SCORES_SQL, parameters, "scores")
    ]
    segments = [
        SegmentMinute(
            model=str(model),
            prompt_version=str(version),
            minute=_utc(minute),
            completions=int(count),
            cost_usd=_number(cost) if priced else None,
            latency_p50_ms=_number(p50) if timed else None,
            latency_p95_ms=_number(p95) if timed else None,
        )
        for model, version, minute, count, cost, p50, p95, priced, timed in _query(
            client, SEGMENTS_SQL, parameters, "cost and latency"
        )
    ]
    traffic = [
        TrafficMinute(_utc(minute), str(kind), int(count))
        for minute, kind, count in _query(client, TRAFFIC_SQL, parameters, "traffic")
    ]
    return ReportData(drift=drift, scores=scores, segments=segments, traffic=traffic)


# -- figures -----------------------------------------------------------------------------------


def plot_text(text: str) -> str:
    """``text`` from data, safe in a plotly label (plotly renders a subset of HTML)."""
    return html_lib.escape(text, quote=False)


def plot_time(value: datetime) -> str:
    """An event time as plotly reads it on a date axis: UTC wall clock, no offset."""
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


def empty_figure(title: str, why: str = NO_DATA) -> go.Figure:
    """A figure that says there was nothing to draw, instead of blank axes."""
    figure = go.Figure()
    figure.update_layout(
        title=title,
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {
                "text": plot_text(why),
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "showarrow": False,
                "font": {"size": 18},
            }
        ],
        height=260,
    )
    return figure


TRACE_DETECTOR: Final = DRIFT_TRACE_DETECTOR


def drift_figure(points: Sequence[DriftPoint]) -> go.Figure:
    """One panel per series, full width (no legend: each panel's title names its series).

    A stream the drift role traces (``TRACE_DETECTOR``, the mean of the detector's recent
    inputs) gets one panel: the trace as a line, the stream's detections of any detector
    marked on it at the traced value of that moment (crosses when confirmed, open circles when
    the confirmation test turned them down), each mark's hover naming the detector, its
    statistic and threshold. A detector's own rows get a panel of their own only for streams
    without a trace: the statistic (rows not detected) as a line, the threshold dashed,
    detections as crosses."""
    title = "Drift statistics over event time"
    if not points:
        return empty_figure(title)
    key = _drift_key
    traced = {(p.segment, p.stream) for p in points if p.detector == TRACE_DETECTOR}
    series = [
        (k, list(g))
        for k, g in groupby(sorted(points, key=key), key=key)
        if k[2] == TRACE_DETECTOR or (k[0], k[1]) not in traced
    ]
    found: dict[tuple[str, str], list[DriftPoint]] = {}
    for p in points:
        if p.detector != TRACE_DETECTOR and (p.segment, p.stream) in traced:
            found.setdefault((p.segment, p.stream), []).append(p)
    segments = {s for (s, _, _), _ in series}
    one_segment = len(segments) == 1

    def panel_title(segment: str, stream: str, detector: str) -> str:
        named = stream if one_segment else f"{segment} · {stream}"
        kind = "recent mean" if detector == TRACE_DETECTOR else detector
        return plot_text(f"{named} ({kind})")

    figure = make_subplots(
        rows=len(series),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.08, 0.3 / len(series)),
        subplot_titles=[panel_title(*k) for k, _ in series],
    )
    for row, ((segment, stream, detector), rows) in enumerate(series, start=1):
        meta = {"segment": segment, "stream": stream, "detector": detector}
        label = plot_text(f"{segment} · {stream}")
        line = [p for p in rows if not p.detected]
        marks: list[tuple[str, list[DriftPoint], list[float], dict[str, Any]]] = []
        if detector == TRACE_DETECTOR:
            if not line:
                continue
            hits = found.get((segment, stream), [])
            for role, shown, marker in (
                ("detected", [p for p in hits if p.detected], _DETECTED_MARKER),
                ("unconfirmed", [p for p in hits if not p.detected], _UNCONFIRMED_MARKER),
            ):
                if shown or role == "detected":
                    marks.append((role, shown, [_at(line, p.event_time) for p in shown], marker))
        else:
            hits = [p for p in rows if p.detected]
            marks.append(("detected", hits, [p.statistic for p in hits], _DETECTED_MARKER))
        figure.add_trace(
            go.Scatter(
                x=[plot_time(p.event_time) for p in line],
                y=[p.statistic for p in line],
                mode="lines",
                name=f"{label}: statistic",
                meta={**meta, "role": "statistic"},
            ),
            row=row,
            col=1,
        )
        if detector != TRACE_DETECTOR:  # a trace has no threshold of its own
            figure.add_trace(
                go.Scatter(
                    x=[plot_time(p.event_time) for p in rows],
                    y=[p.threshold for p in rows],
                    mode="lines",
                    line={"dash": "dash", "color": "grey"},
                    name=f"{label}: threshold",
                    meta={**meta, "role": "threshold"},
                ),
                row=row,
                col=1,
            )
        for role, shown, ys, marker in marks:
            figure.add_trace(
                go.Scatter(
                    x=[plot_time(p.event_time) for p in shown],
                    y=ys,
                    mode="markers",
                    marker=marker,
                    name=f"{label}: {role}",
                    hovertext=[
                        plot_text(
                            f"{p.detector}: {p.statistic:.4g} against {p.threshold:.4g}"
                            f" ({'confirmed' if p.detected else 'not confirmed'})"
                        )
                        for p in shown
                    ],
                    meta={**meta, "role": role},
                ),
                row=row,
                col=1,
            )
    heading = f"{title}: {next(iter(segments))}" if one_segment else title
    figure.update_layout(
        title=plot_text(heading), height=max(320, 200 * len(series)), showlegend=False
    )
    figure.update_annotations(font_size=13)  # the panels' titles
    figure.update_xaxes(type="date")
    figure.update_xaxes(title="event time (UTC)", row=len(series), col=1)
    return figure


def _at(line: Sequence[DriftPoint], moment: datetime) -> float:
    """The traced statistic at ``moment`` on the line as drawn: interpolated between the trace
    points around it, the first or last point's value outside them."""
    before = [p for p in line if p.event_time <= moment]
    after = [p for p in line if p.event_time > moment]
    if not before or not after:
        return (before[-1] if before else after[0]).statistic
    a, b = before[-1], after[0]
    share = (moment - a.event_time) / (b.event_time - a.event_time)
    return a.statistic + share * (b.statistic - a.statistic)


def _drift_key(point: DriftPoint) -> tuple[str, str, str]:
    return (point.segment, point.stream, point.detector)


def scores_figure(minutes: Sequence[ScoreMinute]) -> go.Figure:
    """Per-minute mean toxicity and injection (top), and the share of scored events above each
    of :data:`SHARE_THRESHOLDS` (bottom)."""
    title = "Toxicity and injection scores per minute"
    if not minutes:
        return empty_figure(title)
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        subplot_titles=["mean score", "share of scored events above"],
    )
    x = [plot_time(m.minute) for m in minutes]
    for name, means in (
        ("toxicity", [m.toxicity_mean for m in minutes]),
        ("injection", [m.injection_mean for m in minutes]),
    ):
        figure.add_trace(
            go.Scatter(
                x=x,
                y=means,
                mode="lines+markers",
                name=f"mean {name}",
                meta={"score": name, "role": "mean"},
            ),
            row=1,
            col=1,
        )
    for i, threshold in enumerate(SHARE_THRESHOLDS):
        for name, attr in (("toxicity", "toxicity_above"), ("injection", "injection_above")):
            figure.add_trace(
                go.Scatter(
                    x=x,
                    y=[getattr(m, attr)[i] for m in minutes],
                    mode="lines+markers",
                    line={"dash": "solid" if i == 0 else "dot"},
                    name=f"{name} > {threshold}",
                    meta={"score": name, "role": "share", "threshold": threshold},
                ),
                row=2,
                col=1,
            )
    figure.update_yaxes(range=[0, 1.02])
    figure.update_xaxes(type="date")
    figure.update_xaxes(title="event time (UTC)", row=2, col=1)
    figure.update_layout(title=title, height=560)
    return figure


def cost_latency_figure(minutes: Sequence[SegmentMinute]) -> go.Figure:
    """Per segment (model, prompt version): cost per minute (top), p50 and p95 completion
    latency per minute (bottom)."""
    title = "Cost and latency per segment"
    if not minutes:
        return empty_figure(title)
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        subplot_titles=["cost per minute (USD)", "completion latency (ms)"],
    )
    ordered = sorted(minutes, key=lambda m: (m.model, m.prompt_version, m.minute))
    for (model, version), group in groupby(ordered, key=lambda m: (m.model, m.prompt_version)):
        rows = list(group)
        label = plot_text(rows[0].segment)
        meta = {"model": model, "prompt_version": version}
        x = [plot_time(m.minute) for m in rows]
        figure.add_trace(
            go.Scatter(
                x=x,
                y=[m.cost_usd for m in rows],
                mode="lines+markers",
                name=f"{label}: cost",
                legendgroup=label,
                meta={**meta, "role": "cost"},
            ),
            row=1,
            col=1,
        )
        for role, values, dash in (
            ("p50", [m.latency_p50_ms for m in rows], "solid"),
            ("p95", [m.latency_p95_ms for m in rows], "dot"),
        ):
            figure.add_trace(
                go.Scatter(
                    x=x,
                    y=values,
                    mode="lines+markers",
                    line={"dash": dash},
                    name=f"{label}: {role} latency",
                    legendgroup=label,
                    meta={**meta, "role": role},
                ),
                row=2,
                col=1,
            )
    figure.update_xaxes(type="date")
    figure.update_xaxes(title="event time (UTC)", row=2, col=1)
    figure.update_layout(title=title, height=600)
    return figure


def timeline_figure(
    traffic: Sequence[TrafficMinute], incidents: Sequence[IncidentOutcome]
) -> go.Figure:
    """Events per minute by type (stacked), each incident's period shaded (orange when caught,
    red when not) and the moment it was caught marked."""
    title = "Traffic and incidents"
    if not traffic and not incidents:
        return empty_figure(title)
    figure = go.Figure()
    kinds = sorted({t.event_type for t in traffic})
    for kind in kinds:
        rows = sorted((t for t in traffic if t.event_type == kind), key=lambda t: t.minute)
        figure.add_trace(
            go.Bar(
                x=[plot_time(t.minute) for t in rows],
                y=[t.events for t in rows],
                offset=0,  # a bar covers its minute, [start, start + 60 s), like the shading
                width=60_000,  # ms on a date axis
                name=plot_text(kind),
                meta={"event_type": kind, "role": "traffic"},
            )
        )
    totals: dict[datetime, int] = {}
    for t in traffic:
        totals[t.minute] = totals.get(t.minute, 0) + t.events
    top = max(totals.values(), default=1)
    for n, incident in enumerate(incidents):
        figure.add_vrect(
            x0=plot_time(incident.started),
            x1=plot_time(incident.ended),
            fillcolor=_CAUGHT_COLOUR if incident.caught else _MISSED_COLOUR,
            line_width=0,
            layer="below",
            annotation_text=plot_text(incident.kind),
            annotation_position="top left",
            # Incidents follow each other closely: their names on three staggered lines.
            annotation_y=1 - 0.06 * (n % 3),
            annotation_yanchor="top",
            annotation_font_size=11,
            name=plot_text(incident.kind),
        )
    caught = [i for i in incidents if i.caught_at is not None]
    if caught:
        figure.add_trace(
            go.Scatter(
                x=[plot_time(i.caught_at) for i in caught if i.caught_at is not None],
                y=[top * 1.05] * len(caught),  # above the bars, below the incidents' names
                mode="markers",  # the shading names the incident; the hover says the alert
                marker={"symbol": "star", "size": 14, "color": "black"},
                hovertext=[plot_text(f"caught {i.kind}: {i.alert or i.caught_by}") for i in caught],
                name="caught",
                meta={"role": "caught", "kinds": [i.kind for i in caught]},
            )
        )
    if not traffic:
        figure.add_annotation(
            text=f"{NO_DATA}: no traffic in the window",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    figure.update_xaxes(type="date", title="event time (UTC)")
    # Headroom over the bars for the stars and the incidents' staggered names.
    figure.update_yaxes(title="events per minute", range=[0, top * 1.4])
    figure.update_layout(title=title, barmode="stack", height=460)
    return figure


def report_plots(data: ReportData, incidents: Sequence[IncidentOutcome]) -> list[Plot]:
    """The report's figures, in page order."""
    return [
        Plot(
            "drift",
            "Drift",
            drift_figure(data.drift),
            empty=not data.drift,
            note="Each stream's drift statistic over event time (for a traced stream, the mean"
            " of its detector's recent inputs); crosses mark confirmed detections, open"
            " circles detections the confirmation test turned down.",
            sql=DRIFT_SQL,
        ),
        Plot(
            "scores",
            "Scores",
            scores_figure(data.scores),
            empty=not data.scores,
            note="Mean toxicity and injection per minute, and the share of events above "
            + " and ".join(str(t) for t in SHARE_THRESHOLDS)
            + ".",
            sql=SCORES_SQL,
        ),
        Plot(
            "cost-latency",
            "Cost and latency",
            cost_latency_figure(data.segments),
            empty=not data.segments,
            note="Per model and prompt version: completion cost per minute, p50 and p95 latency.",
            sql=SEGMENTS_SQL,
        ),
        Plot(
            "timeline",
            "Timeline",
            timeline_figure(data.traffic, incidents),
            empty=not data.traffic,
            note="Events per minute by type; shaded: incidents (red: not caught); stars: caught.",
            sql=TRAFFIC_SQL,
        ),
    ]


# -- the page ----------------------------------------------------------------------------------

_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dl.summary dt { font-weight: 600; }
dl.summary dd { margin: 0; }
table.incidents { border-collapse: collapse; width: 100%; font-size: 0.9rem;
  table-layout: fixed; }
table.incidents th, table.incidents td { border: 1px solid #ccc; padding: 0.3rem 0.5rem;
  vertical-align: top; text-align: left; overflow-wrap: anywhere; }
td.caught { color: #146c2e; font-weight: 600; }
td.missed { color: #b00020; font-weight: 600; }
pre { white-space: pre-wrap; margin: 0; font-size: 0.8rem; }
p.no-data { color: #b00020; }
section.plot { margin-top: 2rem; }
"""

# Draws every figure block; runs after plotly's own script.
_LOADER: Final = """
document.querySelectorAll('script.undertow-figure').forEach(function (block) {
  var figure = JSON.parse(block.textContent);
  Plotly.newPlot(block.dataset.target, figure.data, figure.layout, figure.config);
});
"""


def escape(text: str) -> str:
    """``text`` safe as HTML element content or a quoted attribute value."""
    return html_lib.escape(text, quote=True)


def script_json(text: str) -> str:
    """JSON text safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as unicode escapes,
    so no data can close the element (JSON.parse reads them back unchanged)."""
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def format_time(value: datetime | None) -> str:
    """An event time for the table, in UTC to the second; '-' for none."""
    return "-" if value is None else _utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_delay(incident: IncidentOutcome) -> str:
    """How late an incident was caught: traces sent before it and event time since it began."""
    if incident.caught_at is None:
        return "-"
    parts = []
    if incident.delay_events is not None:
        noun = "trace" if incident.delay_events == 1 else "traces"
        parts.append(f"{incident.delay_events} {noun}")
    seconds = (_utc(incident.caught_at) - _utc(incident.started)).total_seconds()
    parts.append(f"{seconds:.0f} s")
    return ", ".join(parts)


def render_summary(summary: Mapping[str, str]) -> str:
    """The run summary as a definition list."""
    items = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>" for k, v in summary.items()
    )
    return f'<dl class="summary">{items}</dl>'


_INCIDENT_COLUMNS: Final = (
    "incident",
    "period",
    "expected catch",
    "outcome",
    "caught at",
    "delay",
    "alert",
    "delivered to",
    "action",
    "SQL",
)
# Percent of the table's width per column: room for the texts, the SQL widest.
_INCIDENT_WIDTHS: Final = (12, 10, 9, 7, 9, 7, 14, 8, 9, 15)


def render_incidents(incidents: Sequence[IncidentOutcome]) -> str:
    """The incidents table: one row per incident, caught or not."""
    if not incidents:
        return '<p class="no-data">No incidents in this run.</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in _INCIDENT_COLUMNS)
    widths = "".join(f'<col style="width: {w}%">' for w in _INCIDENT_WIDTHS)
    rows = []
    for i in incidents:
        outcome = (
            '<td class="caught">caught</td>' if i.caught else '<td class="missed">not caught</td>'
        )
        cells = [
            f"<td><strong>{escape(i.kind)}</strong><br>{escape(i.description)}</td>",
            f"<td>{escape(format_time(i.started))}<br>to {escape(format_time(i.ended))}</td>",
            f"<td>{escape(i.caught_by)}</td>",
            outcome,
            f"<td>{escape(format_time(i.caught_at))}</td>",
            f"<td>{escape(format_delay(i))}</td>",
            f"<td>{escape(i.alert or '-')}</td>",
            f"<td>{escape(', '.join(i.delivered) or 'none')}</td>",
            f"<td>{escape(i.action or '-')}</td>",
            f"<td><pre>{escape(i.sql)}</pre></td>" if i.sql else "<td>-</td>",
        ]
        rows.append(f'<tr class="incident" data-kind="{escape(i.kind)}">{"".join(cells)}</tr>')
    return (
        f'<table class="incidents"><colgroup>{widths}</colgroup><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def render_plot(plot: Plot) -> str:
    """A figure's section: title, note, its element, its JSON block and the SQL behind it."""
    target = f"plot-{plot.key}"
    figure = plot.figure.to_plotly_json()
    payload = to_json_plotly(
        {"data": figure["data"], "layout": figure["layout"], "config": _PLOT_CONFIG}
    )
    no_data = f'<p class="no-data">{NO_DATA}</p>' if plot.empty else ""
    sql = (
        f"<details><summary>SQL</summary><pre>{escape(plot.sql)}</pre></details>"
        if plot.sql
        else ""
    )
    return (
        f'<section class="plot" id="section-{escape(plot.key)}">'
        f"<h2>{escape(plot.title)}</h2><p>{escape(plot.note)}</p>{no_data}"
        f'<div id="{escape(target)}" class="figure"></div>'
        f'<script type="application/json" class="undertow-figure" id="{escape(target)}-json"'
        f' data-target="{escape(target)}">{script_json(payload)}</script>'
        f"{sql}</section>"
    )


def render_report(
    *,
    app: str,
    since: datetime,
    until: datetime,
    incidents: Sequence[IncidentOutcome],
    summary: Mapping[str, str],
    plots: Iterable[Plot],
) -> str:
    """The whole page, plotly's JavaScript inlined once; opens offline."""
    window = f"{format_time(since)} to {format_time(until)}"
    sections = "".join(render_plot(p) for p in plots)
    caught = sum(1 for i in incidents if i.caught)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>Undertow report: {escape(app)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<header><h1>Undertow report: {escape(app)}</h1>"
        f"<p>Event time {escape(window)}. Incidents caught: {caught} of {len(incidents)}.</p>"
        f"{render_summary(summary)}</header>"
        f'<section id="incidents"><h2>Incidents</h2>{render_incidents(incidents)}</section>'
        f"{sections}"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        f'<script type="text/javascript">{_LOADER}</script>'
        "</body></html>\n"
    )


def build_report(
    client: Client,
    *,
    app: str,
    since: datetime,
    until: datetime,
    incidents: Sequence[IncidentOutcome],
    summary: Mapping[str, str],
) -> str:
    """The report of ``app`` over event times in [since, until), read through ``client``.

    Raises ReportError for a bad window and WarehouseError when a query fails.
    """
    data = read_report_data(client, app=app, since=since, until=until)
    return render_report(
        app=app,
        since=since,
        until=until,
        incidents=incidents,
        summary=summary,
        plots=report_plots(data, incidents),
    )


def write_report(path: Path, html: str) -> Path:
    """Write ``html`` to ``path`` (parents created) through a temporary file, so a reader
    never sees half a page; returns the absolute path."""
    path = Path(path).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(html)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ReportError(f"expected to write the report to {path}, got: {exc}") from exc
    return path
