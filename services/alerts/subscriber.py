"""Kafka subscribers: one consumer per channel from ``undertow.alerts.v1`` to its receiver.

Each channel runs in its own thread with its own consumer group (``undertow-alerts-<channel>``)
and feeds a :class:`~undertow.services.alerts.notifier.Notifier`, which decides what to send
and when; a :class:`~undertow.services.alerts.delivery.Deliverer` sends it. Per record:

* undecodable bytes, or a record that is not a usable alert, go to the dead-letter topic
  (``undertow.deadletter.v1``) with the reason, topic, partition and offset, as
  ``streams/dead_letters.py`` writes them (processor ``alerts-<channel>``);
* an alert the channel refuses for good (PagerDuty's 400) is logged, counted and dead-lettered
  with the receiver's reason; it is not retried;
* while a channel stays unreachable past one delivery's bounds, the subscriber pauses its
  partitions and retries the same notification in rounds (backing off up to
  ``outage_backoff_max_s``, honouring Retry-After) until it goes through: an outage holds
  alerts in Kafka and loses none.

Offsets and duplicates
----------------------
An offset is committed only once every record up to it is *settled*: delivered, refused for
good and dead-lettered, suppressed as a repeat, or dead-lettered as undecodable. Records held
in a grouping window are not settled, so they hold the committed position back; the offsets
settled above that position travel in the commit's metadata, and a restarted subscriber skips
them. Commits are synchronous right after each delivery, so **a crash re-sends at most one
notification**: the one delivered but not yet committed (the webhook's ``Idempotency-Key`` and
PagerDuty's ``dedup_key`` let receivers drop even that one).

The dedup memory (which keys are firing) lives in the process. On partition assignment it is
rebuilt from the last ``state_lookback`` records before the committed position of each
partition; a key whose last record is older than that may page once more after a restart.
All records of one dedup key share a partition (the key is the Kafka key), so one process
sees the whole history of each incident it handles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from undertow.backoff import Backoff
from undertow.errors import ConfigError
from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.services.alerts.alert import Alert
from undertow.services.alerts.channel import Channel, Notification, create
from undertow.services.alerts.delivery import Deliverer, DeliveryResult
from undertow.services.alerts.errors import AlertError, SubscriberError
from undertow.services.alerts.notifier import Notifier, NotifierStats
from undertow.services.alerts.settings import AlertSettings
from undertow.services.bus import CLIENT_LOG, BusError, producer_config, read_range
from undertow.streams.dead_letters import dead_letter

log = logging.getLogger(__name__)

METADATA_PREFIX = "undertow-alerts/1:"
METADATA_MAX_CHARS = 3000  # brokers keep up to offset.metadata.max.bytes (4096 by default)
_DEAD_LETTER_FLUSH_S = 10.0


# ------------------------------------------------------------------------------- offsets


@dataclass(frozen=True)
class SourceRef:
    """Where an alert came from (and its bytes, for a dead letter)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = field(default=None, repr=False)
    value: bytes | None = field(default=None, repr=False)


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)  # settled offsets above the position
    next: int = -1  # one past the highest offset seen; -1 before the first
    committed: tuple[int, str] | None = None

    def position(self) -> int | None:
        if self.pending:
            return min(self.pending)
        return self.next if self.next >= 0 else None


class OffsetTracker:
    """Per partition: the offsets taken but not settled, and what may be committed.

    The position to commit is the lowest unsettled offset (or one past the last offset seen);
    the metadata lists the settled offsets above it, relative to it, as ranges
    (``undertow-alerts/1:1-3,5``), cut to ``METADATA_MAX_CHARS``.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _Partition] = {}

    def seen(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.setdefault((topic, partition), _Partition())
        part.pending.add(offset)
        part.next = max(part.next, offset + 1)

    def settle(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.get((topic, partition))
        if part is None or offset not in part.pending:
            return
        part.pending.discard(offset)
        part.done.add(offset)
        position = part.position()
        if position is not None:
            part.done = {o for o in part.done if o > position}

    def unsettled(self) -> int:
        return sum(len(p.pending) for p in self._parts.values())

    def to_commit(self) -> list[tuple[str, int, int, str]]:
        """``(topic, partition, position, metadata)`` for each partition that moved."""
        out = []
        for (topic, partition), part in self._parts.items():
            position = part.position()
            if position is None:
                continue
            entry = (position, encode_metadata(position, part.done))
            if entry != part.committed:
                out.append((topic, partition, *entry))
        return out

    def committed(self, items: Sequence[tuple[str, int, int, str]]) -> None:
        for topic, partition, position, metadata in items:
            part = self._parts.get((topic, partition))
            if part is not None:
                part.committed = (position, metadata)

    def forget(self, topic: str, partition: int) -> None:
        self._parts.pop((topic, partition), None)


def encode_metadata(position: int, done: set[int]) -> str:
    """The settled offsets above ``position`` as relative ranges; '' when there are none."""
    rel = sorted(o - position for o in done if o > position)
    if not rel:
        return ""
    ranges: list[str] = []
    start = prev = rel[0]
    for value in [*rel[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    text = METADATA_PREFIX
    for index, item in enumerate(ranges):
        piece = item if index == 0 else "," + item
        if len(text) + len(piece) > METADATA_MAX_CHARS:
            break  # what does not fit is read again after a restart
        text += piece
    return text if text != METADATA_PREFIX else ""


def decode_metadata(position: int, metadata: str | None) -> set[int]:
    """The absolute offsets :func:`encode_metadata` wrote; empty for anything else."""
    if not metadata or not metadata.startswith(METADATA_PREFIX) or position < 0:
        return set()
    offsets: set[int] = set()
    try:
        for item in metadata[len(METADATA_PREFIX) :].split(","):
            first, _, last = item.partition("-")
            low, high = int(first), int(last or first)
            if low < 1 or high < low or high - low > 1_000_000:
                return set()
            offsets.update(range(position + low, position + high + 1))
    except ValueError:
        return set()
    return offsets


# ---------------------------------------------------------------------------- subscriber


@dataclass
class SubscriberStats:
    """Counters of one subscriber (read from other threads; each is written by one)."""

    channel: str
    records: int = 0
    dead_letters: int = 0
    delivered: int = 0
    delivered_alerts: int = 0
    refused: int = 0
    outage_rounds: int = 0
    skipped_settled: int = 0
    hydrated: int = 0
    commits: int = 0
    notifier: NotifierStats = field(default_factory=NotifierStats)


class Subscriber:
    """One channel's consumer loop. Build it, then call :meth:`run` on a thread of its own.

    ``clock`` drives the grouping windows; ``consumer_factory`` and ``producer_factory``
    build the Kafka clients from their configs (tests pass in-memory doubles).
    """

    def __init__(
        self,
        settings: AlertSettings,
        channel: Channel,
        *,
        bootstrap: str,
        codec: AvroCodec | None = None,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.bootstrap = bootstrap
        self.codec = codec or AvroCodec.for_registry(settings.schema_registry_url)
        self.group = settings.consumer_group(channel.name)
        self.notifier = Notifier(
            channel.grouping,
            settings.group_window_s,
            max_group=settings.max_group_size,
            memory=settings.dedup_memory,
        )
        self.stats = SubscriberStats(channel.name, notifier=self.notifier.stats)
        self._client = client
        self._clock = clock
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._tracker = OffsetTracker()
        self._skip: dict[tuple[str, int], set[int]] = {}
        self._new: list[TopicPartition] = []
        self._retry: deque[Notification] = deque()
        self._retry_after: float | None = None
        self._paused = False
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._deliverer: Deliverer | None = None

    def consumer_config(self) -> dict[str, Any]:
        s = self.settings
        session_ms = int(s.session_timeout_s * 1000)
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "client.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": s.auto_offset_reset,
            "isolation.level": "read_committed",
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(100, min(3000, session_ms // 3)),
            "max.poll.interval.ms": int(s.max_poll_interval_s * 1000),
            "logger": CLIENT_LOG,
        }

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> SubscriberStats:
        """Consume and deliver until ``stop`` is set; then send what waits, commit, close."""
        self._stop = stop
        consumer = self._consumer_factory(self.consumer_config())
        self._consumer = consumer
        self._producer = self._producer_factory(
            producer_config(self.bootstrap, **{"client.id": f"{self.group}-deadletters"})
        )
        self._deliverer = Deliverer(
            self.channel, self.settings.retry_policy(), client=self._client, stop=stop
        )
        topic = self.settings.alerts_topic
        log.info("%s: subscribing to %s as group %s", self.channel.name, topic, self.group)
        try:
            consumer.subscribe(
                [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            while not stop.is_set():
                if self._retry:
                    self._retry_round()
                    continue
                messages = consumer.consume(self.settings.batch_size, self._poll_timeout())
                self._prepare()
                for message in messages:
                    self._take(message)
                self._send(self.notifier.due(self._clock()))
                self._commit()
            if not self._retry:  # stopping: what waits in a window goes now (one try each)
                self._send(self.notifier.drain())
            self._commit()
        finally:
            try:
                consumer.close()
            finally:
                self._producer.flush(_DEAD_LETTER_FLUSH_S)
                self._deliverer.close()
        return self.stats

    def _poll_timeout(self) -> float:
        timeout = self.settings.poll_timeout_s
        due = self.notifier.next_due()
        if due is not None:
            timeout = min(timeout, due - self._clock())
        return max(0.01, timeout)

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.fatal():
                raise SubscriberError(f"{self.channel.name}: fatal Kafka error: {error}")
            log.warning("%s: consumer error: %s", self.channel.name, error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return
        ref = SourceRef(topic, partition, offset, message.key(), message.value())
        self.stats.records += 1
        self._tracker.seen(topic, partition, offset)
        alert: Alert | None = None
        problem: Exception | None = None
        try:
            if ref.value is None:
                raise DecodeError("empty record (a tombstone), expected an alert")
            alert = Alert.from_record(self.codec.decode(ref.value, "alert").record)
        except (DecodeError, AlertError) as exc:
            problem = exc
        if offset in self._skip.get((topic, partition), ()):
            # Settled before a restart: remember its state, send nothing.
            if alert is not None:
                self.notifier.remember(alert)
            self.stats.skipped_settled += 1
            self._settle(ref)
            return
        if alert is None:
            assert problem is not None
            if self._dead_letter(ref, str(problem), type(problem).__name__):
                self._settle(ref)
            return
        decision = self.notifier.offer(alert, self._clock(), ref)
        log.debug(
            "%s: %s [%s] %s: %s",
            self.channel.name,
            alert.status,
            alert.dedup_key,
            decision.action,
            decision.reason,
        )
        for settled in decision.settled:
            self._settle(settled)
        self._send(decision.send)

    def _settle(self, ref: object) -> None:
        if isinstance(ref, SourceRef):
            self._tracker.settle(ref.topic, ref.partition, ref.offset)

    # -- delivery ---------------------------------------------------------------------------

    def _send(self, notifications: Sequence[Notification]) -> None:
        for note in notifications:
            if self._retry:  # one is waiting for the channel to come back: keep the order
                self._retry.append(note)
            else:
                self._deliver(note)

    def _deliver(self, note: Notification) -> bool:
        """One delivery; True unless it is left for a later round (channel unreachable)."""
        assert self._deliverer is not None
        result = self._deliverer.deliver(note)
        if result.result == "exhausted":
            self._retry.append(note)
            self._retry_after = result.retry_after_s
            self._pause()
            return False
        self._finish(note, result)
        return True

    def _finish(self, note: Notification, result: DeliveryResult) -> None:
        if result.delivered:
            self.stats.delivered += 1
            self.stats.delivered_alerts += len(note.alerts)
            self.notifier.settle(note, delivered=True)
            for ref in note.refs:
                self._settle(ref)
        else:
            self.stats.refused += 1
            self.notifier.settle(note, delivered=False)
            reason = f"{self.channel.name} refused the notification: {result.reason}"
            for alert, ref in zip(note.alerts, note.refs, strict=True):
                if isinstance(ref, SourceRef) and self._dead_letter(
                    ref, reason, "DeliveryRefused", alert
                ):
                    self._settle(ref)
        self._commit()

    def _retry_round(self) -> None:
        """Wait (serving the consumer), then retry the notifications held for the channel."""
        assert self._consumer is not None
        self.stats.outage_rounds += 1
        policy = self.settings.retry_policy()
        most = self.settings.outage_backoff_max_s
        rounds = Backoff(min(policy.backoff_initial_s, most), most, jitter=0)
        backoff = rounds.cap(self.stats.outage_rounds + 1)
        wait = max(backoff, min(self._retry_after or 0.0, self.settings.max_retry_after_s))
        log.warning(
            "%s: channel unreachable; %d notification(s) held, next round in %.1f s",
            self.channel.name,
            len(self._retry),
            wait,
        )
        deadline = self._clock() + wait
        while self._retry and not self._stop.is_set():
            left = deadline - self._clock()
            if left <= 0:
                break
            # Partitions are paused: poll serves rebalances and keeps the group membership.
            message = self._consumer.poll(min(0.5, left))
            if message is not None:
                self._take(message)
        if self._stop.is_set():
            return
        while self._retry:
            if not self._deliver(self._retry.popleft()):
                # _deliver put it at the back; it belongs at the front
                self._retry.appendleft(self._retry.pop())
                return
        self._retry_after = None
        self._resume()
        self._commit()

    def _pause(self) -> None:
        if self._consumer is not None and not self._paused:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True

    def _resume(self) -> None:
        if self._consumer is not None and self._paused:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False

    # -- dead letters -----------------------------------------------------------------------

    def _dead_letter(
        self, ref: SourceRef, reason: str, error_type: str, alert: Alert | None = None
    ) -> bool:
        """Publish a dead letter and wait for the broker's ack; False only when stopped."""
        assert self._producer is not None
        record = dead_letter(
            reason=reason,
            error_type=error_type,
            processor=self.settings.processor(self.channel.name),
            topic=ref.topic,
            partition=ref.partition,
            offset=ref.offset,
            key=ref.key,
            payload=ref.value or b"",
            record=alert.to_record() if alert is not None else None,
        )
        value = self.codec.encode("dead_letter", record)
        topic = self.settings.deadletter_topic
        failures = 0
        while True:
            outcome: list[str | None] = []
            try:
                self._producer.produce(
                    topic, value=value, on_delivery=partial(_record_delivery, outcome)
                )
                self._producer.flush(_DEAD_LETTER_FLUSH_S)
            except BufferError:
                self._producer.poll(0.1)
                continue
            except KafkaException as exc:
                outcome.append(str(exc) or type(exc).__name__)
            if outcome and outcome[0] is None:
                self.stats.dead_letters += 1
                log.warning(
                    "%s: record %s[%d]@%d dead-lettered (%s)",
                    self.channel.name,
                    ref.topic,
                    ref.partition,
                    ref.offset,
                    error_type,
                )
                return True
            failures += 1
            why = outcome[0] if outcome else f"no ack within {_DEAD_LETTER_FLUSH_S:.0f} s"
            log.warning("%s: dead letter not written (%s); retrying", self.channel.name, why)
            if self._stop.wait(Backoff(0.5, 30.0, jitter=0).cap(failures + 1)):
                return False

    # -- offsets and rebalances ------------------------------------------------------------

    def _commit(self) -> None:
        if self._consumer is None:
            return
        items = self._tracker.to_commit()
        if not items:
            return
        offsets = [
            # The C client wants a str here (None raises); '' means no metadata.
            TopicPartition(t, p, pos, metadata=meta) if meta else TopicPartition(t, p, pos)
            for t, p, pos, meta in items
        ]
        try:
            answered = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("%s: commit failed (%s); retried on the next turn", self.channel.name, exc)
            return
        failed = {(tp.topic, tp.partition) for tp in answered or [] if tp.error is not None}
        self._tracker.committed([i for i in items if (i[0], i[1]) not in failed])
        self.stats.commits += 1

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._new.extend(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Send what waits now, drop what the channel would not take, commit, let go.

        The assignment is eager (every rebalance revokes every partition), so everything
        this subscriber holds belongs to the partitions going away.
        """
        if not self._retry:
            self._send(self.notifier.drain())
        self._abandon()
        self._commit()
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a chance to commit: their new owner re-reads."""
        self._abandon()
        self._forget(partitions)

    def _abandon(self) -> None:
        """Give up everything undelivered (not committed: the partitions' next owner re-reads
        it), and undo its state so a re-read is not taken for a repeat."""
        for note in [*self._retry, *self.notifier.drain()]:
            self.notifier.settle(note, delivered=False)
        self._retry.clear()
        self._retry_after = None
        self._paused = False

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._tracker.forget(tp.topic, tp.partition)
            self._skip.pop((tp.topic, tp.partition), None)

    def _prepare(self) -> None:
        """For partitions just assigned: read the committed metadata, rebuild dedup state."""
        if not self._new or self._consumer is None:
            return
        partitions, self._new = self._new, []
        try:
            committed = self._consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=10
            )
        except KafkaException as exc:
            log.warning("%s: committed offsets unreadable (%s)", self.channel.name, exc)
            return
        for tp in committed:
            self._skip[(tp.topic, tp.partition)] = decode_metadata(tp.offset, tp.metadata)
            if tp.offset > 0 and self.settings.state_lookback:
                self._hydrate(tp.topic, tp.partition, tp.offset)

    def _hydrate(self, topic: str, partition: int, committed: int) -> None:
        assert self._consumer is not None
        try:
            low, _high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            start = max(low, committed - self.settings.state_lookback)
            records = read_range(self.bootstrap, topic, {partition: start}, {partition: committed})
        except (KafkaException, BusError) as exc:
            log.warning(
                "%s: dedup state of %s[%d] not rebuilt (%s)",
                self.channel.name,
                topic,
                partition,
                exc,
            )
            return
        for record in sorted(records, key=lambda r: r.offset):
            try:
                alert = Alert.from_record(self.codec.decode(record.value, "alert").record)
            except (DecodeError, AlertError):
                continue
            self.notifier.remember(alert)
            self.stats.hydrated += 1


def _record_delivery(into: list[str | None], err: KafkaError | None, _msg: Message) -> None:
    into.append(None if err is None else str(err))


# ------------------------------------------------------------------------------ entrypoint


def build_channels(settings: AlertSettings, names: Sequence[str] | None = None) -> list[Channel]:
    """The configured channels (or those named), built from the settings."""
    chosen = list(names) if names else list(settings.channel_names())
    if not chosen:
        raise ConfigError(
            "no alert channel configured: set UNDERTOW_ALERTS_SLACK_WEBHOOK_URL, "
            "UNDERTOW_ALERTS_PAGERDUTY_ROUTING_KEY or UNDERTOW_ALERTS_WEBHOOK_URL (+ _SECRET)"
        )
    return [create(name, **settings.channel_options(name)) for name in chosen]


def run_subscribers(
    settings: AlertSettings,
    stop_event: threading.Event,
    *,
    bootstrap_servers: str | None = None,
    channels: Sequence[str] | None = None,
) -> dict[str, SubscriberStats]:
    """Run one subscriber thread per channel until ``stop_event`` is set; return their stats.

    ``bootstrap_servers`` overrides the settings' (the CLI passes the local stack's).
    If one subscriber fails, the others are stopped and SubscriberError is raised.
    """
    bootstrap = bootstrap_servers or settings.bootstrap_servers
    if not bootstrap:
        raise ConfigError("no Kafka bootstrap servers: set UNDERTOW_ALERTS_BOOTSTRAP_SERVERS")
    subscribers = [
        Subscriber(settings, channel, bootstrap=bootstrap)
        for channel in build_channels(settings, channels)
    ]
    halt = threading.Event()
    failures: dict[str, BaseException] = {}

    def run(subscriber: Subscriber) -> None:
        try:
            subscriber.run(halt)
        except BaseException as exc:
            failures[subscriber.channel.name] = exc
            log.exception("%s: subscriber failed", subscriber.channel.name)
            halt.set()

    threads = [
        threading.Thread(target=run, args=(s,), name=f"alerts-{s.channel.name}", daemon=True)
        for s in subscribers
    ]
    for thread in threads:
        thread.start()
    while not halt.is_set() and not stop_event.wait(0.2):
        pass
    halt.set()
    grace = settings.delivery_deadline_s + settings.session_timeout_s
    for thread in threads:
        thread.join(grace)
    if failures:
        name, exc = next(iter(failures.items()))
        raise SubscriberError(f"the {name} subscriber failed: {exc}") from exc
    return {s.channel.name: s.stats for s in subscribers}
