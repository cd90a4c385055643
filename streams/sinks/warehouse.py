"""The ClickHouse sink: batched, idempotent writes of decoded events and their scores.

A batch of :class:`SinkItem` (decoded record plus its Kafka coordinates, and the scoring
output when the enrich processor ran) goes to four tables, in this order: ``events`` (every
item), then ``scores`` and ``embeddings`` (items that were scored), then ``trace_spans``
(every item: what it adds to its trace, :mod:`undertow.streams.traces`). For each table the batch
is split by source partition; each partition's share is one insert block whose
``insert_deduplication_token`` is
derived from the block's content: topic, partition, first and last offset, and a digest of the
event ids. Replaying the same offsets after a crash therefore rebuilds the same token and
ClickHouse drops the block (``non_replicated_deduplication_window`` on the table). Where batch
boundaries differ on replay, the duplicates collapse in the ReplacingMergeTree by ``event_id``:
queries with ``FINAL`` never see them. The event-id digest keeps a recreated topic (offsets
starting again at 0) from colliding with tokens of the old one.

Failures are sorted in two kinds. A *transient* one (warehouse unreachable, timeouts, server
overloaded, schema not migrated yet) is retried with capped exponential backoff until it
succeeds or the task is cancelled: nothing is dropped and, because the caller acknowledges
records only after :meth:`EventSink.write` returned, nothing is committed meanwhile. A
*rejected* row (a value the column cannot hold, a record that does not map to a row) cannot
succeed on retry; it is isolated (a refused block is retried row by row) and handed back so the
processor sends it to the dead-letter topic instead of stalling the stream on it.

Inserts are blocking HTTP calls; they run on one dedicated thread so the event loop (Kafka
heartbeats, Faust's timers) stays responsive while ClickHouse is slow or away.

>>> dedup_token("events", "undertow.events.v1", 3, 100, 149, ["a", "b"]).rsplit(":", 1)[0]
'events:undertow.events.v1:3:100-149:2'
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DataError

from undertow.backoff import Backoff
from undertow.errors import UndertowError
from undertow.services.warehouse.rows import EVENT_COLUMNS, event_row
from undertow.streams.records import SinkItem
from undertow.streams.scoring.scored import (
    EMBEDDING_COLUMNS,
    SCORE_COLUMNS,
    Scored,
    embedding_rows,
    scores_row,
)
from undertow.streams.traces import TRACE_SPAN_COLUMNS, TraceError, span_row

if TYPE_CHECKING:
    from undertow.streams.settings import WorkerSettings

logger = logging.getLogger(__name__)

# ClickHouse error codes that mean "this data cannot be stored", not "try again later":
# CANNOT_PARSE_*, TYPE_MISMATCH, CANNOT_CONVERT_TYPE, INCORRECT_DATA, ARGUMENT_OUT_OF_BOUND,
# VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, CANNOT_PARSE_UUID, TOO_LARGE_STRING_SIZE, ...
DATA_ERROR_CODES: frozenset[int] = frozenset(
    {6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131, 321, 376, 377, 441, 675, 676}
)
_CODE_IN_MESSAGE = re.compile(r"\b[Cc]ode:?\s*(\d+)")

Failure = Literal["transient", "rejected"]


class SinkError(UndertowError):
    """The sink was misused (closed, or given items it cannot handle)."""


@dataclass(frozen=True)
class Rejected:
    """An item the warehouse can never store, with the reason, for the dead-letter topic."""

    item: SinkItem
    reason: str
    error_type: str


@dataclass(frozen=True)
class Table:
    """Where a block goes: a table, its columns, and how an item becomes rows of it."""

    name: str
    columns: tuple[str, ...]
    rows: Callable[[SinkItem], list[list[Any]]]


def _event_rows(item: SinkItem) -> list[list[Any]]:
    return [event_row(item.record, item.topic, item.partition, item.offset)]


def _score_rows(item: SinkItem) -> list[list[Any]]:
    return [] if item.scores is None else [scores_row(item.record, item.scores)]


def _embedding_rows(item: SinkItem) -> list[list[Any]]:
    return [] if item.scores is None else embedding_rows(item.record, item.scores)


def _span_rows(item: SinkItem) -> list[list[Any]]:
    scored = item.scores.trace_fields() if isinstance(item.scores, Scored) else None
    try:
        return [span_row(item.record, scored)]
    except TraceError as exc:
        raise ValueError(str(exc)) from exc


EVENTS = Table("events", EVENT_COLUMNS, _event_rows)
SCORES = Table("scores", SCORE_COLUMNS, _score_rows)
EMBEDDINGS = Table("embeddings", EMBEDDING_COLUMNS, _embedding_rows)
TRACE_SPANS = Table("trace_spans", TRACE_SPAN_COLUMNS, _span_rows)
DEFAULT_TABLES: tuple[Table, ...] = (EVENTS, SCORES, EMBEDDINGS, TRACE_SPANS)


@dataclass(frozen=True)
class Block:
    """The rows of one source partition within a batch for one table: one insert, one token.

    ``items[i]`` is the item ``rows[i]`` came from (an item may give several rows).
    """

    topic: str
    partition: int
    items: tuple[SinkItem, ...]
    rows: tuple[tuple[Any, ...], ...]
    token: str
    table: str = "events"
    columns: tuple[str, ...] = EVENT_COLUMNS

    def describe(self) -> str:
        """For logs: the table, row count and source offsets (never row contents)."""
        if not self.items:
            return f"{len(self.rows)} {self.table} rows"
        return (
            f"{len(self.rows)} {self.table} rows ({self.topic}[{self.partition}] offsets "
            f"{self.first_offset}-{self.last_offset})"
        )

    @property
    def first_offset(self) -> int:
        return self.items[0].offset

    @property
    def last_offset(self) -> int:
        return self.items[-1].offset


@dataclass
class WriteResult:
    """What one :meth:`EventSink.write` did."""

    rows: int = 0
    blocks: int = 0
    attempts: int = 0
    retries: int = 0
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class SinkStats:
    """Running totals since the sink was built (for logs and benchmarks)."""

    rows: int = 0
    blocks: int = 0
    retries: int = 0
    rejected: int = 0
    seconds_waiting: float = 0.0


def dedup_token(
    table: str, topic: str, partition: int, first: int, last: int, event_ids: Sequence[str]
) -> str:
    """The ``insert_deduplication_token`` of a block: same offsets and events, same token."""
    digest = hashlib.blake2b("\n".join(event_ids).encode(), digest_size=12).hexdigest()
    return f"{table}:{topic}:{partition}:{first}-{last}:{len(event_ids)}:{digest}"


def classify(exc: BaseException) -> Failure:
    """``rejected`` when the data itself cannot be stored, ``transient`` otherwise.

    Unknown errors count as transient: retrying a healthy row forever stalls the stream
    visibly, while dead-lettering it on a misjudged error would lose it from the warehouse.
    """
    if isinstance(exc, DataError):
        return "rejected"
    if isinstance(exc, ClickHouseError):
        code = getattr(exc, "code", None)
        if code is None:
            match = _CODE_IN_MESSAGE.search(str(exc))
            code = int(match.group(1)) if match else None
        return "rejected" if code in DATA_ERROR_CODES else "transient"
    if isinstance(exc, TypeError | ValueError | OverflowError | struct.error | KeyError):
        # Raised by clickhouse-connect while serialising a value into its column type.
        return "rejected"
    return "transient"


def _describe(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EventSink:
    """Writes :class:`SinkItem` batches into ``events``, ``scores`` and ``embeddings``,
    idempotently.

    ``connect`` opens a clickhouse-connect client; it is called lazily and again after a
    transient failure, so the sink survives a warehouse restart. ``sleep`` is awaited between
    retries (tests pass a fake clock). ``tables`` are written in order; an item a table
    rejects is left out of the tables after it.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        *,
        tables: Sequence[Table] = DEFAULT_TABLES,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        log_every_s: float = 10.0,
    ) -> None:
        self._connect = connect
        self.tables = tuple(tables)
        self.backoff = backoff or Backoff(0.2, 5.0)
        self._sleep = sleep
        self._log_every_s = log_every_s
        self._client: Client | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="undertow-sink")
        self._closed = False
        self.stats = SinkStats()

    # -- pure part -----------------------------------------------------------------------

    def prepare(
        self, items: Sequence[SinkItem], table: Table = EVENTS
    ) -> tuple[list[Block], list[Rejected]]:
        """Map items to rows of ``table`` and group them into one block per source partition.

        Items whose record does not map to a row are returned as rejected. Within a block the
        items keep their offset order; blocks come in order of first appearance.
        """
        grouped: dict[tuple[str, int], list[tuple[SinkItem, tuple[Any, ...]]]] = {}
        rejected: list[Rejected] = []
        for item in items:
            try:
                rows = [tuple(row) for row in table.rows(item)]
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                rejected.append(
                    Rejected(item, f"not a {table.name} row: {_describe(exc)}", type(exc).__name__)
                )
                continue
            if rows:
                pairs = grouped.setdefault((item.topic, item.partition), [])
                pairs.extend((item, row) for row in rows)
        blocks = [
            self._block(table, topic, partition, sorted(pairs, key=lambda p: p[0].offset))
            for (topic, partition), pairs in grouped.items()
        ]
        return blocks, rejected

    def _block(
        self,
        table: Table,
        topic: str,
        partition: int,
        pairs: Sequence[tuple[SinkItem, tuple[Any, ...]]],
    ) -> Block:
        block_items = tuple(item for item, _ in pairs)
        token = dedup_token(
            table.name,
            topic,
            partition,
            block_items[0].offset,
            block_items[-1].offset,
            [str(item.record["event_id"]) for item in block_items],
        )
        return Block(
            topic,
            partition,
            block_items,
            tuple(row for _, row in pairs),
            token,
            table.name,
            table.columns,
        )

    # -- writing -------------------------------------------------------------------------

    async def write(self, items: Sequence[SinkItem]) -> WriteResult:
        """Store ``items``; returns once every storable row is durable in ClickHouse.

        Retries transient failures forever (cancel the task to give up); items with a row
        that can never be stored come back in ``WriteResult.rejected``.
        """
        if self._closed:
            raise SinkError("the sink is closed")
        result = WriteResult()
        remaining = list(items)
        for table in self.tables:
            blocks, rejected = self.prepare(remaining, table)
            result.rejected += rejected
            for block in blocks:
                await self._write_block(block, result)
            if result.rejected:
                out = {(r.item.topic, r.item.partition, r.item.offset) for r in result.rejected}
                remaining = [i for i in remaining if (i.topic, i.partition, i.offset) not in out]
        unique = {(r.item.topic, r.item.partition, r.item.offset): r for r in result.rejected}
        result.rejected = list(unique.values())
        self.stats.rows += result.rows
        self.stats.blocks += result.blocks
        self.stats.retries += result.retries
        self.stats.rejected += len(result.rejected)
        return result

    async def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str
    ) -> int:
        """Insert rows that come from no single event (trace rows), with the same retries.

        Returns the rows stored. Rows the warehouse refuses for their data are logged and left
        out: they are derived, so nothing can replay them from a dead-letter topic.
        """
        if self._closed:
            raise SinkError("the sink is closed")
        if not rows:
            return 0
        result = WriteResult()
        block = Block("", -1, (), tuple(tuple(r) for r in rows), token, table, tuple(columns))
        await self._write_block(block, result)
        self.stats.rows += result.rows
        self.stats.retries += result.retries
        return result.rows

    async def _write_block(self, block: Block, result: WriteResult) -> None:
        delays = self.backoff.delays()
        waited_since: float | None = None
        last_log = 0.0
        while True:
            result.attempts += 1
            try:
                await self._run(self._insert, block)
            except Exception as exc:
                kind = classify(exc)
                if kind == "rejected":
                    await self._isolate(block, exc, result)
                    return
                now = time.monotonic()
                waited_since = waited_since or now
                if now - last_log >= self._log_every_s:
                    last_log = now
                    logger.warning(
                        "warehouse write of %s failed, retrying for %.0f s so far: %s",
                        block.describe(),
                        now - waited_since,
                        _describe(exc, 300),
                    )
                self._client = None  # reconnect: the server may have restarted elsewhere
                result.retries += 1
                await self._sleep(next(delays))
                continue
            if waited_since is not None:
                waited = time.monotonic() - waited_since
                self.stats.seconds_waiting += waited
                logger.warning("warehouse write succeeded again after %.1f s", waited)
            result.rows += len(block.rows)
            result.blocks += 1
            return

    async def _isolate(self, block: Block, exc: BaseException, result: WriteResult) -> None:
        """A refused block: one row alone is rejected; several are retried one by one."""
        if len(block.rows) == 1:
            # The type and code only: the server's message may quote the row's text.
            if not block.items:
                logger.error(
                    "warehouse refused a derived %s row, left out: %s (code %s)",
                    block.table,
                    type(exc).__name__,
                    getattr(exc, "code", None),
                )
                return
            item = block.items[0]
            logger.warning(
                "warehouse refused the %s row of the event at %s[%d]@%d: %s (code %s)",
                block.table,
                item.topic,
                item.partition,
                item.offset,
                type(exc).__name__,
                getattr(exc, "code", None),
            )
            result.rejected.append(
                Rejected(
                    item,
                    f"warehouse refused the {block.table} row: {_describe(exc)}",
                    type(exc).__name__,
                )
            )
            return
        for i, row in enumerate(block.rows):
            if block.items:
                pair = [(block.items[i], row)]
                single = self._block(_table_of(block), block.topic, block.partition, pair)
            else:
                single = replace(block, rows=(row,), token=f"{block.token}:{i}")
            await self._write_block(single, result)

    async def _run(self, fn: Callable[[Block], None], block: Block) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, fn, block)

    def _insert(self, block: Block) -> None:
        """One insert attempt, on the sink thread."""
        if self._client is None:
            self._client = self._connect()
        self._client.insert(
            block.table,
            block.rows,
            column_names=list(block.columns),
            settings={"insert_deduplication_token": block.token},
        )

    def close(self) -> None:
        """Stop the sink thread (after the attempt in flight, if any) and drop the client."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection pool may fail; nothing to do
                logger.debug("closing the warehouse client failed", exc_info=True)


def _table_of(block: Block) -> Table:
    """A Table that rebuilds ``block``'s tokens (rows are already mapped)."""
    return Table(block.table, block.columns, lambda item: [])


def warehouse_connector(
    url: str,
    database: str,
    username: str,
    password: str,
    timeout_s: float,
) -> Callable[[], Client]:
    """A ``connect`` callable for :class:`EventSink` with bounded connect/receive times."""
    from undertow.services.warehouse.client import connect

    def open_client() -> Client:
        return connect(
            url,
            database=database,
            username=username,
            password=password,
            connect_timeout=min(timeout_s, 10.0),
            send_receive_timeout=timeout_s,
            autogenerate_session_id=False,
        )

    return open_client


def digest(text: str) -> str:
    """A short stable digest of ``text``: the insert deduplication token of derived rows (a
    replay that emits the same rows builds the same token)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def warehouse_sink(settings: WorkerSettings) -> EventSink:
    """The sink a worker's settings describe (warehouse, credentials, timeouts, retries)."""
    return EventSink(
        warehouse_connector(
            str(settings.clickhouse_url),
            settings.clickhouse_database,
            settings.clickhouse_user,
            settings.clickhouse_password.get_secret_value(),
            settings.clickhouse_timeout_s,
        ),
        backoff=Backoff(settings.retry_backoff_min_s, settings.retry_backoff_max_s),
    )


__all__ = [
    "DEFAULT_TABLES",
    "EMBEDDINGS",
    "EVENTS",
    "SCORES",
    "TRACE_SPANS",
    "Backoff",
    "Block",
    "EventSink",
    "Rejected",
    "SinkError",
    "SinkItem",
    "SinkStats",
    "Table",
    "WriteResult",
    "classify",
    "dedup_token",
    "digest",
    "warehouse_connector",
    "warehouse_sink",
]
