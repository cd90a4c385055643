"""The online drift detector interface: ``update(x) -> bool``, one implementation per module.

A detector watches one stream of numbers (a cosine distance per event, a toxicity score, a
latency) and says when its distribution has changed. Implementations wrap river's detectors
and register a factory under a name, so configuration picks one (``create_detector("adwin")``)
and one contract test runs every registered detector through the same checks.

State is explicit: ``to_state()`` gives a JSON-compatible dict and ``restore_detector(state)``
builds a detector that continues exactly where the saved one stopped (a restarted worker makes
the same decisions as one that never stopped).

>>> import undertow.streams.drift  # registers the built-in detectors
>>> detector = create_detector("page_hinkley", threshold=5.0, min_instances=10)
>>> [i for i, x in enumerate([0.0] * 50 + [3.0] * 10) if detector.update(x)]
[51]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, cast

from undertow.errors import UndertowError


class DriftError(UndertowError):
    """Drift detection got input or configuration it cannot use (a bad baseline, state, option)."""


@dataclass(frozen=True)
class Detection:
    """What a detector measured when it fired: its test statistic and the bound it crossed."""

    statistic: float
    threshold: float


class Detector(ABC):
    """Watches one numeric stream; ``update`` returns True on the value where it detects a change.

    ``parameter`` names the one option that sets the false-alarm rate (calibrated by
    :mod:`undertow.streams.drift.calibration`); ``alarms_grow_with`` says whether a larger value
    of it gives more alarms (``"higher"``, ADWIN's ``delta``) or fewer (``"lower"``, a threshold).
    """

    name: ClassVar[str] = ""
    parameter: ClassVar[str] = ""
    alarms_grow_with: ClassVar[Literal["higher", "lower"]] = "lower"

    @abstractmethod
    def update(self, x: float) -> bool:
        """Add one finite value; True when this value completes a detected change."""

    @property
    @abstractmethod
    def drift_detected(self) -> bool:
        """Whether the last ``update`` detected a change."""

    # Kept by the implementations' ``update``, saved and restored with their state.
    _seen: int = 0
    _last: Detection | None = None

    @property
    def seen(self) -> int:
        """Values received since the detector was built (restores keep counting)."""
        return self._seen

    @property
    def last_detection(self) -> Detection | None:
        """Statistic and threshold at the most recent detection, or None before the first."""
        return self._last

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The construction options, so ``create_detector(name, **params())`` builds a twin."""

    @abstractmethod
    def to_state(self) -> dict[str, Any]:
        """Everything needed to continue, as JSON-compatible values; includes ``detector``."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: Mapping[str, Any]) -> Detector:
        """The detector ``to_state`` described, continuing where it stopped."""


D = TypeVar("D", bound=type[Detector])
_DETECTORS: dict[str, type[Detector]] = {}


def register_detector(name: str) -> Callable[[D], D]:
    """Register a detector class under ``name`` (its ``name`` attribute is set to it)."""

    def add(cls: D) -> D:
        if name in _DETECTORS:
            raise DriftError(f"a detector named {name!r} is already registered")
        _DETECTORS[name] = cls
        cast(Any, cls).name = name
        return cls

    return add


def unregister_detector(name: str) -> None:
    _DETECTORS.pop(name, None)


def detector_class(name: str) -> type[Detector]:
    """The class registered as ``name``."""
    try:
        return _DETECTORS[name]
    except KeyError:
        raise DriftError(
            f"no drift detector named {name!r}; registered: {available_detectors()}"
        ) from None


def create_detector(name: str, **params: Any) -> Detector:
    """Build the detector registered as ``name`` with its options."""
    return detector_class(name)(**params)


def restore_detector(state: Mapping[str, Any]) -> Detector:
    """Rebuild a detector from ``Detector.to_state()``."""
    name = state.get("detector") if isinstance(state, Mapping) else None
    if not isinstance(name, str):
        raise DriftError(f"expected a detector state with a 'detector' name, got {state!r:.200}")
    return detector_class(name).from_state(state)


def available_detectors() -> list[str]:
    """Registered detector names."""
    return sorted(_DETECTORS)


def finite(value: float) -> float | None:
    """``value`` for JSON, None for the infinities JSON cannot hold."""
    return None if value in (float("inf"), float("-inf")) else float(value)


__all__ = [
    "Detection",
    "Detector",
    "DriftError",
    "available_detectors",
    "create_detector",
    "detector_class",
    "register_detector",
    "restore_detector",
    "unregister_detector",
]
