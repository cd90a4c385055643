"""Event-time windows of the window rules: buckets of one step, merged into a window.

A window rule's window of length W, evaluated every step S (S divides W), is the union of the
W/S buckets of length S before its end. Bucket starts and window ends are multiples of S since
the epoch (UTC), so every worker cuts the same windows. A bucket holds what each kind needs,
and buckets merge exactly: counts and sums add, quantile sketches add their counts, and the
examples keep the ``keep`` events with the largest values.

Times are integers: microseconds since the epoch.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from undertow.streams.policy.sketch import QuantileSketch

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime | timedelta) -> int:
    """A datetime (naive means UTC) as microseconds since the epoch, or a duration's length."""
    if isinstance(moment, timedelta):
        return moment // MICROSECOND
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def from_micros(micros: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=micros)


def floor_to(micros: int, step: int) -> int:
    """The multiple of ``step`` at or before ``micros``."""
    return micros - micros % step


def ceil_to(micros: int, step: int) -> int:
    """The multiple of ``step`` at or after ``micros``."""
    return -(-micros // step) * step


@dataclass
class WindowAgg:
    """What one bucket (or a merged window) holds.

    ``n``: events counted; ``hits``: those above the rate rule's ``event_above``; ``total``:
    the sum of values; ``sketch``: their distribution (percentile rules only); ``top``: up to
    ``keep`` ``(value, event_id)`` pairs with the largest values (rate rules: hits only).
    """

    n: int = 0
    hits: int = 0
    total: float = 0.0
    sketch: QuantileSketch | None = None
    top: list[tuple[float, str]] = field(default_factory=list)

    def add(
        self, value: float, event_id: str, *, hit: bool, example: bool, keep: int, sketch: bool
    ) -> None:
        self.n += 1
        self.hits += int(hit)
        self.total += value
        if sketch:
            if self.sketch is None:
                self.sketch = QuantileSketch()
            self.sketch.add(value)
        if example and keep:
            self.top = heapq.nlargest(keep, [*self.top, (value, event_id)])

    @classmethod
    def merged(cls, parts: Iterable[WindowAgg], keep: int) -> WindowAgg:
        """One aggregate of ``parts``, in their order (sums add up in that order)."""
        out = cls()
        tops: list[tuple[float, str]] = []
        for part in parts:
            out.n += part.n
            out.hits += part.hits
            out.total += part.total
            if part.sketch is not None:
                if out.sketch is None:
                    out.sketch = QuantileSketch(part.sketch.relative_accuracy)
                out.sketch.merge(part.sketch)
            tops.extend(part.top)
        out.top = heapq.nlargest(keep, tops)
        return out

    def example_ids(self) -> list[str]:
        return [event_id for _, event_id in self.top]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "hits": self.hits,
            "total": self.total,
            "top": [[v, i] for v, i in self.top],
        }
        if self.sketch is not None:
            out["sketch"] = self.sketch.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WindowAgg:
        sketch = data.get("sketch")
        return cls(
            n=int(data["n"]),
            hits=int(data["hits"]),
            total=float(data["total"]),
            sketch=None if sketch is None else QuantileSketch.from_json(sketch),
            top=[(float(v), str(i)) for v, i in data["top"]],
        )


__all__ = ["WindowAgg", "ceil_to", "floor_to", "from_micros", "to_micros"]
