"""Calibration: the setting is measured on replayed stable streams, and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

import undertow.streams.drift  # noqa: F401  (registers the built-in detectors)
from undertow.streams.drift.base import DriftError
from undertow.streams.drift.calibration import (
    Calibration,
    calibrate,
    count_alarms,
    rate_upper_bound,
)


def stable_values() -> np.ndarray:
    return np.random.default_rng(3).exponential(size=4000)


def test_the_upper_bound_is_the_poisson_one() -> None:
    assert rate_upper_bound(0, 300_000) == pytest.approx(2.9957 / 300_000, rel=1e-4)
    assert rate_upper_bound(3, 1_000_000) == pytest.approx(7.7537e-6, rel=1e-4)


def test_adwin_gets_the_most_sensitive_delta_within_the_target() -> None:
    c = calibrate(stable_values(), "adwin", stream="s", events=200_000, target_rate=1e-4)
    assert (c.parameter, c.value, c.alarms, c.met) == ("delta", 0.03, 12, True)
    # a binary search over the grid; counts past the allowance (12) stop at 13
    assert dict(c.measured) == {1e-6: 0, 0.03: 12, 0.1: 13, 0.3: 13}
    assert c.rate_upper <= 1e-4 and c.params["delta"] == c.value and c.params["clock"] == 1


def test_page_hinkley_gets_the_lowest_threshold_within_the_target() -> None:
    c = calibrate(
        (stable_values() - 1.0),
        "page_hinkley",
        stream="s",
        events=100_000,
        target_rate=1e-3,
        params={"delta": 0.1, "alpha": 1.0},
    )
    assert (c.parameter, c.value, c.met) == ("threshold", 20.0, True)
    assert c.params == {
        "min_instances": 30,
        "delta": 0.1,
        "threshold": 20.0,
        "alpha": 1.0,
        "mode": "both",
    }
    assert "replayed 100,000 values" in c.method and "seed 0" in c.method


def test_the_chosen_setting_holds_on_fresh_stable_streams() -> None:
    values = stable_values()
    c = calibrate(values, "adwin", stream="s", events=200_000, target_rate=1e-4, seed=1)
    fresh = np.random.default_rng(99).exponential(size=400_000)  # another sample, not replayed
    alarms = count_alarms("adwin", c.params, fresh, stop_after=1000)
    assert alarms / len(fresh) <= 2e-4


def test_when_nothing_meets_the_target_the_least_sensitive_is_kept() -> None:
    drifting = np.concatenate([np.zeros(2000), np.ones(2000)])  # resampling mixes; PH still fires
    c = calibrate(
        drifting, "page_hinkley", stream="s", events=50_000, target_rate=1e-4, candidates=[1.0, 2.0]
    )
    assert (c.value, c.met) == (2.0, False)


def test_too_short_a_replay_cannot_show_the_target() -> None:
    with pytest.raises(DriftError, match="replay more events"):
        calibrate(stable_values(), "adwin", stream="s", events=10_000, target_rate=1e-5)
    with pytest.raises(DriftError, match="stable values"):
        calibrate([1.0], "adwin", stream="s")


def test_the_record_round_trips() -> None:
    c = calibrate(stable_values(), "adwin", stream="s", events=50_000, target_rate=1e-3)
    assert Calibration.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(DriftError):
        Calibration.from_dict({"stream": "s"})
