"""Page-Hinkley (Page 1954) over river's implementation: a cumulative sum of deviations from
the running mean, for a lasting shift in the mean of a scalar stream (toxicity, latency, cost).

Each value adds ``x - mean - delta`` (for increases; ``+ delta`` for decreases) to a sum with
forgetting factor ``alpha``; the detector fires when the sum rises ``threshold`` above its
lowest point (or falls as far below its highest). ``delta`` is the shift it tolerates and
``threshold`` sets the false-alarm rate, so both are in the units of the input: the drift
monitor feeds standardised values (baseline mean 0, standard deviation 1).

State is river's own counters, read and written as plain numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from undertow.streams.drift.base import Detection, Detector, DriftError, finite, register_detector

_MODES = ("up", "down", "both")


@register_detector("page_hinkley")
class PageHinkley(Detector):
    """river's ``PageHinkley`` with explicit state.

    ``last_detection``: statistic = the larger of the increase and decrease test values,
    threshold = ``threshold``.
    """

    parameter = "threshold"
    alarms_grow_with = "lower"

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        from river.drift import PageHinkley as RiverPageHinkley

        if mode not in _MODES:
            raise DriftError(f"Page-Hinkley mode must be one of {_MODES}, got {mode!r}")
        if not float(threshold) > 0.0:
            raise DriftError(f"Page-Hinkley threshold must be positive, got {threshold!r}")
        if not 0.0 < float(alpha) <= 1.0:
            raise DriftError(f"Page-Hinkley alpha must be in (0, 1], got {alpha!r}")
        if int(min_instances) < 1 or float(delta) < 0.0:
            raise DriftError(
                f"Page-Hinkley needs min_instances >= 1 and delta >= 0, got {min_instances!r} "
                f"and {delta!r}"
            )
        self._params: dict[str, Any] = {
            "min_instances": int(min_instances),
            "delta": float(delta),
            "threshold": float(threshold),
            "alpha": float(alpha),
            "mode": mode,
        }
        factory: Any = RiverPageHinkley  # river is untyped
        self._ph = factory(**self._params)
        self._seen = 0
        self._last = None

    def update(self, x: float) -> bool:
        ph = self._ph
        ph.update(float(x))
        self._seen += 1
        if not ph.drift_detected:
            return False
        increase = ph._sum_increase - ph._min_increase
        decrease = ph._max_decrease - ph._sum_decrease
        self._last = Detection(float(max(increase, decrease)), self._params["threshold"])
        return True

    @property
    def drift_detected(self) -> bool:
        return bool(self._ph.drift_detected)

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def to_state(self) -> dict[str, Any]:
        ph = self._ph
        return {
            "detector": self.name,
            "params": self.params(),
            "mean_n": float(ph._x_mean.n),
            "mean": float(ph._x_mean._mean),
            "sum_increase": float(ph._sum_increase),
            "sum_decrease": float(ph._sum_decrease),
            "min_increase": finite(ph._min_increase),
            "max_decrease": finite(ph._max_decrease),
            "drift_detected": self.drift_detected,
            "seen": self._seen,
            "last": None if self._last is None else [self._last.statistic, self._last.threshold],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PageHinkley:
        if state.get("detector") != "page_hinkley":
            raise DriftError(
                f"expected a page_hinkley state, got detector {state.get('detector')!r}"
            )
        try:
            out = cls(**dict(state["params"]))
            ph = out._ph
            ph._x_mean.n = float(state["mean_n"])
            ph._x_mean._mean = float(state["mean"])
            ph._sum_increase = float(state["sum_increase"])
            ph._sum_decrease = float(state["sum_decrease"])
            low, high = state["min_increase"], state["max_decrease"]
            ph._min_increase = float("inf") if low is None else float(low)
            ph._max_decrease = float("-inf") if high is None else float(high)
            ph._drift_detected = bool(state["drift_detected"])
            out._seen = int(state["seen"])
            last = state.get("last")
            out._last = None if last is None else Detection(float(last[0]), float(last[1]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftError(f"could not restore a Page-Hinkley state: {exc!r}") from exc
        return out


__all__ = ["PageHinkley"]
