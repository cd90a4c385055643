"""Which origin offsets a key's state holds: exact, so a record is folded once whatever order
it comes in.

A keyed stage reads records forwarded by a repartition stage, each with its *origin* (the
partition and offset of the event it came from). A record can come twice (forwarded again
after a crash or a rebalance) and, around seeks and rebalances upstream, after a record
that followed it in its origin partition. A high-water mark per origin partition tells the
first case apart but takes the second for a repeat, and loses the record. So each key
keeps, per origin partition, the exact offsets it folded in a window below the highest one,
as ranges: a record is fresh unless its offset is in a range or at or below the *floor*,
under which everything counts as folded.

Invariant: :meth:`FoldedOffsets.fresh` is true for an offset never :meth:`added <add>` and
above the floor, and false for every offset added. The floor rises to keep the window
(``window`` offsets below the highest) and the ranges (at most ``max_ranges`` per origin
partition) bounded; a record older than the floor that was never folded is the one case
taken for a repeat.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_WINDOW = 10_000
DEFAULT_MAX_RANGES = 256


def _low(r: list[int]) -> int:
    return r[0]


@dataclass
class _Origin:
    floor: int = -1  # every offset at or below is taken as folded
    ranges: list[list[int]] = field(default_factory=list)  # sorted, disjoint [lo, hi] > floor

    @property
    def highest(self) -> int:
        return self.ranges[-1][1] if self.ranges else self.floor


class FoldedOffsets:
    """The origin offsets folded into one key's state; see the module doc."""

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        max_ranges: int = DEFAULT_MAX_RANGES,
        origins: Mapping[str, tuple[int, list[list[int]]]] | None = None,
    ) -> None:
        self.window = window
        self.max_ranges = max_ranges
        self._origins: dict[str, _Origin] = {
            origin: _Origin(int(floor), [[int(lo), int(hi)] for lo, hi in ranges])
            for origin, (floor, ranges) in (origins or {}).items()
        }

    @classmethod
    def through(
        cls,
        marks: Mapping[str, int],
        window: int = DEFAULT_WINDOW,
        max_ranges: int = DEFAULT_MAX_RANGES,
    ) -> FoldedOffsets:
        """Everything up to ``marks[origin]`` folded (a checkpoint that kept only marks)."""
        return cls(window, max_ranges, {o: (int(m), []) for o, m in marks.items()})

    def fresh(self, origin: str, offset: int) -> bool:
        """True when the record at ``offset`` of ``origin`` is not folded yet."""
        state = self._origins.get(origin)
        if offset <= (-1 if state is None else state.floor):
            return False  # offsets start at 0; at or below the floor counts as folded
        if state is None:
            return True
        i = bisect.bisect_right(state.ranges, offset, key=_low) - 1
        return not (i >= 0 and state.ranges[i][0] <= offset <= state.ranges[i][1])

    def add(self, origin: str, offset: int) -> None:
        """The record at ``offset`` of ``origin`` is folded now."""
        state = self._origins.setdefault(origin, _Origin())
        if offset <= state.floor:
            return
        ranges = state.ranges
        i = bisect.bisect_right(ranges, offset, key=_low)
        before = ranges[i - 1] if i > 0 else None
        after = ranges[i] if i < len(ranges) else None
        if before is not None and before[1] >= offset:
            return  # already in
        joins_before = before is not None and before[1] == offset - 1
        joins_after = after is not None and after[0] == offset + 1
        if joins_before and joins_after:
            assert before is not None and after is not None
            before[1] = after[1]
            del ranges[i]
        elif joins_before:
            assert before is not None
            before[1] = offset
        elif joins_after:
            assert after is not None
            after[0] = offset
        else:
            ranges.insert(i, [offset, offset])
        self._bound(state)

    def _bound(self, state: _Origin) -> None:
        floor = max(state.floor, state.highest - self.window)
        ranges = state.ranges
        if len(ranges) > self.max_ranges:
            floor = max(floor, ranges[len(ranges) - self.max_ranges - 1][1])
        if floor == state.floor:
            return
        state.floor = floor
        while ranges and ranges[0][1] <= floor:
            del ranges[0]
        if ranges and ranges[0][0] <= floor:
            ranges[0][0] = floor + 1

    def marks(self) -> dict[str, int]:
        """The highest offset folded (or taken as folded) per origin partition."""
        return {origin: state.highest for origin, state in self._origins.items()}

    def state(self) -> dict[str, tuple[int, list[list[int]]]]:
        """``origin -> (floor, ranges)``, as checkpoints store it (copies)."""
        return {
            origin: (state.floor, [list(r) for r in state.ranges])
            for origin, state in self._origins.items()
        }


__all__ = ["DEFAULT_MAX_RANGES", "DEFAULT_WINDOW", "FoldedOffsets"]
