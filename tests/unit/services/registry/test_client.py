"""The registry's cached loader (services/registry/client.py); reading, publishing and
following the topic need a broker and are tested in tests/integration."""

from __future__ import annotations

import contextlib

from undertow.services.registry.client import CachedRegistry
from undertow.services.registry.state import RegistryState


def test_cached_registry_loads_once_per_ttl_and_retries_after_a_failure() -> None:
    now = [0.0]
    calls: list[float] = []
    fail = [False]

    def load() -> RegistryState:
        calls.append(now[0])
        if fail[0]:
            raise RuntimeError("broker away")
        return RegistryState()

    cached = CachedRegistry(load, ttl_s=5.0, clock=lambda: now[0])
    first = cached()
    now[0] = 4.9
    assert cached() is first and calls == [0.0]
    now[0] = 5.0
    assert cached() is not first and calls == [0.0, 5.0]
    now[0], fail[0] = 11.0, True
    for _ in range(2):  # not cached: each call tries again
        with contextlib.suppress(RuntimeError):
            cached()
    assert calls == [0.0, 5.0, 11.0, 11.0]
    assert cached.loads == 2
