"""ADWIN (adaptive windowing, Bifet and Gavaldà 2007) over river's implementation.

ADWIN keeps a window of recent values and drops its older part when the means of the two parts
differ by more than a bound set by ``delta``; it needs no assumption about the distribution,
which suits bounded, skewed streams like the cosine distance of each embedding to a baseline.
``clock=1`` checks after every value (river's default, 32, checks every 32nd; its Rust core
costs well under a microsecond per value either way here, and the check every value cuts up
to 31 events of delay).

State: river's Rust core serialises itself (``__getstate__``, a compact binary encoding of its
buckets and counters, about 250 bytes plus 40 per bucket). It is stored base64-encoded with the
river version that wrote it. Decoding it runs no code (unlike a pickle); a state written by
another river version is refused rather than guessed at.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

from undertow.streams.drift.base import Detection, Detector, DriftError, register_detector


def _river_version() -> str:
    from importlib.metadata import version

    return version("river")


@register_detector("adwin")
class Adwin(Detector):
    """river's ``ADWIN`` with explicit state and the cut it made when it fired.

    ``last_detection``: statistic = the difference of the means of the window's part kept and
    part dropped (new minus old); threshold = the ADWIN2 bound for those part sizes (computed
    here from river's formula with the window variance before the value that fired).
    River's core drops old buckets until the two parts agree again, so the kept part may still
    hold old values: the statistic understates the shift, and the monitor estimates the change
    point itself.
    """

    parameter = "delta"
    alarms_grow_with = "higher"

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 1,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        from river.drift import ADWIN

        if not 0.0 < float(delta) < 1.0:
            raise DriftError(f"ADWIN delta must be in (0, 1), got {delta!r}")
        for option, value in (
            ("clock", clock),
            ("max_buckets", max_buckets),
            ("min_window_length", min_window_length),
            ("grace_period", grace_period),
        ):
            if int(value) < 1:
                raise DriftError(f"ADWIN {option} must be a positive integer, got {value!r}")
        self._params: dict[str, Any] = {
            "delta": float(delta),
            "clock": int(clock),
            "max_buckets": int(max_buckets),
            "min_window_length": int(min_window_length),
            "grace_period": int(grace_period),
        }
        factory: Any = ADWIN  # river is untyped
        self._adwin = factory(**self._params)
        self._seen = 0
        self._last = None

    def update(self, x: float) -> bool:
        adwin = self._adwin
        if adwin.drift_detected:  # river resets the window on the value after a detection
            width, total, variance = 0.0, 0.0, 0.0
        else:
            # river's ``variance`` is the window's sum of squared deviations, not their mean
            width, total = float(adwin.width), float(adwin.total)
            variance = float(adwin.variance) / width if width else 0.0
        adwin.update(float(x))
        self._seen += 1
        if not adwin.drift_detected:
            return False
        kept, kept_total = float(adwin.width), float(adwin.total)
        dropped, dropped_total = width + 1.0 - kept, total + float(x) - kept_total
        if kept > 0 and dropped > 0:
            statistic = kept_total / kept - dropped_total / dropped
            threshold = self._bound(dropped, kept, width + 1.0, variance)
        else:
            statistic, threshold = 0.0, 0.0
        self._last = Detection(statistic, threshold)
        return True

    def _bound(self, n0: float, n1: float, width: float, variance: float) -> float:
        """ADWIN2's cut bound epsilon for sub-windows of n0 and n1 values."""
        lw = float(self._params["min_window_length"])
        delta = float(self._params["delta"])
        delta_prime = math.log(2.0 * math.log(max(width, 3.0)) / delta)
        m_recip = 1.0 / max(n0 - lw + 1.0, 1.0) + 1.0 / max(n1 - lw + 1.0, 1.0)
        return math.sqrt(2.0 * m_recip * max(variance, 0.0) * delta_prime) + (
            2.0 / 3.0 * delta_prime * m_recip
        )

    @property
    def drift_detected(self) -> bool:
        return bool(self._adwin.drift_detected)

    @property
    def width(self) -> int:
        """Values in the current adaptive window."""
        return int(self._adwin.width)

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def to_state(self) -> dict[str, Any]:
        core = self._adwin._helper.__getstate__()
        return {
            "detector": self.name,
            "params": self.params(),
            "river": _river_version(),
            "core": base64.b64encode(bytes(core)).decode("ascii"),
            "drift_detected": self.drift_detected,
            "seen": self._seen,
            "last": None if self._last is None else [self._last.statistic, self._last.threshold],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Adwin:
        if state.get("detector") != "adwin":
            raise DriftError(f"expected an adwin state, got detector {state.get('detector')!r}")
        if state.get("river") != _river_version():
            raise DriftError(
                f"this ADWIN state was written by river {state.get('river')!r}; river "
                f"{_river_version()} is installed and cannot read another version's core"
            )
        try:
            out = cls(**dict(state["params"]))
            out._adwin._helper.__setstate__(base64.b64decode(state["core"], validate=True))
            out._adwin._drift_detected = bool(state["drift_detected"])
            out._seen = int(state["seen"])
            last = state.get("last")
            out._last = None if last is None else Detection(float(last[0]), float(last[1]))
        except (DriftError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:
            # A damaged core makes the Rust decoder panic, which pyo3 raises as PanicException,
            # a BaseException: catch it here, where only decoding runs, and say what failed.
            raise DriftError(f"could not restore an ADWIN state: {exc!r}") from exc
        return out


__all__ = ["Adwin"]
