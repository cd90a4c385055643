"""The open-traces store, without Faust: a dict for the table, a list for the changelog."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from undertow.schemas.events import event
from undertow.streams.scored import Scored
from undertow.streams.sink import SinkItem
from undertow.streams.trace_store import TraceEntry, TraceStore
from undertow.streams.traces import TraceError

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
) -> tuple[TraceStore, MutableMapping[str, Any], list[Sent], Clock]:
    table: MutableMapping[str, Any] = {} if data is None else data
    sent: list[Sent] = []
    clock = Clock()

    def send(partition: int, key: str, value: Mapping[str, Any] | None) -> None:
        sent.append((partition, key, value))

    store = TraceStore(table, send, clock=clock, **{"idle_s": 10, "max_age_s": 100, **options})
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


def trace_ids(entries: list[TraceEntry]) -> list[str]:
    return [e.state.trace_id for e in entries]


def test_apply_sends_one_changelog_record_per_touched_trace_to_its_partition() -> None:
    store, data, sent, _ = make_store()
    items = [
        item(record("prompt", A, 0), 3, 10),
        item(record("completion", B, 0), 5, 20),
        item(record("retrieval", A, 10), 3, 11),
        item(record("completion", A, 20), 3, 12),
    ]
    assert store.apply(items) == 2
    assert sorted((p, k) for p, k, _ in sent) == [(3, A), (5, B)]
    for partition, key, value in sent:
        assert value is not None and value == data[key]
        assert value == json.loads(json.dumps(value))  # what the changelog can carry
        assert value["partition"] == partition
    a = store.get(A)
    assert a is not None
    assert (a.state.span_count, a.state.prompts, a.state.retrievals, a.state.completions) == (
        3,
        1,
        1,
        1,
    )
    assert len(store) == 2


def test_a_redelivered_event_is_counted_once() -> None:
    store, _, _, clock = make_store()
    items = [item(record("prompt", A, 0), 0, 1), item(record("completion", A, 5), 0, 2)]
    store.apply(items)
    before = store.get(A)
    assert before is not None and before.state.span_count == 2
    clock.now += 5
    store.apply(items[1:])  # the consumer restarted before its commit
    store.apply(items)
    after = store.get(A)
    assert after is not None
    assert after.state == before.state


def test_ready_waits_for_a_completion_and_idle_time_or_the_maximum_age() -> None:
    store, _, sent, clock = make_store(idle_s=10, max_age_s=100)
    store.apply([item(record("prompt", A, 0), 0, 1), item(record("completion", A, 9), 0, 2)])
    store.apply([item(record("prompt", B, 0), 0, 3)])  # no completion (yet)
    changelog = list(sent)
    assert store.ready(now=clock.now + 9.9) == []
    assert trace_ids(store.ready(now=clock.now + 10)) == [A]
    assert trace_ids(store.ready(now=clock.now + 99.9)) == [A]
    assert trace_ids(store.ready(now=clock.now + 100)) == [A, B]  # oldest first, then by id
    clock.now += 100
    assert trace_ids(store.ready()) == [A, B]  # the store's own clock
    assert sent == changelog  # listing sends nothing and deletes nothing
    assert len(store) == 2


def test_a_later_event_restarts_the_idle_time() -> None:
    store, _, _, clock = make_store(idle_s=10)
    store.apply([item(record("completion", A, 0), 0, 1)])
    clock.now += 8
    store.apply([item(record("completion", A, 8_000), 0, 2)])  # an agent's second call
    assert store.ready(now=clock.now + 9) == []
    assert trace_ids(store.ready(now=clock.now + 10)) == [A]


def test_a_replay_after_a_crash_is_counted_once_even_past_the_tracked_event_ids() -> None:
    # The restarted worker recovers the entry from the changelog (a JSON round trip) and
    # reads again from its last commit: offsets it already counted are skipped by offset,
    # so the guard holds even for events the state no longer lists by id.
    store, data, _, _ = make_store(JsonTable())
    items = [item(record("prompt", A, 0), 2, 40), item(record("completion", A, 5), 2, 41)]
    store.apply(items)
    recovered, _, sent, _ = make_store(data)
    data[A] = {**data[A], "state": {**data[A]["state"], "event_ids": []}}
    assert recovered.apply(items) == 0
    assert sent == []
    entry = recovered.get(A)
    assert entry is not None and entry.state.span_count == 2
    assert entry.offsets == {2: 41}
    later = item(record("feedback", A, 9), 2, 42)
    assert recovered.apply([later]) == 1
    entry = recovered.get(A)
    assert entry is not None and entry.state.span_count == 3 and entry.offsets == {2: 42}


def test_ready_waits_until_every_counted_record_is_committed() -> None:
    store, _, _, clock = make_store()
    store.apply([item(record("prompt", A, 0), 4, 7), item(record("completion", A, 5), 4, 8)])
    store.apply([item(record("completion", B, 0), 1, 3)])
    later = clock.now + 60
    committed: dict[int, int | None] = {4: None, 1: 3}
    assert store.ready(now=later, committed=committed.get) == []  # 3 is B's own record
    committed.update({4: 8, 1: 4})
    assert trace_ids(store.ready(now=later, committed=committed.get)) == [B]
    committed[4] = 9  # the next offset to read is past A's last record
    assert trace_ids(store.ready(now=later, committed=committed.get)) == [A, B]
    assert trace_ids(store.ready(now=later)) == [A, B]  # no check asked for


def test_a_record_handed_over_again_after_its_commit_is_not_counted_in_a_second_part() -> None:
    store, data, sent, clock = make_store()
    items = [item(record("prompt", A, 0), 4, 115), item(record("completion", A, 5), 4, 116)]
    committed: dict[int, int | None] = {4: 115}
    store.apply(items, committed=committed.get)  # a replay from the committed offset 115
    committed[4] = 117  # the batch's commit, confirmed by the broker
    written = store.ready(now=clock.now + 60, committed=committed.get)
    assert trace_ids(written) == [A] and written[0].state.span_count == 2
    assert store.remove(written) == 1 and data == {}
    sends = len(sent)
    # The same records once more, below the confirmed commit: counted already (written),
    # they start no second part.
    assert store.apply(items, committed=committed.get) == 0
    assert data == {} and len(sent) == sends
    # A later record of the trace (a late rating) is a new part, as before.
    late = item(record("feedback", A, 9), 4, 117)
    assert store.apply([*items, late], committed=committed.get) == 1
    entry = store.get(A)
    assert entry is not None and entry.state.span_count == 1 and entry.offsets == {4: 117}
    # No commit known for the partition (a new group): nothing is left out.
    fresh, _, _, _ = make_store()
    assert fresh.apply(items, committed={4: None}.get) == 1


def test_ready_drops_entries_of_partitions_this_worker_no_longer_owns_without_a_send() -> None:
    store, data, sent, clock = make_store()
    store.apply(
        [
            item(record("completion", A, 0), 1, 1),
            item(record("completion", B, 0), 2, 1),
            item(record("prompt", "c" * 32, 0), 2, 2),  # not ready, dropped all the same
        ]
    )
    changelog = list(sent)
    ready = store.ready(now=clock.now + 60, owned=lambda partition: partition == 1)
    assert trace_ids(ready) == [A]
    assert set(data) == {A}
    assert sent == changelog  # the new owner recovered them; no tombstone


def test_remove_deletes_written_entries_with_a_tombstone() -> None:
    store, data, sent, clock = make_store()
    store.apply([item(record("completion", A, 0), 4, 1), item(record("completion", B, 0), 6, 1)])
    ready = store.ready(now=clock.now + 60)
    assert store.remove(ready) == 2
    assert data == {}
    assert sorted(sent[-2:], key=lambda s: s[1]) == [(4, A, None), (6, B, None)]
    assert store.remove(ready) == 0  # already gone: nothing more to send
    assert len(sent) == 4


def test_remove_keeps_an_entry_that_changed_since_it_was_listed() -> None:
    store, data, sent, clock = make_store()
    completion = item(record("completion", A, 0), 0, 1)
    store.apply([completion])
    ready = store.ready(now=clock.now + 60)
    clock.now += 60
    store.apply([item(record("feedback", A, 60_000), 0, 2)])  # while the row was written
    sends = len(sent)
    assert store.remove(ready) == 0
    assert A in data and len(sent) == sends
    entry = store.get(A)
    assert entry is not None and entry.state.span_count == 2
    # a redelivery changes nothing, so it does not keep the entry open
    again = store.ready(now=clock.now + 60)
    store.apply([completion])
    assert store.remove(again) == 1
    assert sent[-1] == (0, A, None) and data == {}


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


def test_scores_and_tokens_of_scored_events_reach_the_trace_state() -> None:
    store, _, _, _ = make_store()
    store.apply(
        [
            item(record("prompt", A, 0), 0, 1, Scored(scores={"injection": 0.8})),
            item(
                record("completion", A, 5),
                0,
                2,
                Scored(
                    scores={"toxicity": 0.3},
                    input_tokens=120,
                    output_tokens=12,
                    cost_usd=0.001,
                ),
            ),
        ]
    )
    entry = store.get(A)
    assert entry is not None
    state = entry.state
    assert (state.max_injection, state.max_toxicity) == (0.8, 0.3)
    assert (state.input_tokens, state.output_tokens, state.cost_usd) == (120, 12, 0.001)


def test_entries_survive_the_changelogs_json_round_trip() -> None:
    docs = unit_rows(3, 8, seed=2)
    store, data, sent, clock = make_store(JsonTable())
    items = [
        item(record("prompt", A, 0), 2, 1, Scored(prompt_tokens=9)),
        item(record("retrieval", A, 5), 2, 2, Scored(context_vectors=docs)),
        item(record("completion", A, 9), 2, 3, Scored(input_tokens=9, output_tokens=4)),
    ]
    store.apply(items)
    store.apply(items)  # redelivered after the round trip: still counted once
    entry = store.get(A)
    assert entry is not None and entry.state.span_count == 3
    assert isinstance(data[A]["state"]["event_ids"], list)  # JSON gave back lists

    # A worker that takes over partition 2 rebuilds the table from the changelog.
    recovered: dict[str, Any] = {}
    for _, key, value in sent:
        if value is None:
            recovered.pop(key, None)
        else:
            recovered[key] = json.loads(json.dumps(value))
    other, _, other_sent, other_clock = make_store(recovered)
    other_clock.now = clock.now
    back = other.get(A)
    assert back is not None
    assert back.partition == 2 and back.state == entry.state
    context = other.context(A)
    assert context is not None and context.prompt_tokens == 9
    assert context.documents is not None
    np.testing.assert_allclose(context.documents, docs, atol=1e-3)
    other.apply(items[2:])
    again = other.get(A)
    assert again is not None and again.state.span_count == 3
    ready = other.ready(now=clock.now + 60)
    assert trace_ids(ready) == [A]
    assert other.remove(ready) == 1 and other_sent[-1] == (2, A, None)

    ready = store.ready(now=clock.now + 60)
    assert store.remove(ready) == 1 and len(data) == 0


def test_a_value_that_is_not_an_entry_is_refused() -> None:
    with pytest.raises(TraceError, match="not a stored trace entry"):
        TraceEntry.from_value({"partition": 0})
    store, data, _, _ = make_store()
    data[A] = {"state": {}}
    with pytest.raises(TraceError):
        store.get(A)
