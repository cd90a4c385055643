"""The migrations rendered for a ClickHouse cluster: replicated shards behind Distributed tables.

The files in ``schemas/clickhouse`` are written for one node. Given a cluster name (a
``<remote_servers>`` entry of the servers' configuration, ``UNDERTOW_CLICKHOUSE_CLUSTER``),
:func:`render_migrations` rewrites their statements, one at a time and in order, so that one
run reaches every node:

* ``ON CLUSTER <name>`` goes on every CREATE, ALTER, DROP and RENAME, and the objects they
  name are qualified with the database (what each node resolves then does not depend on the
  default database a distributed DDL task runs with).
* A ``*MergeTree`` table ``t`` is created as ``t_local`` with the engine
  ``Replicated*MergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}'[, the
  original arguments])``, and ``t`` becomes ``Distributed(<cluster>, <database>, 't_local',
  <sharding key>)`` over it, so readers and writers keep using the name they know.
  ``non_replicated_deduplication_window`` (what the sink's insert tokens rely on) becomes
  ``replicated_deduplication_window`` with the same value.
* The sharding key (:func:`sharding_key`): ``cityHash64(trace_id)`` where the table has a
  ``trace_id`` column, so every row of a request (its events, scores, embeddings, spans, judge
  scores; the alerts of one incident and the answers to an action, which share a trace id) is
  on one shard; else, for an engine that folds rows by its sorting key (Replacing,
  Aggregating, Summing, ...), a hash of that key, so the rows that fold together meet; else
  ``rand()``.
* A materialized view is created ``TO t_local`` and reads ``s_local``: it sees each shard's
  inserts and writes on that shard. Views read the Distributed names, and their JOINs and
  ``IN (subquery)`` become ``GLOBAL`` (as do those of ``INSERT ... SELECT``), so a query
  through a view is exact however rows are placed (the right side is computed once and sent
  to every shard; ``distributed_product_mode`` is never consulted).
* ``RENAME`` of a sharded table renames its ``_local`` table and rebuilds its Distributed
  table under the new name (a Distributed table names its local table in its arguments).
  ClickHouse expands ``{database}`` and ``{table}`` in a replication path when the table is
  created, so a renamed table keeps its Keeper path: a later table created under the old name
  gets the creating migration's version in its path (``{table}_v010``). ``DROP`` of a sharded
  table drops both tables, the local one ``SYNC`` so its Keeper path is free again. Before a
  Distributed table is dropped (by either), ``SYSTEM FLUSH DISTRIBUTED`` sends the rows it
  still queues to the shards: its inserts are asynchronous by default, and a drop loses them.

What cannot be rendered faithfully is refused with :class:`ClusterRenderError`, naming the
migration and statement: qualified names or an ON CLUSTER already written; tables created
without a column list, with OR REPLACE, or already replicated; materialized views without
``TO`` or reading more than one table (JOINs included); ALTERs of views, or mixing column
changes with data changes; and every statement but CREATE TABLE, VIEW and MATERIALIZED VIEW,
ALTER TABLE, DROP TABLE and VIEW, RENAME TABLE, INSERT and SELECT. Non-MergeTree tables
(Memory, Null, ...) are created on every node as they are, one per node, without a
Distributed table.

The rendering is text-level over ClickHouse's tokens (strings, quoted names and comments
are never touched); the tests check every rendered statement of every shipped migration with
ClickHouse's own parser.

>>> from types import SimpleNamespace
>>> m = SimpleNamespace(version=1, name="demo", statements=["DROP VIEW IF EXISTS v"])
>>> render_migrations([m], cluster="main", database="undertow")[0].statements
('DROP VIEW IF EXISTS undertow.v ON CLUSTER main',)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from undertow.services.warehouse import WarehouseError

LOCAL_SUFFIX = "_local"
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"

_SIMPLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MERGE_TREE = re.compile(r"([A-Za-z]*)MergeTree")
# Engines that fold the rows of one sorting key into one: such rows must meet on one shard.
_FOLDING = frozenset(
    {"Replacing", "Aggregating", "Summing", "Collapsing", "VersionedCollapsing", "Coalescing"}
)
# Clauses of CREATE TABLE after the engine, which end an ORDER BY expression.
_TABLE_CLAUSES = frozenset({"PARTITION", "PRIMARY", "SAMPLE", "TTL", "SETTINGS", "COMMENT"})
# Words between a FROM item and JOIN (or before JOIN) that belong to the join itself.
_JOIN_WORDS = frozenset(
    {"INNER", "LEFT", "RIGHT", "FULL", "CROSS", "OUTER", "SEMI", "ANTI", "ANY", "ALL", "ASOF"}
)
# ALTER operations that change a table's columns or comment: the Distributed table in front of
# a sharded table must follow them. Every other operation (data, indexes, TTL, settings,
# partitions, mutations) concerns the stored rows and goes to the local tables only.
_COLUMN_OPERATIONS = frozenset({"ADD", "DROP", "MODIFY", "RENAME", "COMMENT"})


class ClusterRenderError(WarehouseError):
    """A migration statement cannot be rendered for a cluster as it is written."""


class _MigrationLike(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def statements(self) -> list[str]: ...


@dataclass(frozen=True)
class RenderedMigration:
    """The statements one migration runs on a cluster, each with the number (from 1) of the
    statement of the file it comes from."""

    version: int
    name: str
    statements: tuple[str, ...]
    sources: tuple[int, ...]


def render_migrations(
    migrations: Sequence[_MigrationLike], cluster: str, database: str
) -> list[RenderedMigration]:
    """The statements of ``migrations`` (in this order, from an empty database) for ``cluster``.

    Every migration is rendered, applied ones too: what a statement becomes depends on what
    the earlier ones created (a RENAME of a sharded table is three statements). Raises
    :class:`ClusterRenderError` naming the migration and statement that cannot be rendered.
    """
    if not cluster.strip():
        raise ClusterRenderError("expected a cluster name, got an empty one")
    renderer = _Renderer(cluster, database)
    out: list[RenderedMigration] = []
    for migration in migrations:
        statements: list[str] = []
        sources: list[int] = []
        for number, statement in enumerate(migration.statements, start=1):
            try:
                rendered = renderer.statement(statement, migration.version)
            except _Refused as exc:
                head = " ".join(statement.split())[:100]
                raise ClusterRenderError(
                    f"migration {migration.version:03d}_{migration.name} statement {number} "
                    f"cannot be rendered for cluster {cluster!r}: {exc} (statement: {head})"
                ) from None
            statements.extend(rendered)
            sources.extend([number] * len(rendered))
        out.append(
            RenderedMigration(migration.version, migration.name, tuple(statements), tuple(sources))
        )
    return out


def on_cluster(cluster: str) -> str:
    """The ``ON CLUSTER`` clause for ``cluster`` (a string literal where it is not a plain name,
    e.g. the macro ``{cluster}``, which ClickHouse expands)."""
    return f"ON CLUSTER {cluster if _SIMPLE_NAME.fullmatch(cluster) else string_literal(cluster)}"


def sharding_key(columns: Sequence[str], engine: str, order_by: str | None) -> str:
    """The Distributed sharding key of a table with these columns, engine and sorting key.

    >>> sharding_key(["event_id", "trace_id"], "ReplacingMergeTree", "(app, event_id)")
    'cityHash64(trace_id)'
    >>> sharding_key(["segment", "version"], "ReplacingMergeTree", "(segment, version)")
    'cityHash64(segment, version)'
    >>> sharding_key(["x"], "MergeTree", "x")
    'rand()'
    """
    if "trace_id" in columns:
        return "cityHash64(trace_id)"
    match = _MERGE_TREE.fullmatch(engine)
    key = _strip_parentheses(order_by or "")
    if match is not None and match.group(1) in _FOLDING and key and key != "tuple()":
        return f"cityHash64({key})"
    return "rand()"


def string_literal(value: str) -> str:
    """``value`` as a ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_name(name: str) -> str:
    """``name`` as a ClickHouse identifier: bare where it can be, else in backticks."""
    if _SIMPLE_NAME.fullmatch(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# --- tokens ------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<number>[0-9][A-Za-z0-9_.]*)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class _Refused(Exception):
    """Why a statement cannot be rendered (wrapped with its migration by the caller)."""


@dataclass
class _Token:
    kind: str
    text: str
    before: str = ""
    after: str = ""
    replaced: str | None = None

    def render(self) -> str:
        return self.before + (self.text if self.replaced is None else self.replaced) + self.after


class _Statement:
    """One statement as ClickHouse's lexer would see it, with edits kept beside the tokens.

    Positions are indices into the significant tokens (whitespace and comments skipped).
    """

    def __init__(self, sql: str) -> None:
        self.tokens = [
            _Token(str(m.lastgroup), m.group()) for m in _TOKEN.finditer(sql) if m.lastgroup
        ]
        self.sig = [i for i, t in enumerate(self.tokens) if t.kind not in ("ws", "comment")]
        self.depth: list[int] = []
        depth = 0
        for i in self.sig:
            text = self.tokens[i].text
            if text == ")":
                depth -= 1
            self.depth.append(depth)
            if text == "(":
                depth += 1

    def __len__(self) -> int:
        return len(self.sig)

    def token(self, n: int) -> _Token | None:
        return self.tokens[self.sig[n]] if 0 <= n < len(self.sig) else None

    def word(self, n: int) -> str:
        """The upper-cased word at ``n`` ('' where there is none, or something else)."""
        token = self.token(n)
        return token.text.upper() if token is not None and token.kind == "word" else ""

    def text(self, n: int) -> str:
        token = self.token(n)
        return "" if token is None else token.text

    def name(self, n: int) -> str | None:
        """The identifier at ``n`` (a word or a quoted name, unquoted), or None."""
        token = self.token(n)
        if token is None:
            return None
        if token.kind == "word":
            return token.text
        if token.kind == "quoted":
            quote = token.text[0]
            inner = token.text[1:-1]
            return re.sub(r"\\(.)", r"\1", inner.replace(quote * 2, quote))
        return None

    def closing(self, n: int) -> int:
        """The position of the parenthesis that closes the one opened at ``n``."""
        for m in range(n + 1, len(self.sig)):
            if self.depth[m] == self.depth[n] and self.text(m) == ")":
                return m
        raise _Refused("unbalanced parentheses")

    def find_word(self, word: str, start: int) -> int:
        """The first position from ``start`` of ``word`` outside parentheses, or -1."""
        for m in range(start, len(self.sig)):
            if self.depth[m] == 0 and self.word(m) == word:
                return m
        return -1

    def source(self, start: int, end: int) -> str:
        """The original text from position ``start`` to ``end`` inclusive."""
        if start > end:
            return ""
        return "".join(t.text for t in self.tokens[self.sig[start] : self.sig[end] + 1])

    def replace(self, n: int, text: str) -> None:
        self.tokens[self.sig[n]].replaced = text

    def insert_before(self, n: int, text: str) -> None:
        token = self.tokens[self.sig[n]]
        token.before = text + token.before

    def insert_after(self, n: int, text: str) -> None:
        token = self.tokens[self.sig[n]]
        token.after += text

    def render(self) -> str:
        return "".join(t.render() for t in self.tokens).strip()


# --- the renderer ------------------------------------------------------------------------------


@dataclass
class _Sharded:
    """A table created as ``<name>_local`` (replicated) behind a Distributed ``<name>``."""

    local: str
    key: str
    comment: str | None  # the COMMENT literal, which the Distributed table repeats


@dataclass
class _Renderer:
    """Renders statements in order, keeping what the earlier ones created."""

    cluster: str
    database: str
    sharded: dict[str, _Sharded] = field(default_factory=dict)
    others: dict[str, str] = field(default_factory=dict)  # name -> TABLE, VIEW, MATERIALIZED VIEW
    paths: dict[str, str] = field(default_factory=dict)  # local table -> {table} of its path

    @property
    def on(self) -> str:
        return on_cluster(self.cluster)

    def qualified(self, name: str) -> str:
        return f"{quote_name(self.database)}.{quote_name(name)}"

    def known(self, name: str) -> bool:
        return name in self.sharded or name in self.others

    def statement(self, sql: str, version: int) -> list[str]:
        st = _Statement(sql)
        first = st.word(0)
        if first == "CREATE":
            return self.create(st, version)
        if first == "ALTER":
            return self.alter(st)
        if first == "DROP":
            return self.drop(st)
        if first == "RENAME":
            return self.rename(st)
        if first in ("INSERT", "SELECT", "WITH"):
            self.globalize(st, 0, len(st))
            return [st.render()]
        raise _Refused(f"{first or st.text(0)!r} statements are not rendered for a cluster")

    # names ----------------------------------------------------------------------------------

    def object_name(self, st: _Statement, n: int) -> str:
        """The unqualified name at ``n``, refusing qualified names and ON CLUSTER after it."""
        name = st.name(n)
        if name is None:
            raise _Refused(f"expected a name, got {st.text(n)!r}")
        if st.text(n + 1) == ".":
            raise _Refused("names in migrations are unqualified: the runner picks the database")
        if st.word(n + 1) == "ON" and st.word(n + 2) == "CLUSTER":
            raise _Refused("a migration names no cluster: the cluster is a setting")
        return name

    # CREATE ---------------------------------------------------------------------------------

    def create(self, st: _Statement, version: int) -> list[str]:
        n = 1
        replace = st.word(n) == "OR" and st.word(n + 1) == "REPLACE"
        if replace:
            n += 2
        if st.word(n) == "TABLE":
            kind, n = "TABLE", n + 1
        elif st.word(n) == "VIEW":
            kind, n = "VIEW", n + 1
        elif st.word(n) == "MATERIALIZED" and st.word(n + 1) == "VIEW":
            kind, n = "MATERIALIZED VIEW", n + 2
        else:
            raise _Refused("only CREATE TABLE, VIEW and MATERIALIZED VIEW are rendered")
        if_not_exists = (
            st.word(n) == "IF" and st.word(n + 1) == "NOT" and st.word(n + 2) == "EXISTS"
        )
        if if_not_exists:
            n += 3
        name = self.object_name(st, n)
        if kind == "TABLE":
            if replace:
                raise _Refused("CREATE OR REPLACE TABLE is not rendered for a cluster")
            return self.create_table(st, n, name, if_not_exists, version)
        if name in self.sharded:
            raise _Refused(f"{name} is a sharded table, not a view")
        if kind == "VIEW":
            if st.word(n + 1) != "AS":
                raise _Refused("expected AS after the view's name")
            st.replace(n, f"{self.qualified(name)} {self.on}")
            self.qualify(st, n + 2, len(st))
            self.globalize(st, n + 2, len(st))
        else:
            self.create_materialized_view(st, n, name)
        if not (if_not_exists and name in self.others):
            self.others[name] = kind
        return [st.render()]

    def create_table(
        self, st: _Statement, n: int, name: str, if_not_exists: bool, version: int
    ) -> list[str]:
        if st.text(n + 1) != "(":
            raise _Refused("a table is created with its column list (not AS or EMPTY AS)")
        close = st.closing(n + 1)
        engine_at = st.find_word("ENGINE", close + 1)
        if engine_at < 0:
            raise _Refused("the table names no ENGINE")
        e = engine_at + 2 if st.text(engine_at + 1) == "=" else engine_at + 1
        engine = st.text(e)
        match = _MERGE_TREE.fullmatch(engine)
        existing = self.sharded.get(name) if if_not_exists else None
        if existing is None and self.known(name) and not if_not_exists:
            raise _Refused(f"{name} exists already")
        if match is None:  # Memory, Null, Log, ...: one per node, as written
            if name in self.sharded:
                raise _Refused(f"{name} exists already as a sharded table")
            st.replace(n, f"{self.qualified(name)} {self.on}")
            self.others.setdefault(name, "TABLE")
            return [st.render()]
        if match.group(1).startswith(("Replicated", "Shared")):
            raise _Refused(f"{engine} is already replicated: write the one-node engine")
        if existing is None and name in self.others:
            raise _Refused(f"{name} exists already as a {self.others[name]}")

        local = existing.local if existing else name + LOCAL_SUFFIX
        if existing is None and self.known(local):
            raise _Refused(f"{local} exists already, and is the name the local table needs")
        # ClickHouse expands {table} to the name a table is created with, and a renamed table
        # keeps that path: self.paths holds, per local table, what its {table} became.
        if existing is not None:  # a no-op on the server: rendered with the path it has
            expanded = self.paths[local]
            path = string_literal(REPLICA_PATH.replace("{table}", expanded))
        elif local in self.paths.values():  # a renamed table holds the path of this name
            expanded = f"{local}_v{version:03d}"
            path = string_literal(f"{REPLICA_PATH}_v{version:03d}")
        else:
            expanded = local
            path = string_literal(REPLICA_PATH)

        st.replace(n, f"{self.qualified(local)} {self.on}")
        st.replace(e, "Replicated" + engine)
        replica = string_literal(REPLICA_NAME)
        if st.text(e + 1) == "(":
            empty = st.text(e + 2) == ")"
            st.insert_after(e + 1, f"{path}, {replica}" + ("" if empty else ", "))
        else:
            st.insert_after(e, f"({path}, {replica})")
        for m in range(e + 1, len(st)):
            if st.depth[m] == 0 and st.word(m) == "NON_REPLICATED_DEDUPLICATION_WINDOW":
                st.replace(m, "replicated_deduplication_window")

        sharded = existing or _Sharded(
            local,
            sharding_key(self.columns(st, n + 1, close), engine, self.order_by(st, e)),
            self.comment(st, e),
        )
        if existing is None:
            self.sharded[name] = sharded
            self.paths[local] = expanded
        return [st.render(), self.distributed(name, sharded, if_not_exists)]

    @staticmethod
    def order_by(st: _Statement, engine_at: int) -> str | None:
        """The ORDER BY expression of CREATE TABLE (after its engine), as written."""
        for m in range(engine_at + 1, len(st)):
            if st.depth[m] == 0 and st.word(m) == "ORDER" and st.word(m + 1) == "BY":
                end = m + 2
                while end < len(st) and not (st.depth[end] == 0 and st.word(end) in _TABLE_CLAUSES):
                    end += 1
                return st.source(m + 2, end - 1).strip()
        return None

    @staticmethod
    def comment(st: _Statement, engine_at: int) -> str | None:
        """The table's COMMENT literal, as written, or None."""
        at = st.find_word("COMMENT", engine_at + 1)
        token = st.token(at + 1) if at >= 0 else None
        return token.text if token is not None and token.kind == "string" else None

    def distributed(self, name: str, sharded: _Sharded, if_not_exists: bool) -> str:
        """The Distributed table ``name`` in front of ``sharded``."""
        arguments = ", ".join(
            [
                string_literal(self.cluster),
                string_literal(self.database),
                string_literal(sharded.local),
                sharded.key,
            ]
        )
        comment = f"\nCOMMENT {sharded.comment}" if sharded.comment else ""
        return (
            f"CREATE TABLE {'IF NOT EXISTS ' if if_not_exists else ''}{self.qualified(name)} "
            f"{self.on}\nAS {self.qualified(sharded.local)}\n"
            f"ENGINE = Distributed({arguments}){comment}"
        )

    @staticmethod
    def columns(st: _Statement, open_at: int, close: int) -> list[str]:
        """The column names in the column list between ``open_at`` and ``close``."""
        names: list[str] = []
        inner = st.depth[open_at] + 1
        start = open_at + 1
        for m in range(open_at + 1, close + 1):
            if m == close or (st.depth[m] == inner and st.text(m) == ","):
                column = st.name(start) if start < m else None
                clause = st.word(start) in ("INDEX", "PROJECTION", "CONSTRAINT") or (
                    st.word(start) == "PRIMARY" and st.word(start + 1) == "KEY"
                )
                if column is not None and not clause:
                    names.append(column)
                start = m + 1
        return names

    def create_materialized_view(self, st: _Statement, n: int, name: str) -> None:
        if st.word(n + 1) != "TO":
            raise _Refused(
                "a materialized view writes TO a table (an inner engine is not rendered)"
            )
        target = self.object_name(st, n + 2)
        st.replace(n, f"{self.qualified(name)} {self.on}")
        st.replace(n + 2, self.qualified(self.local_name(target)))
        m = n + 3
        if st.text(m) == "(":
            m = st.closing(m) + 1
        if st.word(m) == "POPULATE":
            m += 1
        if st.word(m) != "AS":
            raise _Refused(f"expected AS in the materialized view, got {st.text(m)!r}")
        references = self.references(st, m + 1, len(st), ctes=set())
        joins = [
            j for j in range(m + 1, len(st)) if st.word(j) == "JOIN" and st.word(j - 1) != "ARRAY"
        ]
        if joins or len(references) != 1:
            raise _Refused(
                "a materialized view reads exactly one table (it sees that table's inserts on "
                "each shard); one that joins or reads several is not rendered"
            )
        source = st.name(references[0]) or ""
        st.replace(references[0], self.qualified(self.local_name(source)))

    def local_name(self, name: str) -> str:
        return self.sharded[name].local if name in self.sharded else name

    # SELECT bodies --------------------------------------------------------------------------

    def references(self, st: _Statement, start: int, end: int, ctes: set[str]) -> list[int]:
        """Positions in [start, end) of the objects the migrations created that are read after
        FROM, JOIN or IN (not table functions, subqueries, CTEs or other databases' tables)."""
        found: list[int] = []
        for m in range(start, end - 1):
            if st.word(m) not in ("FROM", "JOIN", "IN"):
                continue
            name = st.name(m + 1)
            if name is None or name in ctes or st.text(m + 2) in ("(", "."):
                continue
            if self.known(name):
                found.append(m + 1)
        return found

    def qualify(self, st: _Statement, start: int, end: int) -> None:
        """Qualify the objects a view reads with the database (CTE names stay as they are)."""
        ctes = {
            name
            for m in range(start, end - 2)
            if st.word(m + 1) == "AS" and st.text(m + 2) == "(" and (name := st.name(m))
        }
        for m in self.references(st, start, end, ctes):
            st.replace(m, self.qualified(st.name(m) or ""))

    def globalize(self, st: _Statement, start: int, end: int) -> None:
        """``GLOBAL`` on every JOIN and every ``IN (subquery)`` or ``IN <table>`` in [start,
        end): the right side is computed once, on the node the query came to, and sent to the
        shards, so the result does not depend on where rows are."""
        for m in range(start, end):
            word = st.word(m)
            if word == "JOIN":
                first = m
                while first - 1 >= start and st.word(first - 1) in _JOIN_WORDS:
                    first -= 1
                if st.word(first - 1) not in ("GLOBAL", "ARRAY", "PASTE"):
                    st.insert_before(first, "GLOBAL ")
            elif word == "IN":
                subquery = st.text(m + 1) == "(" and st.word(m + 2) in ("SELECT", "WITH")
                name = st.name(m + 1)
                table = name is not None and self.known(name) and st.text(m + 2) != "."
                first = m - 1 if st.word(m - 1) == "NOT" else m
                if (subquery or table) and st.word(first - 1) != "GLOBAL":
                    st.insert_before(first, "GLOBAL ")

    # ALTER, DROP, RENAME --------------------------------------------------------------------

    def alter(self, st: _Statement) -> list[str]:
        if st.word(1) != "TABLE":
            raise _Refused("only ALTER TABLE is rendered")
        name = self.object_name(st, 2)
        if self.others.get(name, "TABLE") != "TABLE":
            raise _Refused(f"ALTER of a {self.others[name]} is not rendered: create it again")
        sharded = self.sharded.get(name)
        if sharded is None:
            st.replace(2, f"{self.qualified(name)} {self.on}")
            return [st.render()]
        columns: set[bool] = set()
        start = 3
        for m in range(3, len(st) + 1):
            if m == len(st) or (st.depth[m] == 0 and st.text(m) == ","):
                verb, noun = st.word(start), st.word(start + 1)
                columns.add(
                    (verb, noun) == ("MODIFY", "COMMENT")
                    or (verb in _COLUMN_OPERATIONS and noun == "COLUMN")
                )
                start = m + 1
        if len(columns) > 1:
            raise _Refused(
                "an ALTER of a sharded table either changes columns (local and Distributed "
                "tables) or stored data (local tables only): split it in two"
            )
        operations = st.source(3, len(st) - 1)
        statements = [f"ALTER TABLE {self.qualified(sharded.local)} {self.on}\n{operations}"]
        if columns == {True}:
            statements.append(f"ALTER TABLE {self.qualified(name)} {self.on}\n{operations}")
        return statements

    def drop(self, st: _Statement) -> list[str]:
        kind = st.word(1)
        if kind not in ("TABLE", "VIEW"):
            raise _Refused("only DROP TABLE and DROP VIEW are rendered")
        n = 2
        if_exists = st.word(n) == "IF" and st.word(n + 1) == "EXISTS"
        if if_exists:
            n += 2
        name = self.object_name(st, n)
        if name in self.sharded and kind != "TABLE":
            raise _Refused(f"{name} is a sharded table: DROP TABLE it")
        sharded = self.sharded.pop(name, None)
        self.others.pop(name, None)
        if sharded is None:
            st.replace(n, f"{self.qualified(name)} {self.on}")
            return [st.render()]
        self.paths.pop(sharded.local, None)
        exists = "IF EXISTS " if if_exists else ""
        return [
            self.flush(name),
            f"DROP TABLE {exists}{self.qualified(name)} {self.on}",
            f"DROP TABLE {exists}{self.qualified(sharded.local)} {self.on} SYNC",
        ]

    def flush(self, name: str) -> str:
        """Send the rows a Distributed table still queues (its inserts are asynchronous by
        default) to the shards, before it is dropped: dropping it would lose them."""
        return f"SYSTEM FLUSH DISTRIBUTED {self.qualified(name)} {self.on}"

    def rename(self, st: _Statement) -> list[str]:
        if st.word(1) != "TABLE":
            raise _Refused("only RENAME TABLE is rendered")
        pairs: list[tuple[str, str]] = []
        n = 2
        while True:
            old = self.object_name(st, n)
            if st.word(n + 1) != "TO":
                raise _Refused(f"expected TO after {old}")
            new = self.object_name(st, n + 2)
            pairs.append((old, new))
            n += 3
            if n >= len(st):
                break
            if st.text(n) != ",":
                raise _Refused(f"unexpected {st.text(n)!r} in RENAME")
            n += 1
        statements: list[str] = []
        for old, new in pairs:
            if self.known(new):
                raise _Refused(f"{new} exists already")
            sharded = self.sharded.pop(old, None)
            if sharded is None:
                kind = self.others.pop(old, "TABLE")
                self.others[new] = kind
                statements.append(
                    f"RENAME TABLE {self.qualified(old)} TO {self.qualified(new)} {self.on}"
                )
                continue
            local = new + LOCAL_SUFFIX
            if self.known(local):
                raise _Refused(f"{local} exists already, and is the name the local table needs")
            moved = _Sharded(local, sharded.key, sharded.comment)
            self.sharded[new] = moved
            self.paths[local] = self.paths.pop(sharded.local)
            statements += [
                self.flush(old),
                f"DROP TABLE IF EXISTS {self.qualified(old)} {self.on}",
                f"RENAME TABLE {self.qualified(sharded.local)} TO {self.qualified(local)} "
                f"{self.on}",
                self.distributed(new, moved, if_not_exists=False),
            ]
        return statements


def _strip_parentheses(expression: str) -> str:
    """``(a, b)`` -> ``a, b`` where one pair of parentheses wraps the whole expression."""
    text = expression.strip()
    if not (text.startswith("(") and text.endswith(")")):
        return text
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and i < len(text) - 1:
            return text  # (a) + (b): the first parenthesis closes early
    return text[1:-1].strip()
