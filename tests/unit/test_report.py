"""The report page from given rows (no warehouse): self-contained, escaped, drawn without data,
and an incidents table that tells caught from missed. Reading from ClickHouse is tested in
tests/integration/test_report.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import plotly.offline
import pytest

from undertow.demo.report import (
    NO_DATA,
    TRACE_DETECTOR,
    DriftPoint,
    IncidentOutcome,
    ReportData,
    ReportError,
    ScoreMinute,
    SegmentMinute,
    TrafficMinute,
    drift_figure,
    format_delay,
    render_report,
    report_plots,
    script_json,
    timeline_figure,
    write_report,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVIL = "<script>alert('owned')</script>"


class Page(HTMLParser):
    """What the tests read from a page: tags with their attributes, script bodies, and the
    text of each incidents-table row's cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.rows: list[list[str]] = []
        self._script: dict[str, str | None] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
        elif tag == "tr" and dict(attrs).get("class") == "incident":
            self.rows.append([])
        elif tag == "td" and self.rows:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self.rows:
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts.append((self._script, data))
            self._script = None
        elif self._cell is not None:
            self._cell.append(data)

    def figures(self) -> dict[str, dict[str, Any]]:
        """Each figure's JSON by its target element id."""
        return {
            str(attrs["data-target"]): json.loads(body)
            for attrs, body in self.scripts
            if attrs.get("class") == "undertow-figure"
        }


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def incident(kind: str, *, caught: bool, sql: str | None = "SELECT 1") -> IncidentOutcome:
    return IncidentOutcome(
        kind=kind,
        description=f"{kind} planted",
        started=T0,
        ended=T0 + timedelta(minutes=2),
        caught_by=f"{kind}_rule",
        caught_at=T0 + timedelta(seconds=42) if caught else None,
        delay_events=7 if caught else None,
        alert=f"{kind} above threshold" if caught else None,
        delivered=("slack", "pagerduty") if caught else (),
        action="rollback m 2 -> 1: succeeded" if caught else None,
        sql=sql,
    )


def some_data(segment: str = "app=chat/model=m") -> ReportData:
    drift = [
        DriftPoint(
            segment,
            "embedding_distance",
            "adwin+mmd",
            T0 + timedelta(seconds=10 * i),
            0.01 * i,
            0.3 + 0.001 * i,
            i in (4, 9),
        )
        for i in range(12)
    ]
    scores = [
        ScoreMinute(T0 + timedelta(minutes=m), 0.1 * m, 0.05, (0.2, 0.1), (None, None))
        for m in range(3)
    ]
    segments = [
        SegmentMinute("m", "1", T0 + timedelta(minutes=m), 5, 0.002 * m, 120.0, 300.0)
        for m in range(3)
    ]
    traffic = [
        TrafficMinute(T0 + timedelta(minutes=m), kind, 10 + m)
        for m in range(3)
        for kind in ("completion", "prompt")
    ]
    return ReportData(drift=drift, scores=scores, segments=segments, traffic=traffic)


def page_of(
    data: ReportData,
    incidents: list[IncidentOutcome],
    summary: dict[str, str] | None = None,
) -> str:
    return render_report(
        app="chat",
        since=T0,
        until=T0 + timedelta(hours=1),
        incidents=incidents,
        summary=summary or {"run": "r1"},
        plots=report_plots(data, incidents),
    )


def test_the_page_opens_offline_with_plotly_inlined_once() -> None:
    html = page_of(some_data(), [incident("toxicity", caught=True)])
    page = parse(html)
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert not [t for t, _ in page.tags if t in ("link", "iframe", "img")]
    assert not [a for t, a in page.tags if t == "script" and "src" in a]
    assert html.count(plotly.offline.get_plotlyjs()) == 1
    assert set(page.figures()) == {
        "plot-drift",
        "plot-scores",
        "plot-cost-latency",
        "plot-timeline",
    }
    # two scripts of code (plotly, the loader), one JSON block per figure, nothing else
    assert len(page.scripts) == 6


def test_text_from_data_is_escaped_in_the_page_and_in_the_figures() -> None:
    evil = IncidentOutcome(
        kind="injection",
        description=EVIL,
        started=T0,
        ended=T0 + timedelta(minutes=1),
        caught_by="prompt_injection",
        caught_at=T0 + timedelta(seconds=5),
        delay_events=1,
        alert=EVIL,
        delivered=(EVIL,),
        action=EVIL,
        sql=f"SELECT '{EVIL}' FROM scores FINAL",
    )
    html = page_of(some_data(segment=f"app=chat/{EVIL}"), [evil], summary={EVIL: EVIL})
    assert EVIL not in html
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in html
    page = parse(html)
    assert len(page.scripts) == 6  # no script element came from data
    sql_cell = page.rows[0][-1]
    assert sql_cell == f"SELECT '{EVIL}' FROM scores FINAL"  # shown as text, verbatim
    drift = page.figures()["plot-drift"]
    names = {trace["name"] for trace in drift["data"]}
    assert (
        "app=chat/&lt;script&gt;alert('owned')&lt;/script&gt; · embedding_distance: detected"
        in (names)
    )
    # the raw value travels in meta (data, never rendered as text)
    assert {trace["meta"]["segment"] for trace in drift["data"]} == {f"app=chat/{EVIL}"}


def test_script_json_reads_back_unchanged_and_cannot_close_the_script() -> None:
    value = {"text": "</script><!-- & -->", "n": [1, 2.5]}
    safe = script_json(json.dumps(value))
    assert "<" not in safe and ">" not in safe and "&" not in safe
    assert json.loads(safe) == value


def test_an_empty_warehouse_draws_every_plot_as_no_data() -> None:
    plots = report_plots(ReportData(), [])
    assert [p.empty for p in plots] == [True, True, True, True]
    html = page_of(ReportData(), [])
    assert html.count(f'<p class="no-data">{NO_DATA}</p>') == 4
    assert "No incidents in this run." in html
    for key, figure in parse(html).figures().items():
        texts = [a["text"] for a in figure["layout"].get("annotations", [])]
        assert NO_DATA in texts, key
        assert figure["data"] == [], key


def test_a_timeline_without_traffic_still_shades_its_incidents() -> None:
    incidents = [incident("toxicity", caught=True), incident("cost_spike", caught=False)]
    figure = timeline_figure([], incidents).to_plotly_json()
    texts = [a["text"] for a in figure["layout"]["annotations"]]
    assert any(t.startswith(NO_DATA) for t in texts)
    shapes = figure["layout"]["shapes"]
    assert [(s["x0"], s["x1"]) for s in shapes] == [
        ("2026-03-01 12:00:00.000000", "2026-03-01 12:02:00.000000")
    ] * 2
    assert shapes[0]["fillcolor"] != shapes[1]["fillcolor"]  # caught and missed look different
    [caught] = [t for t in figure["data"] if t["name"] == "caught"]
    assert list(caught["x"]) == ["2026-03-01 12:00:42.000000"]


def test_the_incidents_table_tells_caught_from_missed() -> None:
    incidents = [incident("toxicity", caught=True), incident("cost_spike", caught=False, sql=None)]
    page = parse(page_of(some_data(), incidents))
    caught, missed = page.rows
    assert caught == [
        "toxicity toxicity planted",
        "2026-03-01 12:00:00 UTC to 2026-03-01 12:02:00 UTC",
        "toxicity_rule",
        "caught",
        "2026-03-01 12:00:42 UTC",
        "7 traces, 42 s",
        "toxicity above threshold",
        "slack, pagerduty",
        "rollback m 2 -> 1: succeeded",
        "SELECT 1",
    ]
    assert missed[3:] == ["not caught", "-", "-", "-", "none", "-", "-"]
    assert "Incidents caught: 1 of 2." in page_of(some_data(), incidents)


def test_format_delay_counts_traces_and_event_time() -> None:
    one = IncidentOutcome(
        "injection", "", T0, T0, "rule", T0 + timedelta(seconds=90), 1, None, (), None, None
    )
    assert format_delay(one) == "1 trace, 90 s"
    unknown = IncidentOutcome(
        "injection", "", T0, T0, "rule", T0 + timedelta(seconds=3), None, None, (), None, None
    )
    assert format_delay(unknown) == "3 s"
    assert format_delay(incident("toxicity", caught=False)) == "-"


def test_drift_panels_split_by_series_with_detections_as_markers() -> None:
    data = some_data("seg-a").drift
    other = [
        DriftPoint(
            "seg-b", "toxicity", "page_hinkley", T0 + timedelta(seconds=i), 1.0 * i, 5.0, i == 6
        )
        for i in range(8)
    ]
    figure = drift_figure([*other, *data]).to_plotly_json()
    by_role = {(t["meta"]["segment"], t["meta"]["role"]): t for t in figure["data"]}
    assert set(by_role) == {
        (s, r) for s in ("seg-a", "seg-b") for r in ("statistic", "threshold", "detected")
    }
    hits = by_role[("seg-a", "detected")]
    assert list(hits["x"]) == ["2026-03-01 12:00:40.000000", "2026-03-01 12:01:30.000000"]
    assert list(hits["y"]) == pytest.approx([0.04, 0.09])
    assert hits["mode"] == "markers"
    line = by_role[("seg-a", "statistic")]
    assert len(line["x"]) == 10 and "2026-03-01 12:00:40.000000" not in line["x"]
    assert len(by_role[("seg-a", "threshold")]["x"]) == 12
    assert list(by_role[("seg-b", "detected")]["y"]) == [6.0]
    # one panel (its own y axis) per series
    assert by_role[("seg-a", "statistic")]["yaxis"] != by_role[("seg-b", "statistic")]["yaxis"]


def test_write_report_writes_the_page_where_asked(tmp_path: Path) -> None:
    html = page_of(ReportData(), [])
    path = write_report(tmp_path / "out" / "report.html", html)
    assert path == (tmp_path / "out" / "report.html").absolute()
    assert path.read_text(encoding="utf-8") == html
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary left
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="expected to write the report"):
        write_report(tmp_path / "file" / "report.html", html)


def traced_topic() -> tuple[datetime, list[DriftPoint]]:
    """The drift role's trace of one stream: 0.0 to 4.0, a minute apart."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return t0, [
        DriftPoint("seg", "topic", TRACE_DETECTOR, t0 + timedelta(minutes=i), float(i), 0.0, False)
        for i in range(5)
    ]


def test_the_traced_statistic_carries_the_streams_detections() -> None:
    t0, trace = traced_topic()
    detection = DriftPoint(
        "seg", "topic", "adwin+novelty", t0 + timedelta(minutes=2, seconds=30), 9.0, 1.0, True
    )
    figure = drift_figure([*trace, detection])
    traced = [t for t in figure.data if t.meta["detector"] == TRACE_DETECTOR]
    line = next(t for t in traced if t.meta["role"] == "statistic")
    marks = next(t for t in traced if t.meta["role"] == "detected")
    assert list(line.y) == [0.0, 1.0, 2.0, 3.0, 4.0]
    # on the drawn line at that moment (halfway from 2.0 to 3.0), not at the test's 9.0
    assert list(marks.y) == [2.5]
    assert [t.meta["role"] for t in traced] == ["statistic", "detected"]  # no threshold line


def test_a_traced_stream_is_one_panel_with_confirmed_and_unconfirmed_detections() -> None:
    t0, trace = traced_topic()
    confirmed = DriftPoint(
        "seg", "topic", "adwin+novelty", t0 + timedelta(minutes=3), 2.5, 1.0, True
    )
    turned_down = DriftPoint(
        "seg", "topic", "adwin+novelty", t0 + timedelta(minutes=1), 0.5, 1.0, False
    )
    untraced = [
        DriftPoint("seg", "cost", "page_hinkley", t0 + timedelta(minutes=i), 0.1 * i, 1.0, i == 2)
        for i in range(3)
    ]
    figure = drift_figure([*trace, confirmed, turned_down, *untraced]).to_plotly_json()
    panels = {(t["meta"]["stream"], t["meta"]["detector"]) for t in figure["data"]}
    # the traced stream's detector rows live on the trace's panel, not a panel of their own
    assert panels == {("topic", TRACE_DETECTOR), ("cost", "page_hinkley")}
    by_role = {
        t["meta"]["role"]: t for t in figure["data"] if t["meta"]["detector"] == TRACE_DETECTOR
    }
    assert set(by_role) == {"statistic", "detected", "unconfirmed"}
    assert list(by_role["detected"]["y"]) == [3.0]
    assert list(by_role["unconfirmed"]["y"]) == [1.0]
    assert list(by_role["detected"]["hovertext"]) == ["adwin+novelty: 2.5 against 1 (confirmed)"]
    assert by_role["unconfirmed"]["marker"]["symbol"] != by_role["detected"]["marker"]["symbol"]
    assert figure["layout"]["showlegend"] is False
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles == ["cost (page_hinkley)", "topic (recent mean)"]  # one segment: not repeated
    assert "seg" in figure["layout"]["title"]["text"]
