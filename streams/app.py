"""The Faust application of the stream worker, built in one function from one settings object.

:func:`build_app` wires the processor of ``settings.role`` (only ``ingest`` so far) to Kafka:
the app id is the consumer group (one group per role), keys and values are raw bytes (the
Avro codec does the decoding, so a bad record is a dead letter, not a crashed agent), the web
server is off unless a port is given (and then bound to loopback), and Faust creates no topics
(``undertow infra up`` does, from ``infra/topics.yaml``).

Offsets and acknowledgements
----------------------------
Faust commits, every ``commit_interval_s``, the highest offset below which every record of a
partition was *acknowledged*. ``Stream.take_events`` acknowledges a batch when the agent asks
for the next one, and also from a ``finally`` block when the agent raises or is cancelled
(shutdown, crash), i.e. also for a batch that never reached the warehouse. So the agent holds
one extra reference on each record's message (``Message.incref``) for as long as it works on
the batch, and drops it (``Stream.ack``) only after :meth:`Ingest.process` returned, which it
does only once the rows are in ClickHouse and the dead letters in Kafka. A batch abandoned for
any reason keeps a reference, is never acknowledged, and so is never committed: the next
owner of the partition reads it again, and the sink's deduplication makes the replay harmless.

While the warehouse is away the agent simply blocks in the sink's retry loop. Heartbeats
continue (aiokafka sends them from its own task and the inserts run on a thread), so the group
keeps the worker; Faust's buffers fill and fetching pauses. Past ``max_poll_interval_s``
(default 1000 s) without a poll the group would drop the worker; it rejoins by itself once the
write succeeds, and anything not committed is read again.

``stream_wait_empty`` is off: on shutdown and on partition revocation Faust would otherwise
wait until every record handed to the agent is acknowledged, which during an outage means
until the warehouse returns (SIGTERM would hang). Off, Faust commits what is acknowledged (only
written batches), drops its buffers and moves on; the batch in hand stays unacknowledged and
the partition's next owner reads it again. Faust commits only offsets of partitions still
assigned, and a batch finished after its partition moved is a duplicate the sink absorbs.

Example (``undertow worker`` does this)::

    settings = WorkerSettings(bootstrap_servers="127.0.0.1:9092",
                              clickhouse_url="http://127.0.0.1:8123")
    app = build_app(settings)
    run_worker(app)
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from undertow.errors import ConfigError
from undertow.streams.ingest import Enrich, Ingest, SourceRecord, identity
from undertow.streams.settings import WorkerSettings
from undertow.streams.sink import Backoff, EventSink, warehouse_connector

logger = logging.getLogger(__name__)


@dataclass
class WorkerHealth:
    """Set when a processor failed in a way it cannot handle, so the worker exits non-zero."""

    failure: BaseException | None = None


def build_app(
    settings: WorkerSettings,
    *,
    enrich: Enrich | None = None,
    health: WorkerHealth | None = None,
) -> Any:
    """The Faust app (``faust.App``) running the ``settings.role`` processor.

    ``enrich`` is the scorers' hook (see :mod:`undertow.streams.ingest`); it is used when
    ``settings.enrich`` is on, and the identity otherwise. ``health`` records a fatal failure.
    """
    import faust

    if not settings.bootstrap_servers or not settings.clickhouse_url:
        raise ConfigError(
            "the worker needs bootstrap_servers and clickhouse_url "
            f"(got {settings.bootstrap_servers!r} and {settings.clickhouse_url!r})"
        )
    group = settings.consumer_group
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        group,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
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
        consumer_auto_offset_reset=settings.auto_offset_reset,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        stream_wait_empty=False,  # see "Offsets and acknowledgements" above
        producer_acks=-1,
        processing_guarantee="at_least_once",
        worker_redirect_stdouts=False,
    )
    if settings.role == "ingest":
        _add_ingest(app, settings, enrich if settings.enrich and enrich else identity, health)
    return app


def _add_ingest(
    app: Any, settings: WorkerSettings, enrich: Enrich, health: WorkerHealth | None
) -> None:
    backoff = Backoff(settings.retry_backoff_min_s, settings.retry_backoff_max_s)
    sink = EventSink(
        warehouse_connector(
            str(settings.clickhouse_url),
            settings.clickhouse_database,
            settings.clickhouse_user,
            settings.clickhouse_password.get_secret_value(),
            settings.clickhouse_timeout_s,
        ),
        backoff=backoff,
    )
    deadletter_topic = settings.deadletter_topic

    async def publish_dead_letters(values: Sequence[bytes]) -> None:
        producer = app.producer
        pending = [
            await producer.send(deadletter_topic, None, value, None, None, None) for value in values
        ]
        await asyncio.gather(*pending)

    ingest = Ingest(sink, publish_dead_letters, enrich=enrich, backoff=backoff)
    source = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")

    async def ingest_events(stream: Any) -> None:
        batches = stream.take_events(settings.batch_size, within=settings.batch_window_s)
        async for events in batches:
            # Hold each record until its batch is durable; see the module docstring.
            for event in events:
                event.message.incref()
            records = [
                SourceRecord(
                    topic=event.message.topic,
                    partition=event.message.partition,
                    offset=event.message.offset,
                    key=event.message.key,
                    value=event.message.value,
                )
                for event in events
            ]
            try:
                report = await ingest.process(records)
            except Exception as exc:  # a bug, not data or an outage: stop, replay on restart
                logger.critical("the ingest processor failed; stopping the worker", exc_info=True)
                if health is not None:
                    health.failure = exc
                signal.raise_signal(signal.SIGTERM)
                await asyncio.Event().wait()  # parked, unacknowledged, until cancelled
                return
            for event in events:
                await stream.ack(event)
            logger.debug(
                "batch of %d: %d stored, %d dead letters, %.3f s",
                report.records,
                report.stored,
                report.dead_letters,
                report.seconds,
            )

    app.agent(source, name=f"undertow.streams.{settings.role}")(ingest_events)


def run_worker(app: Any, health: WorkerHealth | None = None) -> int:
    """Run ``app`` in the foreground until SIGTERM or SIGINT; returns the exit status.

    Logging stays as the caller configured it. The status is 1 when ``health`` recorded a
    processor failure.
    """
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
