"""The action service: consumers of ``undertow.actions.v1`` that run the action workers, and
the registry's mirror into ClickHouse (:mod:`undertow.services.registry.mirror`).

Each action type is its own consumer group and thread, so a fine-tune that runs for minutes
never delays a rollback. For every request of its type a consumer:

1. skips it if the ``actions`` table already holds a final answer to it (``succeeded``,
   ``failed`` or ``skipped`` with this ``request_id``): a request is carried out once, even
   when redelivered after a crash;
2. writes ``started``, runs the worker, writes the final answer (its figures in ``result``);
3. commits the request's offset only then.

Answers go to the topic (key: the target) and to the ``actions`` table, with ids derived from
the request and phase, so writing one twice leaves one row. Undecodable records go to the
dead-letter topic with the reason. Nothing here logs prompt text.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message

from undertow.backoff import Backoff
from undertow.errors import UndertowError
from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.schemas.events import action
from undertow.services.actions.settings import ActionSettings
from undertow.services.actions.worker import (
    ActionWorker,
    Outcome,
    WorkerContext,
    worker_class,
)
from undertow.services.bus import CLIENT_LOG, BusError, publish
from undertow.services.registry.client import Follower, RegistryClient
from undertow.services.registry.mirror import RegistryMirror
from undertow.services.warehouse.rows import ACTION_COLUMNS, action_row

log = logging.getLogger("undertow.services.actions")
RESULT_NAMESPACE = uuid.UUID("b1c7e0d4-2f6a-4c8e-9a3b-7d5e1f2a4c60")
FINAL_PHASES = ("succeeded", "failed", "skipped")


def now_us() -> int:
    return time.time_ns() // 1000


def answer(
    request: Mapping[str, Any], phase: str, outcome: Outcome | None = None
) -> dict[str, Any]:
    """The result record of ``request`` in ``phase``; its id derives from both."""
    ident = f"{request['event_id']}:{phase}"
    return action(
        action_type=str(request["action_type"]),
        target=str(request["target"]),
        phase=phase,
        app=str(request.get("app") or "undertow"),
        environment=str(request.get("environment") or "production"),
        request_id=str(request["event_id"]),
        reason=outcome.detail if outcome else "",
        parameters=dict(request.get("parameters") or {}),
        result=dict(outcome.result) if outcome else {},
        event_id=str(uuid.uuid5(RESULT_NAMESPACE, ident)),
        trace_id=str(request.get("trace_id") or "") or None,
        parent_span_id=str(request.get("span_id") or "") or None,
    )


class ActionConsumer:
    """One consumer group running one worker over the actions topic."""

    def __init__(
        self,
        worker: ActionWorker,
        context: WorkerContext,
        bootstrap: str,
        codec: AvroCodec | None = None,
    ) -> None:
        self.worker = worker
        self.context = context
        self.settings = context.settings
        self.bootstrap = bootstrap
        self.codec = codec or AvroCodec()
        self.handled: dict[str, int] = {"succeeded": 0, "failed": 0, "skipped": 0, "repeats": 0}
        self.dead_letters = 0

    @property
    def group(self) -> str:
        return f"{self.settings.group_prefix}-{self.worker.action_type}"

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; a broker outage is retried, never fatal."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # A request is handled inside the poll loop: allow the longest one, plus room.
                "max.poll.interval.ms": int((self.worker.max_seconds + 300) * 1000),
                "logger": CLIENT_LOG,
            }
        )
        consumer.subscribe([self.settings.actions_topic])
        log.info("%s: consuming %s", self.group, self.settings.actions_topic)
        try:
            while not stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    log.warning("%s: %s", self.group, msg.error())
                    continue
                self._retrying(partial(self.take, msg), stop)
                consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            log.error("%s stopped: %s", self.group, exc)
            raise
        finally:
            consumer.close()
            self.worker.close()

    def _retrying(self, step: Callable[[], None], stop: threading.Event) -> None:
        """Run ``step`` until it succeeds: the broker or warehouse being away is waited out,
        so no request is passed over."""
        delays = Backoff(0.5, 30.0).delays()
        while True:
            try:
                step()
                return
            except (BusError, UndertowError, OSError) as exc:
                if stop.is_set():
                    raise
                delay = next(delays)
                log.warning("%s: %s; retrying in %.1f s", self.group, exc, delay)
                stop.wait(delay)

    def take(self, msg: Message) -> None:
        """Handle one record of the actions topic."""
        value = msg.value()
        try:
            if value is None:
                raise DecodeError("empty value (tombstone): expected an action record")
            request = self.codec.decode(value, "action").record
        except DecodeError as exc:
            self._dead_letter(msg, str(exc), type(exc).__name__)
            return
        if (
            request.get("phase") != "requested"
            or request.get("action_type") != self.worker.action_type
        ):
            return
        if self._answered(str(request["event_id"])):
            self.handled["repeats"] += 1
            log.info("%s: request %s answered already", self.group, request["event_id"])
            return
        self._emit([answer(request, "started")], also_store=[request])
        began = time.monotonic()

        def progress(figures: Mapping[str, str]) -> None:
            log.info(
                "%s %s: %s",
                self.worker.action_type,
                request["target"],
                ", ".join(f"{k}={v}" for k, v in figures.items()),
            )

        try:
            outcome = self.worker.handle(request, progress)
        except (UndertowError, ValueError) as exc:
            outcome = Outcome("failed", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a worker's bug fails the request, not the service
            log.exception("%s worker failed on %s", self.worker.action_type, request["event_id"])
            outcome = Outcome("failed", f"unexpected {type(exc).__name__}: {exc}")
        result = dict(outcome.result)
        result.setdefault("seconds", f"{time.monotonic() - began:.3f}")
        outcome = Outcome(outcome.phase, outcome.detail, result)
        self._emit([answer(request, outcome.phase, outcome)])
        self.handled[outcome.phase] += 1
        log.info(
            "%s %s: %s (%s)",
            self.worker.action_type,
            request["target"],
            outcome.phase,
            outcome.detail,
        )

    def _answered(self, request_id: str) -> bool:
        client = self.context.warehouse()
        rows = client.query(
            "SELECT count() FROM actions FINAL WHERE request_id = {id:String} "
            "AND phase IN {phases:Array(String)}",
            parameters={"id": request_id, "phases": list(FINAL_PHASES)},
        ).result_rows
        return bool(rows and rows[0][0])

    def _emit(
        self, records: Sequence[Mapping[str, Any]], also_store: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """Write answers to the topic and the table (both idempotent by id); ``also_store``
        goes to the table only (the request itself, which is on the topic already)."""
        publish(
            self.bootstrap,
            self.settings.actions_topic,
            [(str(r["target"]).encode(), self.codec.encode("action", r)) for r in records],
        )
        stored = [*also_store, *records]
        rows = [action_row(r) for r in stored]
        token = hashlib.blake2b(
            ("actions:" + ",".join(str(r["event_id"]) for r in stored)).encode(), digest_size=16
        ).hexdigest()
        self.context.warehouse().insert(
            "actions",
            rows,
            column_names=list(ACTION_COLUMNS),
            settings={"insert_deduplication_token": token},
        )

    def _dead_letter(self, msg: Message, reason: str, error_type: str) -> None:
        from undertow.streams.dead_letters import dead_letter

        record = dead_letter(
            reason=reason,
            error_type=error_type,
            processor=f"actions.{self.worker.action_type}",
            topic=msg.topic() or self.settings.actions_topic,
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            payload=msg.value() or b"",
        )
        publish(
            self.bootstrap,
            self.settings.deadletter_topic,
            [(None, self.codec.encode("dead_letter", record))],
        )
        self.dead_letters += 1
        log.warning("%s: dead letter at offset %s: %s", self.group, msg.offset(), reason)


def review_experiments(context: WorkerContext, bootstrap: str, stop: threading.Event) -> None:
    """Every ``ab_review_interval_s``, request what the reports of ``act``-marked A/B tests
    call for (:func:`undertow.services.experiments.review.review`)."""
    from undertow.services.experiments.review import review

    settings = context.settings
    codec = AvroCodec()
    while not stop.wait(settings.ab_review_interval_s):
        try:
            requests = review(
                context.registry.load(),
                context.warehouse(),
                alpha=settings.ab_alpha,
                min_samples=settings.ab_min_samples,
            )
            if requests:
                publish(
                    bootstrap,
                    settings.actions_topic,
                    [(str(r["target"]).encode(), codec.encode("action", r)) for r in requests],
                )
        except (UndertowError, OSError) as exc:  # the next round tries again
            log.warning("A/B review failed: %s", exc)


def run_service(
    settings: ActionSettings,
    stop: threading.Event,
    *,
    bootstrap: str,
    warehouse: Callable[[], Any],
) -> dict[str, dict[str, int]]:
    """Run every configured worker (one thread and consumer group each) and the registry
    mirror until ``stop`` is set; returns each worker's counts."""
    registry = RegistryClient(bootstrap, topic=settings.registry_topic)
    local = threading.local()

    def client() -> Any:  # clickhouse-connect clients are not shared between threads
        if getattr(local, "client", None) is None:
            local.client = warehouse()
        return local.client

    context = WorkerContext(settings, registry, client, now_us)
    follower: Follower | None = None
    if settings.mirror_registry:
        follower = Follower(bootstrap, topic=settings.registry_topic)
        follower.on_change(RegistryMirror(client))
        follower.start(wait_s=None)
    consumers = [
        ActionConsumer(worker_class(name)(context), context, bootstrap)
        for name in settings.worker_names()
    ]
    threads = [
        threading.Thread(
            target=c.run, args=(stop,), name=f"actions-{c.worker.action_type}", daemon=True
        )
        for c in consumers
    ]
    if settings.ab_review_interval_s > 0:
        threads.append(
            threading.Thread(
                target=review_experiments,
                args=(context, bootstrap, stop),
                name="actions-ab-review",
                daemon=True,
            )
        )
    for t in threads:
        t.start()
    try:
        while not stop.is_set() and any(t.is_alive() for t in threads):
            stop.wait(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        if follower is not None:
            follower.close()
    return {c.worker.action_type: {**c.handled, "dead_letters": c.dead_letters} for c in consumers}
