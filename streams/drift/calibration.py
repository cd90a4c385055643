"""Alarm settings chosen by measurement: replay stable streams, count false alarms.

A detector's textbook setting (ADWIN's ``delta=0.002``, Page-Hinkley's ``threshold=50``) says
little about how often it fires on *this* traffic: the rate depends on the distribution of the
values, their variance and tails. :func:`calibrate` builds a long stable stream by resampling,
with replacement and a seed, values of the baseline period (so nothing in it changes), runs
the detector over it with each candidate setting and keeps the most sensitive one whose false
alarms stay under ``target_rate`` with 95% confidence (a one-sided Poisson upper bound on the
rate, so zero alarms in too short a replay proves nothing). The result records how it was
measured, and the baseline keeps it.

Limits: resampled values are independent. Real traffic comes in sessions and bursts, which
make stretches of similar values and more alarms than an independent replay shows; the drift
monitor's windowed two-sample confirmation against the baseline is there for that.

>>> import undertow.streams.drift
>>> rng = np.random.default_rng(0)
>>> c = calibrate(rng.normal(size=5000), "page_hinkley", stream="x", events=20_000,
...               target_rate=1e-3, params={"delta": 0.1}, candidates=[5.0, 10.0, 20.0, 40.0])
>>> c.met, c.parameter
(True, 'threshold')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import DriftError, create_detector, detector_class

DEFAULT_TARGET_RATE = 1e-5  # at most one false alarm per 100,000 stable events
DEFAULT_EVENTS = 1_000_000
DEFAULT_CANDIDATES: dict[str, tuple[float, ...]] = {
    "adwin": (1e-6, 1e-5, 1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
    "page_hinkley": (3.0, 5.0, 7.0, 10.0, 14.0, 20.0, 28.0, 40.0, 56.0, 80.0, 110.0, 160.0),
}


@dataclass(frozen=True)
class Calibration:
    """The setting chosen for one stream's detector, and how it was measured.

    ``params``: the detector's full options, the calibrated one included. ``alarms`` false
    alarms in ``events`` replayed values; ``rate_upper``: the ``confidence`` upper bound on
    the false-alarm rate per event; ``met``: whether it is at most ``target_rate`` (when no
    candidate meets it, the least sensitive is kept and ``met`` is False). ``measured``:
    (candidate, alarms) for every candidate tried; a count past what the target allows stops
    early, so it reads "at least".
    """

    stream: str
    detector: str
    parameter: str
    value: float
    params: Mapping[str, Any]
    target_rate: float
    confidence: float
    events: int
    alarms: int
    rate_upper: float
    met: bool
    seed: int
    sample_size: int
    measured: tuple[tuple[float, int], ...]
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "detector": self.detector,
            "parameter": self.parameter,
            "value": self.value,
            "params": dict(self.params),
            "target_rate": self.target_rate,
            "confidence": self.confidence,
            "events": self.events,
            "alarms": self.alarms,
            "rate_upper": self.rate_upper,
            "met": self.met,
            "seed": self.seed,
            "sample_size": self.sample_size,
            "measured": [[v, n] for v, n in self.measured],
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        try:
            return cls(
                stream=str(data["stream"]),
                detector=str(data["detector"]),
                parameter=str(data["parameter"]),
                value=float(data["value"]),
                params=dict(data["params"]),
                target_rate=float(data["target_rate"]),
                confidence=float(data["confidence"]),
                events=int(data["events"]),
                alarms=int(data["alarms"]),
                rate_upper=float(data["rate_upper"]),
                met=bool(data["met"]),
                seed=int(data["seed"]),
                sample_size=int(data["sample_size"]),
                measured=tuple((float(v), int(n)) for v, n in data["measured"]),
                method=str(data["method"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftError(f"expected a calibration record, got {dict(data)!r:.200}") from exc


def rate_upper_bound(alarms: int, events: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a Poisson rate per event (``alarms`` seen)."""
    from scipy.stats import chi2

    return float(0.5 * chi2.ppf(confidence, 2 * (alarms + 1)) / events)


def count_alarms(
    detector: str, params: Mapping[str, Any], stream: npt.NDArray[np.float64], stop_after: int
) -> int:
    """Detections of a fresh ``detector`` over ``stream``, counting no further than
    ``stop_after + 1``."""
    d = create_detector(detector, **params)
    alarms = 0
    update = d.update
    for x in stream.tolist():
        if update(x):
            alarms += 1
            if alarms > stop_after:
                break
    return alarms


def calibrate(
    values: npt.ArrayLike,
    detector: str,
    *,
    stream: str,
    params: Mapping[str, Any] | None = None,
    candidates: Sequence[float] | None = None,
    target_rate: float = DEFAULT_TARGET_RATE,
    events: int = DEFAULT_EVENTS,
    seed: int = 0,
    confidence: float = 0.95,
) -> Calibration:
    """The most sensitive ``candidates`` value of ``detector``'s alarm parameter whose false
    alarms on ``events`` values resampled from ``values`` stay under ``target_rate``.

    ``values``: the stream's values in a stable period, exactly as the detector will receive
    them (standardised, if the monitor standardises). ``params``: the other options.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if len(x) < 2:
        raise DriftError(f"calibrating {stream!r} needs stable values, got {len(x)}")
    if not 0.0 < target_rate < 1.0 or events < 1:
        raise DriftError(
            f"expected 0 < target_rate < 1 and events >= 1, got {target_rate} and {events}"
        )
    cls = detector_class(detector)
    parameter = cls.parameter
    grid = sorted(float(c) for c in (candidates or DEFAULT_CANDIDATES.get(detector, ())))
    if not grid:
        raise DriftError(f"no candidate values of {parameter!r} to calibrate {detector!r} with")
    if cls.alarms_grow_with == "higher":
        grid.reverse()  # most sensitive first
    allowed = -1
    while rate_upper_bound(allowed + 1, events, confidence) <= target_rate:
        allowed += 1
    if allowed < 0:
        raise DriftError(
            f"{events} replayed events cannot show a false-alarm rate below {target_rate:g} "
            f"with {confidence:.0%} confidence: zero alarms bounds it at "
            f"{rate_upper_bound(0, events, confidence):.3g}; replay more events"
        )
    base = {k: v for k, v in (params or {}).items() if k != parameter}
    replay = np.random.default_rng(seed).choice(x, size=events, replace=True)
    measured: dict[float, int] = {}

    def alarms_at(value: float) -> int:
        if value not in measured:
            measured[value] = count_alarms(detector, {**base, parameter: value}, replay, allowed)
        return measured[value]

    # Alarms fall as the grid goes from most to least sensitive: binary search for the first
    # candidate within the allowance.
    lo, hi = 0, len(grid) - 1
    if alarms_at(grid[hi]) > allowed:
        chosen, met = grid[hi], False
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if alarms_at(grid[mid]) <= allowed:
                hi = mid
            else:
                lo = mid + 1
        chosen, met = grid[lo], True
    alarms = alarms_at(chosen)
    # every option, defaults included, so the record means the same if a default changes
    full = create_detector(detector, **{**base, parameter: chosen}).params()
    return Calibration(
        stream=stream,
        detector=detector,
        parameter=parameter,
        value=chosen,
        params=full,
        target_rate=target_rate,
        confidence=confidence,
        events=events,
        alarms=alarms,
        rate_upper=rate_upper_bound(alarms, events, confidence),
        met=met,
        seed=seed,
        sample_size=len(x),
        measured=tuple(sorted(measured.items())),
        method=(
            f"replayed {events:,} values resampled with replacement (seed {seed}) from "
            f"{len(x):,} baseline values; kept the most sensitive {parameter} whose false "
            f"alarms keep the {confidence:.0%} Poisson upper bound on the rate at or below "
            f"{target_rate:g} per event (at most {allowed} alarms)"
        ),
    )


__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_EVENTS",
    "DEFAULT_TARGET_RATE",
    "Calibration",
    "calibrate",
    "count_alarms",
    "rate_upper_bound",
]
