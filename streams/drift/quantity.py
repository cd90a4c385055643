"""What the drift monitor watches in a scored event, and which detector watches it.

Two kinds of streams per segment:

* **embedding streams**, one per event type that carries an embedding (prompt, completion,
  retrieval query: their vectors live in different regions and must not be mixed). Each event
  becomes one number that says how far it is from the baseline (``MonitorConfig.statistic``):

  - ``topic_surprise`` (the default): ``-ln(1 - F(d))``, where ``d`` is the cosine distance to
    the nearest baseline topic and ``F`` the baseline's distribution of that distance (out of
    fold). Stable traffic gives values near an exponential with mean 1; an event farther than
    99% of the baseline gives more than 4.6. It weighs the rare far-away events that a topic
    shift brings far more than a plain distance does, which is what lets a detector see a
    shift of a tenth of the traffic early (measured in ``bench/drift_detection.py``);
  - ``topic_distance``: ``d`` itself;
  - ``embedding_distance``: the cosine distance to the baseline's single centroid.
* **scalar streams** (:class:`Quantity`): toxicity and injection scores, token counts (prompt
  and output length), latency and cost, each from the event types that carry it. Values go
  through ``transform`` (``log1p`` for the heavy-tailed ones) and are standardised with the
  baseline's mean and standard deviation, so one detector setting fits all of them.

>>> TOXICITY_PROMPT.value({"event_type": "prompt", "scores": {"toxicity": 0.25}})
0.25
>>> LATENCY.value({"event_type": "prompt", "latency_ms": 12.0}) is None  # not a completion
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import DriftError

EMBEDDING_EVENT_TYPES: tuple[str, ...] = ("prompt", "completion", "retrieval")
EmbeddingStatistic = Literal["topic_surprise", "topic_distance", "embedding_distance"]
EMBEDDING_STATISTICS: tuple[EmbeddingStatistic, ...] = (
    "topic_surprise",
    "topic_distance",
    "embedding_distance",
)


def embedding_stream(statistic: str, event_type: str) -> str:
    """The stream name of an embedding statistic, e.g. ``topic_surprise.prompt``."""
    return f"{statistic}.{event_type}"


@dataclass(frozen=True)
class Quantity:
    """A number read from scored events of some types: ``field`` is a top-level field of the
    ``ScoredEvent`` record (``latency_ms``) or ``scores.<name>``."""

    name: str
    field: str
    event_types: tuple[str, ...]
    transform: Literal["identity", "log1p"] = "identity"

    def value(self, event: Mapping[str, Any]) -> float | None:
        """The raw value in ``event``, or None (another event type, absent, not finite)."""
        if event.get("event_type") not in self.event_types:
            return None
        if self.field.startswith("scores."):
            raw = (event.get("scores") or {}).get(self.field[len("scores.") :])
        else:
            raw = event.get(self.field)
        if raw is None or isinstance(raw, bool):
            return None
        try:
            x = float(raw)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(x) or (self.transform == "log1p" and x < 0):
            return None
        return x

    def transformed(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``transform`` applied to raw values."""
        x = np.asarray(values, dtype=np.float64)
        return np.log1p(x) if self.transform == "log1p" else x

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "field": self.field,
            "event_types": list(self.event_types),
            "transform": self.transform,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quantity:
        transform = data.get("transform", "identity")
        if transform not in ("identity", "log1p"):
            raise DriftError(f"expected transform identity or log1p, got {transform!r}")
        return cls(str(data["name"]), str(data["field"]), tuple(data["event_types"]), transform)


TOXICITY_PROMPT = Quantity("toxicity.prompt", "scores.toxicity", ("prompt",))
TOXICITY_COMPLETION = Quantity("toxicity.completion", "scores.toxicity", ("completion",))
INJECTION_PROMPT = Quantity("injection.prompt", "scores.injection", ("prompt",))
INPUT_TOKENS = Quantity("input_tokens", "input_tokens", ("completion",), "log1p")
OUTPUT_TOKENS = Quantity("output_tokens", "output_tokens", ("completion",), "log1p")
LATENCY = Quantity("latency_ms", "latency_ms", ("completion",), "log1p")
COST = Quantity("cost_usd", "cost_usd", ("completion",), "log1p")
DEFAULT_QUANTITIES: tuple[Quantity, ...] = (
    TOXICITY_PROMPT,
    TOXICITY_COMPLETION,
    INJECTION_PROMPT,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    LATENCY,
    COST,
)


@dataclass(frozen=True)
class DetectorSpec:
    """A detector by registered name and its options (the calibrated one may be overridden
    by the baseline's calibration)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


# ADWIN on each embedding's statistic; Page-Hinkley on standardised scalars, tolerating
# drifts of a tenth of a standard deviation (so tuned to shifts of about a fifth of one and
# more). Page-Hinkley keeps alpha = 1: with forgetting (river's default 0.9999) its sums
# revert to a level of -delta / (1 - alpha) and wander about 70 standard deviations around
# it, and a calibrated threshold had to exceed 160 (measured). Alarm settings come from
# calibration; these are the starting points.
EMBEDDING_DETECTOR = DetectorSpec("adwin", {"delta": 0.002, "clock": 1})
SCALAR_DETECTOR = DetectorSpec(
    "page_hinkley", {"delta": 0.1, "threshold": 40.0, "min_instances": 30, "alpha": 1.0}
)

__all__ = [
    "COST",
    "DEFAULT_QUANTITIES",
    "EMBEDDING_DETECTOR",
    "EMBEDDING_EVENT_TYPES",
    "EMBEDDING_STATISTICS",
    "INJECTION_PROMPT",
    "INPUT_TOKENS",
    "LATENCY",
    "OUTPUT_TOKENS",
    "SCALAR_DETECTOR",
    "TOXICITY_COMPLETION",
    "TOXICITY_PROMPT",
    "DetectorSpec",
    "EmbeddingStatistic",
    "Quantity",
    "embedding_stream",
]
