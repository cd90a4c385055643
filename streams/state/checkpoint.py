"""Keyed processor state that survives restarts: checkpoints in a Faust table, exact replays.

The drift and policy processors keep state per key (a drift segment, an app) that must
outlive the worker: a restarted or rebalanced worker carries on with the detectors and
incidents of the one before. Writing a key's whole state to the table's changelog after every
micro-batch would cost too much (a drift segment with its windows of embeddings is about a
megabyte), so state is *checkpointed* on a timer, and the records folded into it since the
last checkpoint are acknowledged only once it is written. The committed offset therefore
never passes a record whose effect is not in the changelog.

After a crash the records since the last commit are read again. Some of them may already be
in a checkpointed state (a checkpoint written, the commit that followed it not yet), and the
repartition stage may have forwarded some twice (forwarded, then killed before its commit),
so the same event can come again under a new offset; and around seeks and rebalances
upstream an event can come after a later one of its origin partition. Records therefore
carry their *origin* (the topic, partition and offset of the event before repartitioning,
in a header), every checkpoint records, per key, the origin offsets folded into it
(:class:`~undertow.streams.state.folded.FoldedOffsets`: exact within a window below the
highest), and :meth:`KeyedStates.fresh` tells a repeated record from a new one, whatever
order they come in. A processor whose decisions
are a deterministic function of its state and input (the drift monitor and the policy engine
are) then makes exactly the decisions it would have made had it never stopped, and whatever
it emitted twice carries the same ids, which the warehouse deduplicates.

Each key belongs to one partition of the processor's input (a repartition topic keyed by
the key), and its checkpoint goes to the same partition of the changelog, so Faust recovers
it to the worker that owns the key. A key's in-memory state is trusted only within the
consumer generation it was loaded in: after a rebalance it is loaded again from the table,
which is what the previous owner checkpointed.

Values in the table are ``zlib``-compressed JSON: ``{"v": 2, "partition", "origins",
"folded", "state"}`` (``origins``: origin partition, as ``topic:partition``, to the highest
offset folded; ``folded``: origin partition to ``[floor, [[low, high], ...]]``, the offsets
folded, see :mod:`~undertow.streams.state.folded`). Version 1 values (no ``folded``) are read
as everything up to ``origins`` folded.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from undertow.errors import UndertowError
from undertow.streams.state.folded import DEFAULT_MAX_RANGES, DEFAULT_WINDOW, FoldedOffsets

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
Folded = dict[str, tuple[int, list[list[int]]]]  # origin -> (floor, ranges)


class CheckpointError(UndertowError):
    """A checkpoint in the table could not be read (another format, corrupt bytes)."""


@dataclass(frozen=True)
class Saved:
    """A key's checkpoint: its partition, the highest origin offsets folded into ``state``
    and (``folded``) exactly which."""

    partition: int
    origins: dict[str, int]
    state: dict[str, Any]
    # None: everything up to ``origins`` (a version 1 value); not compared: ``origins`` and
    # ``state`` say what a checkpoint is, ``folded`` how exactly it got there
    folded: Folded | None = field(default=None, compare=False)

    def folded_offsets(
        self, window: int = DEFAULT_WINDOW, max_ranges: int = DEFAULT_MAX_RANGES
    ) -> FoldedOffsets:
        """The folded offsets as :class:`KeyedStates` keeps them, bounded so."""
        if self.folded is None:
            return FoldedOffsets.through(self.origins, window, max_ranges)
        return FoldedOffsets(window, max_ranges, self.folded)


def encode_checkpoint(
    partition: int,
    origins: dict[str, int],
    state: dict[str, Any],
    folded: Folded | None = None,
) -> bytes:
    """The table value of a checkpoint (compact JSON, compressed); ``folded`` defaults to
    everything up to ``origins``."""
    if folded is None:
        folded = {origin: (mark, []) for origin, mark in origins.items()}
    body = {
        "v": FORMAT_VERSION,
        "partition": partition,
        "origins": origins,
        "folded": {origin: [floor, ranges] for origin, (floor, ranges) in folded.items()},
        "state": state,
    }
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 3)


def decode_checkpoint(raw: bytes) -> Saved:
    """The checkpoint in a table value; :class:`CheckpointError` when it is not one."""
    try:
        body = json.loads(zlib.decompress(raw))
        if body.get("v") not in READABLE_VERSIONS:
            raise CheckpointError(
                f"checkpoint format {body.get('v')!r}, expected one of {READABLE_VERSIONS}"
            )
        origins = {str(k): int(v) for k, v in body["origins"].items()}
        folded: Folded | None = None
        if body["v"] >= 2:
            folded = {
                str(origin): (int(floor), [[int(lo), int(hi)] for lo, hi in ranges])
                for origin, (floor, ranges) in body["folded"].items()
            }
        return Saved(int(body["partition"]), origins, dict(body["state"]), folded)
    except CheckpointError:
        raise
    except (zlib.error, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"unreadable checkpoint: {exc!r}") from exc


@dataclass
class _Slot:
    partition: int
    folded: FoldedOffsets  # the origin offsets folded into the in-memory state
    generation: int
    dirty: bool = False


class KeyedStates:
    """Which keys a processor holds in memory, how far each got, and what to checkpoint.

    ``table``: the Faust table's data (key bytes to checkpoint bytes), filled by Faust's
    recovery from the changelog and by :meth:`checkpoints`' caller after each write.
    ``window`` and ``max_ranges`` bound each key's record of the offsets it folded
    (:class:`~undertow.streams.state.folded.FoldedOffsets`).
    """

    def __init__(
        self,
        table: MutableMapping[Any, Any],
        window: int = DEFAULT_WINDOW,
        max_ranges: int = DEFAULT_MAX_RANGES,
    ) -> None:
        self.table = table
        self._slots: dict[str, _Slot] = {}
        self.window, self.max_ranges = window, max_ranges

    def _empty(self) -> FoldedOffsets:
        return FoldedOffsets(self.window, self.max_ranges)

    def load(self, key: str, partition: int, generation: int) -> Saved | None:
        """Start using ``key`` in ``generation``: its checkpoint from the table, or None when
        it has none (then the caller starts the key afresh). An unreadable checkpoint raises
        :class:`CheckpointError` with the key started afresh (and due for a checkpoint)."""
        raw = self.table.get(key.encode())
        try:
            saved = None if raw is None else decode_checkpoint(bytes(raw))
        except CheckpointError:
            # Start the key afresh, and overwrite the bad value at the next checkpoint.
            self._slots[key] = _Slot(partition, self._empty(), generation, dirty=True)
            raise
        if saved is not None and saved.partition != partition:
            saved = None  # the input was repartitioned differently since: start afresh
        folded = saved.folded_offsets(self.window, self.max_ranges) if saved else self._empty()
        self._slots[key] = _Slot(partition, folded, generation)
        return saved

    def current(self, key: str, generation: int) -> bool:
        """True when the in-memory state of ``key`` is valid in ``generation`` (loaded in it)."""
        slot = self._slots.get(key)
        return slot is not None and slot.generation == generation

    def fresh(self, key: str, origin: str, offset: int) -> bool:
        """True when the event at ``offset`` of origin partition ``origin`` is not yet folded
        into the state of ``key`` (in whatever order records come)."""
        return self._slots[key].folded.fresh(origin, offset)

    def folded(self, key: str, origin: str, offset: int) -> None:
        """The event at ``offset`` of ``origin`` is now part of the state of ``key``."""
        slot = self._slots[key]
        slot.folded.add(origin, offset)
        slot.dirty = True

    def touch(self, key: str) -> None:
        """The state of ``key`` changed without input (a timer): checkpoint it."""
        self._slots[key].dirty = True

    def keys(self, generation: int) -> list[str]:
        """The keys whose in-memory state is valid in ``generation``."""
        return [k for k, s in self._slots.items() if s.generation == generation]

    def partition(self, key: str) -> int:
        return self._slots[key].partition

    def forget(self, keys: Callable[[str], bool]) -> list[str]:
        """Drop the slots for which ``keys`` is true (they load again on next use)."""
        gone = [k for k in self._slots if keys(k)]
        for k in gone:
            del self._slots[k]
        return gone

    def checkpoints(
        self, generation: int, state_of: Callable[[str], dict[str, Any] | None]
    ) -> list[tuple[int, bytes, bytes]]:
        """``(partition, key, value)`` for every dirty key valid in ``generation``. They stay
        dirty until :meth:`written` (a failed write is tried again at the next checkpoint).
        ``state_of`` gives a key's state, or None for a key with nothing to keep."""
        out = []
        for key, slot in self._slots.items():
            if not slot.dirty or slot.generation != generation:
                continue
            state = state_of(key)
            if state is not None:
                folded = slot.folded
                value = encode_checkpoint(slot.partition, folded.marks(), state, folded.state())
                out.append((slot.partition, key.encode(), value))
        return out

    def written(self, generation: int) -> None:
        """The checkpoints handed out by :meth:`checkpoints` for ``generation`` are stored."""
        for slot in self._slots.values():
            if slot.generation == generation:
                slot.dirty = False

    def dirty(self, generation: int) -> bool:
        return any(s.dirty and s.generation == generation for s in self._slots.values())


__all__ = [
    "CheckpointError",
    "KeyedStates",
    "Saved",
    "decode_checkpoint",
    "encode_checkpoint",
]
