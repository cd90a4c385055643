"""One contract for every registered drift detector (CONVENTIONS 3).

Each detector runs through the same checks. Those that need options to fit the seeded test
streams declare them in DETECTOR_PARAMS, and the options each must refuse in BAD_PARAMS; a
newly registered detector without an entry runs with its defaults.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

import undertow.streams.drift  # noqa: F401  (registers the built-in detectors)
from undertow.streams.drift.base import (
    Detector,
    DriftError,
    available_detectors,
    create_detector,
    detector_class,
    restore_detector,
)

DETECTOR_PARAMS: dict[str, dict[str, Any]] = {
    "adwin": {"delta": 0.002},
    "page_hinkley": {"delta": 0.1, "threshold": 25.0},
}
BAD_PARAMS: dict[str, list[dict[str, Any]]] = {
    "adwin": [{"delta": 0.0}, {"delta": 1.5}, {"clock": 0}],
    "page_hinkley": [{"threshold": 0.0}, {"alpha": 0.0}, {"mode": "sideways"}],
}


def stream(seed: int, n: int, shift_at: int | None = None, shift: float = 0.0) -> list[float]:
    """Gaussian noise (sd 1) whose mean moves by ``shift`` from ``shift_at`` on."""
    rng = random.Random(seed)
    return [
        rng.gauss(shift if shift_at is not None and i >= shift_at else 0.0, 1.0) for i in range(n)
    ]


def build(name: str) -> Detector:
    return create_detector(name, **DETECTOR_PARAMS.get(name, {}))


def detections(detector: Detector, values: list[float]) -> list[int]:
    return [i for i, x in enumerate(values) if detector.update(x)]


NAMES = available_detectors()


def test_the_built_in_detectors_are_registered() -> None:
    assert {"adwin", "page_hinkley"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_constant_stream_never_fires(name: str) -> None:
    assert detections(build(name), [0.5] * 5000) == []


@pytest.mark.parametrize("name", NAMES)
def test_a_large_shift_is_found_soon_after_it_starts(name: str) -> None:
    found = detections(build(name), stream(7, 3000, shift_at=1500, shift=3.0))
    after = [i for i in found if i >= 1500]
    assert after and after[0] < 1500 + 100
    assert not [i for i in found if i < 1500]


@pytest.mark.parametrize("name", NAMES)
def test_detection_is_reported_with_statistic_and_threshold(name: str) -> None:
    detector = build(name)
    assert detector.last_detection is None
    found = detections(detector, stream(7, 3000, shift_at=1500, shift=3.0))
    assert found and detector.seen == 3000
    last = detector.last_detection
    assert last is not None and math.isfinite(last.statistic) and math.isfinite(last.threshold)


@pytest.mark.parametrize("name", NAMES)
def test_update_returns_what_drift_detected_says(name: str) -> None:
    detector = build(name)
    for x in stream(3, 2000, shift_at=1000, shift=3.0):
        assert detector.update(x) == detector.drift_detected


@pytest.mark.parametrize("name", NAMES)
def test_a_restored_detector_continues_exactly(name: str) -> None:
    values = stream(11, 6000, shift_at=2500, shift=2.0) + stream(12, 3000, shift_at=0, shift=-1.0)
    uninterrupted = detections(build(name), values)
    assert uninterrupted
    cuts = {1, 17, 1000, 2500, 4999, *uninterrupted, *(i + 1 for i in uninterrupted)}
    detector, found = build(name), []
    for i, x in enumerate(values):
        if i in cuts:  # through JSON, as a Faust table stores it
            detector = restore_detector(json.loads(json.dumps(detector.to_state())))
        if detector.update(x):
            found.append(i)
    assert found == uninterrupted


@pytest.mark.parametrize("name", NAMES)
def test_params_build_a_twin(name: str) -> None:
    detector = build(name)
    twin = create_detector(name, **detector.params())
    values = stream(5, 4000, shift_at=2000, shift=1.5)
    assert detections(detector, values) == detections(twin, values)


@pytest.mark.parametrize("name", NAMES)
def test_the_state_names_its_detector_and_is_json(name: str) -> None:
    state = build(name).to_state()
    assert state["detector"] == name
    json.dumps(state, allow_nan=False)


@pytest.mark.parametrize("name", NAMES)
def test_a_state_of_another_detector_is_refused(name: str) -> None:
    other = next(n for n in NAMES if n != name)
    state = {**build(other).to_state(), "detector": name}
    with pytest.raises(DriftError):
        detector_class(name).from_state(state)


@pytest.mark.parametrize("name", NAMES)
def test_the_calibrated_parameter_is_an_option(name: str) -> None:
    cls = detector_class(name)
    assert cls.parameter in build(name).params()
    assert cls.alarms_grow_with in ("higher", "lower")


@pytest.mark.parametrize(
    ("name", "options"),
    [(name, options) for name in NAMES for options in BAD_PARAMS.get(name, [])],
)
def test_bad_options_are_refused(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(DriftError):
        create_detector(name, **options)


def test_unknown_names_and_states_are_drift_errors() -> None:
    with pytest.raises(DriftError, match="no drift detector named"):
        create_detector("cusum-9000")
    with pytest.raises(DriftError, match="'detector' name"):
        restore_detector({"params": {}})
