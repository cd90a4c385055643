"""The main job on the local stack: publish sample traffic, read it back from Kafka and
ClickHouse, and show what arrived.

For now the path into the warehouse is a direct load of the consumed records (the Faust
sink replaces it with scored, batched, exactly-once writes). Every run tags its events with a
run id, so counts are exact even when earlier runs left data behind.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from undertow.infra.stack import LocalStack, StackInfo
from undertow.schemas import topics
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event_type
from undertow.services.bus import end_offsets, publish, read_range
from undertow.services.traffic import sample_traces
from undertow.services.warehouse.rows import insert_events
from undertow.settings import StackSettings


@dataclass
class DemoReport:
    """What one demo run sent and found, for the console and for tests."""

    run_id: str
    sent: int
    sent_by_type: dict[str, int]
    read_from_kafka: int
    stored: int
    stored_by_type: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    stack: StackInfo | None = None

    @property
    def complete(self) -> bool:
        return self.sent == self.read_from_kafka == self.stored


def run_demo(
    settings: StackSettings, traces: int = 100, seed: int = 7, console: Console | None = None
) -> DemoReport:
    """Start (or find) the stack and push ``traces`` sample traces through it."""
    out = console or Console()
    stack = LocalStack(settings)
    seconds: dict[str, float] = {}

    began = time.monotonic()
    with out.status("Starting the local stack (Kafka broker, ClickHouse engine)..."):
        info = stack.up()
    seconds["stack_up"] = time.monotonic() - began
    out.print(stack_table(info))

    run_id = uuid.uuid4().hex[:12]
    codec = AvroCodec.for_registry(settings.schema_registry_url)
    records = list(
        sample_traces(traces, seed=seed, app="support-bot", attributes={"demo_run": run_id})
    )
    sent_by_type = Counter(event_type(r) for r in records)
    payloads = [(r["trace_id"].encode(), codec.encode("event", r)) for r in records]

    began = time.monotonic()
    start = end_offsets(info.bootstrap_servers, topics.EVENTS)
    publish(info.bootstrap_servers, topics.EVENTS, payloads)
    seconds["publish"] = time.monotonic() - began
    out.print(
        f"[bold]Published[/] {len(payloads)} events ({_counts(sent_by_type)}) "
        f"to [cyan]{topics.EVENTS}[/] in {seconds['publish']:.2f} s"
    )

    began = time.monotonic()
    end = end_offsets(info.bootstrap_servers, topics.EVENTS)
    consumed = read_range(info.bootstrap_servers, topics.EVENTS, start, end)
    decoded = [(m, codec.decode(m.value, "event").record) for m in consumed]
    ours = [(m, r) for m, r in decoded if r["attributes"].get("demo_run") == run_id]
    seconds["consume"] = time.monotonic() - began
    out.print(
        f"[bold]Read back[/] {len(ours)} events from Kafka "
        f"({len({m.partition for m, _ in ours})} partitions) in {seconds['consume']:.2f} s"
    )

    began = time.monotonic()
    client = stack.client(info.clickhouse_url)
    insert_events(client, [(r, m.topic, m.partition, m.offset) for m, r in ours])
    result = client.query(
        "SELECT event_type, count() AS events, uniqExact(trace_id) AS traces "
        "FROM events FINAL WHERE attributes['demo_run'] = {run:String} "
        "GROUP BY event_type ORDER BY event_type",
        parameters={"run": run_id},
    )
    stored_by_type = {row[0]: int(row[1]) for row in result.result_rows}
    seconds["store"] = time.monotonic() - began

    report = DemoReport(
        run_id=run_id,
        sent=len(records),
        sent_by_type=dict(sent_by_type),
        read_from_kafka=len(ours),
        stored=sum(stored_by_type.values()),
        stored_by_type=stored_by_type,
        seconds=seconds,
        stack=info,
    )
    out.print(arrival_table(report))
    verdict = "all arrived" if report.complete else "EVENTS MISSING"
    out.print(
        f"[bold]Sent {report.sent}, read back {report.read_from_kafka} from Kafka, "
        f"stored {report.stored} in ClickHouse: {verdict}[/]"
    )
    out.print(_sample_trace(client, run_id))
    _next_steps(out, info, run_id)
    return report


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


def arrival_table(report: DemoReport) -> Table:
    """Sent, read from Kafka and stored in ClickHouse, by event type."""
    table = Table(title=f"What arrived (run {report.run_id})")
    table.add_column("event type")
    table.add_column("sent", justify="right")
    table.add_column("in ClickHouse", justify="right")
    for kind in sorted(set(report.sent_by_type) | set(report.stored_by_type)):
        table.add_row(
            kind, str(report.sent_by_type.get(kind, 0)), str(report.stored_by_type.get(kind, 0))
        )
    verdict = "[green]all arrived[/]" if report.complete else "[red]MISSING EVENTS[/]"
    table.add_row(
        f"[bold]total[/] ({verdict})",
        str(report.sent),
        str(report.stored),
        end_section=True,
    )
    return table


def _sample_trace(client: Any, run_id: str) -> Table:
    rows = client.query(
        "SELECT event_time, event_type, span_id, parent_span_id, "
        "multiIf(event_type = 'completion', concat(model, ', ', toString(output_tokens), "
        "' tokens, ', toString(round(latency_ms)), ' ms'), "
        "event_type = 'retrieval', concat(retrieval_store, ', ', "
        "toString(length(retrieval_documents)), ' documents'), "
        "event_type = 'feedback', concat('score ', toString(feedback_score)), "
        "tupleElement(prompt_messages[-1], 'content')) AS summary "
        "FROM events FINAL WHERE trace_id = (SELECT any(trace_id) FROM events "
        "WHERE attributes['demo_run'] = {run:String} AND event_type = 'feedback') "
        "ORDER BY event_time",
        parameters={"run": run_id},
    ).result_rows
    table = Table(title="One trace, as ClickHouse has it")
    for col in ("time", "type", "span", "parent"):
        table.add_column(col, no_wrap=True)
    table.add_column("summary", overflow="fold", min_width=30)
    for time_, kind, span, parent, summary in rows:
        table.add_row(time_.strftime("%H:%M:%S.%f")[:-3], kind, span, parent or "", summary)
    return table


def _next_steps(out: Console, info: StackInfo, run_id: str) -> None:
    host_port = info.clickhouse_url.split("://", 1)[-1]
    out.print("\n[bold]Try it yourself[/] (the stack keeps running; stop it: undertow infra down)")
    out.print(
        f"  undertow sql \"SELECT event_type, count() FROM events WHERE attributes['demo_run'] = "
        f"'{run_id}' GROUP BY event_type\""
    )
    out.print(f"  curl 'http://{host_port}/?query=SELECT+count()+FROM+undertow.events'")
    out.print(f"  kcat -b {info.bootstrap_servers} -L")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counter.items()))
