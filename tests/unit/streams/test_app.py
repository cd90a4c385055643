"""The worker's offset bookkeeping around Faust's consumer, on a stand-in consumer object
that records what the wrappers ask of it (the real consumer is exercised end to end in
tests/integration/test_worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, NamedTuple

from undertow.streams.app import CommittedOffsets, _track_commits


class TP(NamedTuple):
    topic: str
    partition: int


EVENTS = "undertow.events.v1"


class Consumer:
    def __init__(self, assigned: set[TP], broker: Mapping[TP, int | None]) -> None:
        self.assigned = assigned
        self.broker = dict(broker)
        self.accept = True
        self._committed_offset: dict[TP, int | None] = {}
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        return self.accept

    async def perform_seek(self) -> None:
        self._committed_offset.update({tp: self.broker.get(tp) or None for tp in self.assigned})

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def tracked(consumer: Consumer, reread: bool = True) -> CommittedOffsets:
    return _track_commits(SimpleNamespace(consumer=consumer), {EVENTS}, reread_uncommitted=reread)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_only_commits_the_broker_accepted_for_assigned_partitions_count() -> None:
    p0, p1, gone = TP(EVENTS, 0), TP(EVENTS, 1), TP(EVENTS, 2)
    consumer = Consumer({p0, p1}, {})
    committed = tracked(consumer)
    assert run(consumer._commit({p0: 10, gone: 4}))
    assert (committed.get(EVENTS, 0), committed.get(EVENTS, 2)) == (10, None)
    consumer.accept = False  # refused during a rebalance: Faust would still record it
    assert not run(consumer._commit({p0: 20, p1: 5}))
    assert (committed.get(EVENTS, 0), committed.get(EVENTS, 1)) == (10, None)


def test_an_assignment_resets_to_the_brokers_offsets_and_rereads_uncommitted_partitions() -> None:
    p0, p1, p2 = TP(EVENTS, 0), TP(EVENTS, 1), TP(EVENTS, 2)
    other = TP("other", 0)
    consumer = Consumer({p0, p1, p2, other}, {p0: 7, p1: 0, p2: None, other: None})
    committed = tracked(consumer)
    run(consumer._commit({p0: 30}))
    run(consumer.perform_seek())
    assert [committed.get(EVENTS, p) for p in range(3)] == [7, None, None]
    assert consumer.seeks == [(p1, 0), (p2, 0)]  # 0 is "no commit" to Kafka clients too


def test_with_the_latest_policy_nothing_is_sought() -> None:
    p0 = TP(EVENTS, 0)
    consumer = Consumer({p0}, {p0: None})
    tracked(consumer, reread=False)
    run(consumer.perform_seek())
    assert consumer.seeks == []
