"""The one backoff policy (undertow/backoff.py)."""

from __future__ import annotations

import random

import pytest

from undertow.backoff import Backoff
from undertow.errors import ConfigError


def test_backoff_grows_to_its_cap() -> None:
    delays = Backoff(0.1, 1.0, jitter=0).delays()
    assert [next(delays) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert Backoff(0.5, 30.0).cap(1_000_000) == 30.0  # no overflow far into an outage


def test_jitter_spreads_waits_below_the_cap_only() -> None:
    rng = random.Random(3)
    waits = [Backoff(1.0, 1.0, jitter=0.2).delay(5, rng) for _ in range(200)]
    assert all(0.8 <= w <= 1.0 for w in waits) and len({round(w, 6) for w in waits}) > 100
    equal = Backoff(0.5, 30.0, factor=2.0, jitter=0.5)
    assert all(2.0 <= equal.delay(4, rng) <= 4.0 for _ in range(200))  # cap 4: equal jitter


def test_a_policy_that_cannot_work_is_refused() -> None:
    for args in ((2.0, 1.0), (0.0, 1.0), (0.1, 1.0, 0.5), (0.1, 1.0, 2.0, 1.5)):
        with pytest.raises(ConfigError):
            Backoff(*args)
