"""Checkpoints of keyed processor state: the table value format and :class:`KeyedStates`, over
a plain dict standing in for the Faust table (key bytes to checkpoint bytes)."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from undertow.errors import UndertowError
from undertow.streams.state.checkpoint import (
    CheckpointError,
    KeyedStates,
    Saved,
    decode_checkpoint,
    encode_checkpoint,
)

STATE: dict[str, Any] = {"detectors": {"adwin": [1.5, -2.0]}, "n": 12, "note": "é/ü", "x": None}
# origin partitions (where events were read before the repartition), as the processors name them
SCORED_0, SCORED_1 = "undertow.scored.v1:0", "undertow.scored.v1:1"


def raw(body: Any) -> bytes:
    """A table value with ``body`` as its JSON, compressed as the real ones are."""
    return zlib.compress(json.dumps(body).encode())


def body(**changes: Any) -> dict[str, Any]:
    """A valid checkpoint body, with ``changes``."""
    return {"v": 1, "partition": 0, "origins": {SCORED_0: 1}, "state": {}, **changes}


def states_with(table: dict[bytes, Any] | None = None) -> KeyedStates:
    return KeyedStates({} if table is None else table)


# -- the value format -----------------------------------------------------------------------


def test_a_checkpoint_decodes_to_what_was_encoded() -> None:
    origins = {SCORED_0: 41, SCORED_1: 7}
    value = encode_checkpoint(3, origins, STATE)
    assert isinstance(value, bytes)
    assert decode_checkpoint(value) == Saved(partition=3, origins=origins, state=STATE)
    assert json.loads(zlib.decompress(value)) == {
        "v": 2,
        "partition": 3,
        "origins": origins,
        "folded": {SCORED_0: [41, []], SCORED_1: [7, []]},  # everything up to the marks
        "state": STATE,
    }


def test_the_exact_folded_offsets_round_trip() -> None:
    folded = {SCORED_0: (10, [[12, 14], [20, 20]]), SCORED_1: (-1, [[0, 3]])}
    saved = decode_checkpoint(encode_checkpoint(1, {SCORED_0: 20, SCORED_1: 3}, STATE, folded))
    assert saved.folded == folded
    offsets = saved.folded_offsets()
    assert [o for o in range(9, 22) if offsets.fresh(SCORED_0, o)] == [11, 15, 16, 17, 18, 19, 21]


def test_a_version_1_checkpoint_reads_as_everything_up_to_its_marks_folded() -> None:
    saved = decode_checkpoint(raw(body(origins={SCORED_0: 40})))
    assert saved == Saved(0, {SCORED_0: 40}, {}) and saved.folded is None
    offsets = saved.folded_offsets()
    assert not offsets.fresh(SCORED_0, 0) and not offsets.fresh(SCORED_0, 40)
    assert offsets.fresh(SCORED_0, 41)


def test_an_empty_checkpoint_round_trips() -> None:
    assert decode_checkpoint(encode_checkpoint(0, {}, {})) == Saved(0, {}, {})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a checkpoint at all", id="not-zlib"),
        pytest.param(zlib.compress(b"{not json"), id="not-json"),
        pytest.param(zlib.compress(b"\xff\xfe\x00"), id="not-utf8"),
        pytest.param(raw([1, 2, 3]), id="json-list"),
        pytest.param(raw("text"), id="json-string"),
        pytest.param(encode_checkpoint(1, {SCORED_0: 2}, STATE)[:-4], id="truncated"),
    ],
)
def test_garbage_bytes_raise_checkpoint_error(value: bytes) -> None:
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        decode_checkpoint(value)


@pytest.mark.parametrize("version", [0, 3, "1", "2", None])
def test_another_format_version_is_refused(version: Any) -> None:
    with pytest.raises(
        CheckpointError, match=rf"checkpoint format {version!r}, expected one of \(1, 2\)"
    ):
        decode_checkpoint(raw(body(v=version)))


def test_a_version_2_value_without_its_folded_offsets_is_refused() -> None:
    with pytest.raises(CheckpointError, match="folded"):
        decode_checkpoint(raw(body(v=2)))


@pytest.mark.parametrize(
    "folded", [[1], {SCORED_0: 5}, {SCORED_0: [1, [[2]]]}, {SCORED_0: [1, [["a", 3]]]}]
)
def test_ill_typed_folded_offsets_raise_checkpoint_error(folded: Any) -> None:
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        decode_checkpoint(raw(body(v=2, folded=folded)))


def test_a_value_without_a_version_is_refused() -> None:
    content = body()
    del content["v"]
    with pytest.raises(CheckpointError, match="checkpoint format None"):
        decode_checkpoint(raw(content))


@pytest.mark.parametrize("missing", ["partition", "origins", "state"])
def test_missing_keys_raise_checkpoint_error(missing: str) -> None:
    content = body()
    del content[missing]
    with pytest.raises(CheckpointError, match=missing):
        decode_checkpoint(raw(content))


@pytest.mark.parametrize(
    "field, value",
    [
        ("partition", "two"),
        ("partition", None),
        ("origins", [1]),
        ("origins", {SCORED_0: "x"}),
        ("origins", {SCORED_0: None}),
        ("state", 5),
        ("state", "abc"),
    ],
)
def test_ill_typed_fields_raise_checkpoint_error(field: str, value: Any) -> None:
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        decode_checkpoint(raw(body(**{field: value})))


def test_checkpoint_error_is_an_undertow_error_and_keeps_its_cause() -> None:
    with pytest.raises(CheckpointError) as info:
        decode_checkpoint(b"junk")
    assert isinstance(info.value, UndertowError)
    assert isinstance(info.value.__cause__, zlib.error)


# -- loading --------------------------------------------------------------------------------


def test_a_key_without_checkpoint_loads_as_none_and_every_offset_is_fresh() -> None:
    states = states_with()
    assert states.load("a", partition=2, generation=1) is None
    assert states.current("a", 1)
    assert states.partition("a") == 2
    assert states.fresh("a", SCORED_0, 0)
    assert not states.fresh("a", SCORED_0, -1)  # -1 means: nothing folded yet
    assert not states.dirty(1)


def test_a_key_loads_its_checkpoint_and_events_up_to_it_are_repeats() -> None:
    states = states_with({b"a": encode_checkpoint(2, {SCORED_0: 40, SCORED_1: 5}, STATE)})
    assert states.load("a", partition=2, generation=5) == Saved(
        2, {SCORED_0: 40, SCORED_1: 5}, STATE
    )
    assert not states.fresh("a", SCORED_0, 39)
    assert not states.fresh("a", SCORED_0, 40)
    assert states.fresh("a", SCORED_0, 41)
    assert not states.fresh("a", SCORED_1, 5) and states.fresh("a", SCORED_1, 6)
    assert states.fresh("a", "undertow.scored.v1:2", 0)  # an origin it never saw
    assert not states.dirty(5)  # a loaded checkpoint is already in the table


def test_a_checkpoint_value_held_as_bytearray_or_memoryview_is_read() -> None:
    value = encode_checkpoint(0, {SCORED_0: 7}, STATE)
    for held in (bytearray(value), memoryview(value)):
        states = KeyedStates({b"k": held})
        assert states.load("k", 0, 1) == Saved(0, {SCORED_0: 7}, STATE)


def test_a_checkpoint_from_another_partition_is_ignored() -> None:
    states = states_with({b"a": encode_checkpoint(1, {SCORED_0: 40}, STATE)})
    assert states.load("a", partition=2, generation=1) is None
    assert states.partition("a") == 2
    assert states.fresh("a", SCORED_0, 0)


def test_keys_are_looked_up_as_utf8_bytes() -> None:
    key = "app=chät/model=m/prompt=v1"
    states = states_with({key.encode(): encode_checkpoint(0, {}, {"k": 1})})
    saved = states.load(key, 0, 1)
    assert saved is not None and saved.state == {"k": 1}


def test_an_unreadable_checkpoint_raises_on_load() -> None:
    states = states_with({b"a": b"garbage"})
    with pytest.raises(CheckpointError):
        states.load("a", 0, 1)


def test_loading_does_not_share_the_saved_origins_with_the_slot() -> None:
    states = states_with({b"a": encode_checkpoint(0, {SCORED_0: 3}, {})})
    saved = states.load("a", 0, 1)
    assert saved is not None
    states.folded("a", SCORED_0, 9)
    assert saved.origins == {SCORED_0: 3}


# -- generations ----------------------------------------------------------------------------


def test_state_is_current_only_in_the_generation_it_was_loaded_in() -> None:
    states = states_with()
    assert not states.current("a", 1)  # never loaded
    states.load("a", 0, generation=1)
    assert states.current("a", 1)
    assert not states.current("a", 2)
    assert not states.current("b", 1)
    assert states.keys(1) == ["a"] and states.keys(2) == []
    states.load("a", 0, generation=2)
    assert states.current("a", 2) and not states.current("a", 1)
    assert states.keys(2) == ["a"] and states.keys(1) == []


def test_reloading_in_a_new_generation_discards_what_was_folded_since_the_checkpoint() -> None:
    states = states_with({b"a": encode_checkpoint(0, {SCORED_0: 10}, STATE)})
    states.load("a", 0, 1)
    states.folded("a", SCORED_0, 15)
    assert not states.fresh("a", SCORED_0, 15)
    states.load("a", 0, 2)  # a rebalance: what the table holds is the truth
    assert states.fresh("a", SCORED_0, 15) and not states.fresh("a", SCORED_0, 10)
    assert not states.dirty(2)


# -- folding, touching, checkpointing -------------------------------------------------------


def test_folded_moves_each_origin_forward_only_and_marks_the_key_dirty() -> None:
    states = states_with()
    states.load("a", 0, 1)
    states.folded("a", SCORED_0, 5)
    assert states.dirty(1)
    assert not states.fresh("a", SCORED_0, 5) and states.fresh("a", SCORED_0, 6)
    states.folded("a", SCORED_0, 3)  # an older offset never moves it back
    assert not states.fresh("a", SCORED_0, 5) and states.fresh("a", SCORED_0, 6)
    assert not states.fresh("a", SCORED_0, 3) and states.fresh("a", SCORED_0, 4)
    assert states.fresh("a", SCORED_1, 0)  # origins are independent
    states.folded("a", SCORED_1, 2)
    ((_, _, value),) = states.checkpoints(1, lambda k: {})
    assert decode_checkpoint(value).origins == {SCORED_0: 5, SCORED_1: 2}


def test_touch_marks_a_key_dirty_without_moving_its_offsets() -> None:
    states = states_with()
    states.load("a", 0, 1)
    assert not states.dirty(1)
    states.touch("a")
    assert states.dirty(1)
    ((partition, key, value),) = states.checkpoints(1, lambda k: {"touched": k})
    assert (partition, key) == (0, b"a")
    assert decode_checkpoint(value) == Saved(0, {}, {"touched": "a"})


def test_checkpoints_give_the_dirty_keys_of_the_generation_only() -> None:
    states = states_with()
    states.load("clean", 0, 1)
    states.load("dirty", 1, 1)
    states.load("other-generation", 2, 2)
    states.folded("dirty", SCORED_0, 9)
    states.folded("other-generation", SCORED_0, 4)
    asked: list[str] = []

    def state_of(key: str) -> dict[str, Any]:
        asked.append(key)
        return {"key": key}

    writes = states.checkpoints(1, state_of)
    assert [(p, k) for p, k, _ in writes] == [(1, b"dirty")]
    assert decode_checkpoint(writes[0][2]) == Saved(1, {SCORED_0: 9}, {"key": "dirty"})
    assert asked == ["dirty"]  # clean keys are not even asked for their state
    ((p, k, v),) = states.checkpoints(2, state_of)
    assert (p, k, decode_checkpoint(v).origins) == (2, b"other-generation", {SCORED_0: 4})


def test_keys_whose_state_is_none_are_skipped_but_stay_dirty() -> None:
    states = states_with()
    for key in ("kept", "nothing"):
        states.load(key, 0, 1)
        states.folded(key, SCORED_0, 1)
    writes = states.checkpoints(1, lambda k: None if k == "nothing" else {"k": k})
    assert [k for _, k, _ in writes] == [b"kept"]
    assert states.dirty(1)


def test_keys_stay_dirty_until_their_generation_is_written() -> None:
    states = states_with()
    states.load("a", 0, 1)
    states.load("b", 0, 2)
    states.folded("a", SCORED_0, 1)
    states.folded("b", SCORED_0, 1)
    first = states.checkpoints(1, lambda k: {})
    assert states.checkpoints(1, lambda k: {}) == first  # a failed write is tried again
    states.written(2)  # another generation's write leaves generation 1 dirty
    assert states.dirty(1) and not states.dirty(2)
    states.written(1)
    assert not states.dirty(1)
    assert states.checkpoints(1, lambda k: {}) == []
    states.folded("a", SCORED_0, 2)
    ((_, _, value),) = states.checkpoints(1, lambda k: {})
    assert decode_checkpoint(value).origins == {SCORED_0: 2}


def test_written_checkpoints_load_back_into_a_new_keyed_states() -> None:
    table: dict[bytes, Any] = {}
    before = KeyedStates(table)
    before.load("a", 4, 1)
    before.folded("a", SCORED_1, 99)
    for _, key, value in before.checkpoints(1, lambda k: {"n": 99}):
        table[key] = value
    before.written(1)
    after = KeyedStates(table)
    assert after.load("a", 4, 7) == Saved(4, {SCORED_1: 99}, {"n": 99})
    assert not after.fresh("a", SCORED_1, 99) and after.fresh("a", SCORED_1, 100)


def test_forget_drops_the_chosen_slots_which_then_load_again() -> None:
    states = states_with({b"a": encode_checkpoint(0, {SCORED_0: 3}, {"a": 1})})
    states.load("a", 0, 1)
    states.load("b", 0, 2)
    states.folded("a", SCORED_0, 8)
    assert states.forget(lambda k: not states.current(k, 2)) == ["a"]
    assert not states.current("a", 1) and states.keys(1) == []
    assert not states.dirty(1)  # a forgotten key is not checkpointed
    assert states.current("b", 2)
    assert states.forget(lambda k: False) == []
    assert states.load("a", 0, 2) == Saved(0, {SCORED_0: 3}, {"a": 1})
    assert states.fresh("a", SCORED_0, 4) and not states.fresh("a", SCORED_0, 3)


def test_a_record_that_comes_after_a_later_one_of_its_origin_is_folded_once() -> None:
    # Around seeks and rebalances upstream, an origin partition's records can reach a key out
    # of order: the earlier ones are new, not repeats, and count once each all the same.
    states = states_with({b"a": encode_checkpoint(0, {SCORED_0: 99}, {})})
    states.load("a", 0, 1)
    for offset in range(150, 200):
        assert states.fresh("a", SCORED_0, offset)
        states.folded("a", SCORED_0, offset)
    late = [o for o in range(90, 200) if states.fresh("a", SCORED_0, o)]
    assert late == list(range(100, 150))
    for offset in late:
        states.folded("a", SCORED_0, offset)
    assert not any(states.fresh("a", SCORED_0, o) for o in range(0, 200))
    ((_, _, value),) = states.checkpoints(1, lambda k: {})
    assert decode_checkpoint(value).folded == {SCORED_0: (99, [[100, 199]])}


def test_the_window_bounds_what_a_key_remembers_of_its_origins() -> None:
    states = KeyedStates({}, window=100, max_ranges=3)
    states.load("a", 0, 1)
    for offset in (0, 2, 4, 6, 8, 500):
        states.folded("a", SCORED_0, offset)
    # 500 - 100: everything at or below 400 counts as folded now, new or not
    assert not states.fresh("a", SCORED_0, 399) and states.fresh("a", SCORED_0, 401)
    for offset in (410, 420, 430, 440):
        states.folded("a", SCORED_0, offset)
    ((_, _, value),) = states.checkpoints(1, lambda k: {})
    saved = decode_checkpoint(value)
    floor, ranges = saved.folded[SCORED_0] if saved.folded else (None, None)
    assert len(ranges or []) == 3 and floor == 420  # the oldest ranges gave way to the floor
    assert saved.origins == {SCORED_0: 500}
