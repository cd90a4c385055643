"""The recent window of one monitored stream: the last events' ids, values and vectors.

A fixed-capacity ring: appending is O(1) and the oldest entry falls out. The drift monitor
tests the window against the baseline when a detector fires, and names a few of its events
in the drift event. Vectors are kept as float16 from the moment they arrive (half the memory
and state size; about 0.1% error in a cosine), so a window saved and restored is exactly the
window that kept running.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import DriftError
from undertow.streams.drift.vectors import decode, encode


class Window:
    """The last ``capacity`` entries of a stream: id, ``value`` (what the detector got),
    ``raw`` (what the confirmation compares with the baseline: an embedding's distance to the
    nearest topic, a scalar's raw value), and for embedding streams the vector and its nearest
    baseline topic. ``end`` counts every entry ever appended, so ``end - len(window)`` is the
    stream index of the oldest entry kept."""

    def __init__(self, capacity: int, dim: int = 0) -> None:
        if capacity < 2:
            raise DriftError(f"a window needs a capacity of at least 2, got {capacity}")
        self.capacity = capacity
        self.dim = dim
        self._ids: list[str] = [""] * capacity
        self._values = np.zeros(capacity, dtype=np.float64)
        self._raw = np.zeros(capacity, dtype=np.float64)
        self._vectors = np.zeros((capacity, dim), dtype=np.float16) if dim else None
        self._topics = np.zeros(capacity, dtype=np.int64)
        self._head = 0  # next slot to write
        self._size = 0
        self.end = 0

    def __len__(self) -> int:
        return self._size

    def append(
        self,
        event_id: str,
        value: float,
        raw: float,
        vector: npt.NDArray[Any] | None = None,
        topic: int = -1,
    ) -> None:
        i = self._head
        self._ids[i] = event_id
        self._values[i] = value
        self._raw[i] = raw
        if self._vectors is not None:
            if vector is None:
                raise DriftError("this window keeps vectors; append one with each entry")
            self._vectors[i] = vector
        self._topics[i] = topic
        self._head = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)
        self.end += 1

    def _order(self, last: int | None = None) -> npt.NDArray[np.int64]:
        """Slot indices of the last ``last`` entries (all by default), oldest first."""
        n = self._size if last is None else max(0, min(last, self._size))
        return (np.arange(self._head - n, self._head) % self.capacity).astype(np.int64)

    def ids(self, last: int | None = None) -> list[str]:
        return [self._ids[int(i)] for i in self._order(last)]

    def values(self, last: int | None = None) -> npt.NDArray[np.float64]:
        return self._values[self._order(last)]

    def raw(self, last: int | None = None) -> npt.NDArray[np.float64]:
        return self._raw[self._order(last)]

    def vectors(self, last: int | None = None) -> npt.NDArray[np.float32]:
        if self._vectors is None:
            raise DriftError("this window keeps no vectors")
        return self._vectors[self._order(last)].astype(np.float32)

    def topics(self, last: int | None = None) -> npt.NDArray[np.int64]:
        return self._topics[self._order(last)]

    def to_state(self) -> dict[str, Any]:
        order = self._order()
        return {
            "capacity": self.capacity,
            "dim": self.dim,
            "end": self.end,
            "ids": [self._ids[int(i)] for i in order],
            "values": encode(self._values[order], "f8"),
            "raw": encode(self._raw[order], "f8"),
            "vectors": None if self._vectors is None else encode(self._vectors[order], "f2"),
            "topics": self._topics[order].tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Window:
        try:
            out = cls(int(state["capacity"]), int(state["dim"]))
            ids = [str(i) for i in state["ids"]]
            values = decode(state["values"], np.float64).reshape(-1)
            raw = decode(state["raw"], np.float64).reshape(-1)
            topics = [int(t) for t in state["topics"]]
            vectors = (
                decode(state["vectors"], np.float16).reshape(len(ids), out.dim) if out.dim else None
            )
            if not len(ids) == len(values) == len(raw) == len(topics) <= out.capacity:
                raise ValueError("ids, values, raw and topics differ in length or exceed capacity")
            for k, event_id in enumerate(ids):
                vector = None if vectors is None else vectors[k]
                out.append(event_id, float(values[k]), float(raw[k]), vector, topics[k])
            out.end = int(state["end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftError(f"could not restore a window: {exc!r}") from exc
        return out


__all__ = ["Window"]
