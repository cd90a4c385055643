"""Page-Hinkley over river: exact indices on seeded streams, state with infinities."""

from __future__ import annotations

import json
import random

from undertow.streams.drift.base import restore_detector
from undertow.streams.drift.page_hinkley import PageHinkley


def test_exact_indices_on_a_seeded_stream() -> None:
    rng = random.Random(99)
    values = [rng.gauss(0.0, 1.0) for _ in range(2000)] + [rng.gauss(1.0, 1.0) for _ in range(500)]
    ph = PageHinkley(delta=0.1, threshold=25.0)
    assert [i for i, x in enumerate(values) if ph.update(x)] == [2025]


def test_decreases_are_found_in_both_mode_and_ignored_going_up() -> None:
    values = [1.0] * 200 + [-2.0] * 50
    both, up = PageHinkley(threshold=10.0), PageHinkley(threshold=10.0, mode="up")
    assert [i for i, x in enumerate(values) if both.update(x)] == [203]
    assert [i for i, x in enumerate(values) if up.update(x)] == []


def test_a_fresh_state_holds_no_infinity_and_restores() -> None:
    ph = PageHinkley()
    text = json.dumps(ph.to_state(), allow_nan=False)
    twin = restore_detector(json.loads(text))
    values = [0.0] * 40 + [100.0] * 5
    assert [i for i, x in enumerate(values) if ph.update(x)] == [
        i for i, x in enumerate(values) if twin.update(x)
    ]
