"""In-memory stand-ins for the confluent-kafka Consumer and Producer the subscriber uses.

They implement only what :class:`~undertow.services.alerts.subscriber.Subscriber` calls, and
record commits, pauses and produced records. The consumer serves scripted batches, one per
``consume`` call, advancing a :class:`ManualClock` by ``tick`` each call (and ``poll`` by its
timeout), and sets the stop event once the script and ``idle_turns`` empty turns are done (or
after ``max_polls`` polls, which only a subscriber waiting out an outage makes).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import TopicPartition


class ManualClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        self._topic, self._partition, self._offset, self._value = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes | None:
        return self._value


class FakeConsumer:
    def __init__(
        self,
        topic: str,
        batches: Iterable[list[FakeMessage]],
        stop: threading.Event,
        clock: ManualClock,
        *,
        tick: float = 1.0,
        idle_turns: int = 0,
        committed: dict[int, tuple[int, str | None]] | None = None,
        partitions: int = 1,
        max_polls: int | None = None,
    ) -> None:
        self.topic = topic
        self.batches = deque(batches)
        self.stop = stop
        self.clock = clock
        self.tick = tick
        self.idle_turns = idle_turns
        self.start = committed or {}
        self.parts = [TopicPartition(topic, p) for p in range(partitions)]
        self.commits: list[list[tuple[int, int, str | None]]] = []
        self.paused: list[str] = []
        self.config: dict[str, Any] = {}
        self.closed = False
        self.max_polls = max_polls
        self.polls = 0
        self._callbacks: dict[str, Callable[..., None] | None] = {}
        self._assigned = False

    def __call__(self, config: dict[str, Any]) -> FakeConsumer:
        """Used as the consumer factory: records the config, returns itself."""
        self.config = config
        return self

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None] | None) -> None:
        assert topics == [self.topic]
        self._callbacks = callbacks

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if not self._assigned:
            self._assigned = True
            on_assign = self._callbacks.get("on_assign")
            if on_assign is not None:
                on_assign(self, self.parts)
        self.clock.advance(self.tick)
        if self.batches:
            return self.batches.popleft()
        if self.idle_turns > 0:
            self.idle_turns -= 1
        else:
            self.stop.set()
        return []

    def poll(self, timeout: float = -1) -> None:
        self.clock.advance(max(timeout, 0.0))
        self.polls += 1
        if self.max_polls is not None and self.polls >= self.max_polls:
            self.stop.set()
        return None

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.commits.append([(tp.partition, tp.offset, tp.metadata) for tp in offsets])
        return offsets

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        out = []
        for tp in partitions:
            offset, metadata = self.start.get(tp.partition, (-1001, None))
            if metadata is None:
                out.append(TopicPartition(tp.topic, tp.partition, offset))
            else:
                out.append(TopicPartition(tp.topic, tp.partition, offset, metadata=metadata))
        return out

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1) -> tuple[int, int]:
        return 0, self.start.get(tp.partition, (0, None))[0]

    def assignment(self) -> list[TopicPartition]:
        return list(self.parts)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.append("pause")

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.append("resume")

    def close(self) -> None:
        on_revoke = self._callbacks.get("on_revoke")
        if on_revoke is not None and self._assigned:
            on_revoke(self, self.parts)
        self.closed = True

    def last_commit(self, partition: int = 0) -> tuple[int, str | None] | None:
        for commit in reversed(self.commits):
            for p, offset, metadata in commit:
                if p == partition:
                    return offset, metadata
        return None


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []
        self._waiting: list[Callable[..., None]] = []

    def __call__(self, config: dict[str, Any]) -> FakeProducer:
        return self

    def produce(self, topic: str, value: bytes, on_delivery: Callable[..., None]) -> None:
        self.records.append((topic, value))
        self._waiting.append(on_delivery)

    def flush(self, timeout: float = -1) -> int:
        waiting, self._waiting = self._waiting, []
        for callback in waiting:
            callback(None, None)
        return 0

    def poll(self, timeout: float = -1) -> int:
        return 0
