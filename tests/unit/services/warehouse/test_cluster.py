"""Migrations rendered for a ClickHouse cluster (services/warehouse/cluster.py): every shipped
migration through the renderer; every rendered statement through ClickHouse's own parser
(``formatQuery`` parses without running, so ON CLUSTER needs no cluster); the rendered schema
run in the embedded engine as one node of a one-shard cluster, where every view must answer
what it answers on the one-node schema; and the rules one by one on small migrations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from undertow.services.warehouse.cluster import (
    ClusterRenderError,
    RenderedMigration,
    render_migrations,
    sharding_key,
)
from undertow.services.warehouse.migrations import (
    Migration,
    load_migrations,
    planned_statements,
    split_statements,
)

CLUSTER = "main"
DB = "undertow"
SHIPPED = load_migrations()
PATH = "'/clickhouse/tables/{shard}/{database}/{table}'"


@dataclass(frozen=True)
class _Migration:
    version: int
    name: str
    sql: str

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


def render(*files: str, cluster: str = CLUSTER) -> list[list[str]]:
    """The rendered statements of migrations 1, 2, ... holding these texts."""
    migrations = [_Migration(n, f"m{n}", sql) for n, sql in enumerate(files, start=1)]
    return [list(r.statements) for r in render_migrations(migrations, cluster, DB)]


def one_line(sql: str) -> str:
    return " ".join(sql.split())


# The embedded engine as one node of the one-shard cluster ``main``: a Distributed table over
# it reads and writes this node's tables in process (the shard is local: same host and port).
# And a cluster ``spread`` of two shards nobody serves (port 1 refuses at once): ClickHouse
# plans a query over it, and refuses a double-distributed subquery, before it connects.
CLUSTERS = f"""<clickhouse>
    <tcp_port>9000</tcp_port>
    <remote_servers>
        <{CLUSTER}>
            <shard><replica><host>localhost</host><port>9000</port></replica></shard>
        </{CLUSTER}>
        <spread>
            <shard><replica><host>localhost</host><port>1</port></replica></shard>
            <shard><replica><host>localhost</host><port>1</port></replica></shard>
        </spread>
    </remote_servers>
</clickhouse>
"""


@pytest.fixture(scope="module")
def parser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A chdb connection: its parser (``formatQuerySingleLine`` runs nothing), and an engine
    that knows the clusters ``main`` (one local shard) and ``spread`` (two absent shards)."""
    try:
        import chdb
    except ImportError as exc:  # a dependency of undertow's tests: its absence is a failure
        pytest.fail(f"the embedded ClickHouse engine (chdb) is not installed: {exc}")
    folder = tmp_path_factory.mktemp("chdb-cluster")
    config = folder / "config.xml"
    config.write_text(CLUSTERS)
    connection = chdb.connect(f"file:{folder / 'data'}?config-file={config}")
    try:
        yield connection
    finally:
        connection.close()


def parsed(parser: Any, statement: str) -> str:
    """``statement`` as ClickHouse's parser formats it on one line (raises where it fails)."""
    literal = "'" + statement.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(parser.query(f"SELECT formatQuerySingleLine({literal})", "TabSeparatedRaw")).strip()


@pytest.fixture(scope="module")
def rendered_all() -> dict[int, RenderedMigration]:
    """The shipped migrations rendered for cluster ``main``, by version."""
    try:
        rendered = render_migrations(SHIPPED, CLUSTER, DB)
    except ClusterRenderError as exc:
        pytest.fail(str(exc), pytrace=False)
    return {r.version: r for r in rendered}


def _label(r: RenderedMigration, position: int) -> str:
    return (
        f"{r.version:03d}_{r.name}.sql, statement {r.sources[position]} "
        f"(rendered statement {position + 1} of {len(r.statements)})"
    )


def test_the_parser_refuses_what_is_not_sql(parser: Any) -> None:
    """The check below is only as good as this: a statement ClickHouse cannot parse raises."""
    assert (
        parsed(parser, "DROP TABLE t ON CLUSTER main SYNC") == "DROP TABLE t ON CLUSTER main SYNC"
    )
    with pytest.raises(Exception, match="Syntax error"):
        parsed(parser, "CREATE TABLE t ON CLUSTER (x UInt8)")


# --- every shipped migration -----------------------------------------------------------------


def test_the_shipped_migrations_are_all_rendered(
    rendered_all: dict[int, RenderedMigration],
) -> None:
    assert list(rendered_all) == [m.version for m in SHIPPED]
    for migration in SHIPPED:
        rendered = rendered_all[migration.version]
        # every statement of the file is there, in order, each at least once
        assert sorted(set(rendered.sources)) == list(range(1, len(migration.statements) + 1))
        assert list(rendered.sources) == sorted(rendered.sources)


@pytest.mark.parametrize("migration", SHIPPED, ids=lambda m: f"{m.version:03d}_{m.name}")
def test_every_rendered_statement_parses_in_clickhouse(
    parser: Any, rendered_all: dict[int, RenderedMigration], migration: Migration
) -> None:
    rendered = rendered_all[migration.version]
    failures: list[str] = []
    for position, statement in enumerate(rendered.statements):
        try:
            parsed(parser, statement)
        except Exception as exc:  # chdb raises its own error types: report them with the text
            failures.append(
                f"{_label(rendered, position)} does not parse in ClickHouse: {exc}\n{statement}"
            )
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.mark.parametrize("migration", SHIPPED, ids=lambda m: f"{m.version:03d}_{m.name}")
def test_every_rendered_statement_follows_the_cluster_rules(
    parser: Any, rendered_all: dict[int, RenderedMigration], migration: Migration
) -> None:
    rendered = rendered_all[migration.version]
    statements = [parsed(parser, s) for s in rendered.statements]
    for position, sql in enumerate(statements):
        where = f"{_label(rendered, position)}: {sql[:160]}"
        if sql.startswith(("INSERT", "SELECT", "WITH")):
            assert "ON CLUSTER" not in sql, where
        else:
            assert re.match(r"(CREATE|ALTER|DROP|RENAME|SYSTEM FLUSH DISTRIBUTED) ", sql), where
            assert f" ON CLUSTER {CLUSTER} " in f"{sql} ", where
            assert re.search(rf"\b{DB}\.\w+", sql), f"names are qualified: {where}"
        for engine in re.findall(r"ENGINE = (\w+)", sql):
            assert engine == "Distributed" or (
                engine.startswith("Replicated") and engine.endswith("MergeTree")
            ), where
        joins = re.findall(r"(?<!ARRAY) JOIN ", sql)
        assert len(re.findall(r"GLOBAL (?:\w+ )*?JOIN ", sql)) == len(joins), where
        assert not re.search(r"(?<!GLOBAL) (NOT )?IN \((SELECT|WITH) ", sql), where

        if sql.startswith("CREATE MATERIALIZED VIEW"):
            assert re.search(rf" TO {DB}\.\w+_local ", sql), where
            assert re.search(rf" FROM {DB}\.\w+_local\b", sql), where
        elif sql.startswith(("CREATE VIEW", "CREATE OR REPLACE VIEW")):
            assert "_local" not in sql, f"views read the Distributed tables: {where}"

        replicated = re.match(rf"CREATE TABLE (?:IF NOT EXISTS )?{DB}\.(\w+)_local ", sql)
        if replicated is not None and "Replicated" in sql:
            name = replicated.group(1)
            assert "'{replica}'" in sql and "/clickhouse/tables/{shard}/{database}/{table}" in sql
            assert "non_replicated_deduplication_window" not in sql, where
            distributed = statements[position + 1]
            key = "cityHash64(trace_id)" if "`trace_id` String" in sql else None
            match = re.search(
                rf"ENGINE = Distributed\('{CLUSTER}', '{DB}', '{name}_local', (.+?)\)"
                r"(?: COMMENT '.*')?$",
                distributed,
            )
            assert re.match(rf"CREATE TABLE (IF NOT EXISTS )?{DB}\.{name} ", distributed), where
            assert match is not None, distributed
            if key is not None:
                assert match.group(1) == key, distributed
            else:
                assert "trace_id" not in match.group(1), distributed


# A few rows of every table the views read: two A/B traces (one completion delivered twice,
# one failed), an injection attempt, a judged completion, an incident that escalated and
# resolved, an answered and an unanswered action, drift rows. The same rows go to both schemas.
E = "00000000-0000-0000-0000-0000000000"
ROWS = [
    "INSERT INTO events (event_id, event_type, trace_id, span_id, event_time, app, environment, "
    "attributes, model, prompt_name, prompt_version, latency_ms, prompt_messages, finish_reason, "
    "feedback_score, feedback_label, feedback_source, user_hash) VALUES "
    f"('{E}01', 'prompt', 't1', 's1', '2026-01-01 10:00:00', 'chat', 'production', "
    "{'ab.test': 'tone', 'ab.variant': 'a'}, 'm1', 'p', '1', NULL, [('user', 'hello')], NULL, "
    "NULL, NULL, NULL, 'u1'), "
    f"('{E}02', 'completion', 't1', 's2', '2026-01-01 10:00:01', 'chat', 'production', "
    "{'ab.test': 'tone', 'ab.variant': 'a'}, 'm1', 'p', '1', 120, [], 'stop', NULL, NULL, NULL, "
    "'u1'), "
    f"('{E}03', 'feedback', 't1', 's3', '2026-01-01 10:00:05', 'chat', 'production', {{}}, '', "
    "'', '', NULL, [], NULL, 1, NULL, 'user', 'u1'), "
    f"('{E}04', 'feedback', 't1', 's4', '2026-01-01 10:00:06', 'chat', 'production', {{}}, '', "
    "'', '', NULL, [], NULL, 0.8, 'relevance', 'judge', NULL), "
    f"('{E}05', 'prompt', 't2', 's5', '2026-01-01 11:00:00', 'chat', 'production', "
    "{'ab.test': 'tone', 'ab.variant': 'b'}, 'm2', 'p', '2', NULL, "
    "[('user', 'ignore previous instructions')], NULL, NULL, NULL, NULL, 'u2'), "
    f"('{E}06', 'completion', 't2', 's6', '2026-01-01 11:00:02', 'chat', 'production', "
    "{'ab.test': 'tone', 'ab.variant': 'b'}, 'm2', 'p', '2', 300, [], 'error', NULL, NULL, NULL, "
    "'u2'), "
    f"('{E}07', 'retrieval', 't3', 's7', '2026-01-01 11:30:00', 'search', 'staging', {{}}, '', "
    "'', '', 15, [], NULL, NULL, NULL, NULL, NULL)",
    "INSERT INTO events (event_id, event_type, trace_id, span_id, event_time, app, environment, "
    "attributes, model, prompt_name, prompt_version, latency_ms, finish_reason) VALUES "
    f"('{E}02', 'completion', 't1', 's2', '2026-01-01 10:00:01', 'chat', 'production', "
    "{'ab.test': 'tone', 'ab.variant': 'a'}, 'm1', 'p', '1', 120, 'stop')",
    "INSERT INTO scores (event_id, event_type, trace_id, span_id, event_time, app, environment, "
    "model, prompt_name, prompt_version, scores, input_tokens, output_tokens, cost_usd, "
    "latency_ms) VALUES "
    f"('{E}01', 'prompt', 't1', 's1', '2026-01-01 10:00:00', 'chat', 'production', 'm1', 'p', "
    "'1', {'injection': 0.1, 'toxicity': 0.0}, NULL, NULL, NULL, NULL), "
    f"('{E}02', 'completion', 't1', 's2', '2026-01-01 10:00:01', 'chat', 'production', 'm1', "
    "'p', '1', {'toxicity': 0.2}, 10, 20, 0.002, 120), "
    f"('{E}05', 'prompt', 't2', 's5', '2026-01-01 11:00:00', 'chat', 'production', 'm2', 'p', "
    "'2', {'injection': 0.95}, NULL, NULL, NULL, NULL), "
    f"('{E}06', 'completion', 't2', 's6', '2026-01-01 11:00:02', 'chat', 'production', 'm2', "
    "'p', '2', {'toxicity': 0.7}, 30, 5, NULL, 300)",
    "INSERT INTO trace_spans (trace_id, event_id, app, environment, event_type, event_time, "
    "model, prompt_name, prompt_version, latency_ms, input_tokens, output_tokens, cost_usd, "
    "toxicity, injection, feedback_score) VALUES "
    f"('t1', '{E}01', 'chat', 'production', 'prompt', '2026-01-01 10:00:00', 'm1', 'p', '1', "
    "NULL, NULL, NULL, NULL, 0.0, 0.1, NULL), "
    f"('t1', '{E}02', 'chat', 'production', 'completion', '2026-01-01 10:00:01', 'm1', 'p', '1', "
    "120, 10, 20, 0.002, 0.2, NULL, NULL), "
    f"('t1', '{E}03', 'chat', 'production', 'feedback', '2026-01-01 10:00:05', '', '', '', NULL, "
    "NULL, NULL, NULL, NULL, NULL, 1), "
    f"('t2', '{E}05', 'chat', 'production', 'prompt', '2026-01-01 11:00:00', 'm2', 'p', '2', "
    "NULL, NULL, NULL, NULL, NULL, 0.95, NULL)",
    "INSERT INTO alerts (event_id, event_time, app, environment, trace_id, rule, severity, "
    "status, dedup_key, segment, summary, evidence, sql, runbook_url) VALUES "
    f"('{E}a1', '2026-01-01 10:05:00', 'chat', 'production', 'k1', 'toxicity_rate', 'warning', "
    "'firing', 'k1', 'app=chat', 'rude', {'value': '0.3'}, 'SELECT 1', NULL), "
    f"('{E}a2', '2026-01-01 10:06:00', 'chat', 'production', 'k1', 'toxicity_rate', "
    "'critical', 'firing', 'k1', 'app=chat', 'ruder', {}, NULL, NULL), "
    f"('{E}a3', '2026-01-01 10:20:00', 'chat', 'production', 'k1', 'toxicity_rate', "
    "'critical', 'resolved', 'k1', 'app=chat', 'ok', {}, NULL, 'http://runbook')",
    "INSERT INTO actions (event_id, event_time, app, environment, trace_id, action_type, target, "
    "phase, request_id, reason, parameters, result) VALUES "
    f"('{E}b1', '2026-01-01 10:06:00', 'chat', 'production', 'k1', 'rollback', 'm1', "
    "'requested', NULL, 'rude', {'version': '2'}, {}), "
    f"('{E}b2', '2026-01-01 10:06:05', 'chat', 'production', 'k1', 'rollback', 'm1', "
    f"'started', '{E}b1', '', {{}}, {{}}), "
    f"('{E}b3', '2026-01-01 10:06:30', 'chat', 'production', 'k1', 'rollback', 'm1', "
    f"'succeeded', '{E}b1', '', {{}}, {{'to': '1'}}), "
    f"('{E}b4', '2026-01-01 10:07:00', 'chat', 'production', '', 'fine_tune', 'm2', "
    "'requested', NULL, 'bad', {}, {})",
    "INSERT INTO drift (event_id, event_time, app, environment, segment, segment_fields, stream, "
    "detector, statistic, threshold, detected, window_reference, window_current, "
    "baseline_version, example_event_ids, nearest_topics) VALUES "
    f"('{E}c1', '2026-01-01 10:10:00', 'chat', 'production', 'app=chat', {{'app': 'chat'}}, "
    "'embedding', 'adwin', 0.4, 0.3, true, 500, 50, 'b1', [], []), "
    f"('{E}c2', '2026-01-01 10:11:00', 'chat', 'production', 'app=chat', {{'app': 'chat'}}, "
    "'embedding', 'window_mean', 0.2, 0.3, false, 500, 25, 'b1', [], [])",
    "INSERT INTO judge_scores (id, completion_event_id, trace_id, event_time, app, environment, "
    "model, model_version, prompt_name, prompt_version, attributes, rubric, rubric_version, "
    "judge_model, score, raw_score, scale, parse_error, reason, latency_ms, judged_at) VALUES "
    f"('{E}d1', '{E}02', 't1', '2026-01-01 10:00:01', 'chat', 'production', 'm1', '1', 'p', '1', "
    "{'ab.test': 'tone', 'ab.variant': 'a'}, 'relevance', '1-abc', 'judge', 0.8, 4, '1..5', "
    "NULL, 'fine', 900, '2026-01-01 10:00:06')",
]


def one_shard(statement: str) -> str:
    """A rendered statement as the embedded engine can run it: without ON CLUSTER (no
    distributed DDL queue runs in it) and with the one-node engine (no Keeper replica can
    become active in it). Names, Distributed tables, views and materialized views stay."""
    statement = re.sub(r" ON CLUSTER \w+", "", statement)
    return re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"\1(", statement)


def test_the_views_answer_on_one_shard_what_they_answer_on_one_node(parser: Any) -> None:
    """The shipped migrations for one node (database ``one``) and rendered for the cluster
    (``undertow``, run on its one local shard), the same rows written to both through their
    tables (the Distributed ones on the cluster): every view gives the same answer. This
    checks the names the rendering wires together (local tables, Distributed tables, views
    over them, materialized views on the local tables); on one shard it cannot show how rows
    spread over several, nor that a join needs GLOBAL (the next test does)."""
    for database, cluster in (("one", None), (DB, CLUSTER)):
        parser.query(f"CREATE DATABASE IF NOT EXISTS {database}")
        parser.query(f"USE {database}")
        for statements in planned_statements(SHIPPED, database, cluster):
            for statement, what in statements:
                try:
                    parser.query(one_shard(statement))
                except Exception as exc:  # chdb's own error types
                    pytest.fail(f"{database}: {what}: {exc}\n{statement}", pytrace=False)
        for insert in ROWS:
            parser.query(insert)
    distributed = str(
        parser.query(
            f"SELECT name FROM system.tables WHERE database = '{DB}' AND engine = 'Distributed'",
            "TabSeparatedRaw",
        )
    ).split()
    for table in distributed:  # inserts into Distributed tables are asynchronous by default
        parser.query(f"SYSTEM FLUSH DISTRIBUTED {DB}.{table}")
    views = str(
        parser.query(
            "SELECT name FROM system.tables WHERE database = 'one' AND engine = 'View'",
            "TabSeparatedRaw",
        )
    ).split()
    assert {"traces", "usage_by_hour", "v_ab_results", "v_actions", "v_alerts"} <= set(views)
    for view in views:
        one_node, one_shard_rows = (
            sorted(str(parser.query(f"SELECT * FROM {db}.{view}", "TabSeparated")).splitlines())
            for db in ("one", DB)
        )
        assert one_node, f"{view} answers nothing: the rows do not exercise it"
        assert one_shard_rows == one_node, view


def test_no_view_is_refused_as_a_double_distributed_subquery_on_two_shards(parser: Any) -> None:
    """Over two shards, ClickHouse refuses a JOIN or IN whose right side reads a Distributed
    table inside a query on one (``distributed_product_mode = 'deny'``, code 288) while it
    plans the query, before it connects: here every view and INSERT ... SELECT gets past that
    and fails only where it would connect to the absent shards."""
    parser.query("CREATE DATABASE IF NOT EXISTS spread")
    parser.query("USE spread")
    inserts: list[str] = []
    for statements in planned_statements(SHIPPED, "spread", "spread"):
        for statement, _ in statements:
            if statement.startswith("INSERT"):
                inserts.append(statement)  # would write to the absent shards: planned below
            else:
                parser.query(one_shard(statement))
    views = str(
        parser.query(
            "SELECT name FROM system.tables WHERE database = 'spread' AND engine = 'View'",
            "TabSeparatedRaw",
        )
    ).split()
    queries = [f"SELECT * FROM spread.{view}" for view in views]
    queries += [insert[insert.index("SELECT") :] for insert in inserts]
    assert len(queries) > len(views) > 5
    for query in queries:
        try:
            parser.query(f"EXPLAIN {query}")
        except Exception as exc:  # chdb's own error types
            assert "DISTRIBUTED_IN_JOIN_SUBQUERY_DENIED" not in str(exc), query
            assert "Connection refused" in str(exc) or "NETWORK_ERROR" in str(exc), str(exc)


def test_the_tables_with_a_trace_are_sharded_by_it_and_the_others_by_their_key(
    rendered_all: dict[int, RenderedMigration],
) -> None:
    keys = {}
    for rendered in rendered_all.values():
        for sql in rendered.statements:
            match = re.search(r"'(\w+)_local', (.+)\)(?:\nCOMMENT|$)", sql)
            if match is not None and "Distributed(" in sql:
                keys[match.group(1)] = match.group(2)
    assert keys["events"] == keys["scores"] == keys["embeddings"] == "cityHash64(trace_id)"
    assert keys["alerts"] == keys["actions"] == keys["judge_scores"] == "cityHash64(trace_id)"
    assert keys["registry"] == "cityHash64(kind, name, version)"
    assert keys["baselines"] == "cityHash64(segment, version)"
    assert keys["drift"] == "cityHash64(segment, stream, detector, event_time, event_id)"


def test_a_name_created_again_after_a_rename_gets_its_own_replication_path(
    rendered_all: dict[int, RenderedMigration],
) -> None:
    """010 renames traces away and creates traces again: the renamed table keeps the Keeper
    path ClickHouse expanded for traces_local, so the new one needs another."""
    paths = [
        re.search(r"MergeTree\('([^']+)'", sql)
        for r in rendered_all.values()
        for sql in r.statements
        if re.match(rf"CREATE TABLE (IF NOT EXISTS )?{DB}\.traces_local ", sql)
    ]
    assert [p.group(1) for p in paths if p] == [
        "/clickhouse/tables/{shard}/{database}/{table}",
        "/clickhouse/tables/{shard}/{database}/{table}_v010",
    ]


def test_a_new_migration_file_is_picked_up(tmp_path: Path) -> None:
    """The renderer works on any file: a copy of the shipped ones plus a new one renders."""
    for migration in SHIPPED:
        (tmp_path / f"{migration.version:03d}_{migration.name}.sql").write_text(migration.sql)
    (tmp_path / "999_extra.sql").write_text(
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS region LowCardinality(String) DEFAULT '';\n"
        "ALTER TABLE events ADD INDEX idx_region region TYPE set(100) GRANULARITY 4;\n"
    )
    migrations = load_migrations(tmp_path)
    last = render_migrations(migrations, CLUSTER, DB)[-1]
    assert [one_line(s) for s in last.statements] == [
        f"ALTER TABLE {DB}.events_local ON CLUSTER main ADD COLUMN IF NOT EXISTS region "
        "LowCardinality(String) DEFAULT ''",
        f"ALTER TABLE {DB}.events ON CLUSTER main ADD COLUMN IF NOT EXISTS region "
        "LowCardinality(String) DEFAULT ''",
        f"ALTER TABLE {DB}.events_local ON CLUSTER main ADD INDEX idx_region region "
        "TYPE set(100) GRANULARITY 4",
    ]


# --- the rules, one by one -------------------------------------------------------------------

TABLE = """\
CREATE TABLE IF NOT EXISTS spans
(
    trace_id String,
    event_id UUID, -- a comment with FROM events JOIN x
    note String DEFAULT 'MergeTree FROM t JOIN u' COMMENT 'it''s kept'
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (trace_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'spans of traces';
"""


def test_a_merge_tree_table_becomes_a_replicated_local_table_behind_a_distributed_one() -> None:
    [[local, distributed]] = render(TABLE)
    assert local == (
        "CREATE TABLE IF NOT EXISTS undertow.spans_local ON CLUSTER main\n"
        "(\n"
        "    trace_id String,\n"
        "    event_id UUID, -- a comment with FROM events JOIN x\n"
        "    note String DEFAULT 'MergeTree FROM t JOIN u' COMMENT 'it''s kept'\n"
        ")\n"
        f"ENGINE = ReplicatedReplacingMergeTree({PATH}, '{{replica}}', written_at)\n"
        "ORDER BY (trace_id, event_id)\n"
        "SETTINGS replicated_deduplication_window = 1000\n"
        "COMMENT 'spans of traces'"
    )
    assert distributed == (
        "CREATE TABLE IF NOT EXISTS undertow.spans ON CLUSTER main\n"
        "AS undertow.spans_local\n"
        "ENGINE = Distributed('main', 'undertow', 'spans_local', cityHash64(trace_id))\n"
        "COMMENT 'spans of traces'"
    )


@pytest.mark.parametrize(
    ("engine", "order_by", "rendered", "key"),
    [
        ("MergeTree", "x", f"ReplicatedMergeTree({PATH}, '{{replica}}')", "rand()"),
        ("MergeTree()", "x", f"ReplicatedMergeTree({PATH}, '{{replica}}')", "rand()"),
        (
            "SummingMergeTree((a, b))",
            "(x, y)",
            f"ReplicatedSummingMergeTree({PATH}, '{{replica}}', (a, b))",
            "cityHash64(x, y)",
        ),
        (
            "VersionedCollapsingMergeTree(sign, v)",
            "x",
            f"ReplicatedVersionedCollapsingMergeTree({PATH}, '{{replica}}', sign, v)",
            "cityHash64(x)",
        ),
        (
            "ReplacingMergeTree",
            "tuple()",
            f"ReplicatedReplacingMergeTree({PATH}, '{{replica}}')",
            "rand()",
        ),
    ],
)
def test_engines_keep_their_arguments_and_get_a_sharding_key(
    engine: str, order_by: str, rendered: str, key: str
) -> None:
    [[local, distributed]] = render(
        f"CREATE TABLE t (x UInt8, y UInt8) ENGINE = {engine} ORDER BY {order_by};"
    )
    assert f"ENGINE = {rendered} ORDER BY {order_by}" in local
    assert distributed.endswith(f"'t_local', {key})")
    assert not distributed.startswith("CREATE TABLE IF NOT EXISTS")


def test_sharding_key_prefers_the_trace() -> None:
    assert sharding_key(["trace_id", "x"], "MergeTree", "x") == "cityHash64(trace_id)"
    assert sharding_key(["x"], "AggregatingMergeTree", "(x)") == "cityHash64(x)"
    assert sharding_key(["x"], "AggregatingMergeTree", "(a) + (b)") == "cityHash64((a) + (b))"
    assert sharding_key(["x"], "MergeTree", "(x)") == "rand()"


def test_a_table_of_another_engine_is_made_on_every_node_as_it_is() -> None:
    assert render("CREATE TABLE IF NOT EXISTS probe (a UInt8) ENGINE = Memory;") == [
        ["CREATE TABLE IF NOT EXISTS undertow.probe ON CLUSTER main (a UInt8) ENGINE = Memory"]
    ]


def test_rename_rebuilds_the_distributed_table_and_a_new_table_gets_its_own_path() -> None:
    first = "CREATE TABLE t (trace_id String) ENGINE = MergeTree ORDER BY trace_id COMMENT 'old';"
    [_, rename, again] = render(
        first,
        "RENAME TABLE t TO t_v1;",
        "CREATE TABLE t (trace_id String, n UInt8) ENGINE = MergeTree ORDER BY trace_id;",
    )
    assert rename == [
        "SYSTEM FLUSH DISTRIBUTED undertow.t ON CLUSTER main",
        "DROP TABLE IF EXISTS undertow.t ON CLUSTER main",
        "RENAME TABLE undertow.t_local TO undertow.t_v1_local ON CLUSTER main",
        "CREATE TABLE undertow.t_v1 ON CLUSTER main\nAS undertow.t_v1_local\n"
        "ENGINE = Distributed('main', 'undertow', 't_v1_local', cityHash64(trace_id))\n"
        "COMMENT 'old'",
    ]
    assert "'/clickhouse/tables/{shard}/{database}/{table}_v003'" in again[0]


def test_drop_removes_both_tables_and_frees_the_path() -> None:
    first = "CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x;"
    [_, drop, again] = render(first, "DROP TABLE IF EXISTS t;", first)
    assert drop == [
        "SYSTEM FLUSH DISTRIBUTED undertow.t ON CLUSTER main",
        "DROP TABLE IF EXISTS undertow.t ON CLUSTER main",
        "DROP TABLE IF EXISTS undertow.t_local ON CLUSTER main SYNC",
    ]
    assert f"ReplicatedMergeTree({PATH}, " in again[0]


def test_views_and_renames_of_views_run_on_the_cluster() -> None:
    [[_, _], [view], [rename], [drop]] = render(
        "CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x;",
        "CREATE VIEW IF NOT EXISTS v AS SELECT x FROM t;",
        "RENAME TABLE v TO w;",
        "DROP VIEW w;",
    )
    assert (
        view == "CREATE VIEW IF NOT EXISTS undertow.v ON CLUSTER main AS SELECT x FROM undertow.t"
    )
    assert rename == "RENAME TABLE undertow.v TO undertow.w ON CLUSTER main"
    assert drop == "DROP VIEW undertow.w ON CLUSTER main"


def test_views_read_distributed_tables_with_global_joins_and_subqueries() -> None:
    tables = [
        f"CREATE TABLE {name} (trace_id String, x UInt8) ENGINE = MergeTree ORDER BY x;"
        for name in ("a", "b")
    ]
    [_, _, [view]] = render(
        *tables[:1],
        tables[1],
        """CREATE OR REPLACE VIEW v AS
WITH recent AS (SELECT trace_id FROM a WHERE x IN (1, 2))
SELECT a.x, 'FROM a JOIN b' AS s -- FROM b JOIN a
FROM a FINAL
LEFT JOIN b ON b.trace_id = a.trace_id
ANY INNER JOIN recent ON recent.trace_id = a.trace_id
ARRAY JOIN [1, 2] AS k
WHERE a.trace_id NOT IN (SELECT trace_id FROM b) AND a.x IN b AND extract(a.x FROM 'y') = ''
COMMENT 'a view';""",
    )
    assert view == (
        "CREATE OR REPLACE VIEW undertow.v ON CLUSTER main AS\n"
        "WITH recent AS (SELECT trace_id FROM undertow.a WHERE x IN (1, 2))\n"
        "SELECT a.x, 'FROM a JOIN b' AS s -- FROM b JOIN a\n"
        "FROM undertow.a FINAL\n"
        "GLOBAL LEFT JOIN undertow.b ON b.trace_id = a.trace_id\n"
        "GLOBAL ANY INNER JOIN recent ON recent.trace_id = a.trace_id\n"
        "ARRAY JOIN [1, 2] AS k\n"
        "WHERE a.trace_id GLOBAL NOT IN (SELECT trace_id FROM undertow.b) AND a.x GLOBAL IN "
        "undertow.b AND extract(a.x FROM 'y') = ''\n"
        "COMMENT 'a view'"
    )


def test_a_materialized_view_writes_to_and_reads_from_the_local_tables() -> None:
    [_, _, [mv]] = render(
        "CREATE TABLE s (trace_id String) ENGINE = MergeTree ORDER BY trace_id;",
        "CREATE TABLE t (trace_id String, n UInt64) ENGINE = SummingMergeTree ORDER BY trace_id;",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS mv TO t AS SELECT trace_id, count() AS n "
        "FROM s GROUP BY trace_id;",
    )
    assert mv == (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS undertow.mv ON CLUSTER main TO undertow.t_local "
        "AS SELECT trace_id, count() AS n FROM undertow.s_local GROUP BY trace_id"
    )


def test_insert_select_gets_global_joins_and_stays_on_the_distributed_names() -> None:
    [_, [insert]] = render(
        "CREATE TABLE s (trace_id String) ENGINE = MergeTree ORDER BY trace_id;",
        "INSERT INTO s SELECT a.trace_id FROM s AS a LEFT JOIN (SELECT * FROM s) AS b USING "
        "trace_id SETTINGS join_use_nulls = 1;",
    )
    assert insert == (
        "INSERT INTO s SELECT a.trace_id FROM s AS a GLOBAL LEFT JOIN (SELECT * FROM s) AS b "
        "USING trace_id SETTINGS join_use_nulls = 1"
    )


def test_alter_follows_the_distributed_table_for_columns_only() -> None:
    table = "CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x;"
    [_, columns, data] = render(
        table,
        "ALTER TABLE t ADD COLUMN y UInt8, COMMENT COLUMN x 'the x';",
        "ALTER TABLE t UPDATE x = 1, y = 2 WHERE x = 0;",
    )
    operations = "ADD COLUMN y UInt8, COMMENT COLUMN x 'the x'"
    assert columns == [
        f"ALTER TABLE undertow.t_local ON CLUSTER main\n{operations}",
        f"ALTER TABLE undertow.t ON CLUSTER main\n{operations}",
    ]
    assert data == ["ALTER TABLE undertow.t_local ON CLUSTER main\nUPDATE x = 1, y = 2 WHERE x = 0"]


def test_a_cluster_macro_is_passed_as_a_string() -> None:
    [[local, distributed]] = render(
        "CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x;", cluster="{cluster}"
    )
    assert "ON CLUSTER '{cluster}'" in local
    assert "Distributed('{cluster}', 'undertow', 't_local', rand())" in distributed


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (["CREATE TABLE db.t (x UInt8) ENGINE = MergeTree ORDER BY x;"], "unqualified"),
        (["CREATE TABLE t ON CLUSTER c (x UInt8) ENGINE = MergeTree ORDER BY x;"], "no cluster"),
        (["CREATE TABLE t (x UInt8) ENGINE = ReplicatedMergeTree ORDER BY x;"], "already"),
        (["CREATE TABLE t AS u ENGINE = MergeTree ORDER BY x;"], "column list"),
        (["CREATE TABLE t (x UInt8) ORDER BY x;"], "no ENGINE"),
        (["CREATE OR REPLACE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x;"], "OR REPLACE"),
        (["CREATE MATERIALIZED VIEW m ENGINE = MergeTree ORDER BY x AS SELECT 1 AS x;"], "TO"),
        (
            [
                "CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x;",
                "CREATE MATERIALIZED VIEW m TO t AS SELECT x FROM t JOIN t AS u USING x;",
            ],
            "exactly one table",
        ),
        (
            [
                "CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x;",
                "ALTER TABLE t ADD COLUMN y UInt8, DELETE WHERE x = 1;",
            ],
            "split it in two",
        ),
        (["OPTIMIZE TABLE t FINAL;"], "'OPTIMIZE' statements"),
        (["CREATE DICTIONARY d (x UInt8) PRIMARY KEY x;"], "only CREATE TABLE"),
        (["EXCHANGE TABLES a AND b;"], "'EXCHANGE' statements"),
    ],
)
def test_what_cannot_be_rendered_is_refused_naming_the_migration_and_statement(
    statements: list[str], message: str
) -> None:
    with pytest.raises(ClusterRenderError, match=message) as caught:
        render("\n".join(statements))
    assert f"migration 001_m1 statement {len(statements)} cannot be rendered" in str(caught.value)


def test_an_empty_cluster_name_is_refused() -> None:
    with pytest.raises(ClusterRenderError, match="cluster name"):
        render("SELECT 1;", cluster=" ")
