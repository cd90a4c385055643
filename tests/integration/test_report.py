"""The demo's HTML report read from the real embedded ClickHouse: a small seeded scenario is
written through the worker's own sink (events and scores) and as ``drift`` rows, and the
figures in the page must carry exactly the per-minute numbers computed here from the same
seeded values, with detection markers at the seeded detection times.

Rows of another app, rows outside the window, feedback without scores and redelivered events
are seeded too: none of them may change a number.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from statistics import fmean
from typing import Any

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client

from undertow.demo.report import NO_DATA, IncidentOutcome, ReportError, build_report
from undertow.infra.stack import StackInfo
from undertow.schemas.events import event, new_trace_id
from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.rows import DRIFT_COLUMNS, drift_row
from undertow.streams.scoring.scored import Scored
from undertow.streams.sinks.warehouse import EventSink, SinkItem

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
APP = f"report-{RUN}"
T0 = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
SINCE, UNTIL = T0, T0 + timedelta(minutes=5)
MINUTES = 3
SPACING_S = 3
SEGMENTS = (("small", "1"), ("big", "2"))
TOPIC = "undertow.events.v1"
_FIGURE = re.compile(
    r'<script type="application/json" class="undertow-figure" id="[^"]+"'
    r' data-target="plot-([^"]+)">(.*?)</script>',
    re.S,
)


def when(value: datetime) -> str:
    """How the report writes an event time on a plot axis."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def figures(html: str) -> dict[str, dict[str, Any]]:
    return {key: json.loads(body) for key, body in _FIGURE.findall(html)}


def traces(
    app: str, start: datetime, count: int, seed: int
) -> tuple[list[SinkItem], list[dict[str, Any]]]:
    """``count`` traces from ``start``, SPACING_S apart: a prompt scored for injection, a
    completion scored for toxicity with cost and latency, and for every fourth trace a user
    rating (stored with no score). Returns the sink items and one dict of truths per trace."""
    rng = random.Random(seed)
    items: list[SinkItem] = []
    truths: list[dict[str, Any]] = []
    for i in range(count):
        at = start + timedelta(seconds=SPACING_S * i)
        minute = (at - T0) // timedelta(minutes=1)
        model, version = SEGMENTS[i % 2]
        trace = new_trace_id()
        toxicity = rng.uniform(0.4, 1.0) if minute == 1 else rng.uniform(0.0, 0.6)
        injection = rng.random() ** 3
        latency = rng.gauss(900 if model == "big" else 300, 50)
        # the big model is unpriced in the third minute
        cost = None if (model == "big" and minute == 2) else round(rng.uniform(1e-4, 5e-3), 6)
        segment = {"model": model, "prompt_name": "support", "prompt_version": version}
        prompt = event(
            "prompt",
            {"messages": [{"role": "user", "content": f"question {i}"}], **segment},
            app=app,
            trace_id=trace,
            event_time=at,
        )
        completion = event(
            "completion",
            {"text": f"answer {i}", "latency_ms": latency, "finish_reason": "stop", **segment},
            app=app,
            trace_id=trace,
            event_time=at + timedelta(seconds=1),
        )
        items.append(
            SinkItem(prompt, TOPIC, 0, len(items), Scored(scores={"injection": injection}))
        )
        items.append(
            SinkItem(
                completion,
                TOPIC,
                0,
                len(items),
                Scored(scores={"toxicity": toxicity}, cost_usd=cost),
            )
        )
        rated = i % 4 == 0
        if rated:
            feedback = event(
                "feedback",
                {"score": 1.0, "label": None, "source": "user"},
                app=app,
                trace_id=trace,
                event_time=at + timedelta(seconds=2),
            )
            items.append(SinkItem(feedback, TOPIC, 0, len(items), Scored(scores={})))
        truths.append(
            {
                "minute": T0 + timedelta(minutes=minute),
                "segment": (model, version),
                "toxicity": toxicity,
                "injection": injection,
                "latency": latency,
                "cost": cost,
                "rated": rated,
            }
        )
    return items, truths


def drift_record(
    app: str, segment: str, stream: str, at: datetime, statistic: float, detected: bool
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{app}|{segment}|{stream}|{at}")),
        "event_time": at,
        "app": app,
        "environment": "production",
        "segment": segment,
        "segment_fields": {"app": app},
        "stream": stream,
        "detector": "adwin+mmd",
        "statistic": statistic,
        "threshold": 0.5,
        "detected": detected,
        "window_reference": 200,
        "window_current": 50,
        "baseline_version": "b1",
        "example_event_ids": [],
        "nearest_topics": [],
    }


SEG_A = f"app={APP}/model=small/prompt=1"
SEG_B = f"app={APP}/model=big/prompt=2"
# (segment, stream) -> (points every 10 s over the three minutes, indices detected)
DRIFT = {
    (SEG_A, "embedding_distance"): (18, {9, 15}),
    (SEG_B, "toxicity"): (18, {7}),
}


def drift_records(app: str, start: datetime) -> list[dict[str, Any]]:
    return [
        drift_record(
            app, segment, stream, start + timedelta(seconds=10 * i), 0.04 * i, i in detected
        )
        for (segment, stream), (count, detected) in DRIFT.items()
        for i in range(count)
    ]


def insert_drift(client: Client, records: list[dict[str, Any]]) -> None:
    client.insert("drift", [drift_row(r) for r in records], column_names=list(DRIFT_COLUMNS))


@pytest.fixture(scope="module")
def seeded(stack: StackInfo, database: str) -> tuple[Client, list[dict[str, Any]]]:
    client = connect(stack.clickhouse_url, database=database)
    mine, truths = traces(APP, T0, MINUTES * 60 // SPACING_S, seed=7)
    other, _ = traces(f"other-{RUN}", T0, 20, seed=8)  # another app, same window
    before, _ = traces(APP, T0 - timedelta(minutes=1), 5, seed=9)  # before since
    after, _ = traces(APP, UNTIL, 5, seed=10)  # from until on (excluded)
    # the first records delivered again at other offsets: only FINAL keeps them out
    again = [item._replace(offset=item.offset + 100_000) for item in mine[:9]]
    sink = EventSink(lambda: client)
    try:
        for batch in (mine, other, before, after, again):
            assert not asyncio.run(sink.write(batch)).rejected
    finally:
        sink.close()
    records = drift_records(APP, T0)
    insert_drift(client, records)
    insert_drift(client, records[:5])  # redelivered detections collapse under FINAL
    insert_drift(client, drift_records(f"other-{RUN}", T0))
    return client, truths


def incidents() -> list[IncidentOutcome]:
    return [
        IncidentOutcome(
            kind="toxicity",
            description="answers turn rude",
            started=T0 + timedelta(minutes=1),
            ended=T0 + timedelta(minutes=2),
            caught_by="toxicity_rate",
            caught_at=T0 + timedelta(seconds=75),
            delay_events=5,
            alert="toxicity rate 0.8 above 0.2",
            delivered=("slack", "webhook"),
            action=None,
            sql="SELECT * FROM scores FINAL WHERE toxicity > 0.5",
        ),
        IncidentOutcome(
            kind="cost_spike",
            description="long documents",
            started=T0 + timedelta(minutes=2),
            ended=T0 + timedelta(minutes=3),
            caught_by="spend_spike",
            caught_at=None,
            delay_events=None,
            alert=None,
            delivered=(),
            action=None,
            sql=None,
        ),
    ]


@pytest.fixture(scope="module")
def page(seeded: tuple[Client, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    client, _ = seeded
    html = build_report(
        client, app=APP, since=SINCE, until=UNTIL, incidents=incidents(), summary={"run": RUN}
    )
    assert f'<p class="no-data">{NO_DATA}</p>' not in html  # every plot had data
    return figures(html)


def traces_by(figure: dict[str, Any], **meta: Any) -> list[dict[str, Any]]:
    return [
        t for t in figure["data"] if all(t.get("meta", {}).get(k) == v for k, v in meta.items())
    ]


def test_scores_are_the_per_minute_means_and_shares(
    seeded: tuple[Client, list[dict[str, Any]]], page: dict[str, dict[str, Any]]
) -> None:
    _, truths = seeded
    minutes = sorted({t["minute"] for t in truths})
    figure = page["scores"]
    for score in ("toxicity", "injection"):
        by_minute = [[t[score] for t in truths if t["minute"] == m] for m in minutes]
        [mean] = traces_by(figure, score=score, role="mean")
        assert mean["x"] == [when(m) for m in minutes]
        assert mean["y"] == pytest.approx([fmean(v) for v in by_minute], rel=1e-9)
        for threshold in (0.5, 0.8):
            [share] = traces_by(figure, score=score, role="share", threshold=threshold)
            expected = [sum(x > threshold for x in v) / len(v) for v in by_minute]
            assert share["y"] == pytest.approx(expected, rel=1e-9), (score, threshold)
    # the planted toxic minute stands out
    [toxic] = traces_by(figure, score="toxicity", role="share", threshold=0.5)
    assert toxic["y"][1] > toxic["y"][0]


def test_cost_and_latency_are_per_segment_and_minute(
    seeded: tuple[Client, list[dict[str, Any]]], page: dict[str, dict[str, Any]]
) -> None:
    _, truths = seeded
    figure = page["cost-latency"]
    for model, version in SEGMENTS:
        mine = [t for t in truths if t["segment"] == (model, version)]
        minutes = sorted({t["minute"] for t in mine})
        rows = [[t for t in mine if t["minute"] == m] for m in minutes]
        costs = [[t["cost"] for t in r if t["cost"] is not None] for r in rows]
        latencies = [[t["latency"] for t in r] for r in rows]
        [cost] = traces_by(figure, model=model, prompt_version=version, role="cost")
        assert cost["x"] == [when(m) for m in minutes]
        expected_cost = [sum(c) if c else None for c in costs]
        assert [c is None for c in cost["y"]] == [c is None for c in expected_cost]
        assert [c for c in cost["y"] if c is not None] == pytest.approx(
            [c for c in expected_cost if c is not None], rel=1e-9
        )
        for role, q in (("p50", 50), ("p95", 95)):
            [latency] = traces_by(figure, model=model, prompt_version=version, role=role)
            assert latency["y"] == pytest.approx(
                [float(np.percentile(v, q)) for v in latencies], rel=1e-9
            ), (model, role)
    [unpriced] = traces_by(figure, model="big", role="cost")
    assert unpriced["y"][2] is None  # the big model's third minute had no priced completion


def test_the_timeline_counts_traffic_and_marks_incidents(
    seeded: tuple[Client, list[dict[str, Any]]], page: dict[str, dict[str, Any]]
) -> None:
    _, truths = seeded
    minutes = sorted({t["minute"] for t in truths})
    figure = page["timeline"]
    expected = {
        "prompt": [sum(t["minute"] == m for t in truths) for m in minutes],
        "completion": [sum(t["minute"] == m for t in truths) for m in minutes],
        "feedback": [sum(t["minute"] == m and t["rated"] for t in truths) for m in minutes],
    }
    for kind, counts in expected.items():
        [bars] = traces_by(figure, event_type=kind)
        assert bars["x"] == [when(m) for m in minutes]
        assert bars["y"] == counts, kind
    shapes = figure["layout"]["shapes"]
    assert [(s["x0"], s["x1"]) for s in shapes] == [
        (when(i.started), when(i.ended)) for i in incidents()
    ]
    [caught] = traces_by(figure, role="caught")
    assert caught["x"] == [when(T0 + timedelta(seconds=75))]
    assert caught["meta"]["kinds"] == ["toxicity"]


def test_drift_markers_sit_at_the_seeded_detections(page: dict[str, dict[str, Any]]) -> None:
    figure = page["drift"]
    assert {(t["meta"]["segment"], t["meta"]["stream"]) for t in figure["data"]} == set(DRIFT)
    for (segment, stream), (count, detected) in DRIFT.items():
        times = [T0 + timedelta(seconds=10 * i) for i in range(count)]
        [hits] = traces_by(figure, segment=segment, stream=stream, role="detected")
        assert hits["x"] == [when(times[i]) for i in sorted(detected)]
        assert hits["y"] == pytest.approx([0.04 * i for i in sorted(detected)])
        [line] = traces_by(figure, segment=segment, stream=stream, role="statistic")
        assert line["x"] == [when(t) for i, t in enumerate(times) if i not in detected]
        [threshold] = traces_by(figure, segment=segment, stream=stream, role="threshold")
        assert threshold["y"] == [0.5] * count


def test_an_app_without_data_gets_a_page_of_no_data(
    seeded: tuple[Client, list[dict[str, Any]]],
) -> None:
    client, _ = seeded
    html = build_report(
        client, app=f"nobody-{RUN}", since=SINCE, until=UNTIL, incidents=[], summary={}
    )
    found = figures(html)
    assert set(found) == {"drift", "scores", "cost-latency", "timeline"}
    for key, figure in found.items():
        assert figure["data"] == [], key
        assert NO_DATA in [a["text"] for a in figure["layout"]["annotations"]], key


def test_a_bad_window_or_a_missing_table_is_an_error(
    stack: StackInfo, seeded: tuple[Client, list[dict[str, Any]]]
) -> None:
    client, _ = seeded
    with pytest.raises(ReportError, match="timezone-aware"):
        build_report(
            client, app=APP, since=datetime(2026, 4, 2, 9), until=UNTIL, incidents=[], summary={}
        )
    with pytest.raises(ReportError, match="since before until"):
        build_report(client, app=APP, since=UNTIL, until=SINCE, incidents=[], summary={})
    bare = f"undertow_report_bare_{RUN}"
    admin = connect(stack.clickhouse_url, database=None)
    admin.command(f"CREATE DATABASE IF NOT EXISTS {bare}")
    try:
        with pytest.raises(WarehouseError, match="reading drift for the report failed"):
            build_report(
                connect(stack.clickhouse_url, database=bare),
                app=APP,
                since=SINCE,
                until=UNTIL,
                incidents=[],
                summary={},
            )
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {bare}")
