"""The registry on Kafka: read the compacted topic into a state, publish changes, follow it live.

``load`` reads the topic from its beginning to the end offsets it found at the start and
returns the folded :class:`RegistryState`. ``publish`` writes a change's records (keyed by
version, so compaction keeps each version's latest state) and waits for the broker's
acknowledgement. :class:`Follower` keeps a state current on a background thread for services
that act on the registry (the gateway, the action workers) and calls listeners on each change.
:class:`CachedRegistry` shares one load between the callers of a few seconds, for readers that
load on demand (the dashboard) where a full read of the topic per request would cost too much.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from undertow.schemas import topics
from undertow.schemas.codec import AvroCodec, DecodeError
from undertow.services.bus import CLIENT_LOG, BusError, end_offsets, publish
from undertow.services.registry.state import RegistryError, RegistryState, Version, record_key

log = logging.getLogger("undertow.services.registry")

Listener = Callable[[RegistryState, list[Version]], None]
RegistryLoader = Callable[[], RegistryState]


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "undertow-registry-reader",  # assigned directly: never joined
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "logger": CLIENT_LOG,
        }
    )


def _fold(
    state: RegistryState, codec: AvroCodec, key: bytes | None, value: bytes | None
) -> Version | None:
    if value is None:  # a tombstone removes the version
        if key is not None:
            state.delete(key.decode("utf-8", "replace"))
        return None
    try:
        decoded = codec.decode(value, "registry_record")
    except DecodeError as exc:
        # One bad record must not blind every reader to the rest of the registry.
        log.error("skipping an undecodable registry record (key %r): %s", key, exc)
        return None
    return state.apply(decoded.record)


class RegistryClient:
    """Reads and writes the registry topic."""

    def __init__(
        self, bootstrap: str, *, topic: str = topics.REGISTRY, codec: AvroCodec | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.codec = codec or AvroCodec()

    def load(self, timeout: float = 30.0) -> RegistryState:
        """The registry as of now: every record up to the end offsets seen at the start."""
        ends = end_offsets(self.bootstrap, self.topic, timeout=timeout)
        state = RegistryState()
        if not any(ends.values()):
            return state
        consumer = _consumer(self.bootstrap)
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            pending = {p for p, end in ends.items() if end > 0}
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise BusError(f"registry topic {self.topic} not read within {timeout} s")
                for msg in consumer.consume(num_messages=500, timeout=0.5):
                    if msg.error() is not None:
                        raise BusError(f"reading {self.topic}: {msg.error()}")
                    _fold(state, self.codec, msg.key(), msg.value())
                    partition, offset = msg.partition(), msg.offset()
                    if (
                        partition in pending
                        and offset is not None
                        and offset + 1 >= ends[partition]
                    ):
                        pending.discard(partition)
                # Compaction leaves gaps in offsets: the position tells when the end is passed.
                if pending:
                    for tp in consumer.position([TopicPartition(self.topic, p) for p in pending]):
                        if tp.offset >= ends[tp.partition]:
                            pending.discard(tp.partition)
        except KafkaException as exc:
            raise BusError(f"reading {self.topic} from {self.bootstrap}: {exc}") from exc
        finally:
            consumer.close()
        return state

    def publish(self, records: Iterable[Mapping[str, Any]], timeout: float = 30.0) -> int:
        """Write the records of one change, in order; returns how many were acknowledged."""
        encoded = [
            (
                record_key(str(r["kind"]), str(r["name"]), str(r["version"])).encode(),
                self.codec.encode("registry_record", r),
            )
            for r in records
        ]
        if not encoded:
            return 0
        return publish(self.bootstrap, self.topic, encoded, timeout=timeout)


class CachedRegistry:
    """A loader that loads at most once per ``ttl_s``; callers in between get the same state.

    A failed load is not cached: the next call tries again.
    """

    def __init__(
        self,
        load: RegistryLoader,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: RegistryState | None = None
        self._loaded_at = float("-inf")
        self.loads = 0

    def __call__(self) -> RegistryState:
        with self._lock:  # one load at a time; the others wait for its result
            if self._state is None or self._clock() - self._loaded_at >= self._ttl_s:
                self._state = self._load()
                self._loaded_at = self._clock()
                self.loads += 1
            return self._state


class Follower:
    """A registry state kept current by a background thread."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = topics.REGISTRY,
        codec: AvroCodec | None = None,
        poll_s: float = 0.2,
    ) -> None:
        """Follow ``topic`` on ``bootstrap``. Call :meth:`start`, then read :attr:`state`
        (under :attr:`lock`) or register a listener with :meth:`on_change`."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.codec = codec or AvroCodec()
        self.poll_s = poll_s
        self.state = RegistryState()
        self.lock = threading.Lock()
        self.caught_up = threading.Event()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.changes = 0

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(state, changed_versions)`` after each batch of changes, on the
        follower's thread (listeners must be quick and must not raise)."""
        self._listeners.append(listener)

    def start(self, wait_s: float | None = 30.0) -> Follower:
        """Start following; with ``wait_s``, wait until the registry as of now is read."""
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)
        self._thread.start()
        if wait_s is not None and not self.caught_up.wait(wait_s):
            raise RegistryError(
                f"the registry topic {self.topic} on {self.bootstrap} was not read within "
                f"{wait_s} s{': ' + self.error if self.error else ''}"
            )
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_for(self, predicate: Callable[[RegistryState], bool], timeout: float) -> bool:
        """Wait until ``predicate(state)`` holds (checked after every change)."""
        deadline = time.monotonic() + timeout
        done = threading.Event()

        def check(state: RegistryState, _: list[Version]) -> None:
            if predicate(state):
                done.set()

        self._listeners.append(check)
        try:
            with self.lock:
                if predicate(self.state):
                    return True
            return done.wait(max(0.0, deadline - time.monotonic()))
        finally:
            self._listeners.remove(check)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except (BusError, KafkaException) as exc:
                self.error = str(exc)
                log.warning("registry follower: %s; retrying", exc)
                self._stop.wait(2.0)

    def _follow(self) -> None:
        ends = end_offsets(self.bootstrap, self.topic, timeout=10.0)
        consumer = _consumer(self.bootstrap)
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            pending = {p for p, end in ends.items() if end > 0}
            if not pending:
                self.caught_up.set()
            while not self._stop.is_set():
                changed: list[Version] = []
                messages = consumer.consume(num_messages=500, timeout=self.poll_s)
                with self.lock:
                    for msg in messages:
                        err = msg.error()
                        if err is not None:
                            if err.code() == KafkaError._PARTITION_EOF:
                                continue
                            raise BusError(f"reading {self.topic}: {err}")
                        v = _fold(self.state, self.codec, msg.key(), msg.value())
                        if v is not None:
                            changed.append(v)
                        partition, offset = msg.partition(), msg.offset()
                        if offset is not None and offset + 1 >= ends.get(partition or 0, 0):
                            pending.discard(partition or 0)
                    if pending:
                        for tp in consumer.position(
                            [TopicPartition(self.topic, p) for p in pending]
                        ):
                            if tp.offset >= ends[tp.partition]:
                                pending.discard(tp.partition)
                    if not pending and not self.caught_up.is_set():
                        self.caught_up.set()
                        changed = changed or self.state.all()
                    state = self.state
                if changed and self.caught_up.is_set():
                    self.changes += len(changed)
                    for listener in list(self._listeners):
                        try:
                            listener(state, changed)
                        except Exception:  # a listener's bug must not stop following
                            log.exception("registry listener failed")
        finally:
            consumer.close()
