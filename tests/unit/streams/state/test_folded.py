"""The origin offsets a key folded (streams/state/folded.py): exact within the window, whatever
order records come in, in bounded memory."""

from __future__ import annotations

import random

import pytest

from undertow.streams.state.folded import FoldedOffsets

ORIGIN = "undertow.scored.v1:0"


def test_adjacent_offsets_merge_into_one_range_in_any_order() -> None:
    folded = FoldedOffsets()
    for offset in (5, 7, 6, 9, 8, 4, 6):
        folded.add(ORIGIN, offset)
    assert folded.state() == {ORIGIN: (-1, [[4, 9]])}
    assert folded.marks() == {ORIGIN: 9}
    assert [o for o in range(12) if folded.fresh(ORIGIN, o)] == [0, 1, 2, 3, 10, 11]


def test_state_is_a_copy() -> None:
    folded = FoldedOffsets()
    folded.add(ORIGIN, 1)
    folded.state()[ORIGIN][1].append([5, 6])
    assert folded.fresh(ORIGIN, 5)


@pytest.mark.parametrize("seed", range(5))
def test_it_agrees_with_a_set_within_the_window(seed: int) -> None:
    # Origin offsets shuffled locally (the reorders seen upstream) and spread over keys: for
    # this key, fresh is exactly "not added" for offsets above the floor, and the floor never
    # passes the window below the highest offset while the ranges stay few.
    rng = random.Random(seed)
    offsets = [o for o in range(20_000) if rng.random() < 0.6]  # the others: other keys
    for start in range(0, len(offsets), 50):
        chunk = offsets[start : start + 150]
        rng.shuffle(chunk)
        offsets[start : start + 150] = chunk
    folded, added = FoldedOffsets(window=1_000, max_ranges=512), set()
    for offset in offsets:
        floor = folded.state().get(ORIGIN, (-1, []))[0]
        if offset > floor:
            assert folded.fresh(ORIGIN, offset) == (offset not in added), offset
        folded.add(ORIGIN, offset)
        added.add(offset)
        assert not folded.fresh(ORIGIN, offset)
    floor, ranges = folded.state()[ORIGIN]
    highest = max(offsets)
    assert highest - 1_000 <= floor < highest and len(ranges) <= 512
    assert all(folded.fresh(ORIGIN, o) == (o not in added) for o in range(floor + 1, highest + 2))


def test_a_new_origin_starts_empty() -> None:
    folded = FoldedOffsets.through({ORIGIN: 10})
    assert not folded.fresh(ORIGIN, 10) and folded.fresh(ORIGIN, 11)
    assert folded.fresh("other:1", 0) and not folded.fresh("other:1", -1)
