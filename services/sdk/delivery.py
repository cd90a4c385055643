"""The SDK's background thread: builds, encodes, produces, spools and replays events.

Callers only append captured calls to :attr:`Delivery.queue` (a ``collections.deque`` guarded
by a length check, so a full queue drops and counts instead of blocking). Everything else
happens on one daemon thread, which is also the only thread that polls the confluent-kafka
producer, so delivery callbacks run here too.

Where a record is (each record is in exactly one place at a time)::

    queue ──build/encode──> LIVE (in librdkafka) ──ack──> sent
      │                         └──definitive failure──> SPOOL
      └──link down, or librdkafka backing up──────────> SPOOL
    SPOOL (a sealed segment) ──replay──> REPLAYING ──all acked──> segment deleted (replayed)
                                             └──any failure──> stays in SPOOL, retried later

A record enters the spool only when it never reached librdkafka or librdkafka reported its
delivery as failed (after ``message.timeout.ms``), and a spooled record is never spooled
again: a failed replay leaves the segment where it is and remembers which of its records
were acknowledged, so the next replay skips them. With the broker stopped, nothing of a
failed record reached it, so every event arrives exactly once by event id. A broker that dies
while a batch is on the wire may have written it without acknowledging; such a record is
spooled and sent again (at least once; sinks deduplicate by event id). So is a segment that
was fully replayed when the process died before deleting it.

The link is *down* from the first delivery failure, or from librdkafka's "all brokers down",
until an acknowledgement arrives; while down, new records go straight to the spool and the
oldest segment is replayed every ``replay_interval_s`` as a probe.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from undertow.errors import UndertowError
from undertow.services.bus import producer_config
from undertow.services.sdk.config import SdkConfig
from undertow.services.sdk.records import KIND_NAMES, RecordBuilder, RecordError
from undertow.services.sdk.spool import Segment, Spool
from undertow.services.sdk.stats import LOG, Complaints, SdkStats

_BATCH = 512  # captured calls built per loop turn before the producer is served
_IDLE_WAIT_S = 0.02
_FLUSH_CHECK_S = 0.005

# Errors that no retry will fix: the record is counted as failed, not spooled.
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError._INVALID_ARG,
    }
)


class DeliveryError(UndertowError):
    """The delivery thread could not be started."""


@dataclass
class _FlushMarker:
    """Put in the queue by :meth:`Delivery.flush`; done once everything before it is settled."""

    done: threading.Event = field(default_factory=threading.Event)
    live_seq: int = -1  # live records with a lower sequence number must be settled


@dataclass
class _Replay:
    """One segment being replayed."""

    segment: Segment
    pending: set[int]
    failed: int = 0


class Delivery:
    """The queue and the thread behind it; one per :class:`Undertow` client."""

    def __init__(self, config: SdkConfig, builder: RecordBuilder, spool: Spool | None) -> None:
        self.config = config
        self.builder = builder
        self.spool = spool
        self.queue: deque[Any] = deque()
        self.queue_max = config.queue_size
        self.complain = Complaints()
        self._producer: Producer | None = None
        self._make_producer: Callable[[], Producer] | None = None
        if config.bootstrap_servers is not None:
            overrides = {
                "message.timeout.ms": config.message_timeout_ms,
                "error_cb": self._on_error,
                "client.id": f"undertow-sdk-{config.app}",
                **dict(config.producer_overrides),
            }
            conf = producer_config(config.bootstrap_servers, **overrides)
            self._make_producer = partial(Producer, conf)
            try:
                self._producer = self._make_producer()
            except KafkaException as exc:
                raise DeliveryError(f"invalid producer settings: {exc}") from exc
        # Counters, written by the delivery thread only (except the two drop counters).
        self.taken = 0
        self.sent = 0
        self.spooled = 0
        self.replayed = 0
        self.sampled_out = 0
        self.failed = 0
        self.dropped_spool_full = 0
        self.dropped_queue_full = 0
        self.dropped_closed = 0
        self._spool_lost = 0
        self._drop_lock = threading.Lock()
        # Delivery state.
        self.link_up = True
        self._fatal = False
        self._live_seq = 0
        self._outstanding: set[int] = set()
        self._flushes: list[_FlushMarker] = []
        self._replay: _Replay | None = None
        self._replay_acked: dict[int, set[int]] = {}
        self._next_probe = 0.0
        self._spool_written = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="undertow-sdk-delivery", daemon=True)
        self._thread.start()
        self._atexit_registered = config.flush_at_exit
        if config.flush_at_exit:
            atexit.register(self._at_exit)

    # -- caller side ----------------------------------------------------------------------

    def drop_full(self) -> None:
        """Count a record that found the queue full (or the client closed)."""
        with self._drop_lock:
            if self._stop.is_set():
                self.dropped_closed += 1
            else:
                self.dropped_queue_full += 1
        self.complain("queue_full", "queue full (%d); events dropped", self.queue_max)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued before the call was acknowledged or spooled (synced).

        False when that did not happen within ``timeout`` seconds, or the thread is gone.
        """
        if not self._thread.is_alive():
            return not self.queue and not self._outstanding
        marker = _FlushMarker()
        self.queue.append(marker)
        return marker.done.wait(max(0.0, timeout))

    def close(self, timeout: float) -> None:
        """Flush, then stop the thread. Records still in librdkafka's queue go to the spool."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._thread.is_alive() and not self._stop.is_set():
            self.flush(timeout)
        self._stop.set()
        self.queue_max = 0  # later record_* calls count as dropped
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if self._atexit_registered:
            atexit.unregister(self._at_exit)
            self._atexit_registered = False

    def stop_soon(self) -> None:
        """Ask the thread to finish what it holds and stop, without waiting (for GC)."""
        self._stop.set()
        self.queue_max = 0

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):  # never fail an interpreter's exit
            self.close(self.config.exit_timeout_s)

    def stats(self) -> SdkStats:
        # A flush marker waiting in the queue counts for one; iterating the deque to skip
        # it would race with the callers appending to it.
        depth = len(self.queue)
        spool = self.spool
        dropped = self.dropped_queue_full + self.dropped_spool_full + self.dropped_closed
        return SdkStats(
            enqueued=self.taken + depth,
            sent=self.sent,
            spooled=self.spooled,
            replayed=self.replayed,
            dropped=dropped,
            sampled_out=self.sampled_out,
            failed=self.failed,
            queue_depth=depth,
            spool_bytes=spool.size_bytes if spool is not None else 0,
            in_flight=len(self._outstanding),
            truncated=self.builder.truncated,
            dropped_queue_full=self.dropped_queue_full,
            dropped_spool_full=self.dropped_spool_full,
            spool_records=max(0, self.spooled - self.replayed - self._spool_lost),
            link_up=self.link_up,
        )

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn(idle_wait=True)
            except Exception as exc:  # a bug here must not kill delivery for good
                self.complain("loop", "delivery loop error: %s", type(exc).__name__)
        self._drain_for_exit()

    def _turn(self, idle_wait: bool) -> None:
        worked = self._take_batch()
        producer = self._producer
        if producer is not None:
            producer.poll(0)
            if self._fatal:
                self._replace_producer()
            self._maybe_replay()
        if self._spool_written and self.spool is not None:
            self.spool.flush()
            self._spool_written = False
        if self._flushes:
            self._settle_flushes()
        if not worked and idle_wait:
            if producer is not None:
                producer.poll(_FLUSH_CHECK_S if self._flushes else _IDLE_WAIT_S)
            else:
                self._stop.wait(_FLUSH_CHECK_S if self._flushes else _IDLE_WAIT_S)

    def _take_batch(self) -> bool:
        queue = self.queue
        worked = False
        for _ in range(_BATCH):
            try:
                item = queue.popleft()
            except IndexError:
                break
            worked = True
            if type(item) is tuple:
                self.taken += 1
                self._handle(item)
            elif isinstance(item, _FlushMarker):
                item.live_seq = self._live_seq
                self._flushes.append(item)
        return worked

    def _handle(self, item: tuple[Any, ...]) -> None:
        builder = self.builder
        try:
            if not builder.sampled(item[2]):
                self.sampled_out += 1
                return
            key, value = builder.encode(item)
        except RecordError as exc:
            self.failed += 1
            self.complain(
                "invalid_" + _kind(item), "invalid %s event dropped: %s", _kind(item), exc
            )
            return
        except Exception as exc:  # e.g. a redaction hook that raised
            self.failed += 1
            self.complain(
                "build_" + type(exc).__name__,
                "%s event dropped while building it: %s",
                _kind(item),
                type(exc).__name__,
            )
            return
        self._send_live(key, value)

    # -- live delivery --------------------------------------------------------------------

    def _send_live(self, key: bytes, value: bytes) -> None:
        producer = self._producer
        if producer is None:
            self._to_spool(key, value, "no broker configured")
            return
        # With a spool, records skip librdkafka while the link is down or its queue backs up;
        # without one, librdkafka's own buffering (up to message.timeout.ms) is all there is.
        if self.spool is not None and (
            not self.link_up or len(producer) >= self.config.producer_queue_limit
        ):
            self._to_spool(key, value, "broker unreachable")
            return
        seq = self._live_seq
        self._live_seq += 1
        self._outstanding.add(seq)
        try:
            producer.produce(
                self.config.topic, value=value, key=key, on_delivery=partial(self._on_live, seq)
            )
        except BufferError:
            self._outstanding.discard(seq)
            self._to_spool(key, value, "producer queue full")
        except (KafkaException, TypeError, ValueError) as exc:
            self._outstanding.discard(seq)
            self.failed += 1
            self.complain("produce", "produce refused an event: %s", _describe(exc))

    def _on_live(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        self._outstanding.discard(seq)
        if err is None:
            self.sent += 1
            self._link(True)
            return
        if _permanent(err):
            self.failed += 1
            self.complain(f"refused_{err.code()}", "broker refused an event: %s", err.name())
            return
        self._link(False)
        self.complain(f"delivery_{err.code()}", "delivery failed (%s); spooling", err.name())
        self._to_spool(msg.key() or b"", msg.value() or b"", err.name())

    def _to_spool(self, key: bytes, value: bytes, why: str) -> None:
        if self.spool is None:
            self.failed += 1
            self.complain("no_spool", "event lost (%s) and no spool_dir is configured", why)
            return
        try:
            written = self.spool.append(key, value)
        except (OSError, ValueError) as exc:
            self.failed += 1
            self.complain("spool_io", "cannot write the spool: %s", type(exc).__name__)
            return
        if written:
            self.spooled += 1
            self._spool_written = True
        else:
            self.dropped_spool_full += 1
            self.complain(
                "spool_full", "spool full (%d bytes); newest events dropped", self.spool.max_bytes
            )

    def _link(self, up: bool) -> None:
        if up and not self.link_up:
            LOG.info("undertow sdk: broker reachable again")
        elif not up and self.link_up:
            LOG.warning("undertow sdk: broker unreachable; spooling events")
            self._next_probe = time.monotonic() + self.config.replay_interval_s
        self.link_up = up

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's client-level errors (called from poll, on this thread)."""
        if err.fatal():
            self._fatal = True
            self.complain("fatal", "fatal producer error %s; replacing the producer", err.name())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._link(False)
        else:
            self.complain(f"client_{err.code()}", "producer: %s", err.name(), level=logging.INFO)

    def _replace_producer(self) -> None:
        """After a fatal error: hand queued records to the spool and start a fresh producer."""
        old = self._producer
        self._fatal = False
        if old is not None:
            old.purge(in_queue=True, in_flight=False)
            old.poll(0)
        assert self._make_producer is not None
        self._producer = self._make_producer()

    # -- replay ---------------------------------------------------------------------------

    def _maybe_replay(self) -> None:
        spool = self.spool
        producer = self._producer
        if spool is None or producer is None or self._replay is not None:
            return
        now = time.monotonic()
        if not self.link_up and now < self._next_probe:
            return
        segments = spool.sealed()
        if not segments:
            if not spool.active_records:
                return
            sealed = spool.seal()
            if sealed is None:
                return
            segments = [sealed]
        segment = segments[0]
        try:
            contents = spool.read(segment)
        except OSError as exc:
            self.complain("spool_read", "cannot read spool segment: %s", type(exc).__name__)
            self._next_probe = now + self.config.replay_interval_s
            return
        if contents.unreadable_bytes:
            self.complain(
                "spool_torn",
                "%d unreadable bytes at the end of a spool segment",
                contents.unreadable_bytes,
            )
        acked = self._replay_acked.setdefault(segment.seq, set())
        replay = _Replay(segment, set())
        self._replay = replay
        for index, (key, value) in enumerate(contents.records):
            if index in acked:
                continue
            replay.pending.add(index)
            try:
                producer.produce(
                    self.config.topic,
                    value=value,
                    key=key,
                    on_delivery=partial(self._on_replayed, replay, index),
                )
            except (BufferError, KafkaException):
                replay.pending.discard(index)
                replay.failed += 1
                break
        if not replay.pending:
            self._finish_replay(replay)

    def _on_replayed(
        self, replay: _Replay, index: int, err: KafkaError | None, _msg: Message
    ) -> None:
        replay.pending.discard(index)
        if err is None:
            self.replayed += 1
            self._replay_acked[replay.segment.seq].add(index)
            self._link(True)
        elif _permanent(err):
            # The broker will never take it: count it and treat it as settled.
            self.failed += 1
            self._spool_lost += 1
            self._replay_acked[replay.segment.seq].add(index)
        else:
            replay.failed += 1
        if not replay.pending:
            self._finish_replay(replay)

    def _finish_replay(self, replay: _Replay) -> None:
        self._replay = None
        if replay.failed == 0:
            assert self.spool is not None
            self.spool.delete(replay.segment)
            self._replay_acked.pop(replay.segment.seq, None)
        else:
            self._link(False)
            self._next_probe = time.monotonic() + self.config.replay_interval_s

    # -- flush and exit -------------------------------------------------------------------

    def _settle_flushes(self) -> None:
        lowest = min(self._outstanding) if self._outstanding else self._live_seq
        done = [m for m in self._flushes if lowest >= m.live_seq]
        if not done:
            return
        if self.spool is not None:
            try:
                self.spool.sync()
            except OSError as exc:
                self.complain("spool_sync", "cannot sync the spool: %s", type(exc).__name__)
        self._flushes = [m for m in self._flushes if lowest < m.live_seq]
        for marker in done:
            marker.done.set()

    def _drain_for_exit(self) -> None:
        """After close(): build what is left, spool what librdkafka still holds, sync."""
        try:
            while self.queue:
                self._take_batch()
            producer = self._producer
            if producer is not None:
                producer.poll(0)
                # Not yet sent: these failed callbacks (_PURGE_QUEUE) put them in the spool.
                producer.purge(in_queue=True, in_flight=False)
                producer.flush(min(1.0, self.config.exit_timeout_s))
            for marker in self._flushes:
                marker.done.set()
            self._flushes = []
        except Exception as exc:
            self.complain("exit", "error while stopping: %s", type(exc).__name__)
        finally:
            if self.spool is not None:
                try:
                    self.spool.close()
                except OSError as exc:
                    self.complain("spool_close", "cannot close the spool: %s", type(exc).__name__)


def _kind(item: tuple[Any, ...]) -> str:
    kind = item[0]
    return KIND_NAMES[kind] if isinstance(kind, int) and 0 <= kind < len(KIND_NAMES) else "?"


def _permanent(err: KafkaError) -> bool:
    return err.code() in _PERMANENT and not err.retriable()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].name())
    return type(exc).__name__
