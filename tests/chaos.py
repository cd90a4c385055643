"""A fleet of stream workers under a seeded schedule of faults, and what must hold after it.

Used by tests/integration/test_chaos.py (a short form, in ``make test``) and by
``bench/chaos.py --runs N --seed S`` (the full form, repeated, printing the pass count).

One run, on a running local stack:

* its own topics (event, scored, drift, alerts, actions, dead letters), warehouse database and
  consumer groups, so runs never see each other's records;
* a drift baseline for the traffic's main segment, built from other topics than the traffic
  talks about, so the drift role detects, emits and alerts;
* the fleet: 3 ingest, 2 drift and 2 policy workers (``undertow worker`` subprocesses), each
  with a data directory of its own, as if on its own host;
* the traffic (:func:`undertow.services.traffic.sample_traces`) published in chunks, with the
  faults of the seeded :func:`schedule` between chunks: a worker SIGKILLed and replaced, a
  worker stopped with SIGTERM and replaced, a worker joining, the broker stopped and
  restarted, the warehouse away ``warehouse_outage_s``;
* then, once the fleet caught up (each condition waited for with a deadline), the invariants
  of :func:`check`: every event stored, scored and embedded once; every trace's count exact;
  the drift events exactly those of the drift monitor fed, without faults, the repartitioned
  records the fleet saw, each origin once (none lost, none doubled); the policy left no
  event out as late but second copies of scored events (an ingest worker killed between
  publishing and committing publishes again); no alert transition published or stored
  under two ids; every SIGTERMed worker exited 0 and the rest still run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tests.processes import dump_stacks
from undertow.infra import InfraError
from undertow.infra.kafka import TopicSpec, ensure_topics
from undertow.infra.process import wait_until
from undertow.infra.stack import LocalStack, StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event_type
from undertow.services.bus import BusError, end_offsets, publish, read_range
from undertow.services.traffic import sample_traces
from undertow.services.warehouse.baselines import BaselineStore
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.migrations import apply_migrations

UNDERTOW = [sys.executable, "-m", "undertow.cli"]
ROLES = ("ingest", "drift", "policy")
FLEET = {"ingest": 3, "drift": 2, "policy": 2}
FAULTS = ("sigkill", "sigterm", "join", "broker", "warehouse")
WINDOW = 200  # the drift workers' window
MODEL, PROMPT_VERSION = "smollm2-135m-instruct", "3"  # the traffic's main segment
T = TypeVar("T")


@dataclass(frozen=True)
class Fault:
    """One fault, applied after chunk ``after`` of the traffic was published."""

    after: int
    kind: str
    role: str


@dataclass(frozen=True)
class ChaosConfig:
    seed: int = 1
    traces: int = 3300  # about 10,000 events
    chunks: int = 40
    warehouse_outage_s: float = 20.0
    broker_outage_s: float = 10.0
    catch_up_s: float = 420.0  # how long the fleet may take to catch up after the traffic
    shift: float = 0.35  # the share of traces, at the end, about other topics


@dataclass
class ChaosReport:
    seed: int
    events: int = 0
    traces: int = 0
    faults: list[str] = field(default_factory=list)
    drift_events: int = 0
    detections: int = 0
    alerts: int = 0
    reordered: int = 0  # records forwarded after a later one of their origin (none lost)
    late: int = 0  # events the policy left out as late (second copies only)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return (
            f"seed {self.seed}: {self.events} events, {self.traces} traces, faults "
            f"{', '.join(self.faults)}; {self.drift_events} drift events "
            f"({self.detections} detections), {self.alerts} alerts; "
            f"{self.reordered} records forwarded late, {self.late} left out as late by the "
            f"policy; {self.seconds:.0f} s; "
            f"{verdict}"
        )


def schedule(config: ChaosConfig) -> list[Fault]:
    """Each kind of fault once, at seeded chunks (none in the first or last two), on seeded
    roles (the broker and the warehouse concern every role)."""
    rng = random.Random(config.seed)
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    slots = sorted(rng.sample(range(2, config.chunks - 2), len(kinds)))
    return [
        Fault(after, kind, rng.choice(ROLES) if kind in ("sigkill", "sigterm", "join") else "all")
        for after, kind in zip(slots, kinds, strict=True)
    ]


class Worker:
    """``undertow worker --role ROLE`` with its own data directory and log."""

    def __init__(self, role: str, env: dict[str, str], home: Path, index: int) -> None:
        self.role, self.name = role, f"{role}-{index}"
        self.log_path = home / f"{self.name}.log"
        env = {**env, "UNDERTOW_WORKER_ROLE": role}
        env["UNDERTOW_WORKER_DATA_DIR"] = str(home / self.name)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*UNDERTOW, "worker", "--log-batches"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.stopped_with: int | None = None  # the signal the harness stopped it with

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait_ready(self, timeout: float = 180) -> None:
        """Until Faust says the worker joined its group and recovered its tables."""

        def ready() -> bool | None:
            return True if "Worker ready" in self.log_path.read_text(errors="replace") else None

        try:
            wait_until(
                ready,
                timeout,
                f"{self.name} ready",
                interval=0.5,
                alive=lambda: self.alive,
            )
        except InfraError as exc:
            code = self.proc.poll()
            raise InfraError(f"{exc} (exit {code}); its log ends:\n{self.log()}") from exc

    def stop(self, sig: int, timeout: float = 90) -> int:
        self.stopped_with = sig
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


class Fleet:
    """The workers of one run, by role; replacements and joiners get new indexes."""

    def __init__(self, env: dict[str, dict[str, str]], home: Path) -> None:
        self.env, self.home = env, home
        self.workers: list[Worker] = []
        self.count: Counter[str] = Counter()

    def start(self, role: str) -> Worker:
        worker = Worker(role, self.env[role], self.home, self.count[role])
        self.count[role] += 1
        self.workers.append(worker)
        return worker

    def running(self, role: str) -> list[Worker]:
        return [w for w in self.workers if w.role == role and w.alive]

    def unexpected_exits(self) -> list[str]:
        return [
            f"{w.name} exited {w.proc.returncode}: {w.log()}"
            for w in self.workers
            if not w.alive and w.stopped_with is None
        ]

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.alive:
                worker.proc.kill()
                worker.proc.wait(timeout=30)


def _retry(what: str, call: Callable[[], T], timeout: float = 120) -> T:
    """``call`` until it stops raising BusError (the broker may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except BusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # a retry interval while the broker is away, not a synchronisation


def _topics() -> tuple[list[str], list[str], Any]:
    """Short texts of the usual (tech-support) topics and of general-knowledge ones, and the
    MiniLM vectors of the usual ones (the chatterbot corpus, as the drift tests use it)."""
    from undertow.streams.drift.corpus import ASSISTANT_TOPICS, GENERAL_TOPICS, load_topics
    from undertow.streams.scoring.base import create_embedder

    usual = [u.text for u in load_topics(ASSISTANT_TOPICS) if len(u.text) <= 100][::3][:200]
    general = load_topics(GENERAL_TOPICS, exclude=set(usual))
    shifted = [u.text for u in general if len(u.text) <= 100][::4][:100]
    return usual, shifted, create_embedder("minilm").embed(usual)


def _baseline(app: str, vectors: Any) -> Any:
    """The traffic's main segment as it is before the shift."""
    from undertow.streams.drift import BaselineConfig, CalibrationConfig, build_baseline

    reference = vectors[np.random.default_rng(1).integers(0, len(vectors), 3000)]
    return build_baseline(
        {"app": app, "model": MODEL, "prompt_version": PROMPT_VERSION},
        embeddings={"prompt": reference},
        config=BaselineConfig(topics=16, reference_size=256),
        calibration=CalibrationConfig(events=300_000, statistics=("topic_surprise",), seed=3),
    )


def traffic(app: str, config: ChaosConfig, usual: list[str], shifted: list[str]) -> list[Any]:
    """Traces of sample traffic whose questions come from the usual topics, then, for the last
    ``shift`` share of the traces, from general knowledge (a topic shift to detect)."""
    rng = random.Random(config.seed)
    start = datetime.now(UTC) - timedelta(hours=2)
    records = list(
        sample_traces(config.traces, seed=config.seed, app=app, start=start, environment="chaos")
    )
    cut = int(config.traces * (1 - config.shift))
    trace_index: dict[str, int] = {}
    for record in records:
        if not str(record["body"][0]).endswith("Prompt"):
            continue
        index = trace_index.setdefault(str(record["trace_id"]), len(trace_index))
        pool = usual if index < cut else shifted
        messages = [dict(m) for m in record["body"][1]["messages"]]
        messages[-1]["content"] = rng.choice(pool)
        record["body"] = (record["body"][0], {**record["body"][1], "messages": messages})
    return records


def run_chaos(stack: StackInfo, local: LocalStack, home: Path, config: ChaosConfig) -> ChaosReport:
    """One run (see the module doc); the report's ``failures`` name every broken invariant."""
    began = time.monotonic()
    run = f"{config.seed}-{uuid.uuid4().hex[:8]}"
    app = f"chaos-{run}"
    report = ChaosReport(config.seed)
    home.mkdir(parents=True, exist_ok=True)
    bootstrap = stack.bootstrap_servers
    topics = {name: f"chaos.{name}.{run}" for name in ("events", "scored", "drift", "alerts")}
    topics |= {name: f"chaos.{name}.{run}" for name in ("actions", "deadletter")}
    ensure_topics(
        bootstrap,
        [TopicSpec(topics["events"], 6), TopicSpec(topics["scored"], 6)]
        + [TopicSpec(topics[n], 3) for n in ("drift", "alerts", "actions")]
        + [TopicSpec(topics["deadletter"], 1)],
    )
    database = f"chaos_{run.replace('-', '_')}"
    admin = local.admin_client(stack.clickhouse_url)
    apply_migrations(admin, database)
    warehouse = connect(stack.clickhouse_url, database=database)
    usual, shifted, vectors = _topics()
    BaselineStore(warehouse).save(_baseline(app, vectors))

    base = {
        **os.environ,
        "UNDERTOW_HOME": str(local.settings.home),
        "UNDERTOW_WORKER_BOOTSTRAP_SERVERS": bootstrap,
        "UNDERTOW_WORKER_CLICKHOUSE_URL": stack.clickhouse_url,
        "UNDERTOW_WORKER_CLICKHOUSE_DATABASE": database,
        **{f"UNDERTOW_WORKER_{name.upper()}_TOPIC": topic for name, topic in topics.items()},
        "UNDERTOW_WORKER_SESSION_TIMEOUT_S": "6",
        "UNDERTOW_WORKER_HEARTBEAT_INTERVAL_S": "1",
        "UNDERTOW_WORKER_COMMIT_INTERVAL_S": "0.5",
        "UNDERTOW_WORKER_CHECKPOINT_INTERVAL_S": "0.5",
        "UNDERTOW_WORKER_RETRY_BACKOFF_MAX_S": "1",
        "UNDERTOW_WORKER_BATCH_SIZE": "100",
        "UNDERTOW_WORKER_BASELINE_POLL_S": "1",
        "UNDERTOW_WORKER_DRIFT_WINDOW": str(WINDOW),
        "UNDERTOW_WORKER_TRACE_IDLE_S": "2",
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    env = {role: {**base, "UNDERTOW_WORKER_GROUP_ID": f"chaos-{run}-{role}"} for role in ROLES}
    fleet = Fleet(env, home)
    codec = AvroCodec()
    records = traffic(app, config, usual, shifted)
    report.events, report.traces = len(records), config.traces
    payloads = [(str(r["trace_id"]).encode(), codec.encode("event", r)) for r in records]
    size = -(-len(payloads) // config.chunks)
    faults = {f.after: f for f in schedule(config)}
    rng = random.Random(config.seed * 7919)
    try:
        for role, n in FLEET.items():
            for _ in range(n):
                fleet.start(role)
        for worker in fleet.workers:
            worker.wait_ready()
        for i in range(config.chunks):
            chunk = payloads[i * size : (i + 1) * size]
            _retry("publishing", lambda c=chunk: publish(bootstrap, topics["events"], c))
            fault = faults.get(i)
            if fault is not None:
                report.faults.append(_apply(fault, fleet, local, config, rng))
        failures = fleet.unexpected_exits()
        if not failures:
            failures = check(report, warehouse, bootstrap, topics, fleet, env, records, config)
        report.failures = failures
        if failures:  # each running worker's threads and tasks, into its log, before the kill
            for worker in fleet.workers:
                dump_stacks(worker.proc, worker.log_path)
    finally:
        fleet.stop_all()
        report.seconds = time.monotonic() - began
    if report.passed:
        admin.command(f"DROP DATABASE IF EXISTS {database}")
    return report


def _apply(
    fault: Fault, fleet: Fleet, local: LocalStack, config: ChaosConfig, rng: random.Random
) -> str:
    """Do ``fault``; returns what was done, for the report."""
    if fault.kind in ("sigkill", "sigterm"):
        victim = rng.choice(fleet.running(fault.role))
        sig = signal.SIGKILL if fault.kind == "sigkill" else signal.SIGTERM
        code = victim.stop(sig)
        if sig == signal.SIGTERM and code != 0:
            raise AssertionError(f"{victim.name} exited {code} on SIGTERM: {victim.log()}")
        replacement = fleet.start(fault.role)
        replacement.wait_ready()
        return f"{fault.kind} {victim.name} (-> {replacement.name})"
    if fault.kind == "join":
        joiner = fleet.start(fault.role)
        joiner.wait_ready()
        return f"{joiner.name} joins"
    if fault.kind == "broker":
        local.broker.stop()
        time.sleep(config.broker_outage_s)  # the outage itself
        local.broker.start(timeout=120)
        return f"broker away {config.broker_outage_s:.0f} s"
    local.warehouse.stop()
    time.sleep(config.warehouse_outage_s)  # the outage itself
    local.warehouse.start(timeout=120)
    return f"warehouse away {config.warehouse_outage_s:.0f} s"


def _scalar(warehouse: Any, sql: str, **params: Any) -> Any:
    return warehouse.query(sql, parameters=params).result_rows[0][0]


def overtaken(records: list[Any], *, by_key: bool) -> tuple[int, list[str]]:
    """Where ``records`` (a topic read whole) break the rule the keyed stages rely on: each
    origin partition's records in origin order (per key, ``by_key``), every record below the
    highest origin offset seen being a repeat. Names the first few records that came after a
    later one of their origin partition without having come before (those a keyed stage
    takes for repeats and loses), with where the later one was."""
    from undertow.streams.records import origin

    marks: dict[tuple[Any, str], tuple[int, int, int]] = {}  # origin offset, partition, offset
    seen: set[tuple[Any, str, int]] = set()
    late: list[str] = []
    count = 0
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        where = origin(rec.headers)
        if where is None:
            continue
        key = (rec.key if by_key else None, f"{where[0].rsplit('.', 1)[-1]}:{where[1]}")
        ident = (*key, where[2])
        mark = marks.get(key)
        if mark is None or where[2] > mark[0]:
            marks[key] = (where[2], rec.partition, rec.offset)
        elif ident not in seen:
            count += 1
            if len(late) < 5:
                late.append(
                    f"origin {key[1]}@{where[2]} at [{rec.partition}]@{rec.offset} after "
                    f"origin @{mark[0]} at [{mark[1]}]@{mark[2]}"
                )
        seen.add(ident)
    return count, late


LATE = re.compile(r"policy: (\d+) events came later than every rule's allowed lateness")


def policy_late(fleet: Fleet) -> int:
    """The events the policy workers left out as late, from their logs (one warning a batch)."""
    return sum(
        int(m.group(1))
        for w in fleet.workers
        if w.role == "policy"
        for m in LATE.finditer(w.log_path.read_text(errors="replace"))
    )


def check(
    report: ChaosReport,
    warehouse: Any,
    bootstrap: str,
    topics: dict[str, str],
    fleet: Fleet,
    env: dict[str, dict[str, str]],
    records: list[dict[str, Any]],
    config: ChaosConfig,
) -> list[str]:
    """Wait for the fleet to catch up, then the invariants of the module doc."""
    failures: list[str] = []
    total = len(records)
    app = str(records[0]["app"])
    embedded = sum(1 for r in records if event_type(r) != "feedback")
    deadline = time.monotonic() + config.catch_up_s

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    def waited(what: str, probe: Callable[[], bool]) -> bool:
        try:
            wait_until(lambda: True if probe() else None, left(), what, interval=1.0)
            return True
        except Exception as exc:
            failures.append(f"{what}: {exc}")
            return False

    def counts() -> tuple[int, int, int, int, int]:
        row = warehouse.query(
            "SELECT (SELECT count() FROM events FINAL WHERE app = {a:String}),"
            " (SELECT uniqExact(event_id) FROM events WHERE app = {a:String}),"
            " (SELECT count() FROM scores FINAL WHERE app = {a:String}),"
            " (SELECT count() FROM embeddings FINAL WHERE app = {a:String}),"
            " (SELECT count() FROM trace_spans FINAL WHERE app = {a:String})",
            parameters={"a": app},
        ).result_rows[0]
        return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4])

    latest = [(0, 0, 0, 0, 0)]

    def caught_up() -> bool:
        # a batch writes events, scores, embeddings and trace_spans in this order: the last
        # batch is in when its spans are
        try:
            latest[0] = counts()
        except Exception:  # the warehouse may be coming back
            return False
        return latest[0][2] >= total and latest[0][3] >= embedded and latest[0][4] >= total

    if not waited(f"{total} events stored and scored", caught_up):
        failures.append(f"(events FINAL, distinct, scores, embeddings, spans) = {latest[0]}")
        return failures
    final, distinct, scored, vectors, spans = counts()
    if (final, distinct, scored, vectors, spans) != (total, total, total, embedded, total):
        failures.append(
            f"events FINAL {final}, distinct {distinct}, scores {scored}, embeddings {vectors}, "
            f"spans {spans}; expected {total}, {total}, {total}, {embedded}, {total}"
        )
    traces = warehouse.query(
        "SELECT count(), sum(span_count) FROM traces WHERE app = {a:String}",
        parameters={"a": app},
    ).result_rows[0]
    if (int(traces[0]), int(traces[1])) != (config.traces, total):
        failures.append(f"traces {traces[0]} with {traces[1]} spans; expected {config.traces}")

    # Drift: the monitor fed the repartitioned records, each origin once, in log order.
    from undertow.streams.drift import DriftMonitor, MonitorConfig
    from undertow.streams.records import origin

    repartition = f"{env['drift']['UNDERTOW_WORKER_GROUP_ID']}-segments-repartition"
    codec = AvroCodec()
    baselines = BaselineStore(warehouse).snapshot()[1]

    def repartitioned() -> tuple[list[Any], list[dict[str, Any]]]:
        """The repartition topic as it is now, and its records each origin once, in log
        order (an event forwarded after a later one of its origin partition counts where it
        comes)."""
        end = _retry("end offsets", lambda: end_offsets(bootstrap, repartition))
        forwarded = _retry("reading", lambda: read_range(bootstrap, repartition, {}, end))
        seen: set[tuple[bytes | None, str, int]] = set()
        fresh = []
        for rec in sorted(forwarded, key=lambda r: (r.partition, r.offset)):
            where = origin(rec.headers)
            assert where is not None, f"a repartitioned record without origin: {rec}"
            ident = (rec.key, f"{where[0]}:{where[1]}", where[2])
            if ident not in seen:
                seen.add(ident)
                fresh.append(codec.decode(rec.value, "scored_event").record)
        return forwarded, fresh

    seen_last: list[tuple[list[Any], list[dict[str, Any]]]] = [([], [])]

    def all_forwarded() -> bool:
        seen_last[0] = repartitioned()
        return len(seen_last[0][1]) >= total

    # The drift role forwards at its own pace (it may still be catching up on the broker's
    # outage when the warehouse has every row): wait for it, with the run's deadline.
    waited(f"{total} records repartitioned", all_forwarded)

    def expected_drift() -> list[dict[str, Any]]:
        forwarded, fresh = seen_last[0]
        report.reordered, late = overtaken(forwarded, by_key=True)
        if len(fresh) != total:
            failures.append(f"{len(fresh)} distinct records repartitioned, expected {total}")
            failures.append(f"repartition topic: {report.reordered} late: {late}")
            end = _retry("end offsets", lambda: end_offsets(bootstrap, topics["scored"]))
            scored = _retry("reading", lambda: read_range(bootstrap, topics["scored"], {}, end))
            count, late = overtaken(scored, by_key=False)
            failures.append(f"scored topic: {count} late: {late}")
        return DriftMonitor(baselines, MonitorConfig(window=WINDOW)).update_many(fresh)

    expected = expected_drift()
    want = sorted((str(d["event_id"]), bool(d["detected"])) for d in expected)
    report.drift_events = len(want)
    report.detections = sum(d for _, d in want)

    def drift_rows() -> list[tuple[str, bool]]:
        return sorted(
            (str(r[0]), bool(r[1]))
            for r in warehouse.query(
                "SELECT event_id, detected FROM drift FINAL WHERE app = {a:String} "
                "AND detector != 'window_mean'",
                parameters={"a": app},
            ).result_rows
        )

    waited(f"{len(want)} drift events", lambda: len(drift_rows()) >= len(want))
    got = drift_rows()
    if got != want:
        missing, extra = set(want) - set(got), set(got) - set(want)
        worker = warehouse.query(
            "SELECT stream, detected, attributes FROM drift FINAL WHERE app = {a:String} "
            "AND detector != 'window_mean' AND toString(event_id) IN {ids:Array(String)}",
            parameters={"a": app, "ids": [i for i, _ in extra]},
        ).result_rows
        reference = [
            (d["stream"], d["detected"], d["attributes"])
            for d in expected
            if (str(d["event_id"]), bool(d["detected"])) in missing
        ]
        failures.append(
            f"drift events differ: {len(missing)} missing {reference}, {len(extra)} extra {worker}"
        )
    if not report.detections:
        failures.append("the reference made no detection: the drift check is void")
        return failures
    end = _retry("end offsets", lambda: end_offsets(bootstrap, topics["drift"]))
    on_topic = {
        str(codec.decode(r.value).record["event_id"])
        for r in _retry("reading", lambda: read_range(bootstrap, topics["drift"], {}, end))
    }
    if on_topic != {w[0] for w in want}:
        failures.append(f"{len(on_topic)} drift events on the topic, expected {len(want)}")

    # Alerts: every transition of an incident under one id, in the table and on the topic.
    rules: set[str] = set()

    def alert_ids() -> dict[tuple[str, str, str], set[str]]:
        end = _retry("end offsets", lambda: end_offsets(bootstrap, topics["alerts"]))
        ids: dict[tuple[str, str, str], set[str]] = {}
        for r in _retry("reading", lambda: read_range(bootstrap, topics["alerts"], {}, end)):
            a = codec.decode(r.value).record
            rules.add(str(a["rule"]))
            key = (str(a["dedup_key"]), str(a["status"]), str(a["severity"]))
            ids.setdefault(key, set()).add(str(a["event_id"]))
        return ids

    waited("a drift alert", lambda: bool(alert_ids()) and "drift_detected" in rules)
    published = alert_ids()
    report.alerts = sum(len(v) for v in published.values())
    twice = {k: v for k, v in published.items() if len(v) > 1}
    if twice:
        failures.append(f"alert transitions published under two ids: {twice}")
    stored = warehouse.query(
        "SELECT dedup_key, status, severity, uniqExact(event_id) AS ids FROM alerts FINAL "
        "WHERE app = {a:String} GROUP BY dedup_key, status, severity HAVING ids > 1",
        parameters={"a": app},
    ).result_rows
    if stored:
        failures.append(f"alert transitions stored under two ids: {stored}")
    # Policy: nothing left out as late but second copies. A scored event is published twice
    # when an ingest worker dies between publishing and committing; the copy comes after
    # later events of its partition and may fall behind the watermark, which is right.
    # Checked last: a batch the policy has not reached yet is not counted (never a false
    # failure; the drift alert waited for above comes after most of the traffic).
    late = policy_late(fleet)
    end = _retry("end offsets", lambda: end_offsets(bootstrap, topics["scored"]))
    scored_ids = [
        str(codec.decode(r.value).record["event_id"])
        for r in _retry("reading", lambda: read_range(bootstrap, topics["scored"], {}, end))
    ]
    copies = len(scored_ids) - len(set(scored_ids))
    report.late = late
    if late > copies:
        failures.append(
            f"the policy left {late} events out as late, more than the {copies} second copies "
            "on the scored topic"
        )
    failures += fleet.unexpected_exits()
    for role in ROLES:
        if not fleet.running(role):
            failures.append(f"no {role} worker running at the end")
    return failures
