"""Baselines in the real warehouse: the store (save, current, revision, list, get, activate),
the scored rows a baseline is built from, and ``undertow baseline`` end to end.

Traffic is written by the worker's own sink (:class:`EventSink`) into a database of this
module; each test reads its own apps and time window, so the tests do not see each other's
rows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from clickhouse_connect.driver.client import Client
from rich.console import Console
from typer.testing import CliRunner, Result

from undertow.cli import baseline as baseline_cli
from undertow.cli.baseline import baseline_app
from undertow.infra.stack import LocalStack, StackInfo
from undertow.schemas.events import event
from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.baselines import BaselineNotFoundError, BaselineStore
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.history import DEFAULT_LIMIT, rows_to_file, scored_rows
from undertow.streams.drift import BaselineConfig, DriftError, DriftMonitor, build_baseline
from undertow.streams.drift.baseline import Baseline, build_baselines
from undertow.streams.drift.calibration import DEFAULT_EVENTS, DEFAULT_TARGET_RATE
from undertow.streams.drift.segment import segment_key, segment_of
from undertow.streams.scoring.scored import Scored, scored_record
from undertow.streams.sinks.warehouse import EventSink, SinkItem

pytestmark = pytest.mark.integration

DIM = 16
SMALL = BaselineConfig(topics=4, reference_size=64)
HISTORY_T0 = datetime(2025, 2, 1, tzinfo=UTC)
CLI_T0 = datetime(2025, 3, 1, tzinfo=UTC)  # one day per CLI test
SYSTEM = "You are a helpful assistant."


# --- fixtures and traffic -------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(stack: StackInfo, database: str) -> Client:
    return connect(stack.clickhouse_url, database=database)


@pytest.fixture()
def store(client: Client) -> BaselineStore:
    return BaselineStore(client)


def unit_vectors(seed: int, n: int) -> npt.NDArray[np.float32]:
    """``n`` unit vectors around four fixed topic centres."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(4, DIM))
    x = centres[rng.integers(0, 4, n)] + 0.4 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def traffic(
    app: str,
    start: datetime,
    turns: int,
    *,
    seed: int,
    model: str | None = "tiny",
    prompt_version: str | None = "v1",
    environment: str = "production",
    extras: bool = False,
) -> list[tuple[dict[str, Any], Scored]]:
    """``turns`` prompt + completion pairs, one second apart, scored as the enricher would;
    with ``extras`` each turn also has a retrieval and a feedback event."""
    vectors = unit_vectors(seed, 3 * turns)
    out: list[tuple[dict[str, Any], Scored]] = []
    for i in range(turns):
        when = start + timedelta(seconds=i)
        trace = f"{seed:08x}{i:024x}"
        common: dict[str, Any] = {"app": app, "environment": environment, "trace_id": trace}
        segment = {"model": model, "prompt_version": prompt_version}
        if extras:
            body = {"query": f"lookup {i}", "documents": [], "store": "kb"}
            query = event("retrieval", body, event_time=when, **common)
            out.append((query, scored({"query": vectors[3 * i + 2]}, retrieval_documents=0.0)))
        prompt = event(
            "prompt",
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"question {i} of {app}"},
                ],
                **segment,
            },
            event_time=when + timedelta(milliseconds=1),
            **common,
        )
        out.append((prompt, scored({"prompt": vectors[3 * i]}, toxicity=0.01 * (i % 7))))
        completion = event(
            "completion",
            {"text": f"answer {i} of {app}", "latency_ms": 100.0 + i, **segment},
            event_time=when + timedelta(milliseconds=2),
            **common,
        )
        out.append(
            (
                completion,
                scored(
                    {"completion": vectors[3 * i + 1]},
                    toxicity=0.02,
                    input_tokens=20 + i % 5,
                    output_tokens=30 + i % 3,
                    cost_usd=1e-5 * (1 + i % 4),
                ),
            )
        )
        if extras:
            later = when + timedelta(milliseconds=3)
            feedback = event("feedback", {"score": 1.0}, event_time=later, **common)
            out.append((feedback, scored({})))
    return out


def scored(
    embeddings: dict[str, npt.NDArray[np.float32]],
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cost_usd: float | None = None,
    **scores: float,
) -> Scored:
    return Scored(
        scores=scores,
        scorer_versions={name: "test" for name in scores},
        embeddings=embeddings,
        embedding_model="mini-test" if embeddings else None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd,
        price_table_version="p1" if cost_usd is not None else None,
    )


def write(client: Client, pairs: list[tuple[dict[str, Any], Scored]]) -> None:
    """Store the pairs as the worker does: events, scores and embeddings through the sink."""
    items = [SinkItem(r, "undertow.events.v1", 0, i, s) for i, (r, s) in enumerate(pairs)]
    sink = EventSink(lambda: client)
    try:
        result = asyncio.run(sink.write(items))
    finally:
        sink.close()
    assert not result.rejected


def baseline_of(app: str, seed: int) -> Baseline:
    """A small uncalibrated baseline of segment ``app``/tiny/v1 (seeds give versions)."""
    return build_baseline(
        {"app": app, "model": "tiny", "prompt_version": "v1"},
        embeddings={"prompt": unit_vectors(seed, 200)},
        config=SMALL,
        calibration=None,
    )


# --- the store ------------------------------------------------------------------------------


def test_save_activates_and_every_store_sees_it(
    store: BaselineStore, stack: StackInfo, database: str
) -> None:
    before = store.revision()
    baseline = baseline_of("store-save", 1)
    info = store.save(baseline, source={"file": "test"})
    assert info.active and info.activated_at is not None
    assert (info.segment, info.version) == (baseline.segment_key, baseline.version)
    assert info.rows == 200 and info.events == {"prompt": 200}
    assert info.source == {"file": "test"}
    assert info.segment_fields == {"app": "store-save", "model": "tiny", "prompt_version": "v1"}
    assert store.revision() != before

    other = BaselineStore(connect(stack.clickhouse_url, database=database))  # another worker
    loaded = other.current()[baseline.segment_key]
    assert loaded.dumps() == baseline.dumps()
    assert other.get(baseline.segment_key).version == baseline.version


def test_saving_again_changes_nothing(store: BaselineStore, client: Client) -> None:
    baseline = baseline_of("store-idempotent", 2)
    first = store.save(baseline)
    revision = store.revision()
    again = store.save(baseline)
    assert again == first
    assert store.revision() == revision
    assert [i.version for i in store.list(baseline.segment_key)] == [baseline.version]
    stored = client.query(
        "SELECT count() FROM baselines FINAL WHERE segment = {s:String}",
        parameters={"s": baseline.segment_key},
    ).result_rows
    assert stored == [(1,)]


def test_activating_an_older_version_changes_current_and_revision(
    store: BaselineStore, client: Client
) -> None:
    old, new = baseline_of("store-activate", 3), baseline_of("store-activate", 4)
    assert old.segment_key == new.segment_key and old.version != new.version
    key = old.segment_key
    worker = BaselineStore(client)  # a drift worker elsewhere, polling
    store.save(old)
    with_old, current = worker.snapshot()
    assert current[key].version == old.version
    store.save(new)
    with_new = worker.revision()
    assert with_new != with_old
    assert worker.current()[key].version == new.version
    assert [(i.version, i.active) for i in store.list(key)] == [
        (old.version, False),
        (new.version, True),
    ]

    info = store.activate(key, old.version)
    assert info.active
    assert worker.revision() == with_old  # the token names the active versions
    revision, current = worker.snapshot()
    assert revision == with_old and current[key].version == old.version
    assert store.get(key).version == old.version
    assert store.get(key, new.version).version == new.version
    assert store.activate(key, old.version) == info  # already active: nothing written


def test_a_version_saved_inactive_is_stored_but_not_current(store: BaselineStore) -> None:
    active, spare = baseline_of("store-inactive", 5), baseline_of("store-inactive", 6)
    key = active.segment_key
    store.save(active)
    info = store.save(spare, activate=False)
    assert not info.active and info.activated_at is None
    assert store.current()[key].version == active.version
    lonely = baseline_of("store-inactive-only", 7)
    store.save(lonely, activate=False)
    assert lonely.segment_key not in store.current()
    with pytest.raises(BaselineNotFoundError, match="no active baseline; stored versions: "):
        store.get(lonely.segment_key)
    assert store.get(lonely.segment_key, lonely.version).version == lonely.version


def test_unknown_segments_and_versions_are_named(store: BaselineStore) -> None:
    known = baseline_of("store-unknown", 8)
    store.save(known)
    with pytest.raises(BaselineNotFoundError, match=r"no baseline for segment 'app=nope/"):
        store.get("app=nope/model=/prompt=")
    with pytest.raises(BaselineNotFoundError, match=f"version 'ffff'; stored: {known.version}"):
        store.get(known.segment_key, "ffff")
    with pytest.raises(BaselineNotFoundError, match="no baseline version 'ffff'"):
        store.activate(known.segment_key, "ffff")
    assert isinstance(BaselineNotFoundError("x"), DriftError)


def test_a_database_without_the_table_says_how_to_fix_it(
    local_stack: LocalStack, stack: StackInfo
) -> None:
    name = f"undertow_bare_{uuid.uuid4().hex[:8]}"
    admin = local_stack.admin_client(stack.clickhouse_url)
    admin.command(f"CREATE DATABASE {name}")
    try:
        bare = BaselineStore(connect(stack.clickhouse_url, database=name))
        with pytest.raises(WarehouseError, match="undertow migrate"):
            bare.revision()
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")


# --- the rows a baseline is built from ------------------------------------------------------


@pytest.fixture(scope="module")
def history(client: Client) -> list[tuple[dict[str, Any], Scored]]:
    """Two segments (one without model or prompt version), a staging app, and one turn
    outside the period on each side."""
    pairs = traffic("hist-chat", HISTORY_T0, 30, seed=10, extras=True)
    pairs += traffic("hist-bare", HISTORY_T0, 25, seed=11, model=None, prompt_version=None)
    pairs += traffic("hist-chat", HISTORY_T0, 5, seed=12, environment="staging")
    pairs += traffic("hist-chat", HISTORY_T0 - timedelta(seconds=1), 1, seed=13)
    pairs += traffic("hist-chat", HISTORY_T0 + timedelta(hours=1), 1, seed=14)
    write(client, pairs)
    return pairs


def period(client: Client, **kwargs: Any) -> list[dict[str, Any]]:
    kwargs.setdefault("apps", ("hist-chat", "hist-bare"))
    return scored_rows(client, since=HISTORY_T0, until=HISTORY_T0 + timedelta(hours=1), **kwargs)


def test_scored_rows_are_the_live_scored_records(
    client: Client, history: list[tuple[dict[str, Any], Scored]]
) -> None:
    rows = period(client)
    inside = [
        (r, s)
        for r, s in history
        if HISTORY_T0 <= r["event_time"] < HISTORY_T0 + timedelta(hours=1)
    ]
    assert len(rows) == len(inside) == 30 * 4 + 25 * 2 + 5 * 2
    live = {str(r["event_id"]): scored_record(r, s) for r, s in inside}
    for row in rows:
        record = live[row["event_id"]]
        assert row == {name: record[name] for name in row}, row["event_type"]
    kinds = {row["event_type"] for row in rows}
    assert kinds == {"prompt", "completion", "retrieval", "feedback"}
    assert all(r["embedding"] is None for r in rows if r["event_type"] == "feedback")
    assert [r["event_time"] for r in rows] == sorted(r["event_time"] for r in rows)


def test_a_baseline_from_history_has_the_segment_key_of_live_traffic(
    client: Client, history: list[tuple[dict[str, Any], Scored]]
) -> None:
    rows = period(client, environment="production")
    baselines = build_baselines(rows, config=SMALL, calibration=None)
    live = [scored_record(r, s) for r, s in history if r["environment"] == "production"]
    live_keys = {segment_key(segment_of(e)) for e in live}
    assert set(baselines) == live_keys
    assert "app=hist-bare/model=/prompt=" in baselines
    assert baselines["app=hist-chat/model=tiny/prompt=v1"].embedding_model == "mini-test"

    monitor = DriftMonitor(baselines)
    monitor.update_many(live)
    assert monitor.unbaselined == {}
    assert set(monitor.segments) == live_keys


def test_scored_rows_filter_sample_and_carry_the_embedded_text(
    client: Client, history: list[tuple[dict[str, Any], Scored]]
) -> None:
    staging = period(client, environment="staging")
    assert len(staging) == 10 and {r["environment"] for r in staging} == {"staging"}
    bare = period(client, apps=("hist-bare",))
    assert len(bare) == 50 and {r["model"] for r in bare} == {None}

    sample = period(client, limit=7)
    assert len(sample) == 7 and sample == period(client, limit=7)
    everything = {r["event_id"] for r in period(client)}
    assert {r["event_id"] for r in sample} <= everything

    with_text = period(client, apps=("hist-chat",), environment="production", with_text=True)
    turn = f"{10:08x}{3:024x}"  # the trace of turn 3 of seed 10
    texts = {r["event_type"]: r["text"] for r in with_text if r["trace_id"] == turn}
    assert texts == {
        "retrieval": "lookup 3",
        "prompt": "question 3 of hist-chat",  # the turn's new input, as embedded: no system
        "completion": "answer 3 of hist-chat",
        "feedback": "",
    }
    assert "text" not in period(client, limit=1)[0]
    with pytest.raises(DriftError, match="timezone-aware"):
        scored_rows(client, since=datetime(2025, 1, 1), until=datetime(2025, 1, 2, tzinfo=UTC))


# --- the command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_traffic(client: Client) -> None:
    """A day of traffic per test: cli-a; cli-b with the too small cli-small; cli-c."""
    write(client, traffic("cli-a", CLI_T0, 40, seed=20))
    write(client, traffic("cli-b", CLI_T0 + timedelta(days=1), 40, seed=21))
    write(client, traffic("cli-small", CLI_T0 + timedelta(days=1), 4, seed=22))
    write(client, traffic("cli-c", CLI_T0 + timedelta(days=2), 40, seed=23))


@pytest.fixture()
def cli(stack: StackInfo, database: str, cli_traffic: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs ``undertow baseline ...`` against this module's database; wide output."""
    monkeypatch.setattr(baseline_cli, "console", Console(width=250))
    where = ["--clickhouse-url", stack.clickhouse_url, "--database", database]

    def run(*args: str) -> Result:
        return CliRunner().invoke(baseline_app, [*args, *where])

    return run


def test_the_command_line_defaults_are_the_librarys() -> None:
    written = (baseline_cli.CALIBRATION_EVENTS, baseline_cli.TARGET_RATE, baseline_cli.ROW_LIMIT)
    assert written == (DEFAULT_EVENTS, DEFAULT_TARGET_RATE, DEFAULT_LIMIT)


def day(n: int) -> tuple[str, ...]:
    """``--since``/``--until`` of the ``n``-th day of CLI traffic."""
    start = CLI_T0 + timedelta(days=n)
    return ("--since", start.isoformat(), "--until", (start + timedelta(days=1)).isoformat())


def test_cli_builds_from_a_period(cli: Any, store: BaselineStore, tmp_path: Path) -> None:
    key = "app=cli-a/model=tiny/prompt=v1"
    result = cli("build", *day(0), "--app", "cli-a", "--no-calibration")
    assert result.exit_code == 0, result.output
    (info,) = store.list(key)
    assert info.active and info.rows == 80 and info.events["prompt"] == 40
    assert info.source["since"] == "2025-03-01T00:00:00+00:00" and info.source["apps"] == "cli-a"
    assert info.version in result.output and "completion 40, prompt 40" in result.output
    assert not any(t.examples for t in store.get(key).embeddings["prompt"].topics)  # no text

    again = cli("build", *day(0), "--app", "cli-a", "--no-calibration")
    assert again.exit_code == 0, again.output
    assert [i.version for i in store.list(key)] == [info.version]  # same rows, same version

    fast = ("--calibration-events", "20000", "--target-rate", "1e-3")
    calibrated = cli("build", *day(0), "--app", "cli-a", *fast, "--output", str(tmp_path))
    assert calibrated.exit_code == 0, calibrated.output
    active = store.get(key)
    assert active.version != info.version
    assert active.calibration and {c.events for c in active.calibration.values()} == {20000}
    (written,) = tmp_path.glob("*.json")
    assert Baseline.load(written).version == active.version


def test_cli_build_fails_clearly(cli: Any, store: BaselineStore) -> None:
    quiet = ("--since", "2025-02-20T00:00:00", "--until", "2025-02-21")  # no traffic
    empty = cli("build", *quiet, "--app", "cli-b", "--no-calibration")
    assert empty.exit_code == 1
    assert isinstance(empty.exception, DriftError)
    message = str(empty.exception)
    assert "no scored events in" in message and "2025-02-20T00:00:00+00:00" in message

    small = cli("build", *day(1), "--no-calibration")
    assert small.exit_code == 1
    assert "'app=cli-small/model=tiny/prompt=v1' (8)" in str(small.exception)
    assert "--skip-small" in str(small.exception)
    assert store.list("app=cli-b/model=tiny/prompt=v1") == []  # nothing stored

    skipped = cli("build", *day(1), "--no-calibration", "--skip-small")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped app=cli-small/model=tiny/prompt=v1: 8 rows" in skipped.output
    assert store.list("app=cli-small/model=tiny/prompt=v1") == []
    assert store.info("app=cli-b/model=tiny/prompt=v1").rows == 80

    both = cli("build", *day(1), "--file", __file__)
    assert both.exit_code == 2 and "either --since" in both.output

    rate = cli("build", *day(1), "--target-rate", "0")
    assert rate.exit_code == 2 and "between 0 and 1" in rate.output


def test_cli_builds_from_a_file_then_activates_exports_and_imports(
    cli: Any, client: Client, store: BaselineStore, tmp_path: Path
) -> None:
    key = "app=cli-c/model=tiny/prompt=v1"
    assert cli("build", *day(2), "--no-calibration").exit_code == 0
    start = CLI_T0 + timedelta(days=2)
    rows = scored_rows(client, since=start, until=start + timedelta(days=1), with_text=True)
    source = rows_to_file(rows, tmp_path / "rows.jsonl")
    other = cli("build", "--file", str(source), "--app", "cli-a", "--no-calibration")
    assert other.exit_code == 1 and "(app cli-a)" in str(other.exception)  # the file is cli-c
    built = cli("build", "--file", str(source), "--with-text", "--no-activate", "--no-calibration")
    assert built.exit_code == 0, built.output
    from_file = next(i for i in store.list(key) if i.source.get("file") == str(source))
    assert not from_file.active and from_file.rows == 80
    topics = store.get(key, from_file.version).embeddings["prompt"].topics
    assert all(t.examples and t.examples[0].startswith("question ") for t in topics)

    listed = cli("list", "--segment", key)
    assert listed.exit_code == 0, listed.output
    assert from_file.version in listed.output and "2 versions, 1 active" in listed.output

    activated = cli("activate", key, from_file.version)
    assert activated.exit_code == 0, activated.output
    assert store.get(key).version == from_file.version
    assert "(was " in activated.output

    shown = cli("show", key)
    assert shown.exit_code == 0, shown.output
    assert f"{from_file.version} (active)" in shown.output and "Embeddings" in shown.output

    exported = cli("export", key, "-o", str(tmp_path / "active.json"))
    assert exported.exit_code == 0, exported.output
    assert Baseline.load(tmp_path / "active.json").dumps() == store.get(key).dumps()

    outside = baseline_of("cli-imported", 30)
    outside.save(tmp_path / "outside.json")
    imported = cli("import", str(tmp_path / "outside.json"))
    assert imported.exit_code == 0, imported.output
    assert not store.info(outside.segment_key, outside.version).active
    imported = cli("import", str(tmp_path / "outside.json"), "--activate")
    assert imported.exit_code == 0, imported.output
    assert store.info(outside.segment_key).version == outside.version
    round_trip = cli("export", outside.segment_key, "-o", str(tmp_path / "back.json"))
    assert round_trip.exit_code == 0, round_trip.output
    assert (tmp_path / "back.json").read_text() == (tmp_path / "outside.json").read_text()

    unknown = cli("show", "app=nope/model=/prompt=")
    assert unknown.exit_code == 1 and isinstance(unknown.exception, BaselineNotFoundError)
