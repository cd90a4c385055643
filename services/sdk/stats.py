"""Counters of what the SDK did with the events it was given, and rate-limited complaints.

Every event ends in exactly one of: ``sent`` (acknowledged by the broker on first try),
``replayed`` (acknowledged after a stay in the spool), ``dropped`` (queue or spool full, or
recorded after close), ``sampled_out``, ``failed`` (an invalid value, a record the broker
refused for good, or undeliverable without a spool), or it is still on its way (``queue_depth``,
``in_flight``, ``spool_records``). ``spooled`` counts entries into the spool, so
``spooled - replayed`` is roughly what the spool holds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

LOG = logging.getLogger("undertow.sdk")


@dataclass(frozen=True)
class SdkStats:
    """A snapshot of the SDK's counters (see the module docstring for what each means)."""

    enqueued: int
    sent: int
    spooled: int
    replayed: int
    dropped: int
    sampled_out: int
    failed: int
    queue_depth: int
    spool_bytes: int
    in_flight: int = 0
    truncated: int = 0
    dropped_queue_full: int = 0
    dropped_spool_full: int = 0
    spool_records: int = 0
    link_up: bool = True

    @property
    def delivered(self) -> int:
        """Events the broker acknowledged: ``sent + replayed``."""
        return self.sent + self.replayed


class Complaints:
    """Logs each kind of failure the first time, then at most once per ``interval`` seconds
    with the count seen meanwhile. Messages carry counts, codes and types, never texts."""

    def __init__(self, interval: float = 60.0, logger: logging.Logger = LOG) -> None:
        self.interval = interval
        self.logger = logger
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(
        self, kind: str, message: str, *args: object, level: int = logging.WARNING
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, suppressed, self.interval)
        self.logger.log(level, "undertow sdk: " + message, *args)
