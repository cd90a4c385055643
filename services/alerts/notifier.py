"""What to send, and when: deduplication, resolves and storm grouping for one channel.

Pure logic with an explicit clock: :meth:`Notifier.offer` takes an alert and the current time
and says what to send now; :meth:`Notifier.due` hands out groups whose window has passed. No
I/O, no threads, no wall clock, so tests drive it with a manual clock.

The rules, per channel and per dedup key (the key is the incident):

* **Once per transition.** A firing is sent only when the key is not already firing (sent, in
  flight, or waiting in a group); a resolved only when a firing was sent. So a repeated firing
  does not page again, a resolve without a firing is dropped, and a key that resolved and then
  fires again is a new incident and pages again.
* **Escalations go out.** A firing of a higher severity than the one sent for its key (the
  policy engine emits one when an incident escalates) is sent again: PagerDuty raises the
  open alert's severity, chat shows the new level. One still waiting in a group is replaced.
* **Storms are grouped.** A non-critical alert opens a group (or joins the open one) that is
  sent ``window_s`` after it opened, as one notification: firing and resolved alerts in
  separate groups. A window channel (Slack, webhook) has one group per status; an incident
  channel (PagerDuty) one per dedup key. A group that reaches ``max_group`` alerts goes at once.
* **Critical goes at once** (``bypass``), alone, never waiting for a window.
* **Flaps shorter than the window page nobody.** A resolved that arrives while its firing
  still waits in a group cancels both; a firing that arrives while its resolved waits cancels
  both (the receivers never saw the incident close).

Sending is optimistic: state moves when a notification is handed out, and
:meth:`Notifier.settle` with ``delivered=False`` (a permanent refusal) moves it back, so a
resolve never follows a firing that no receiver took. The memory of keys is bounded
(``memory`` keys, least recently used forgotten first).

>>> from datetime import UTC, datetime
>>> from undertow.services.alerts.alert import Alert
>>> def a(key, status="firing", severity="warning"):
...     return Alert(event_id=key + status, dedup_key=key, rule="r", severity=severity,
...                  status=status, summary="s", app="chat", event_time=datetime.now(UTC))
>>> n = Notifier(window_s=30)
>>> n.offer(a("k1"), now=0).action, n.offer(a("k2"), now=5).action
('hold', 'hold')
>>> n.offer(a("k1"), now=6).action        # a repeat of a firing already waiting
'suppress'
>>> n.offer(a("k3", severity="critical"), now=7).action
'send'
>>> [len(x.alerts) for x in n.due(now=30)]  # the group of k1 and k2, 30 s after it opened
[2]
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from undertow.services.alerts.alert import SEVERITIES, Alert, Severity, Status
from undertow.services.alerts.channel import Grouping, Notification

Action = Literal["send", "hold", "suppress", "cancel"]


@dataclass(frozen=True)
class Decision:
    """The answer to one :meth:`Notifier.offer`.

    ``send``: notifications to deliver now. ``settled``: refs of records that need nothing
    more (a suppressed repeat, both halves of a cancelled flap). ``reason`` is for logs.
    """

    action: Action
    reason: str
    send: tuple[Notification, ...] = ()
    settled: tuple[Any, ...] = ()


@dataclass
class NotifierStats:
    """Counters since the notifier was built."""

    offered: int = 0
    notifications: int = 0
    alerts_sent: int = 0
    grouped: int = 0
    duplicates: int = 0
    escalations: int = 0
    orphan_resolves: int = 0
    flaps: int = 0
    reverted: int = 0
    forgotten: int = 0


@dataclass
class _Group:
    key: tuple[str, ...]
    status: Status
    deadline: float
    alerts: list[Alert] = field(default_factory=list)
    refs: list[Any] = field(default_factory=list)


class Notifier:
    """The decisions of one channel. Not thread-safe: one subscriber thread drives it."""

    def __init__(
        self,
        grouping: Grouping = "window",
        window_s: float = 30.0,
        *,
        max_group: int = 50,
        bypass: Severity | None = "critical",
        memory: int = 100_000,
    ) -> None:
        if window_s < 0:
            raise ValueError(f"window_s: expected >= 0, got {window_s}")
        if max_group < 1 or memory < 1:
            raise ValueError("max_group and memory must be at least 1")
        self.grouping = grouping
        self.window_s = window_s
        self.max_group = max_group
        self.bypass_rank = SEVERITIES.index(bypass) if bypass is not None else len(SEVERITIES)
        self.memory = memory
        self.stats = NotifierStats()
        # dedup key -> (last status handed out, severity rank of it)
        self._state: OrderedDict[str, tuple[Status, int]] = OrderedDict()
        self._groups: dict[tuple[str, ...], _Group] = {}
        # dedup key -> (group key, status, rank) of the alert of that key waiting in a group
        self._waiting: dict[str, tuple[tuple[str, ...], Status, int]] = {}
        # id(notification) -> (notification, [(dedup key, state before)]) until settled
        self._inflight: dict[
            int, tuple[Notification, list[tuple[str, tuple[Status, int] | None]]]
        ] = {}

    # -- queries --------------------------------------------------------------------------

    def state(self, dedup_key: str) -> Status | None:
        """The last status handed out for ``dedup_key`` (None: never, or forgotten)."""
        entry = self._state.get(dedup_key)
        return entry[0] if entry is not None else None

    def waiting(self) -> int:
        """Alerts held in open groups."""
        return sum(len(g.alerts) for g in self._groups.values())

    def next_due(self) -> float | None:
        """When the earliest open group is due, or None when nothing waits."""
        return min((g.deadline for g in self._groups.values()), default=None)

    # -- decisions ------------------------------------------------------------------------

    def offer(self, alert: Alert, now: float, ref: Any = None) -> Decision:
        """Decide about one alert arriving at ``now``; ``ref`` comes back with its outcome."""
        self.stats.offered += 1
        key = alert.dedup_key
        waiting = self._waiting.get(key)
        superseded: list[Any] = []
        if alert.status == "firing":
            if waiting is not None and waiting[1] == "resolved":
                other = self._unwait(key)
                self.stats.flaps += 1
                return Decision(
                    "cancel", "fired again before its resolve went out", (), (*other, ref)
                )
            sent = self._state.get(key)
            if waiting is not None:
                if alert.rank <= waiting[2]:
                    self.stats.duplicates += 1
                    return Decision("suppress", "already firing", (), (ref,))
                superseded = self._unwait(key)  # the escalation replaces it
                self.stats.escalations += 1
            elif sent is not None and sent[0] == "firing":
                if alert.rank <= sent[1]:
                    self.stats.duplicates += 1
                    return Decision("suppress", "already firing", (), (ref,))
                self.stats.escalations += 1
        else:
            if waiting is not None and waiting[1] == "firing":
                other = self._unwait(key)
                self.stats.flaps += 1
                return Decision("cancel", "resolved before its firing went out", (), (*other, ref))
            if waiting is not None:
                self.stats.duplicates += 1
                return Decision("suppress", "already resolving", (), (ref,))
            if self.state(key) != "firing":
                self.stats.orphan_resolves += 1
                return Decision("suppress", "no firing was sent for this key", (), (ref,))

        if alert.rank >= self.bypass_rank or self.window_s == 0:
            note = self._emit([alert], [ref])
            return Decision("send", f"{alert.severity}: sent at once", (note,), tuple(superseded))
        group_key = (alert.status,) if self.grouping == "window" else (key, alert.status)
        group = self._groups.get(group_key)
        if group is None:
            group = _Group(group_key, alert.status, now + self.window_s)
            self._groups[group_key] = group
        group.alerts.append(alert)
        group.refs.append(ref)
        self._waiting[key] = (group_key, alert.status, alert.rank)
        if len(group.alerts) >= self.max_group:
            return Decision("send", "group full", (self._close(group),), tuple(superseded))
        return Decision("hold", f"grouped until {group.deadline:.3f}", (), tuple(superseded))

    def due(self, now: float) -> list[Notification]:
        """The groups whose window has passed at ``now``, as notifications, oldest first."""
        ready = sorted(
            (g for g in self._groups.values() if g.deadline <= now), key=lambda g: g.deadline
        )
        return [self._close(g) for g in ready]

    def drain(self) -> list[Notification]:
        """Every open group now, whatever its deadline (shutdown, partitions revoked)."""
        return [self._close(g) for g in sorted(self._groups.values(), key=lambda g: g.deadline)]

    def settle(self, notification: Notification, delivered: bool) -> None:
        """Record the outcome of a handed-out notification; ``False`` undoes its state change.

        Call it after success or permanent failure. A notification that will be retried
        stays unsettled (its keys keep counting as sent, so repeats stay suppressed).
        """
        entry = self._inflight.pop(id(notification), None)
        if entry is None or delivered:
            return
        self.stats.reverted += 1
        sent_status = notification.status
        for key, before in entry[1]:
            if self.state(key) != sent_status:
                continue  # moved on since: leave it
            if before is None:
                self._state.pop(key, None)
            else:
                self._remember(key, before)

    def remember(self, alert: Alert) -> None:
        """Take a record's status as already handled (records settled before a restart)."""
        before = self._state.get(alert.dedup_key)
        rank = alert.rank
        if alert.firing and before is not None and before[0] == "firing":
            rank = max(rank, before[1])
        self._remember(alert.dedup_key, (alert.status, rank))

    # -- internals ------------------------------------------------------------------------

    def _unwait(self, key: str) -> list[Any]:
        """Take ``key``'s alert out of its group; return its ref."""
        group_key, _, _ = self._waiting.pop(key)
        group = self._groups[group_key]
        refs: list[Any] = []
        for index in range(len(group.alerts) - 1, -1, -1):
            if group.alerts[index].dedup_key == key:
                del group.alerts[index]
                refs.append(group.refs.pop(index))
        if not group.alerts:
            del self._groups[group_key]
        return refs

    def _close(self, group: _Group) -> Notification:
        del self._groups[group.key]
        for alert in group.alerts:
            self._waiting.pop(alert.dedup_key, None)
        return self._emit(group.alerts, group.refs)

    def _emit(self, alerts: list[Alert], refs: list[Any]) -> Notification:
        note = Notification(tuple(alerts), tuple(refs))
        before = [(a.dedup_key, self._state.get(a.dedup_key)) for a in alerts]
        for alert in alerts:
            self._remember(alert.dedup_key, (alert.status, alert.rank))
        self._inflight[id(note)] = (note, before)
        self.stats.notifications += 1
        self.stats.alerts_sent += len(alerts)
        if note.grouped:
            self.stats.grouped += 1
        return note

    def _remember(self, key: str, entry: tuple[Status, int]) -> None:
        self._state[key] = entry
        self._state.move_to_end(key)
        while len(self._state) > self.memory:
            self._state.popitem(last=False)
            self.stats.forgotten += 1
