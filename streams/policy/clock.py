"""Event time of one input stream of the policy engine, merged over the stream's origins.

All times are microseconds since the epoch; the engine stores the clock as plain data
(``dataclasses.asdict``) in its checkpointed state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class EventClock:
    """Event time of one input stream, merged over its *origins* (the partitions its events
    were first read from, before the repartition); all in microseconds since the epoch.

    ``now`` never goes back. It is the latest event time of the slowest origin heard from
    within ``idle_after`` (processing time): an origin that lags, because its worker restarts
    or its partition is behind in a backlog, holds event time back instead of having its
    events dropped as late. An origin quiet for ``idle_after`` no longer holds it. An origin
    *expected* (:meth:`expect`) but not heard from yet holds ``now`` where it is (unset, for
    a new stream) until it is heard from or ``idle_after`` has passed since it was expected.
    """

    latest: int | None = None  # latest event time seen, any origin
    arrival: int | None = None  # processing-clock time of the latest arrival, any origin
    now: int | None = None  # event-time now (see the class doc), or more while idle
    # origin: [its latest event time (None: expected, not heard from), the processing-clock
    # time of its latest arrival (or of when it was expected)]
    origins: dict[str, list[int | None]] = field(default_factory=dict)

    def expect(self, origins: Iterable[str], wall: int) -> None:
        for origin in origins:
            self.origins.setdefault(origin, [None, wall])

    def observe(self, event_time: int, arrival: int, origin: str, idle_after: int) -> None:
        self.latest = event_time if self.latest is None else max(self.latest, event_time)
        self.arrival = arrival
        before = self.origins.get(origin, [None])[0]
        self.origins[origin] = [event_time if before is None else max(before, event_time), arrival]
        self._merge(arrival, idle_after)

    def idle(self, wall: int, idle_after: int) -> None:
        self._merge(wall, idle_after)
        if self.latest is None or self.arrival is None:
            return
        quiet = wall - self.arrival
        if quiet >= idle_after:
            self.now = max(self.latest if self.now is None else self.now, self.latest + quiet)

    def restarted(self, wall: int) -> None:
        """A worker took over at ``wall``: the idle timers of the stream and of each origin
        restart (it reads its backlog before it takes anything for quiet)."""
        if self.arrival is not None:
            self.arrival = max(self.arrival, wall)
        for seen in self.origins.values():
            seen[1] = max(seen[1] or wall, wall)

    def _merge(self, wall: int, idle_after: int) -> None:
        """Move ``now`` on to the slowest origin still held for (see the class doc)."""
        held = [t for t, a in self.origins.values() if a is not None and wall - a < idle_after]
        if None in held:
            return
        times = [t for t in held if t is not None] or [
            t for t, a in self.origins.values() if t is not None and a == self.arrival
        ]
        if times:
            self.now = min(times) if self.now is None else max(self.now, min(times))


__all__ = ["EventClock"]
