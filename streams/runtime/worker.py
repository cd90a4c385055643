"""The worker's handle on Faust: the only object a role talks to.

:class:`Runtime` builds the Faust app from one settings object (the app id is the consumer
group, one per role; keys and values are raw bytes, decoded by the Avro codec so a bad record
is a dead letter, not a crashed agent; the web server is off unless a port is given, and then
bound to loopback; Faust creates no topics: ``undertow infra up`` does), checks the Faust it
runs on (:mod:`~undertow.streams.runtime.edge`), installs the consumer workarounds
(:mod:`~undertow.streams.runtime.seeks`, :mod:`~undertow.streams.runtime.consumer`) and
offers roles what they need and nothing of Faust's shape:

* :meth:`Runtime.consume`: an agent over topics that hands ordered batches to a handler
  (:mod:`~undertow.streams.runtime.intake`); a handler that raises stops the worker, with its
  batch unacknowledged;
* :meth:`Runtime.timer`: a periodic callback that can never kill the worker (an exception is
  logged and the next tick tries again) and does not run while the assignment changes or the
  worker stops;
* :meth:`Runtime.send` and :meth:`Runtime.publish`: produce and wait for the broker (publish
  retries with backoff until it takes them);
* :meth:`Runtime.table` and :meth:`Runtime.keyed`: changelogged state.

Offsets: ``stream_wait_empty`` is off. On shutdown and on partition revocation Faust would
otherwise wait until every record handed to the agent is acknowledged, which during a
warehouse outage means until the warehouse returns (SIGTERM would hang). Off, Faust commits
what is acknowledged (only durable batches), drops its buffers and moves on; the batch in
hand stays unacknowledged and the partition's next owner reads it again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from undertow.errors import ConfigError
from undertow.streams.runtime import edge
from undertow.streams.runtime.consumer import refuse_stale_acks, seek_uncommitted, watch_stalls
from undertow.streams.runtime.intake import Batch, batches
from undertow.streams.runtime.keyed import KeyedStage
from undertow.streams.runtime.positions import Positions
from undertow.streams.runtime.seeks import fence_seeks
from undertow.streams.settings import WorkerSettings
from undertow.streams.sinks.warehouse import Backoff

logger = logging.getLogger(__name__)

Messages = Sequence[tuple[bytes | None, bytes]]
Headers = Sequence[list[tuple[str, bytes]]]


@dataclass
class WorkerHealth:
    """Set when a processor failed in a way it cannot handle, so the worker exits non-zero."""

    failure: BaseException | None = None


class ChangelogTable:
    """A Faust table seen as its ``data`` mapping and a ``send(partition, key, value)`` that
    writes a changelog record to an explicit partition (None deletes)."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.data: MutableMapping[Any, Any] = table.data

    def send(self, partition: int, key: str, value: Mapping[str, Any] | None) -> None:
        if value is None:
            self._table.send_changelog(partition, key, None, value_serializer="raw")
        else:
            self._table.send_changelog(partition, key, value)


class Runtime:
    """The Faust app of one worker and everything roles may ask of it (see the module doc)."""

    def __init__(self, settings: WorkerSettings, health: WorkerHealth | None = None) -> None:
        edge.check_versions()
        import faust

        if not settings.bootstrap_servers or not settings.clickhouse_url:
            raise ConfigError(
                "the worker needs bootstrap_servers and clickhouse_url "
                f"(got {settings.bootstrap_servers!r} and {settings.clickhouse_url!r})"
            )
        self.settings = settings
        self.health = health
        group = settings.consumer_group
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        servers = settings.bootstrap_servers.split(",")
        self.app: Any = faust.App(
            group,
            broker=[f"kafka://{server.strip()}" for server in servers],
            env={},  # the entrypoint read the environment already; Faust must not
            autodiscover=False,
            datadir=str(settings.data_dir / group),
            store="memory://",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=settings.web_port is not None,
            web_bind=settings.web_host,
            web_host=settings.web_host,
            web_port=settings.web_port or 6066,
            topic_allow_declare=False,
            topic_disable_leader=True,
            # Standby replicas off: timers run on every worker and must only see the state
            # of partitions that worker owns.
            table_standby_replicas=0,
            consumer_auto_offset_reset=settings.auto_offset_reset,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=settings.heartbeat_interval_s,
            broker_max_poll_interval=settings.max_poll_interval_s,
            broker_commit_interval=settings.commit_interval_s,
            stream_buffer_maxsize=settings.stream_buffer_maxsize,
            stream_wait_empty=False,  # see "Offsets" in the module doc
            producer_acks=-1,
            producer_max_request_size=settings.state_max_bytes,  # drift checkpoints are large
            consumer_max_fetch_size=settings.state_max_bytes,
            processing_guarantee="at_least_once",
            worker_redirect_stdouts=False,
        )
        app = self.app
        edge.check_edge(app)
        self.backoff = Backoff(settings.retry_backoff_min_s, settings.retry_backoff_max_s)
        self.positions = Positions()
        self.topics: set[str] = set()
        fence_seeks(app)
        refuse_stale_acks(app, self.timer, self.positions)
        watch_stalls(app, self.timer, self.positions)
        seek_uncommitted(
            app,
            self.topics,
            reread_uncommitted=settings.auto_offset_reset == "earliest",
            positions=self.positions,
        )

    # -- what roles use ---------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The consumer generation records are fetched in now."""
        return int(self.app.consumer_generation_id)

    @property
    def stopping(self) -> bool:
        return bool(self.app.should_stop)

    @property
    def rebalancing(self) -> bool:
        return bool(self.app.rebalancing)

    def owned(self, topic: str) -> set[int]:
        """The partitions of ``topic`` this worker owns now (actives only)."""
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def consume(
        self, topics: Sequence[str], name: str, handle: Callable[[Batch], Awaitable[None]]
    ) -> None:
        """An agent over ``topics`` handing ordered micro-batches to ``handle``, which must
        acknowledge each batch once what it came to is durable (or hold it, see
        :class:`~undertow.streams.runtime.keyed.KeyedStage`). A ``handle`` that raises is a
        bug: the worker stops, with the batch unacknowledged, to replay it on restart."""
        self.topics.update(topics)
        settings = self.settings
        source = self.app.topic(*topics, key_serializer="raw", value_serializer="raw")

        async def agent(stream: Any) -> None:
            async for batch in batches(
                self.app, stream, self.positions, settings.batch_size, settings.batch_window_s
            ):
                # busy, not silent, while it works or waits out an outage
                with self.positions.handling(batch.all):
                    try:
                        await handle(batch)
                    except Exception as exc:
                        await self.fail(name, exc)
                        return

        self.app.agent(source, name=name)(agent)

    def timer(
        self,
        interval_s: float,
        name: str,
        tick: Callable[[], Awaitable[None]],
        *,
        while_rebalancing: bool = False,
    ) -> None:
        """Call ``tick`` every ``interval_s``. An exception is logged and the next tick tries
        again (a raising Faust timer would crash the worker); nothing runs while the worker
        stops, nor while the assignment changes unless ``while_rebalancing``."""

        self.app.timer(interval_s, name=name)(
            guarded(self.app, name, tick, while_rebalancing=while_rebalancing)
        )

    async def send(
        self,
        topic: str,
        messages: Messages,
        headers: Headers | None = None,
        partitions: Sequence[int] | None = None,
    ) -> None:
        """Produce ``(key, value)`` messages in order (with ``headers[i]`` each, and to
        partition ``partitions[i]``, if given; else by key) and wait until the broker has
        them all."""
        producer = self.app.producer
        pending = [
            await producer.send(
                topic,
                key,
                value,
                partitions[i] if partitions else None,
                None,
                headers[i] if headers else None,
            )
            for i, (key, value) in enumerate(messages)
        ]
        await asyncio.gather(*pending)

    async def publish(
        self,
        topic: str,
        messages: Messages,
        what: str,
        headers: Headers | None = None,
        partitions: Sequence[int] | None = None,
    ) -> None:
        """:meth:`send`, retried with backoff until the broker takes the messages."""
        if messages:
            await retry(lambda: self.send(topic, messages, headers, partitions), self.backoff, what)

    def table(self, name: str, partitions: int, help_text: str) -> ChangelogTable:
        """A changelogged table with JSON values (in memory, rebuilt from its changelog)."""
        # no key/value types: keys and values go through Faust's json codec as they are
        return ChangelogTable(self.app.Table(name, partitions=partitions, help=help_text))

    def keyed(self, name: str, partitions: int, help_text: str) -> KeyedStage:
        """The checkpointed keyed state of ``name`` (drift, policy)."""
        return KeyedStage(self, name, partitions, help_text)

    async def fail(self, what: str, exc: BaseException) -> None:
        """A processor bug: stop the worker (records in hand stay unacknowledged, read again)."""
        logger.critical("the %s failed; stopping the worker", what, exc_info=exc)
        if self.health is not None:
            self.health.failure = exc
        signal.raise_signal(signal.SIGTERM)
        await asyncio.Event().wait()  # parked, unacknowledged, until cancelled

    def run(self) -> int:
        """Run in the foreground until SIGTERM or SIGINT; returns the exit status (1 when a
        processor failed). Logging stays as the caller configured it."""
        return run_worker(self.app, self.health)


def guarded(
    app: Any, name: str, tick: Callable[[], Awaitable[None]], *, while_rebalancing: bool = False
) -> Callable[[], Awaitable[None]]:
    """``tick`` as a Faust timer may run it: skipped while ``app`` stops (or rebalances,
    unless ``while_rebalancing``), and never raising (a raising Faust timer crashes the
    worker): a failure is logged and the next tick tries again."""

    async def run_tick() -> None:
        if app.should_stop or (app.rebalancing and not while_rebalancing):
            return
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.error("timer %s failed; retrying on the next tick", name, exc_info=True)

    return run_tick


async def retry(send: Callable[[], Awaitable[Any]], backoff: Backoff, what: str) -> None:
    """Call ``send`` until it succeeds, waiting ``backoff``'s delays between failures."""
    delays = backoff.delays()
    while True:
        try:
            await send()
            return
        except Exception as exc:  # the producer's errors vary by client and cause
            logger.warning("publishing %s failed, retrying: %s: %s", what, type(exc).__name__, exc)
            await asyncio.sleep(next(delays))


def run_worker(app: Any, health: WorkerHealth | None = None) -> int:
    """Run the Faust ``app`` in the foreground until SIGTERM or SIGINT; the exit status."""
    import faust

    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    else:  # pragma: no cover - execute_from_commandline always exits
        code = 0
    if health is not None and health.failure is not None:
        return 1
    return code
