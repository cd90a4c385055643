"""Capped exponential backoff with jitter: the one policy every retry loop in Undertow uses
(the warehouse sink, the stream producers, the judge client, alert delivery and its outage
rounds, the action workers).

The ``n``-th wait (1 for the first) is ``cap = min(maximum, minimum * factor**(n - 1))``,
drawn uniformly from ``[cap * (1 - jitter), cap]``: never above the cap, and spread so that
many clients retrying at once do not come back at once ("equal jitter" is ``jitter=0.5``).

>>> from itertools import islice
>>> list(islice(Backoff(0.1, 1.0, jitter=0).delays(), 6))
[0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
>>> 0.5 <= Backoff(0.5, 30.0, jitter=0.5).delay(2) <= 1.0
True
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from undertow.errors import ConfigError


class Backoff:
    """The waits between retries (see the module doc)."""

    def __init__(
        self, minimum: float, maximum: float, factor: float = 2.0, jitter: float = 0.2
    ) -> None:
        if not 0 < minimum <= maximum or factor < 1 or not 0 <= jitter <= 1:
            raise ConfigError(
                "backoff needs 0 < minimum <= maximum, factor >= 1 and 0 <= jitter <= 1; "
                f"got {minimum}, {maximum}, {factor}, {jitter}"
            )
        self.minimum, self.maximum, self.factor, self.jitter = minimum, maximum, factor, jitter

    def cap(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 for the first)."""
        exponent = min(max(retry - 1, 0), 64)  # past this the cap is the maximum anyway
        return min(self.maximum, self.minimum * self.factor**exponent)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1 for the first), in seconds."""
        cap = self.cap(retry)
        spread = cap * self.jitter
        if not spread:
            return cap
        return cap - spread + (rng or random).uniform(0, spread)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless sequence of waits, for retry 1, 2, ..."""
        retry = 0
        while True:
            retry += 1
            yield self.delay(retry, rng)


__all__ = ["Backoff"]
