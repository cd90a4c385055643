"""A mergeable quantile sketch for window percentiles: log-spaced buckets (DDSketch).

Why not exact: a p95 over five minutes of a busy app would keep every latency in the window,
in a Faust table, per group. Why this sketch: buckets of one window step merge exactly into
the window's (add the counts), the state is a small JSON map, and every quantile it returns
is within ``relative_accuracy`` (1% by default) of a value at the same rank: a value ``x``
falls in bucket ``ceil(log_gamma(x))`` with ``gamma = (1 + a) / (1 - a)`` and is read back as
the bucket's midpoint. Values at or below ``MIN_VALUE`` (zero latency, free calls) are counted
in a bucket of their own and read back as 0. Negative values are treated as 0.

Rank convention: the q-quantile of n values is the value at 0-based rank ``floor(q * (n - 1))``
of the sorted values (the lower one, as DDSketch does), so p95 of 100 values is the 95th
smallest.

>>> s = QuantileSketch()
>>> for x in range(1, 101):
...     s.add(float(x))
>>> round(s.quantile(0.95))
95
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MIN_VALUE = 1e-9
DEFAULT_ACCURACY = 0.01
DEFAULT_MAX_BINS = 2048


class QuantileSketch:
    """Counts of values in log-spaced buckets; ``add``, ``merge``, ``quantile``."""

    def __init__(
        self, relative_accuracy: float = DEFAULT_ACCURACY, max_bins: int = DEFAULT_MAX_BINS
    ) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        self.relative_accuracy = relative_accuracy
        self.max_bins = max_bins
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self.zero = 0
        self.bins: dict[int, int] = {}

    @property
    def count(self) -> int:
        return self.zero + sum(self.bins.values())

    def add(self, value: float, count: int = 1) -> None:
        if value <= MIN_VALUE:
            self.zero += count
            return
        index = math.ceil(math.log(value) / self._log_gamma)
        self.bins[index] = self.bins.get(index, 0) + count
        if len(self.bins) > self.max_bins:
            self._collapse()

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s counts; both must have the same accuracy."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches of different accuracy")
        self.zero += other.zero
        for index, n in other.bins.items():
            self.bins[index] = self.bins.get(index, 0) + n
        if len(self.bins) > self.max_bins:
            self._collapse()

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) within the relative accuracy; None when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        total = self.count
        if total == 0:
            return None
        rank = math.floor(q * (total - 1))
        seen = self.zero
        if seen > rank:
            return 0.0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen > rank:
                return 2 * self._gamma**index / (self._gamma + 1)
        raise AssertionError("unreachable: rank below the total count")

    def _collapse(self) -> None:
        """Fold the lowest buckets together: the high quantiles alerts read stay exact."""
        order = sorted(self.bins)
        extra = len(order) - self.max_bins
        keep = order[extra]
        self.bins[keep] += sum(self.bins.pop(index) for index in order[:extra])

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict; ``from_json`` reads it back."""
        return {
            "a": self.relative_accuracy,
            "z": self.zero,
            "b": [[index, self.bins[index]] for index in sorted(self.bins)],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], max_bins: int = DEFAULT_MAX_BINS) -> QuantileSketch:
        sketch = cls(float(data["a"]), max_bins)
        sketch.zero = int(data["z"])
        sketch.bins = {int(index): int(n) for index, n in data["b"]}
        return sketch


__all__ = ["QuantileSketch"]
