"""A fixed-size summary of a distribution of numbers: count, moments and quantiles.

Baselines keep one per monitored quantity (a latency, a distance to the centroid), so reports
and rules can say where today's values sit in the baseline's distribution without keeping the
values. Built from an array (a baseline is built offline, from a time range or a file), so the
quantiles are exact at their levels and linear between them.

>>> q = Quantiles.from_values([1.0, 2.0, 3.0, 4.0, 5.0], levels=5)
>>> q.quantile(0.5), q.cdf(4.5)
(3.0, 0.875)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import DriftError

DEFAULT_LEVELS = 101  # 0%, 1%, ..., 100%


@dataclass(frozen=True)
class Quantiles:
    """``values[i]`` is the ``levels[i]`` quantile of ``count`` finite values."""

    count: int
    mean: float
    std: float
    levels: tuple[float, ...]
    values: tuple[float, ...]

    @classmethod
    def from_values(
        cls, values: Sequence[float] | npt.NDArray[Any], levels: int = DEFAULT_LEVELS
    ) -> Quantiles:
        """The summary of the finite entries of ``values`` at ``levels`` evenly spaced levels."""
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        if levels < 2:
            raise DriftError(f"a quantile summary needs at least 2 levels, got {levels}")
        grid = np.linspace(0.0, 1.0, levels)
        if not len(x):
            return cls(0, 0.0, 0.0, tuple(grid.tolist()), tuple(0.0 for _ in grid))
        return cls(
            count=len(x),
            mean=float(x.mean()),
            std=float(x.std()),
            levels=tuple(float(v) for v in grid),
            values=tuple(float(v) for v in np.quantile(x, grid)),
        )

    def quantile(self, q: float) -> float:
        """The value at level ``q`` (interpolated between stored levels)."""
        return float(np.interp(q, self.levels, self.values))

    def cdf(self, x: float) -> float:
        """The share of baseline values at or below ``x`` (interpolated)."""
        if not self.count:
            return 0.0
        if x < self.values[0]:
            return 0.0
        if x >= self.values[-1]:
            return 1.0
        # flat stretches (many equal values) take the highest level they reach
        v = np.asarray(self.values)
        right = int(np.searchsorted(v, x, side="right"))
        left = right - 1
        if v[right] == v[left]:
            return float(self.levels[right])
        t = (x - v[left]) / (v[right] - v[left])
        return float(self.levels[left] + t * (self.levels[right] - self.levels[left]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.mean,
            "std": self.std,
            "levels": list(self.levels),
            "values": list(self.values),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quantiles:
        try:
            levels = tuple(float(v) for v in data["levels"])
            values = tuple(float(v) for v in data["values"])
            out = cls(int(data["count"]), float(data["mean"]), float(data["std"]), levels, values)
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftError(f"expected a quantile summary, got {dict(data)!r:.200}") from exc
        if len(levels) != len(values) or len(levels) < 2:
            raise DriftError(
                f"a quantile summary needs as many values as levels (>= 2); got {len(levels)} "
                f"levels and {len(values)} values"
            )
        return out


__all__ = ["DEFAULT_LEVELS", "Quantiles"]
