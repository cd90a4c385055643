"""ADWIN over river: river's own seeded example, exact indices, state and its limits."""

from __future__ import annotations

import base64
import random

import pytest

from undertow.streams.drift.adwin import Adwin
from undertow.streams.drift.base import DriftError, restore_detector


def river_example() -> list[int]:
    rng = random.Random(12345)
    return rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)


def test_it_reproduces_rivers_documented_detection() -> None:
    # river's ADWIN docstring: "Change detected at index 1023" with its defaults
    adwin = Adwin(clock=32)
    assert [i for i, x in enumerate(river_example()) if adwin.update(x)] == [1023]


def test_checking_every_value_finds_the_change_sooner() -> None:
    adwin = Adwin()  # clock=1
    assert [i for i, x in enumerate(river_example()) if adwin.update(x)] == [1002]


def test_exact_indices_on_a_seeded_gaussian_stream() -> None:
    rng = random.Random(2026)
    values = [rng.gauss(0.0, 1.0) for _ in range(3000)] + [rng.gauss(0.5, 1.0) for _ in range(3000)]
    adwin = Adwin(delta=0.002)
    assert [i for i, x in enumerate(values) if adwin.update(x)] == [3097]


def test_a_state_from_another_river_version_is_refused() -> None:
    state = Adwin().to_state()
    with pytest.raises(DriftError, match="river"):
        restore_detector({**state, "river": "0.0.1"})


def test_a_damaged_core_is_a_drift_error() -> None:
    adwin = Adwin()
    for x in range(100):
        adwin.update(float(x % 3))
    state = adwin.to_state()
    half = base64.b64decode(state["core"])[:20]
    with pytest.raises(DriftError, match="could not restore"):
        restore_detector({**state, "core": base64.b64encode(half).decode()})
