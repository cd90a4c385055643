"""``undertow ui`` for real: the dashboard over the real embedded ClickHouse and the session's
Kafka registry topic, served by uvicorn on loopback and driven by a real headless Chromium
(Playwright, the system's /usr/bin/chromium; never a downloaded browser).

Traffic is written by the ingest worker's own sink (events and scores), drift and alert rows
by the warehouse row builders, registry changes published to the registry topic. Every page
must load without a console error and draw the seeded figures; a click on a trace opens its
spans; one prompt carries markup that must show as text. Screenshots of every page go to
``$UNDERTOW_UI_SCREENSHOTS`` (default: the test's tmp dir); their names are printed.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from undertow.infra.stack import StackInfo
from undertow.schemas.events import alert, envelope, event, new_trace_id
from undertow.services.gateway.server import ServerThread
from undertow.services.registry.client import RegistryClient
from undertow.services.registry.state import (
    promote_model,
    push_model,
    push_prompt,
    start_experiment,
)
from undertow.services.ui.app import create_app
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.rows import (
    ALERT_COLUMNS,
    DRIFT_COLUMNS,
    DRIFT_TRACE_DETECTOR,
    alert_row,
    drift_row,
)
from undertow.streams.scoring.scored import Scored
from undertow.streams.sinks.warehouse import EventSink, SinkItem

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN = uuid.uuid4().hex[:6]
APP = f"ui-{RUN}"
LIVE_APP = f"ui-live-{RUN}"
MODEL = f"ui-model-{RUN}"
PROMPT = f"ui-prompt-{RUN}"
TEST = f"ui-ab-{RUN}"
N_TRACES = 12
MARKUP = '<script>window.__pwned = 1</script><b id="pwned">bold?</b> & <img src=x onerror=1>'
TIMEOUT_MS = 60_000


@dataclass
class Seeded:
    """What was written, from which the expected figures are derived."""

    now: datetime
    traces: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    completion_minutes: set[int] = field(default_factory=set)
    toxicity_scored: int = 0
    injection_scored: int = 0
    markup_trace: str = ""
    drift: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)


def trace_items(
    rng: random.Random, start: datetime, offset: int, *, app: str, text: str, feedback: bool
) -> tuple[str, list[SinkItem]]:
    """A prompt, a retrieval, a completion and (maybe) a feedback event of one trace."""
    trace = new_trace_id()
    common: dict[str, Any] = {"app": app, "trace_id": trace}
    prompt = event(
        "prompt",
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": text},
            ],
            "model": "smollm2",
            "prompt_name": PROMPT,
            "prompt_version": "1",
        },
        event_time=start,
        **common,
    )
    retrieval = event(
        "retrieval",
        {
            "query": text,
            "documents": [
                {"id": "doc-1", "score": 0.9, "text": "Reset it in settings.", "source": "kb"},
                {"id": "doc-2", "score": 0.4, "text": "Unrelated.", "source": "kb"},
            ],
            "store": "kb",
            "latency_ms": 80.0,
            "top_k": 2,
        },
        event_time=start + timedelta(milliseconds=100),
        **common,
    )
    latency = rng.uniform(600, 1600)
    completion = event(
        "completion",
        {
            "model": "smollm2",
            "model_version": "2",
            "prompt_name": PROMPT,
            "prompt_version": "1",
            "text": "Go to settings and press reset.",
            "input_tokens": 40,
            "output_tokens": 12,
            "latency_ms": latency,
            "finish_reason": "stop",
        },
        event_time=start + timedelta(milliseconds=200 + latency),
        **common,
    )
    cost = round(rng.uniform(0.001, 0.003), 6)
    items = [
        SinkItem(
            prompt,
            "undertow.events.v1",
            0,
            offset,
            Scored(scores={"toxicity": rng.random() * 0.3, "injection": rng.random()}),
        ),
        SinkItem(retrieval, "undertow.events.v1", 0, offset + 1, Scored(scores={})),
        SinkItem(
            completion,
            "undertow.events.v1",
            0,
            offset + 2,
            Scored(
                scores={"toxicity": rng.random() * 0.2},
                input_tokens=40,
                output_tokens=12,
                cost_usd=cost,
            ),
        ),
    ]
    if feedback:
        rating = event(
            "feedback",
            {"score": 1.0, "label": "thumbs", "source": "user"},
            event_time=start + timedelta(seconds=5),
            **common,
        )
        items.append(SinkItem(rating, "undertow.events.v1", 0, offset + 3, Scored(scores={})))
    return trace, items


def write(url: str, database: str, items: list[SinkItem]) -> None:
    client = connect(url, database=database)
    sink = EventSink(lambda: client)
    try:
        # On a thread of its own: Playwright's sync API keeps an event loop on this one.
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(asyncio.run, sink.write(items)).result()
    finally:
        sink.close()
    assert not result.rejected, result.rejected


@pytest.fixture(scope="module")
def seeded(stack: StackInfo, database: str) -> Seeded:
    rng = random.Random(20260301)
    now = datetime.now(UTC).replace(microsecond=0)
    seeded = Seeded(now=now)
    items: list[SinkItem] = []
    for i in range(N_TRACES):
        start = now - timedelta(minutes=40 - 3 * i, seconds=7)
        text = MARKUP if i == 5 else f"How do I reset my password? ({i})"
        trace, mine = trace_items(rng, start, len(items), app=APP, text=text, feedback=i % 3 == 0)
        seeded.traces.append(trace)
        if i == 5:
            seeded.markup_trace = trace
        items += mine
    write(stack.clickhouse_url, database, items)
    for item in items:
        kind = item.record["body"][0].rsplit(".", 1)[-1].lower()
        seeded.kinds[kind] += 1
        assert item.scores is not None
        seeded.cost_usd += item.scores.cost_usd or 0.0
        seeded.toxicity_scored += "toxicity" in item.scores.scores
        seeded.injection_scored += "injection" in item.scores.scores
        if kind == "completion":
            ms = int(item.record["event_time"].timestamp() * 1000)
            seeded.completion_minutes.add(ms // 60_000)

    client = connect(stack.clickhouse_url, database=database)
    drift_rows = []
    for segment, stream, detector, points, detected_at in (
        # As the drift role writes a detector's rows: detections only, the first of the three
        # not confirmed.
        (f"app={APP}/model=smollm2/prompt=1", "embedding_distance", "adwin", 3, {1, 2}),
        (f"app={APP}/model=smollm2/prompt=2", "toxicity", "page_hinkley", 8, {5}),
        # The drift role's trace of the first stream: its detections are marked on it.
        (f"app={APP}/model=smollm2/prompt=1", "embedding_distance", DRIFT_TRACE_DETECTOR, 6, set()),
    ):
        for k in range(points):
            record = envelope(APP, event_time=now - timedelta(hours=3) + timedelta(minutes=10 * k))
            record.update(
                segment=segment,
                segment_fields={"app": APP},
                stream=stream,
                detector=detector,
                statistic=0.1 + 0.05 * k,
                threshold=0.4,
                detected=k in detected_at,
                window_reference=500,
                window_current=100,
                baseline_version="b1",
                example_event_ids=[],
                nearest_topics=[],
            )
            drift_rows.append(drift_row(record))
        seeded.drift[(segment, stream, detector)] = (points, len(detected_at))
    trace = (f"app={APP}/model=smollm2/prompt=1", "embedding_distance", DRIFT_TRACE_DETECTOR)
    seeded.drift[trace] = (6, 2)  # the adwin series' two detections
    client.insert("drift", drift_rows, column_names=list(DRIFT_COLUMNS))

    alert_rows = []
    for key, severity, statuses, runbook in (
        (f"tox-{RUN}", "critical", ["firing"], "https://runbooks.example/toxicity"),
        (f"lat-{RUN}", "warning", ["firing", "resolved"], "https://runbooks.example/latency"),
        (f"odd-{RUN}", "info", ["firing"], "javascript:alert(1)"),
    ):
        for k, status in enumerate(statuses):
            record = alert(
                rule=key.split("-")[0] + "_rule",
                severity=severity,
                status=status,
                dedup_key=key,
                summary=f"{key} is {status} <i>not html</i>",
                app=APP,
                runbook_url=runbook,
                event_time=now - timedelta(minutes=30 - 10 * k),
            )
            alert_rows.append(alert_row(record))
        seeded.alerts[key] = {"severity": severity, "status": statuses[-1], "runbook": runbook}
    client.insert("alerts", alert_rows, column_names=list(ALERT_COLUMNS))

    registry = RegistryClient(stack.bootstrap_servers)
    t = time.time_ns() // 1000
    registry.publish(push_model(registry.load(), MODEL, base_model="SmolLM2-135M", now=t))
    registry.publish(promote_model(registry.load(), MODEL, "1", now=t + 1))
    registry.publish(
        push_model(
            registry.load(),
            MODEL,
            base_model="SmolLM2-135M",
            adapter_path="/adapters/ui-lora-2",
            now=t + 2,
        )
    )
    registry.publish(promote_model(registry.load(), MODEL, "2", now=t + 3))
    registry.publish(
        push_prompt(registry.load(), PROMPT, "Answer: {q}", labels=["production"], now=t + 4)
    )
    registry.publish(push_prompt(registry.load(), PROMPT, MARKUP, labels=["canary"], now=t + 5))
    registry.publish(
        start_experiment(registry.load(), PROMPT, TEST, {"a": "1", "b": "2"}, now=t + 6)
    )
    return seeded


@pytest.fixture(scope="module")
def server(stack: StackInfo, database: str, seeded: Seeded) -> Iterator[ServerThread]:
    app = create_app(
        lambda: connect(stack.clickhouse_url, database=database),
        RegistryClient(stack.bootstrap_servers).load,
        refresh_s=1.0,
    )
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("UNDERTOW_UI_SCREENSHOTS")
    folder = Path(where) if where else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"expected a Chromium at {CHROMIUM} for the dashboard's browser tests, found none: "
            "run `make setup` (infra/require-tools.sh installs it) or apt-get install chromium"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"expected the playwright package (pip install 'undertow[dev]'): {exc}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


class Console:
    """Console errors and uncaught exceptions of one page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


@pytest.fixture
def page(browser_context: Any, server: ServerThread) -> Iterator[tuple[Any, Console]]:
    tab = browser_context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    console = Console(tab)
    try:
        yield tab, console
    finally:
        tab.close()


def load(tab: Any, url: str) -> None:
    """Open ``url`` and wait until its script drew data once (or failed)."""
    tab.goto(url)
    tab.wait_for_function(
        "() => Number(document.body.dataset.loaded || 0) + Number(document.body.dataset.failed"
        " || 0) >= 1",
        timeout=TIMEOUT_MS,
    )
    failed = tab.evaluate("() => document.body.dataset.failed || ''")
    assert not failed, tab.locator("#status").inner_text()


def shoot(tab: Any, shots: Path, name: str) -> None:
    path = shots / f"ui-{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"screenshot {path} is suspiciously small"
    print(f"screenshot: {path}")


def chart(tab: Any, element_id: str) -> list[dict[str, Any]]:
    """The traces plotly drew in a graph div: name, and x/y/base arrays."""
    data: list[dict[str, Any]] = tab.evaluate(
        """id => (document.getElementById(id).data || []).map(t => ({
            name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
            base: Array.from(t.base || [])}))""",
        element_id,
    )
    return data


def test_overview_draws_the_seeded_traffic(
    page: tuple[Any, Console], server: ServerThread, seeded: Seeded, shots: Path
) -> None:
    tab, console = page
    load(tab, f"{server.url}/overview?range=1h&app={APP}")

    traffic = {t["name"]: t for t in chart(tab, "traffic")}
    assert set(traffic) == set(seeded.kinds)
    buckets = len(traffic["prompt"]["x"])
    assert buckets in (60, 61), buckets  # one point per minute of the hour, zeros included
    for kind, count in seeded.kinds.items():
        assert len(traffic[kind]["y"]) == buckets
        assert sum(traffic[kind]["y"]) == count, kind

    [cost] = chart(tab, "cost")
    assert math.isclose(sum(cost["y"]), seeded.cost_usd, rel_tol=1e-9)
    p50, p95 = chart(tab, "latency")
    drawn = [i for i, v in enumerate(p50["y"]) if v is not None]
    assert len(drawn) == len(seeded.completion_minutes)
    assert all(p95["y"][i] >= p50["y"][i] for i in drawn)

    scores = {t["name"]: t for t in chart(tab, "scores")}
    assert sum(scores["toxicity"]["y"]) == seeded.toxicity_scored
    assert sum(scores["injection"]["y"]) == seeded.injection_scored
    assert len(scores["toxicity"]["x"]) == 20
    assert tab.locator("#totals .card").first.inner_text().endswith(str(sum(seeded.kinds.values())))

    shoot(tab, shots, "overview")
    assert console.errors == []


def test_drift_marks_each_detection(
    page: tuple[Any, Console], server: ServerThread, seeded: Seeded, shots: Path
) -> None:
    tab, console = page
    load(tab, f"{server.url}/drift?range=24h&app={APP}")
    panels = tab.locator("#drift-charts .panel")
    assert panels.count() == len(seeded.drift)
    for i in range(panels.count()):
        panel = panels.nth(i)
        segment = panel.locator("h2").inner_text()
        stream, detector = panel.locator("p.muted").inner_text().split(" · ")
        points, detections = seeded.drift[(segment, stream, detector)]
        traces = {
            t["name"]: t
            for t in panel.locator(".chart").evaluate(
                "d => d.data.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))"
            )
        }
        assert len(traces["statistic"]["x"]) == points
        if detector == DRIFT_TRACE_DETECTOR:
            assert "threshold" not in traces
        else:
            assert len(traces["threshold"]["y"]) == points
        assert len(traces["detection"]["x"]) == detections
        # Each chart fits its own panel (drawn after the grid was laid out).
        svg = panel.locator(".chart .main-svg").first.bounding_box()
        box = panel.bounding_box()
        assert svg is not None and box is not None
        assert box["x"] <= svg["x"] and svg["x"] + svg["width"] <= box["x"] + box["width"]
    shoot(tab, shots, "drift")
    assert console.errors == []


def test_the_demo_report_renders_offline_with_detections_marked_on_the_trace(
    page: tuple[Any, Console],
    stack: StackInfo,
    database: str,
    seeded: Seeded,
    shots: Path,
    tmp_path: Path,
) -> None:
    """The demo's HTML report (undertow/demo/report.py) on the seeded warehouse, in the browser:
    every figure draws, nothing loads from elsewhere, and the drift role's trace carries the
    stream's detections."""
    from undertow.demo.report import build_report, write_report

    now = datetime.now(UTC)
    html = build_report(
        connect(stack.clickhouse_url, database=database),
        app=APP,
        since=now - timedelta(hours=6),
        until=now + timedelta(minutes=1),
        incidents=[],
        summary={"run": RUN},
    )
    path = write_report(tmp_path / "report.html", html)
    tab, console = page
    elsewhere: list[str] = []
    tab.on(
        "request",
        lambda r: (
            None if r.url.startswith(("file:", "data:", "blob:")) else elsewhere.append(r.url)
        ),
    )
    tab.goto(path.as_uri())
    tab.wait_for_function(
        "() => document.querySelectorAll('div.figure').length === 4 && "
        "[...document.querySelectorAll('div.figure')].every(d => d.querySelector('.main-svg'))",
        timeout=TIMEOUT_MS,
    )
    drawn = tab.locator("#plot-drift").evaluate(
        "d => d.data.map(t => ({detector: t.meta.detector, role: t.meta.role, n: t.x.length}))"
    )
    series = {(t["detector"], t["role"]): t["n"] for t in drawn}
    trace_points, trace_detections = seeded.drift[
        (f"app={APP}/model=smollm2/prompt=1", "embedding_distance", DRIFT_TRACE_DETECTOR)
    ]
    assert series[(DRIFT_TRACE_DETECTOR, "statistic")] == trace_points
    assert series[(DRIFT_TRACE_DETECTOR, "detected")] == trace_detections
    assert series[(DRIFT_TRACE_DETECTOR, "unconfirmed")] == 1  # adwin's first, not confirmed
    assert (DRIFT_TRACE_DETECTOR, "threshold") not in series
    # the traced stream's detector is drawn on its trace, not in a panel of its own
    assert {d for d, _ in series} == {d for _, _, d in seeded.drift} - {"adwin"}
    path = shots / "report.png"
    tab.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"screenshot {path} is suspiciously small"
    print(f"screenshot: {path}")
    assert elsewhere == [] and console.errors == []


def test_alerts_table_orders_incidents_and_links_only_safe_runbooks(
    page: tuple[Any, Console], server: ServerThread, seeded: Seeded, shots: Path
) -> None:
    tab, console = page
    load(tab, f"{server.url}/alerts?range=7d")
    rows = tab.locator("#alerts tbody tr")
    assert rows.count() == len(seeded.alerts)
    statuses = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert statuses == sorted(statuses, key=lambda s: s != "firing")  # firing first
    for key, want in seeded.alerts.items():
        row = tab.locator(f'#alerts tbody tr[data-dedup-key="{key}"]')
        cells = row.locator("td")
        assert cells.nth(0).inner_text() == want["status"]
        assert cells.nth(1).inner_text() == want["severity"]
        assert "<i>not html</i>" in cells.nth(3).inner_text()  # shown as text
        links = row.locator("a.runbook")
        if want["runbook"].startswith("https://"):
            assert links.get_attribute("href") == want["runbook"]
        else:
            assert links.count() == 0
    assert tab.locator("#alerts i").count() == 0
    shoot(tab, shots, "alerts")
    assert console.errors == []


def test_a_click_on_a_trace_opens_its_spans(
    page: tuple[Any, Console], server: ServerThread, seeded: Seeded, shots: Path
) -> None:
    tab, console = page
    load(tab, f"{server.url}/traces?range=1h&app={APP}")
    rows = tab.locator("#traces tbody tr")
    assert rows.count() == N_TRACES
    listed = [rows.nth(i).get_attribute("data-trace-id") for i in range(N_TRACES)]
    assert listed == list(reversed(seeded.traces))  # newest first
    shoot(tab, shots, "traces")

    # Filters narrow the list in place: a trace id prefix, then a toxicity floor no trace reaches.
    tab.fill("#trace-prefix", seeded.markup_trace[:10])
    tab.dispatch_event("#trace-prefix", "change")
    tab.wait_for_function("() => document.querySelectorAll('#traces tbody tr').length === 1")
    assert rows.first.get_attribute("data-trace-id") == seeded.markup_trace
    assert f"trace={seeded.markup_trace[:10]}" in tab.url
    tab.fill("#min-toxicity", "0.95")
    tab.dispatch_event("#min-toxicity", "change")
    tab.wait_for_function("() => document.querySelectorAll('#traces tbody tr').length === 0")
    assert tab.locator("#traces-empty").is_visible()
    tab.fill("#min-toxicity", "0")
    tab.dispatch_event("#min-toxicity", "change")
    tab.wait_for_function("() => document.querySelectorAll('#traces tbody tr').length === 1")

    tab.locator(f'#traces tr[data-trace-id="{seeded.markup_trace}"] td').first.click()
    tab.wait_for_url(f"**/traces/{seeded.markup_trace}")
    tab.wait_for_function("() => Number(document.body.dataset.loaded || 0) >= 1")
    kinds = tab.locator("#spans article").evaluate_all("a => a.map(e => e.dataset.eventType)")
    assert kinds == ["prompt", "retrieval", "completion"]  # trace 5 has no feedback
    prompt = tab.locator("#spans article.prompt")
    assert prompt.locator('li[data-score="toxicity"]').count() == 1
    assert prompt.locator('li[data-score="injection"]').count() == 1
    completion = tab.locator("#spans article.completion")
    assert "tokens in40" in completion.locator("dl").inner_text().replace("\n", "")
    # The prompt text is markup: shown verbatim as text, never parsed or run.
    texts = prompt.locator("pre.text").all_inner_texts()
    assert MARKUP in texts
    assert tab.locator("#pwned").count() == 0
    assert tab.evaluate("() => window.__pwned === undefined")

    [bars] = chart(tab, "waterfall")
    assert len(bars["y"]) == 3
    assert bars["base"][0] == 0 and bars["base"] == sorted(bars["base"])
    shoot(tab, shots, "trace")
    assert console.errors == []


def test_registry_shows_the_active_version_labels_and_tests(
    page: tuple[Any, Console], server: ServerThread, seeded: Seeded, shots: Path
) -> None:
    tab, console = page
    load(tab, f"{server.url}/registry")
    active = tab.locator(f'#models tr[data-model="{MODEL}"][data-version="2"]')
    assert active.get_attribute("class") == "active-version"
    assert active.locator("td").nth(2).inner_text() == "active"
    assert active.locator("td").nth(4).inner_text() == "/adapters/ui-lora-2"
    old = tab.locator(f'#models tr[data-model="{MODEL}"][data-version="1"]')
    assert old.locator("td").nth(2).inner_text() != "active"
    assert tab.locator(f'#models tr[data-model="{MODEL}"].active-version').count() == 1
    labels = {
        v: tab.locator(
            f'#prompts tr[data-prompt="{PROMPT}"][data-version="{v}"] .badge.label'
        ).all_inner_texts()
        for v in ("1", "2")
    }
    assert labels == {"1": ["production"], "2": ["canary"]}
    template = tab.locator(f'#prompts tr[data-prompt="{PROMPT}"][data-version="2"] pre')
    assert template.inner_text() == MARKUP
    assert tab.locator(f'#experiments tr[data-test="{TEST}"] td').nth(3).inner_text() == "running"
    shoot(tab, shots, "registry")
    assert console.errors == []


def test_pages_refresh_with_new_traffic(
    page: tuple[Any, Console], stack: StackInfo, database: str, server: ServerThread
) -> None:
    tab, console = page
    load(tab, f"{server.url}/overview?range=15m&app={LIVE_APP}")
    assert sum(sum(t["y"]) for t in chart(tab, "traffic")) == 0
    _, items = trace_items(
        random.Random(1),
        datetime.now(UTC) - timedelta(minutes=1),
        0,
        app=LIVE_APP,
        text="live",
        feedback=True,
    )
    write(stack.clickhouse_url, database, items)
    # No reload: the page's own refresh (every second here) must pick the new events up.
    tab.wait_for_function(
        """n => (document.getElementById('traffic').data || [])
                 .reduce((s, t) => s + t.y.reduce((a, b) => a + b, 0), 0) === n""",
        arg=len(items),
        timeout=TIMEOUT_MS,
    )
    assert console.errors == []
