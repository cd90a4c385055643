"""Vectors as JSON values and the recent window of a stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from undertow.streams.drift.base import DriftError
from undertow.streams.drift.vectors import decode, encode
from undertow.streams.drift.window import Window


def test_arrays_round_trip_exactly_in_their_stored_type() -> None:
    v = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    assert np.array_equal(decode(json.loads(json.dumps(encode(v)))), v)
    half = decode(encode(v, "f2"))
    assert np.array_equal(half, v.astype(np.float16).astype(np.float32))
    assert np.array_equal(decode(encode(half, "f2")), half)  # float16 values survive exactly


def test_a_damaged_array_is_a_drift_error() -> None:
    with pytest.raises(DriftError):
        decode({"dtype": "f4", "shape": [2, 2], "b64": "AAAA"})
    with pytest.raises(DriftError):
        decode({"dtype": "int8", "shape": [1], "b64": ""})


def test_the_window_keeps_the_last_entries_in_order() -> None:
    w = Window(4, dim=2)
    for i in range(6):
        w.append(f"e{i}", float(i), float(-i), np.array([i, 1.0]), topic=i % 2)
    assert len(w) == 4 and w.end == 6
    assert w.ids() == ["e2", "e3", "e4", "e5"] and w.ids(2) == ["e4", "e5"]
    assert w.values().tolist() == [2.0, 3.0, 4.0, 5.0] and w.raw(1).tolist() == [-5.0]
    assert w.vectors(2)[:, 0].tolist() == [4.0, 5.0] and w.topics().tolist() == [0, 1, 0, 1]


def test_the_window_state_round_trips_exactly() -> None:
    w = Window(5, dim=3)
    rng = np.random.default_rng(1)
    for i in range(8):
        w.append(f"e{i}", float(rng.normal()), float(rng.normal()), rng.normal(size=3), topic=i)
    twin = Window.from_state(json.loads(json.dumps(w.to_state())))
    assert twin.ids() == w.ids() and twin.end == w.end
    assert np.array_equal(twin.values(), w.values()) and np.array_equal(twin.raw(), w.raw())
    assert np.array_equal(twin.vectors(), w.vectors())
    assert np.array_equal(twin.topics(), w.topics())
    scalar = Window(3)
    scalar.append("a", 1.0, 2.0)
    assert Window.from_state(scalar.to_state()).raw().tolist() == [2.0]
    with pytest.raises(DriftError):
        scalar.vectors()
