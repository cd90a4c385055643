"""One run of the demo: the stack, the demo's processes and receivers, the scenario's traffic
with its planted incidents, live progress, what was caught, the summary and the report."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from undertow.errors import UndertowError
from undertow.infra.process import ManagedProcess, free_port, wait_until
from undertow.infra.stack import LocalStack, StackInfo
from undertow.schemas import topics
from undertow.schemas.codec import AvroCodec
from undertow.services.alerts.receiver import PagerDutyReceiver, SlackReceiver, WebhookReceiver
from undertow.services.bus import publish
from undertow.services.scenario import Phase, PlannedTrace, Scenario, ScenarioTexts
from undertow.settings import StackSettings

APP = "support-bot"  # the scenario's traffic (another name when an earlier run's overlaps)
CHAT_APP = "support-chat"  # the traffic through the gateway
MODEL = "SmolLM2-135M-Instruct"
ROUTING_KEY = "DemoRoutingKey0123456789abcdefgh"
WEBHOOK_SECRET = "demo-webhook-secret-0123456789abcd"
# Seconds between the quality-regression users' requests to the gateway.
REQUEST_SPACING_S = 2.5
# The demo's rules: the shipped ones' kinds with windows short enough for compressed time.
DEMO_RULES: dict[str, Any] = {
    "version": 1,
    # Replayed traffic arrives with its event times interleaved across the topic's partitions
    # by up to a chunk's span (10 traces, tens of seconds): events later than this are ignored.
    "allowed_lateness": "2m",
    "idle_after": "15s",
    "rules": [
        {
            "name": "prompt_injection",
            "kind": "event",
            # 0.95, not the shipped 0.8: the injection probe scores some ordinary chat between
            # 0.8 and 0.95 (20 of 588 support questions above 0.8, none above 0.95).
            "description": "A prompt scored as a likely prompt-injection attempt.",
            "value": "scores.injection",
            "threshold": 0.95,
            # An attack counts however late it comes (an event rule fires on the event, so
            # its lateness delays nothing): replayed traffic reaches the policy with its 18
            # minutes of event time compressed, a partition lagging 20 s is 2 minutes late.
            "allowed_lateness": "20m",
            "filters": {"event_type": "prompt"},
            "group_by": ["app", "environment"],
            "severity": "critical",
            "clear_after": "2m",
            "sql": "SELECT event_time, event_id, injection FROM scores FINAL "
            "WHERE app = {{ app }} AND event_type = 'prompt' AND injection > {{ threshold }} "
            "AND event_time >= {{ window_start }} AND event_time < {{ window_end }} "
            "ORDER BY event_time LIMIT 20",
        },
        {
            "name": "toxicity_rate",
            "kind": "rate",
            "description": "Share of toxic completions above the limit.",
            "value": "scores.toxicity",
            "event_above": 0.5,
            "threshold": 0.1,
            "min_count": 20,
            "window": "2m",
            "step": "10s",
            "clear_after": "2m",
            "filters": {"event_type": "completion"},
            "group_by": ["app", "environment"],
            "severity": "warning",
            "sql": "SELECT toStartOfMinute(event_time) AS minute, count() AS completions, "
            "countIf(toxicity > {{ event_above }}) AS toxic FROM scores FINAL "
            "WHERE app = {{ app }} AND event_type = 'completion' "
            "AND event_time >= {{ window_start }} AND event_time < {{ window_end }} "
            "GROUP BY minute ORDER BY minute",
        },
        {
            "name": "spend_spike",
            "kind": "budget",
            "description": "Model spend over two minutes above the budget (USD).",
            "value": "cost_usd",
            "threshold": 0.05,
            "window": "2m",
            "step": "10s",
            "clear_after": "2m",
            "filters": {"event_type": "completion"},
            "group_by": ["app", "environment"],
            "severity": "warning",
            "sql": "SELECT model, count() AS completions, sum(tokens) AS tokens, "
            "round(sum(cost_usd), 4) AS spend_usd FROM scores FINAL "
            "WHERE app = {{ app }} AND event_type = 'completion' "
            "AND event_time >= {{ window_start }} AND event_time < {{ window_end }} "
            "GROUP BY model ORDER BY spend_usd DESC",
        },
        {
            "name": "drift_detected",
            "kind": "drift",
            "description": "A drift detector flagged a change against the baseline.",
            "group_by": ["segment", "stream"],
            "severity": "warning",
            "clear_after": "5m",
            "sql": "SELECT event_time, detector, statistic, threshold, nearest_topics "
            "FROM drift FINAL WHERE segment = {{ segment }} AND stream = {{ stream }} "
            "ORDER BY event_time",
        },
        {
            "name": "bad_feedback",
            "kind": "rate",
            "description": "Too many answers rated badly by users.",
            "value": "scores.feedback",
            "event_below": 0.5,
            "threshold": 0.4,
            "min_count": 8,
            "window": "2m",
            "step": "5s",
            # Ratings are live, not replayed: a window waits 15 s for stragglers, not the
            # replay's 2 minutes, so the regression is caught (and rolled back) that much sooner.
            "allowed_lateness": "15s",
            "clear_after": "5m",
            "filters": {"event_type": "feedback", "app": CHAT_APP},
            "group_by": ["app", "environment", "attributes.model_version"],
            "severity": "error",
            "actions": [
                {
                    "type": "rollback",
                    "target": MODEL,
                    "parameters": {"version": "{attributes.model_version}"},
                }
            ],
        },
    ],
}


class DemoError(UndertowError):
    """The demo could not run to its end (a component failed to start or died)."""


@dataclass
class Counts:
    """What the warehouse holds of this run, refreshed while the demo runs."""

    sent: int = 0
    stored: int = 0
    scored: int = 0
    detections: int = 0
    alerts: int = 0
    actions: int = 0
    phase: str = "starting"


@dataclass
class DemoResult:
    """The run's figures and each incident's outcome
    (:class:`undertow.demo.report.IncidentOutcome`)."""

    run_id: str
    seconds: float
    counts: Counts
    app: str = APP  # the app name of this run's scenario traffic
    outcomes: list[Any] = field(default_factory=list)
    report: Path | None = None
    rollback_seconds: float | None = None
    # When the gateway began serving the LoRA version users then rate badly, and which one.
    promoted_at: datetime | None = None
    promoted_version: str | None = None
    false_alarms: list[str] = field(default_factory=list)

    @property
    def caught(self) -> int:
        return sum(1 for o in self.outcomes if o.caught_at is not None)


def stack_table(info: StackInfo) -> Table:
    """Where each component answers and how long it took to come up."""
    table = Table(title="Local stack", show_lines=False)
    table.add_column("component")
    table.add_column("address")
    table.add_column("state")
    table.add_column("seconds", justify="right")
    broker_state = "started" if info.broker and info.broker.started_now else "running"
    warehouse_state = "started" if info.warehouse and info.warehouse.started_now else "running"
    table.add_row(
        "Kafka broker (KRaft)",
        info.bootstrap_servers,
        broker_state if info.broker else "external",
        f"{info.seconds.get('broker', 0):.1f}",
    )
    table.add_row(
        "ClickHouse engine (HTTP)",
        info.clickhouse_url,
        warehouse_state if info.warehouse else "external",
        f"{info.seconds.get('warehouse', 0):.1f}",
    )
    table.add_row(
        "topics",
        f"{len(topics.ALL)} of the architecture",
        f"{len(info.topics_created)} created",
        f"{info.seconds.get('topics', 0):.1f}",
    )
    table.add_row(
        "migrations",
        "schemas/clickhouse",
        f"{len(info.migrations_applied)} applied",
        f"{info.seconds.get('migrations', 0):.1f}",
    )
    return table


def scenario_phases(scale: float = 1.0) -> list[Phase]:
    """The demo's phases; ``scale`` multiplies the trace counts."""

    def n(count: int) -> int:
        return max(1, round(count * scale))

    # The usual pool has 588 support conversations, drawn without replacement: these phases
    # use 560 of them, so no question comes back (a copy looks like a change to the detector).
    return [
        Phase("stable", n(330), spacing_s=1.0),
        Phase("stable", n(130), spacing_s=1.0),
        Phase("topic_shift", n(300), spacing_s=1.0),
        Phase("injection", n(15), spacing_s=2.0),
        Phase("toxicity", n(50), spacing_s=1.0),
        Phase("cost_spike", n(30), spacing_s=3.0),
        Phase("stable", n(20), spacing_s=1.0),
    ]


class Components:
    """The demo's processes (workers, action service, alert delivery, gateway) and receivers."""

    def __init__(self, home: Path, run_dir: Path) -> None:
        self.home = home
        self.run_dir = run_dir
        self.processes: dict[str, ManagedProcess] = {}
        self.slack = SlackReceiver()
        self.pagerduty = PagerDutyReceiver(routing_key=ROUTING_KEY)
        self.webhook = WebhookReceiver(WEBHOOK_SECRET)
        self.gateway_url = ""

    def start(self, rules: Path) -> None:
        for receiver in (self.slack, self.pagerduty, self.webhook):
            receiver.start()
        fast = {
            "UNDERTOW_WORKER_SESSION_TIMEOUT_S": "6",
            "UNDERTOW_WORKER_HEARTBEAT_INTERVAL_S": "1",
            "UNDERTOW_WORKER_BASELINE_POLL_S": "1",
            "UNDERTOW_WORKER_CHECKPOINT_INTERVAL_S": "1",
            "UNDERTOW_WORKER_RULES_FILE": str(rules),
        }
        for role in ("ingest", "drift", "policy"):
            self._spawn(role, ["worker", "--role", role], fast)
        self._spawn("actions", ["actions", "serve", "--worker", "rollback"], {})
        self._spawn(
            "alerts",
            ["alerts", "serve"],
            {
                "UNDERTOW_ALERTS_SLACK_WEBHOOK_URL": self.slack.url,
                "UNDERTOW_ALERTS_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
                "UNDERTOW_ALERTS_PAGERDUTY_EVENTS_URL": self.pagerduty.url,
                "UNDERTOW_ALERTS_WEBHOOK_URL": self.webhook.url,
                "UNDERTOW_ALERTS_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "UNDERTOW_ALERTS_GROUP_WINDOW_S": "2",
            },
        )
        port = free_port()
        self._spawn(
            "gateway",
            ["gateway"],
            {"UNDERTOW_GATEWAY_PORT": str(port), "UNDERTOW_GATEWAY_APP_NAME": CHAT_APP},
        )
        self.gateway_url = f"http://127.0.0.1:{port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        process = ManagedProcess(name, self.run_dir)
        # Wide, plain logs: the demo reads the drift worker's log, which rich would otherwise
        # wrap at the width of the terminal the demo runs in (80 columns without one).
        environment = {
            **os.environ,
            "UNDERTOW_HOME": str(self.home),
            "COLUMNS": "200",
            "NO_COLOR": "1",
            **env,
        }
        process.spawn([sys.executable, "-m", "undertow.cli", *args], {}, env=environment)
        self.processes[name] = process

    def check(self) -> None:
        """Raise if a component died (with the end of its log)."""
        for name, process in self.processes.items():
            if process.record() is None:
                raise DemoError(f"the {name} process stopped:\n{process.log_tail(20)}")

    def delivered(self, rule: str) -> tuple[str, ...]:
        """The channels whose receiver got a page naming ``rule``."""
        out = []
        for name, receiver in (
            ("slack", self.slack),
            ("pagerduty", self.pagerduty),
            ("webhook", self.webhook),
        ):
            if any(rule in json.dumps(r.payload, default=str) for r in receiver.accepted):
                out.append(name)
        return tuple(out)

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=20)
        for receiver in (self.slack, self.pagerduty, self.webhook):
            receiver.stop()


class Monitor:
    """Polls the warehouse for this run's counts and renders them live."""

    def __init__(
        self,
        warehouse: Callable[[], Any],
        app: str,
        since: datetime,
        chat_since: datetime,
        console: Console,
    ) -> None:
        self.warehouse = warehouse
        # This run's rows: the scenario's app from its first event time, the gateway's app
        # (real time, shared by every run) from the run's start.
        self.params = {"app": app, "since": since, "chat": CHAT_APP, "chat_since": chat_since}
        self.console = console
        self.counts = Counts()
        self._stop = threading.Event()

    def refresh(self) -> Counts:
        client = self.warehouse()

        def count(table: str, where: str = "") -> int:
            sql = (
                f"SELECT count() FROM {table} WHERE ((app = {{app:String}} "
                "AND event_time >= {since:DateTime64(6)}) OR (app = {chat:String} "
                f"AND event_time >= {{chat_since:DateTime64(6)}})) {where}"
            )
            return int(client.query(sql, parameters=self.params).result_rows[0][0])

        c = self.counts
        c.stored = count("events")
        c.scored = count("scores")
        c.detections = count("drift FINAL", "AND detected")
        c.alerts = count("alerts FINAL", "AND status = 'firing'")
        c.actions = count("actions FINAL", "AND phase != 'requested'")
        return c

    def table(self) -> Table:
        c = self.counts
        table = Table(
            "phase",
            "events sent",
            "stored",
            "scored",
            "drift detections",
            "alerts",
            "action answers",
        )
        table.add_row(
            c.phase,
            str(c.sent),
            str(c.stored),
            str(c.scored),
            str(c.detections),
            str(c.alerts),
            str(c.actions),
        )
        return table

    @contextmanager
    def live(self) -> Iterator[None]:
        with Live(
            self.table(), console=self.console, refresh_per_second=2, transient=False
        ) as live:

            def loop() -> None:
                while not self._stop.wait(1.0):
                    try:
                        self.refresh()
                    except Exception:  # the next refresh tries again
                        continue
                    live.update(self.table())

            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            try:
                yield
            finally:
                self._stop.set()
                thread.join(5)
                live.update(self.table())


def _publish(bootstrap: str, traces: Sequence[PlannedTrace], codec: AvroCodec) -> int:
    records = [
        (str(e["trace_id"]).encode(), codec.encode("event", e)) for t in traces for e in t.events
    ]
    return publish(bootstrap, topics.EVENTS, records)


def _cli(home: Path, *args: str, timeout: float = 300) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "undertow.cli", *args],
        env={**os.environ, "UNDERTOW_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise DemoError(f"undertow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def traffic_app(client: Any, start: datetime) -> str:
    """The app name of a run whose scenario begins at event time ``start``: ``support-bot``,
    unless an earlier run's traffic under that name reaches past ``start`` (its incidents
    would blend into this run's, and the policy engine of that app, whose event-time
    watermark has passed ``start``, would drop this run's events as late); then the first of
    ``support-bot-2``, ``support-bot-3``, ... without such traffic."""
    n = 1
    while True:
        app = APP if n == 1 else f"{APP}-{n}"
        latest = client.query(
            "SELECT count(), max(event_time) FROM events WHERE app = {app:String}",
            parameters={"app": app},
        ).result_rows[0]
        if not latest[0] or _utc(latest[1]) < start:
            return app
        n += 1


def run_demo(
    settings: StackSettings,
    *,
    seed: int = 7,
    scale: float = 1.0,
    report_path: Path | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Run the whole demo; returns its figures and outcomes."""
    console = console or Console()
    began = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    stack = LocalStack(settings)
    with console.status("Starting the local stack..."):
        info = stack.up()
    console.print(stack_table(info))
    run_dir = settings.home / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    rules = run_dir / "rules.json"
    rules.write_text(json.dumps(DEMO_RULES, indent=2))
    client_local = threading.local()

    def warehouse() -> Any:
        if getattr(client_local, "client", None) is None:
            client_local.client = stack.client(info.clickhouse_url)
        return client_local.client

    texts = ScenarioTexts.load()
    phases = scenario_phases(scale)
    duration = sum((timedelta(seconds=p.traces * p.spacing_s) for p in phases), timedelta())
    began_at = datetime.now(UTC)
    start = began_at - duration - timedelta(minutes=2)
    app = traffic_app(warehouse(), start)
    if app != APP:
        console.print(
            f"{APP} already has traffic from {start:%H:%M:%S} UTC on (an earlier demo run): "
            f"this run's traffic is app {app}, so the two runs' windows, incidents and "
            "figures stay apart"
        )
    scenario = Scenario(phases, texts, seed=seed, app=app, start=start)
    traces = list(scenario.traces())
    components = Components(settings.home, run_dir)
    monitor = Monitor(warehouse, app, start, began_at, console)
    result = DemoResult(run_id, 0.0, monitor.counts, app=app)
    try:
        _register(settings.home, run_dir)
        components.start(rules)
        console.print(f"workers, actions, alerts and the gateway starting (logs in {run_dir})")
        with monitor.live():
            _play(info, app, scenario, traces, components, monitor, settings.home)
            # The regression is played on a pipeline that has caught up: otherwise the bad
            # version's ratings queue behind the traffic's backlog, users get (and the CPU
            # spends time on) answers the monitor would have stopped, and the catch looks
            # later than it is.
            monitor.counts.phase = "scoring what was sent"
            _settle(monitor, components)
            _quality_regression(info, components, monitor, warehouse, result)
            monitor.counts.phase = "settling"
            _settle(monitor, components)
        result.outcomes = _outcomes(scenario, traces, components, warehouse, result)
        result.seconds = time.monotonic() - began
        _summary(console, result)
        result.report = _report(report_path or run_dir / "report.html", warehouse, scenario, result)
        console.print(f"report: {result.report}")
    finally:
        components.stop()
    return result


def _register(home: Path, run_dir: Path) -> None:
    """The registry the gateway follows: version 1 of the model serving (registered once per
    stack), a LoRA version as candidate for this run, and the support prompt."""
    from undertow.services.registry.client import RegistryClient
    from undertow.services.registry.state import promote_model, push_model, push_prompt

    settings = StackSettings(home=home)
    registry = RegistryClient(LocalStack(settings).require().bootstrap_servers)

    def now() -> int:
        return time.time_ns() // 1000

    state = registry.load()
    if state.active_model(MODEL) is None:
        registry.publish(push_model(state, MODEL, base_model=MODEL, now=now()))
        state = registry.load()
        first = state.versions("model", MODEL)[-1].version
        registry.publish(promote_model(state, MODEL, first, now=now()))
    adapter = run_dir / "adapter"
    _make_adapter(adapter)
    registry.publish(
        push_model(registry.load(), MODEL, base_model=MODEL, adapter_path=str(adapter), now=now())
    )
    if "support" not in registry.load().names("prompt"):
        registry.publish(
            push_prompt(
                registry.load(),
                "support",
                "You are the support assistant of {product}. Answer briefly and politely.",
                labels=["production"],
                now=now(),
            )
        )


def _make_adapter(folder: Path) -> None:
    """A LoRA adapter for SmolLM2 with random weights: the 'regressed' version of the model."""
    from peft import LoraConfig, get_peft_model

    from undertow.services.gateway.backends.local import default_model_source, load_model
    from undertow.services.gateway.settings import GatewaySettings

    source, gguf = default_model_source()
    lm = load_model(source, gguf, GatewaySettings().model_cache_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(lm.model, config).save_pretrained(str(folder))


def _play(
    info: StackInfo,
    app: str,
    scenario: Scenario,
    traces: list[PlannedTrace],
    components: Components,
    monitor: Monitor,
    home: Path,
) -> None:
    """Baseline traffic, the baseline, then the rest of the scenario."""
    codec = AvroCodec()
    first = scenario.phases[0].traces
    counts = monitor.counts
    counts.phase = "usual traffic (baseline)"
    for chunk in _chunks(traces[:first], 10):
        counts.sent += _publish(info.bootstrap_servers, chunk, codec)
        components.check()

    def scored() -> bool | None:
        components.check()
        return monitor.refresh().scored >= counts.sent or None

    wait_until(scored, 600, "the baseline traffic scored and stored")
    counts.phase = "building the drift baseline"
    until = traces[first].at
    _cli(
        home,
        "baseline", "build",
        "--since", scenario.start.isoformat(),
        "--until", until.isoformat(),
        "--app", app,
        "--target-rate", "1e-4",
        "--calibration-events", "300000",
        "--skip-small",
    )  # fmt: skip
    drift_log = components.processes["drift"].log_path

    def loaded() -> bool | None:
        components.check()
        # Whitespace-insensitive, should a line still wrap.
        text = " ".join(drift_log.read_text(errors="replace").split())
        changed = (part[:200] for part in text.split("baselines changed for")[1:])
        return any(f"app={app}/" in segments for segments in changed) or None

    wait_until(loaded, 60, "the drift worker loading the baseline")
    for phase_traces, label in _by_phase(traces[first:]):
        counts.phase = label
        for chunk in _chunks(phase_traces, 10):
            counts.sent += _publish(info.bootstrap_servers, chunk, codec)
            components.check()


def _chunks(items: list[PlannedTrace], size: int) -> Iterator[list[PlannedTrace]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _by_phase(traces: list[PlannedTrace]) -> Iterator[tuple[list[PlannedTrace], str]]:
    labels = {
        "stable": "usual traffic",
        "topic_shift": "topic shift",
        "injection": "prompt-injection burst",
        "toxicity": "rude answers",
        "cost_spike": "cost spike (long prompts)",
    }
    group: list[PlannedTrace] = []
    for trace in traces:
        if group and trace.phase != group[-1].phase:
            yield group, labels[group[-1].phase]
            group = []
        group.append(trace)
    if group:
        yield group, labels[group[-1].phase]


def _quality_regression(
    info: StackInfo,
    components: Components,
    monitor: Monitor,
    warehouse: Callable[[], Any],
    result: DemoResult,
) -> None:
    """Promote the LoRA version, let users rate it badly through the gateway until the policy's
    rollback makes the gateway serve the previous version. Sets ``result``'s promotion time
    and version, and the seconds from the rollback request to the gateway serving it."""
    from undertow.services.registry.client import RegistryClient
    from undertow.services.registry.state import promote_model
    from undertow.services.sdk import SdkConfig, Undertow

    counts = monitor.counts
    counts.phase = "gateway: starting"
    http = httpx.Client(base_url=components.gateway_url, timeout=120)

    def health() -> dict[str, Any] | None:
        components.check()
        try:
            body: dict[str, Any] = http.get("/healthz").json()
        except httpx.TransportError:
            return None
        return body if body.get("ready") else None

    wait_until(health, 300, "the gateway loading its model")
    registry = RegistryClient(info.bootstrap_servers)
    state = registry.load()
    bad = state.versions("model", MODEL)[-1]
    good = state.active_model(MODEL)
    registry.publish(promote_model(state, MODEL, bad.version, now=time.time_ns() // 1000))
    wait_until(
        lambda: ((h := health()) is not None and h.get("model_version") == bad.version) or None,
        60,
        f"the gateway serving version {bad.version}",
    )
    result.promoted_at = datetime.now(UTC)
    result.promoted_version = bad.version
    counts.phase = f"gateway: version {bad.version} (LoRA) rated badly"
    switched: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not switched:
            h = health()
            if h is not None and good is not None and h.get("model_version") == good.version:
                switched.append(time.time())
            stop.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    sdk = Undertow(SdkConfig(app=CHAT_APP, bootstrap_servers=info.bootstrap_servers))
    deadline = time.monotonic() + 300
    i = 0
    next_request = time.monotonic()
    try:
        while time.monotonic() < deadline and not switched:
            # Users ask every REQUEST_SPACING_S: the catch is bound by the rule's window and
            # allowed lateness (event time), so faster asking only burns CPU on answers.
            if stop.wait(max(0.0, next_request - time.monotonic())) or switched:
                break
            next_request = time.monotonic() + REQUEST_SPACING_S
            response = http.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "max_tokens": 12,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "How do I reset my password?"}],
                    "undertow": {
                        "prompt_name": "support",
                        "variables": {"product": "Acme Cloud"},
                        "user": f"user-{i % 9}",
                    },
                },
            )
            response.raise_for_status()
            version = response.headers.get("x-undertow-model-version", "")
            counts.sent += 2
            if version == bad.version:
                sdk.record_feedback(
                    trace_id=response.headers["x-undertow-trace-id"],
                    score=0.0 if i % 5 else 1.0,
                    attributes={"model_version": version},
                )
                counts.sent += 1
            i += 1
    finally:
        sdk.close()
        stop.set()
        watcher.join(5)
    if not switched:
        return
    rows = (
        warehouse()
        .query(
            "SELECT min(ingested_at) FROM actions FINAL WHERE action_type = 'rollback' "
            "AND phase = 'requested' AND parameters['version'] = {v:String}",
            parameters={"v": bad.version},
        )
        .result_rows
    )
    requested = rows[0][0] if rows and rows[0][0] else None
    if requested is not None:
        result.rollback_seconds = round(switched[0] - requested.timestamp(), 2)


def _settle(monitor: Monitor, components: Components) -> None:
    """Wait until everything sent is stored and scored (or two minutes passed)."""

    def done() -> bool | None:
        components.check()
        c = monitor.refresh()
        return (c.stored >= c.sent and c.scored >= c.sent) or None

    try:
        wait_until(done, 120, "every event stored and scored")
    except UndertowError:
        return  # the summary shows the counts as they are


def _outcomes(
    scenario: Scenario,
    traces: list[PlannedTrace],
    components: Components,
    warehouse: Callable[[], Any],
    result: DemoResult,
) -> list[Any]:
    """Each planted incident: caught or not, when, the alert, where it was paged, the action."""
    from undertow.demo.report import IncidentOutcome

    client = warehouse()
    outcomes = []
    incidents = scenario.incidents()
    ends = [i.started for i in incidents[1:]] + [traces[-1].at]
    for incident, end in zip(incidents, ends, strict=True):
        row = client.query(
            "SELECT min(event_time), argMin(summary, event_time), argMin(ifNull(sql, ''), "
            "event_time) FROM alerts FINAL WHERE app = {app:String} AND rule = {rule:String} "
            "AND status = 'firing' AND event_time >= {start:DateTime64(6)}",
            parameters={"app": result.app, "rule": incident.caught_by, "start": incident.started},
        ).result_rows[0]
        if incident.caught_by == "drift_detected":
            # A detection joins a drift incident already open on its stream, so the first
            # detection after the start is what caught it, alert or not.
            first = client.query(
                "SELECT min(event_time), count() FROM drift FINAL WHERE app = {app:String} "
                "AND detected AND event_time >= {start:DateTime64(6)}",
                parameters={"app": result.app, "start": incident.started},
            ).result_rows[0]
            if first[1]:
                row = (
                    first[0],
                    row[1] or "drift detected (the stream's incident was open)",
                    row[2],
                )
        caught = _utc(row[0]) if row[1] else None
        delay = (
            sum(1 for t in traces if t.phase == incident.kind and t.at < caught)
            if caught is not None
            else None
        )
        outcomes.append(
            IncidentOutcome(
                kind=incident.kind,
                description=incident.description,
                started=incident.started,
                ended=end,
                caught_by=incident.caught_by,
                caught_at=caught,
                delay_events=delay,
                alert=row[1] or None,
                delivered=components.delivered(incident.caught_by) if caught else (),
                action=None,
                sql=row[2] or None,
            )
        )
    # The gateway's app is shared by every run: this run's rows come after its promotion.
    promoted = result.promoted_at or datetime.now(UTC)
    actions = client.query(
        "SELECT argMax(phase, ingested_at), argMax(result, ingested_at), min(event_time) "
        "FROM actions FINAL WHERE action_type = 'rollback' AND event_time >= {p:DateTime64(6)} "
        "GROUP BY ifNull(request_id, toString(event_id)) "
        "ORDER BY min(event_time) DESC LIMIT 1",
        parameters={"p": promoted},
    ).result_rows
    alert = client.query(
        "SELECT min(event_time), argMin(summary, event_time) FROM alerts FINAL "
        "WHERE app = {app:String} AND rule = 'bad_feedback' AND status = 'firing' "
        "AND event_time >= {p:DateTime64(6)}",
        parameters={"app": CHAT_APP, "p": promoted},
    ).result_rows[0]
    caught_at = _utc(alert[0]) if alert[1] else None
    started = result.promoted_at or caught_at or traces[-1].at
    # The bad version's answers (one trace each) before the alert: how late it was caught.
    served = None
    if caught_at is not None and result.promoted_version is not None:
        served = client.query(
            "SELECT uniqExact(trace_id) FROM events FINAL WHERE app = {app:String} "
            "AND event_type = 'completion' AND model_version = {version:String} "
            "AND event_time >= {start:DateTime64(6)} AND event_time < {caught:DateTime64(6)}",
            parameters={
                "app": CHAT_APP,
                "version": result.promoted_version,
                "start": started,
                "caught": caught_at,
            },
        ).result_rows[0][0]
    action = None
    if actions:
        phase, answer, _ = actions[0]
        action = (
            f"rollback {MODEL} {answer.get('from_version', '?')} -> "
            f"{answer.get('to_version', '?')}: {phase}"
        )
        if result.rollback_seconds is not None:
            action += f", gateway serving it {result.rollback_seconds} s after the request"
    outcomes.append(
        IncidentOutcome(
            kind="quality_regression",
            description="a LoRA version of the model is promoted and users rate it badly",
            started=started,
            ended=datetime.now(UTC),
            caught_by="bad_feedback",
            caught_at=caught_at,
            delay_events=served,
            alert=alert[1] or None,
            delivered=components.delivered("bad_feedback"),
            action=action,
            sql="SELECT event_time, phase, target, parameters, result FROM actions FINAL "
            "ORDER BY event_time",
        )
    )
    # Detections and alerts of the replayed traffic before the first incident: false alarms.
    first = incidents[0].started if incidents else traces[-1].at
    baseline_end = traces[scenario.phases[0].traces].at
    rows = client.query(
        "SELECT event_time, concat('drift ', stream) FROM drift FINAL WHERE app = {app:String} "
        "AND detected AND event_time >= {since:DateTime64(6)} "
        "AND event_time < {until:DateTime64(6)} "
        "UNION ALL SELECT event_time, concat('alert ', rule) FROM alerts FINAL "
        "WHERE app = {app:String} AND status = 'firing' AND rule != 'drift_detected' "
        "AND event_time >= {since:DateTime64(6)} AND event_time < {until:DateTime64(6)}",
        parameters={"app": result.app, "since": baseline_end, "until": first},
    ).result_rows
    result.false_alarms = [f"{what} at {_utc(at):%H:%M:%S}" for at, what in sorted(rows)]
    return outcomes


def _utc(moment: datetime) -> datetime:
    """ClickHouse hands DateTime64(6, 'UTC') back without a zone: it is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _summary(console: Console, result: DemoResult) -> None:
    table = Table("planted incident", "caught by", "caught", "after", "paged", "action")
    for o in result.outcomes:
        after = "" if o.delay_events is None else f"{o.delay_events} traces"
        table.add_row(
            f"{o.kind}: {o.description}",
            o.caught_by,
            "yes" if o.caught_at is not None else "NO",
            after,
            ", ".join(o.delivered) or "-",
            o.action or "-",
        )
    c = result.counts
    console.print(
        Group(
            table,
            f"{c.sent} events sent, {c.stored} stored, {c.scored} scored; "
            f"{c.detections} drift detections, {c.alerts} alerts; "
            f"{result.caught} of {len(result.outcomes)} incidents caught in {result.seconds:.0f} s",
            "false alarms on the usual traffic after the baseline: "
            + (", ".join(result.false_alarms) or "none"),
        )
    )
    for o in result.outcomes:
        if o.sql:
            console.print(
                f'[bold]{o.kind}[/bold]: undertow sql "{" ".join(o.sql.split())}"', highlight=False
            )


def _report(
    path: Path, warehouse: Callable[[], Any], scenario: Scenario, result: DemoResult
) -> Path:
    from undertow.demo.report import build_report, write_report

    c = result.counts
    html = build_report(
        warehouse(),
        app=result.app,
        since=scenario.start,
        until=datetime.now(UTC),
        incidents=result.outcomes,
        summary={
            "run": result.run_id,
            "wall time": f"{result.seconds:.0f} s",
            "events sent": str(c.sent),
            "events stored": str(c.stored),
            "incidents caught": f"{result.caught} of {len(result.outcomes)}",
            "rollback to serving (s)": str(result.rollback_seconds),
        },
    )
    written: Path = write_report(path, html)
    return written
