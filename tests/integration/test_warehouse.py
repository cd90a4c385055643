"""The local warehouse against real clients: clickhouse-connect (compressed and plain), raw HTTP
as curl sends it, and curl itself; plus the migrations and the process lifecycle."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from undertow.infra.warehouse import LocalWarehouse, WarehouseInfo
from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.migrations import Migration, apply_migrations, load_migrations

pytestmark = pytest.mark.integration

DB = "undertow"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarehouseInfo]:
    local = LocalWarehouse(tmp_path_factory.mktemp("warehouse-state"))
    try:
        yield local.start(timeout=120)
    finally:
        local.stop()


@pytest.fixture(scope="module")
def first_migration_run(warehouse: WarehouseInfo) -> list[Migration]:
    return apply_migrations(connect(warehouse.url, database=None), DB)


@pytest.fixture(scope="module", params=[True, False], ids=["compressed", "plain"])
def client(warehouse: WarehouseInfo, request: pytest.FixtureRequest) -> Client:
    """clickhouse-connect with its defaults (compression on), and with compression off."""
    kwargs: dict[str, Any] = {} if request.param else {"compress": False}
    return connect(warehouse.url, database=None, **kwargs)


@pytest.fixture()
def table(client: Client) -> Iterator[str]:
    name = f"default.t_{uuid.uuid4().hex[:12]}"
    yield name
    client.command(f"DROP TABLE IF EXISTS {name}")


def http(
    url: str,
    path: str = "/",
    *,
    params: dict[str, str] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request as curl makes it: (status, lower-cased headers, body); errors answer too."""
    full = url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(full, data=data, headers=headers or {})
    try:
        with DIRECT.open(request, timeout=30) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, _lower(exc.headers.items()), exc.read()


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


# --- clickhouse-connect ------------------------------------------------------------------------


def test_handshake_and_version(client: Client) -> None:
    version = client.query("SELECT version()").result_rows[0][0]
    assert version == client.server_version
    assert int(version.split(".")[0]) >= 24


def test_insert_round_trip_of_many_types(client: Client, table: str) -> None:
    client.command(
        f"CREATE TABLE {table} (id UUID, ts DateTime64(6, 'UTC'), attrs Map(String, String),"
        " vec Array(Float32), n Nullable(UInt32), kind LowCardinality(String), text String,"
        " score Float64) ENGINE = MergeTree ORDER BY id"
    )
    base = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    rows: list[list[Any]] = [
        [
            uuid.uuid4(),
            base + timedelta(microseconds=i),
            {"k": "v", "quote": "it's", "nl": "a\nb"},
            [0.5, -1.25, float(i)],
            None if i % 3 == 0 else i,
            ("prompt", "completion")[i % 2],
            "tab\tnewline\nbackslash\\ and 'quotes' — ünïcode",
            i / 7,
        ]
        for i in range(50)
    ]
    columns = ["id", "ts", "attrs", "vec", "n", "kind", "text", "score"]
    summary = client.insert(table, rows, column_names=columns)
    assert summary.written_rows == len(rows)

    back = client.query(f"SELECT {', '.join(columns)} FROM {table} ORDER BY ts").result_rows
    expected = [tuple([r[0], r[1].replace(tzinfo=None), *r[2:]]) for r in rows]
    assert back == expected


def test_query_df_and_arrow(client: Client, table: str) -> None:
    client.command(f"CREATE TABLE {table} (a UInt8, b String) ENGINE = Memory")
    client.insert(table, [[1, "x"], [2, "y"]], column_names=["a", "b"])
    frame = client.query_df(f"SELECT a, b FROM {table} ORDER BY a")
    assert frame["b"].tolist() == ["x", "y"]
    arrow = client.query_arrow(f"SELECT a FROM {table} ORDER BY a")
    assert arrow.column("a").to_pylist() == [1, 2]


def test_empty_result_keeps_column_names(client: Client) -> None:
    result = client.query("SELECT 1 AS one, 'x' AS two WHERE 0")
    assert result.result_rows == []
    assert result.column_names == ("one", "two")


def test_bound_parameters(client: Client) -> None:
    tricky = "it's a \t tab, a \\ backslash and a\nnewline"
    assert client.query("SELECT {x:String}", parameters={"x": tricky}).result_rows == [(tricky,)]
    when = datetime(2026, 1, 2, 3, 4, 5)
    row = client.query(
        "SELECT {n:UInt32} + 1, {d:DateTime}, {a:Array(String)}",
        parameters={"n": 41, "d": when, "a": ["p'q", "r"]},
    ).result_rows[0]
    assert row == (42, when, ["p'q", "r"])
    # Long values go as a multipart form instead of the URL.
    big = "z" * 50_000
    assert client.query("SELECT length({b:String})", parameters={"b": big}).result_rows == [
        (50_000,)
    ]


def test_settings_apply_per_request(client: Client) -> None:
    one = client.query("SELECT getSetting('max_threads')", settings={"max_threads": 3})
    assert one.result_rows == [(3,)]
    again = client.query("SELECT getSetting('max_threads')").result_rows[0][0]
    assert again != 3  # back to the default: settings do not leak between requests


def test_errors_come_back_with_their_code(client: Client) -> None:
    with pytest.raises(DatabaseError) as unknown:
        client.query("SELECT * FROM default.no_such_table")
    assert unknown.value.code == 60
    assert "UNKNOWN_TABLE" in str(unknown.value)
    with pytest.raises(DatabaseError) as syntax:
        client.command("SELEKT 1")
    assert syntax.value.code == 62
    assert client.command("SELECT 1") == 1  # still serving


def test_connect_rejects_a_bad_url_and_a_missing_database(warehouse: WarehouseInfo) -> None:
    with pytest.raises(WarehouseError, match="expected a ClickHouse URL"):
        connect("localhost:8123")
    with pytest.raises(WarehouseError, match="no_such_db"):
        connect(warehouse.url, database="no_such_db")


# --- migrations and the events table -----------------------------------------------------------


def test_migrations_apply_once(
    warehouse: WarehouseInfo, first_migration_run: list[Migration]
) -> None:
    shipped = load_migrations()
    assert [m.version for m in first_migration_run] == [m.version for m in shipped]
    admin = connect(warehouse.url, database=None)
    tables_before = admin.query(f"SHOW TABLES FROM {DB}").result_rows

    assert apply_migrations(admin, DB) == []

    assert admin.query(f"SHOW TABLES FROM {DB}").result_rows == tables_before
    ledger = admin.query(f"SELECT version, checksum FROM {DB}.schema_migrations ORDER BY version")
    assert ledger.result_rows == [(m.version, m.checksum) for m in shipped]
    names = {row[0] for row in tables_before}
    assert {"events", "scores", "embeddings", "traces", "drift", "alerts", "actions"} <= names
    assert {"registry", "usage_hourly", "usage_by_hour"} <= names


def test_a_changed_applied_migration_is_refused(warehouse: WarehouseInfo) -> None:
    admin = connect(warehouse.url, database=None)
    original = Migration(
        1, "probe", "CREATE TABLE IF NOT EXISTS probe (a UInt8) ENGINE = Memory;", "c1"
    )
    assert apply_migrations(admin, "undertow_probe", [original]) == [original]
    edited = Migration(1, "probe", original.sql, "c2")
    with pytest.raises(WarehouseError, match="001_probe"):
        apply_migrations(admin, "undertow_probe", [edited])
    admin.command("DROP DATABASE undertow_probe")


def _events(trace_id: str, count: int) -> tuple[list[str], list[list[Any]]]:
    start = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    columns = [
        "event_id", "event_type", "trace_id", "span_id", "parent_span_id", "event_time", "app",
        "environment", "attributes", "model", "prompt_messages", "completion_text",
        "input_tokens", "output_tokens", "cached_tokens", "latency_ms", "kafka_topic",
        "kafka_partition", "kafka_offset",
    ]  # fmt: skip
    rows = [
        [
            uuid.uuid4(), "completion" if i % 2 else "prompt", trace_id, f"{i:016x}", None,
            start + timedelta(milliseconds=i), "chat", "dev", {"tenant": "a"}, "smollm2",
            [("user", f"question {i}")] if i % 2 == 0 else [], f"answer {i}" if i % 2 else None,
            12 if i % 2 else None, 30 if i % 2 else None, None, 120.5 if i % 2 else None,
            "undertow.events.v1", 0, i,
        ]
        for i in range(count)
    ]  # fmt: skip
    return columns, rows


def test_events_insert_is_queryable_and_a_retried_block_is_dropped(
    warehouse: WarehouseInfo, first_migration_run: list[Migration], client: Client
) -> None:
    trace_id = uuid.uuid4().hex
    columns, rows = _events(trace_id, 20)
    table = f"{DB}.events"
    count = f"SELECT count() FROM {table} WHERE trace_id = {{t:String}}"

    client.insert(table, rows, column_names=columns)
    assert client.query(count, parameters={"t": trace_id}).result_rows == [(20,)]
    texts = client.query(
        f"SELECT prompt_text FROM {table} WHERE trace_id = {{t:String}} AND event_type = 'prompt'"
        " ORDER BY event_time LIMIT 1",
        parameters={"t": trace_id},
    ).result_rows
    assert texts == [("question 0",)]

    # A sink retrying the same batch after a lost acknowledgement: chdb honours
    # non_replicated_deduplication_window, so the identical block is dropped on insert.
    client.insert(table, rows, column_names=columns)
    assert client.query(count, parameters={"t": trace_id}).result_rows == [(20,)]
    # A redelivery in a different block is only collapsed by FINAL (or a merge).
    client.insert(table, rows[:5], column_names=columns)
    final = f"SELECT count() FROM {table} FINAL WHERE trace_id = {{t:String}}"
    assert client.query(final, parameters={"t": trace_id}).result_rows == [(20,)]


def test_rollups_follow_scores(first_migration_run: list[Migration], client: Client) -> None:
    app = f"app_{uuid.uuid4().hex[:8]}"
    when = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    columns = [
        "event_id", "event_type", "trace_id", "span_id", "event_time", "app", "environment",
        "model", "prompt_version", "scores", "input_tokens", "output_tokens", "cost_usd",
        "latency_ms",
    ]  # fmt: skip
    rows = [
        [uuid.uuid4(), "completion", uuid.uuid4().hex, f"{i:016x}", when, app, "dev", "m", "v1",
         {"toxicity": i / 10}, 10, 5, 0.25, 100.0 * (i + 1)]
        for i in range(4)
    ]  # fmt: skip
    client.insert(f"{DB}.scores", rows, column_names=columns)
    usage = client.query(
        f"SELECT events, output_tokens, cost_usd, latency_ms_avg FROM {DB}.usage_by_hour"
        " WHERE app = {a:String}",
        parameters={"a": app},
    ).result_rows
    assert usage == [(4, 20, 1.0, 250.0)]
    # Traces no longer come from scores (010), nor from a table the worker wrote (014): the
    # traces view adds up trace_spans, which the worker writes for every event.
    assert client.query(
        f"SELECT count() FROM {DB}.traces WHERE app = {{a:String}}", parameters={"a": app}
    ).result_rows == [(0,)]


def _rag_trace(app: str, trace_id: str) -> list[dict[str, Any]]:
    """A prompt, a retrieval, a completion and two ratings, the later one a thumbs-down."""
    from undertow.schemas.events import event

    when = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    common: dict[str, Any] = {"app": app, "trace_id": trace_id, "environment": "dev"}
    messages = [{"role": "user", "content": "hi"}]
    return [
        event("prompt", {"messages": messages, "model": "m", "prompt_name": "qa",
                         "prompt_version": "3"}, event_time=when, **common),
        event("retrieval", {"query": "hi", "documents": [], "store": "kb", "latency_ms": 20.0},
              event_time=when + timedelta(milliseconds=100), **common),
        event("completion", {"model": "m-2026", "prompt_version": "3", "text": "hello",
                             "input_tokens": 100, "output_tokens": 10, "latency_ms": 250.0},
              event_time=when + timedelta(milliseconds=200), **common),
        event("feedback", {"score": 1.0}, event_time=when + timedelta(seconds=1), **common),
        event("feedback", {"score": 0.0}, event_time=when + timedelta(seconds=2), **common),
    ]  # fmt: skip


def test_a_trace_adds_up_its_spans_each_event_once(
    first_migration_run: list[Migration], client: Client
) -> None:
    from undertow.streams.traces import TRACE_SPAN_COLUMNS, span_row

    app = f"app_{uuid.uuid4().hex[:8]}"
    trace_id, open_trace = uuid.uuid4().hex, uuid.uuid4().hex
    prompt, retrieval, completion, liked, disliked = _rag_trace(app, trace_id)
    scored = {  # the scorer's counts win; a prompt's tokens and cost are never summed
        prompt["event_id"]: {"input_tokens": 100, "cost_usd": 1.0, "scores": {"injection": 0.7}},
        completion["event_id"]: {"input_tokens": 120, "output_tokens": 12, "cost_usd": 0.0005,
                                 "scores": {"toxicity": 0.3}},
    }  # fmt: skip
    rows = [span_row(r, scored.get(r["event_id"])) for r in (prompt, retrieval, completion)]
    rows += [span_row(r) for r in (liked, disliked)]
    columns = list(TRACE_SPAN_COLUMNS)
    # Delivered twice (a replay after a crash, in other batches), and a trace still open.
    client.insert(f"{DB}.trace_spans", rows, column_names=columns)
    client.insert(f"{DB}.trace_spans", rows[::-1], column_names=columns)
    client.insert(f"{DB}.trace_spans", [span_row({**prompt, "trace_id": open_trace,
                                                  "event_id": str(uuid.uuid4())})],
                  column_names=columns)  # fmt: skip
    got = client.query(
        f"SELECT trace_id, span_count, prompts, retrievals, completions, feedbacks, latency_ms, "
        f"input_tokens, output_tokens, tokens, cost_usd, unpriced_completions, models, "
        f"prompt_names, prompt_versions, max_toxicity, max_injection, feedback_score, status, "
        f"duration_ms FROM {DB}.traces WHERE app = {{a:String}} ORDER BY span_count DESC",
        parameters={"a": app},
    ).result_rows
    assert got[0][:12] == (trace_id, 5, 1, 1, 1, 2, 270.0, 120, 12, 132, 0.0005, 0)
    assert got[0][12:] == (["m", "m-2026"], ["qa"], ["3"], 0.3, 0.7, 0.0, "complete", 2000.0)
    assert (got[1][0], got[1][1], got[1][-2]) == (open_trace, 1, "open")
    totals = client.query(
        f"SELECT span_count, cost_usd FROM {DB}.trace_totals WHERE trace_id = {{t:String}}",
        parameters={"t": trace_id},
    ).result_rows
    assert totals == [(5, 0.0005)]
    assert client.query(
        f"SELECT spans, model, status FROM {DB}.v_traces WHERE trace_id = {{t:String}}",
        parameters={"t": trace_id},
    ).result_rows == [(5, "m,m-2026", "complete")]


def test_events_stored_before_trace_spans_are_filled_in_by_the_migration(
    warehouse: WarehouseInfo,
) -> None:
    from undertow.services.warehouse.rows import EVENT_COLUMNS, event_row
    from undertow.streams.scoring.scored import SCORE_COLUMNS, Scored, scores_row

    admin = connect(warehouse.url, database=None)
    db = f"undertow_backfill_{uuid.uuid4().hex[:8]}"
    migrations = load_migrations()
    before = [m for m in migrations if m.version < 14]
    apply_migrations(admin, db, before)
    app, trace_id = "backfilled", uuid.uuid4().hex
    records = _rag_trace(app, trace_id)
    admin.insert(f"{db}.events", [event_row(r) for r in records], column_names=list(EVENT_COLUMNS))
    completion = records[2]
    admin.insert(
        f"{db}.scores",
        [scores_row(completion, Scored(input_tokens=120, output_tokens=12, cost_usd=0.5))],
        column_names=list(SCORE_COLUMNS),
    )
    try:
        assert [m.version for m in apply_migrations(admin, db, migrations)] == [
            m.version for m in migrations if m.version >= 14
        ]
        got = admin.query(
            f"SELECT span_count, completions, feedbacks, latency_ms, input_tokens, cost_usd, "
            f"unpriced_completions, feedback_score, status FROM {db}.traces "
            "WHERE trace_id = {t:String}",
            parameters={"t": trace_id},
        ).result_rows
        assert got == [(5, 1, 2, 270.0, 120, 0.5, 0, 0.0, "complete")]
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")


# --- HTTP as curl speaks it --------------------------------------------------------------------


def test_plain_http(warehouse: WarehouseInfo) -> None:
    url = warehouse.url
    assert http(url, "/ping")[2] == b"Ok.\n"
    assert http(url)[2] == b"Ok.\n"

    status, headers, body = http(url, params={"query": "SELECT 1"})
    assert (status, body) == (200, b"1\n")
    assert headers["x-clickhouse-format"] == "TabSeparated"
    assert "elapsed_ns" in headers["x-clickhouse-summary"]
    assert headers["x-clickhouse-query-id"]

    table = f"default.h_{uuid.uuid4().hex[:12]}"
    assert (
        http(url, data=f"CREATE TABLE {table} (a UInt32, b String) ENGINE = Memory".encode())[0]
        == 200
    )
    # Query and data in the body, data in the body after a query parameter, gzip-compressed.
    insert = f'INSERT INTO {table} FORMAT JSONEachRow {{"a": 1, "b": "x"}}\n{{"a": 2, "b": "y"}}'
    assert http(url, data=insert.encode())[0] == 200
    assert http(url, params={"query": f"INSERT INTO {table} FORMAT TSV"}, data=b"3\tz\n")[0] == 200
    zipped = gzip.compress(f"INSERT INTO {table} (a) FORMAT CSV\n4\n".encode())
    assert http(url, data=zipped, headers={"Content-Encoding": "gzip"})[0] == 200

    status, headers, body = http(
        url, params={"query": f"SELECT a, b FROM {table} ORDER BY a", "default_format": "CSV"}
    )
    assert body == b'1,"x"\n2,"y"\n3,"z"\n4,""\n'
    assert headers["x-clickhouse-format"] == "CSV"
    status, _, body = http(url, params={"query": "SELECT {n:UInt8} * 2", "param_n": "21"})
    assert body == b"42\n"


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("INSERT INTO {t} FORMAT CSV", b'1,"a"\n2,"b"\n'),
        ("INSERT INTO {t} FORMAT TabSeparated", b"1\ta\n2\tb\n"),
        ("INSERT INTO {t} (b, a) FORMAT JSONEachRow", b'{"a":1,"b":"a"}\n{"a":2,"b":"b"}'),
        ("INSERT INTO {t} FORMAT RowBinary", b"\x01\x00\x00\x00\x01a\x02\x00\x00\x00\x01b"),
        ("INSERT INTO {t} FORMAT Values", b"(1, 'a'), (2, 'b')"),
        ("INSERT INTO {t} VALUES", b"(1, 'a'), (2, 'b')"),
        ("INSERT INTO {t} SELECT a, upper(b) FROM input('a UInt32, b String') FORMAT CSV",
         b"1,a\n2,b\n"),
    ],
)  # fmt: skip
def test_inserts_take_any_input_format(warehouse: WarehouseInfo, query: str, body: bytes) -> None:
    table = f"default.f_{uuid.uuid4().hex[:12]}"
    http(warehouse.url, data=f"CREATE TABLE {table} (a UInt32, b String) ENGINE = Memory".encode())
    status, _, answer = http(warehouse.url, params={"query": query.format(t=table)}, data=body)
    assert status == 200, answer
    rows = http(warehouse.url, params={"query": f"SELECT a, lower(b) FROM {table} ORDER BY a"})
    assert rows[2] == b"1\ta\n2\tb\n"


def test_plain_http_errors_leave_the_server_serving(warehouse: WarehouseInfo) -> None:
    url = warehouse.url
    status, headers, body = http(url, params={"query": "SELECT * FROM default.nowhere"})
    assert status == 404
    assert headers["x-clickhouse-exception-code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception:")

    status, headers, body = http(url, data=b"SELECT 1; SELECT 2")
    assert (status, headers["x-clickhouse-exception-code"]) == (400, "62")
    assert b"Multi-statements are not allowed" in body

    status, headers, _ = http(
        url, params={"query": "CREATE TABLE default.g (a UInt8) ENGINE = Memory"}
    )
    assert (status, headers["x-clickhouse-exception-code"]) == (500, "164")  # GET is read-only

    assert http(url, params={"query": "SELECT 2"})[2] == b"2\n"


def test_curl(warehouse: WarehouseInfo) -> None:
    assert shutil.which("curl"), "curl is needed for this check (apt-get install curl)"

    def curl(*args: str, stdin: bytes | None = None) -> bytes:
        done = subprocess.run(["curl", "-sS", "--fail-with-body", *args], input=stdin,
                              capture_output=True, timeout=30, check=True)  # fmt: skip
        return done.stdout

    url = warehouse.url
    assert curl(f"{url}/ping") == b"Ok.\n"
    assert curl(f"{url}/?query=SELECT+1") == b"1\n"
    assert curl("--data-binary", "SELECT 1", f"{url}/") == b"1\n"
    table = f"default.c_{uuid.uuid4().hex[:12]}"
    curl("--data-binary", f"CREATE TABLE {table} (a UInt32) ENGINE = Memory", f"{url}/")
    insert = f'INSERT INTO {table} FORMAT JSONEachRow {{"a": 7}}\n'.encode()
    curl("--data-binary", "@-", f"{url}/", stdin=insert)
    assert curl(f"{url}/?query=SELECT+sum(a)+FROM+{table}") == b"7\n"


# --- the process -------------------------------------------------------------------------------


def test_start_is_idempotent_and_data_survives_a_restart(tmp_path: Path) -> None:
    local = LocalWarehouse(tmp_path)
    try:
        first = local.start(timeout=120)
        assert first.started_now
        again = local.start()
        assert (again.started_now, again.pid, again.url) == (False, first.pid, first.url)
        assert local.status() == again

        client = connect(first.url, database=None)
        client.command("CREATE TABLE default.kept (a UInt32) ENGINE = MergeTree ORDER BY a")
        client.insert("default.kept", [[1], [2], [3]], column_names=["a"])
        client.close()

        assert local.stop() is True
        assert local.status() is None
        assert local.stop() is False

        restarted = local.start(timeout=120)
        assert restarted.started_now and restarted.pid != first.pid
        assert restarted.port == first.port  # the last port is reused while free
        client = connect(restarted.url, database=None)
        assert client.command("SELECT sum(a) FROM default.kept") == 6
    finally:
        local.stop()
