"""The open traces' scoring contexts, without Faust: a dict for the table, a list for the
changelog."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.schemas.events import event
from undertow.streams.records import SinkItem
from undertow.streams.scoring.scored import Scored
from undertow.streams.state.contexts import ContextEntry, ContextStore

TOPIC = "undertow.events.v1"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
A, B = "a" * 32, "b" * 32
Sent = tuple[int, str, Mapping[str, Any] | None]


class Clock:
    """The processing clock, moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class JsonTable(MutableMapping[str, Any]):
    """A table whose values go through JSON on every write, as Faust's json serializer does."""

    def __init__(self) -> None:
        self._raw: dict[str, str] = {}

    def __getitem__(self, key: str) -> Any:
        return json.loads(self._raw[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._raw[key] = json.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self._raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def make_store(
    data: MutableMapping[str, Any] | None = None, **options: Any
) -> tuple[ContextStore, MutableMapping[str, Any], list[Sent], Clock]:
    table: MutableMapping[str, Any] = {} if data is None else data
    sent: list[Sent] = []
    clock = Clock()

    def send(partition: int, key: str, value: Mapping[str, Any] | None) -> None:
        sent.append((partition, key, value))

    store = ContextStore(table, send, clock=clock, **{"idle_s": 10, "max_age_s": 100, **options})
    return store, table, sent, clock


def record(kind: Any, trace_id: str, ms: int, **body: Any) -> dict[str, Any]:
    defaults: dict[str, dict[str, Any]] = {
        "prompt": {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"},
        "retrieval": {"query": "hi", "documents": [], "store": "kb", "latency_ms": 5.0},
        "completion": {"model": "gpt-4o", "text": "hello", "latency_ms": 50.0},
        "feedback": {"score": 1.0},
    }
    return event(
        kind,
        {**defaults[kind], **body},
        app="chat",
        trace_id=trace_id,
        event_time=T0 + timedelta(milliseconds=ms),
    )


def item(
    rec: Mapping[str, Any], partition: int, offset: int, scores: Scored | None = None
) -> SinkItem:
    return SinkItem(rec, TOPIC, partition, offset, scores)


def unit_rows(n: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    unit: npt.NDArray[np.float32] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


def test_apply_sends_one_changelog_record_per_touched_trace_to_its_partition() -> None:
    store, data, sent, _ = make_store()
    items = [
        item(record("prompt", A, 0), 3, 10, Scored(prompt_tokens=5)),
        item(record("completion", B, 0), 5, 20),
        item(record("retrieval", A, 10), 3, 11),
        item(record("completion", A, 20), 3, 12),
    ]
    assert store.apply(items) == 2
    assert sorted((p, k) for p, k, _ in sent) == [(3, A), (5, B)]
    assert set(data) == {A, B} and len(store) == 2
    entry = store.get(A)
    assert entry is not None and entry.partition == 3 and entry.answered
    assert entry.context.prompt_tokens == 5


def test_applying_the_same_events_again_gives_the_same_context() -> None:
    store, _, _, clock = make_store()
    docs = unit_rows(2, 8, seed=3)
    items = [
        item(record("prompt", A, 0), 0, 1, Scored(prompt_tokens=11)),
        item(record("retrieval", A, 5), 0, 2, Scored(context_vectors=docs)),
    ]
    store.apply(items)
    first = store.context(A)
    clock.now += 1
    store.apply(items)  # a replay after a crash
    again = store.context(A)
    assert first is not None and again is not None
    assert again.prompt_tokens == first.prompt_tokens == 11
    assert again.documents is not None and first.documents is not None
    np.testing.assert_allclose(again.documents, first.documents)


def test_an_answered_trace_expires_after_idle_time_an_unanswered_one_at_its_maximum_age() -> None:
    store, data, sent, clock = make_store()
    store.apply([item(record("prompt", A, 0), 0, 1), item(record("prompt", B, 0), 1, 1)])
    clock.now += 5
    store.apply([item(record("completion", A, 9), 0, 2)])
    assert store.expire(now=clock.now + 9) == 0  # A answered, quiet for 9 s of 10
    assert store.expire(now=clock.now + 10) == 1 and set(data) == {B}
    assert sent[-1] == (0, A, None)  # a tombstone to the trace's partition
    assert store.expire(now=clock.now + 94) == 0  # B: 99 s old of 100, never answered
    assert store.expire(now=clock.now + 95) == 1 and len(store) == 0


def test_a_later_event_restarts_the_idle_time() -> None:
    store, _, _, clock = make_store()
    store.apply([item(record("completion", A, 0), 0, 1)])
    clock.now += 8
    store.apply([item(record("feedback", A, 8), 0, 2)])
    assert store.expire(now=clock.now + 9) == 0
    assert store.expire(now=clock.now + 10) == 1


def test_entries_of_partitions_this_worker_no_longer_owns_are_forgotten_without_a_send() -> None:
    store, data, sent, clock = make_store()
    store.apply([item(record("prompt", A, 0), 0, 1), item(record("prompt", B, 0), 1, 1)])
    before = len(sent)
    assert store.expire(now=clock.now, owned={0}.__contains__) == 0
    assert set(data) == {A} and len(sent) == before


def test_context_holds_the_latest_retrieval_documents_and_prompt_tokens() -> None:
    store, _, _, _ = make_store()
    docs = unit_rows(4, 16, seed=0)
    store.apply(
        [
            item(record("prompt", A, 0), 0, 1, Scored(prompt_tokens=17)),
            item(record("retrieval", A, 5), 0, 2, Scored(context_vectors=docs)),
            item(record("feedback", A, 6), 0, 3, Scored()),
        ]
    )
    context = store.context(A)
    assert context is not None
    assert context.prompt_tokens == 17
    assert context.documents is not None and context.documents.shape == docs.shape
    np.testing.assert_allclose(context.documents, docs, atol=1e-3)  # float16 in the table
    assert store.context(B) is None
    # a newer retrieval of the trace replaces the documents
    newer = unit_rows(2, 16, seed=1)
    store.apply([item(record("retrieval", A, 7), 0, 4, Scored(context_vectors=newer))])
    context = store.context(A)
    assert context is not None and context.documents is not None
    np.testing.assert_allclose(context.documents, newer, atol=1e-3)
    assert context.prompt_tokens == 17


def test_entries_survive_the_changelogs_json_round_trip() -> None:
    docs = unit_rows(3, 8, seed=2)
    store, _data, sent, clock = make_store(JsonTable())
    items = [
        item(record("prompt", A, 0), 2, 1, Scored(prompt_tokens=9)),
        item(record("retrieval", A, 5), 2, 2, Scored(context_vectors=docs)),
        item(record("completion", A, 9), 2, 3, Scored(input_tokens=9, output_tokens=4)),
    ]
    store.apply(items)
    entry = store.get(A)
    assert entry is not None and entry.answered

    # A worker that takes over partition 2 rebuilds the table from the changelog.
    recovered: dict[str, Any] = {}
    for _, key, value in sent:
        if value is None:
            recovered.pop(key, None)
        else:
            recovered[key] = json.loads(json.dumps(value))
    other, _, other_sent, _ = make_store(recovered)
    back = other.get(A)
    assert back is not None and back.partition == 2 and back.answered
    assert (back.first_seen, back.last_seen) == (entry.first_seen, entry.last_seen)
    context = other.context(A)
    assert context is not None and context.prompt_tokens == 9
    assert context.documents is not None
    np.testing.assert_allclose(context.documents, docs, atol=1e-3)
    assert other.expire(now=clock.now + 60) == 1 and other_sent[-1] == (2, A, None)


def test_a_value_that_is_not_an_entry_is_dropped_at_expiry() -> None:
    assert ContextEntry.from_value({"partition": 0}) is None
    assert ContextEntry.from_value({"format": 1, "state": {}}) is None  # the old trace store's
    store, data, _, _ = make_store()
    data[A] = {"state": {}}
    assert store.get(A) is None and store.context(A) is None
    assert store.expire() == 1 and A not in data
