"""What to send and when (services/alerts/notifier.py), driven by a manual clock."""

from __future__ import annotations

import pytest

from undertow.services.alerts import Notification, Notifier

from .fixtures import make_alert


def keys(notes: list[Notification] | tuple[Notification, ...]) -> list[list[str]]:
    return [[a.dedup_key for a in n.alerts] for n in notes]


def sent(notifier: Notifier, notes: list[Notification] | tuple[Notification, ...]) -> None:
    for note in notes:
        notifier.settle(note, delivered=True)


def test_a_repeated_firing_is_sent_once() -> None:
    n = Notifier(window_s=0)
    first = n.offer(make_alert("a"), now=0, ref="r1")
    assert first.action == "send" and keys(first.send) == [["a"]]
    assert first.send[0].refs == ("r1",)
    sent(n, first.send)
    for t in (1, 2, 3):
        repeat = n.offer(make_alert("a"), now=t, ref=f"dup{t}")
        assert (repeat.action, repeat.send, repeat.settled) == ("suppress", (), (f"dup{t}",))
    assert n.stats.duplicates == 3 and n.stats.notifications == 1


def test_a_repeat_is_suppressed_while_the_first_waits_in_a_group() -> None:
    n = Notifier(window_s=30)
    assert n.offer(make_alert("a"), now=0).action == "hold"
    assert n.offer(make_alert("a"), now=1, ref="dup").settled == ("dup",)
    assert keys(n.due(now=30)) == [["a"]]


def test_resolve_only_after_a_firing_was_sent() -> None:
    n = Notifier(window_s=0)
    orphan = n.offer(make_alert("a", "resolved"), now=0, ref="r")
    assert (orphan.action, orphan.settled) == ("suppress", ("r",))
    assert n.stats.orphan_resolves == 1
    sent(n, n.offer(make_alert("a"), now=1).send)
    resolve = n.offer(make_alert("a", "resolved"), now=2)
    assert resolve.action == "send" and resolve.send[0].status == "resolved"
    sent(n, resolve.send)
    assert n.offer(make_alert("a", "resolved"), now=3).action == "suppress"
    assert n.state("a") == "resolved"


def test_a_key_that_fires_again_after_resolving_is_a_new_incident() -> None:
    n = Notifier(window_s=0)
    for t, status in enumerate(("firing", "resolved", "firing", "resolved")):
        decision = n.offer(make_alert("a", status), now=t)
        assert decision.action == "send", (t, status)
        sent(n, decision.send)
    assert n.stats.notifications == 4


def test_a_storm_within_the_window_is_one_notification() -> None:
    n = Notifier(window_s=30)
    for t, key in enumerate(["a", "b", "c", "d"]):
        assert n.offer(make_alert(key), now=float(t), ref=key).action == "hold"
    assert n.next_due() == 30.0
    assert n.due(now=29.999) == []
    (group,) = n.due(now=30.0)
    assert keys([group]) == [["a", "b", "c", "d"]]
    assert group.grouped and group.refs == ("a", "b", "c", "d")
    assert n.next_due() is None and n.waiting() == 0
    # The window opens again with the next alert, not before.
    assert n.offer(make_alert("e"), now=31).action == "hold"
    assert n.next_due() == 61.0


def test_a_single_alert_in_a_window_goes_alone() -> None:
    n = Notifier(window_s=10)
    n.offer(make_alert("a"), now=0)
    (note,) = n.due(now=10)
    assert not note.grouped and keys([note]) == [["a"]]


def test_critical_alerts_go_at_once_and_do_not_flush_the_group() -> None:
    n = Notifier(window_s=30)
    n.offer(make_alert("a"), now=0)
    crit = n.offer(make_alert("c", severity="critical"), now=1, ref="crit")
    assert crit.action == "send" and keys(crit.send) == [["c"]]
    assert crit.send[0].refs == ("crit",)
    assert n.waiting() == 1
    assert keys(n.due(now=30)) == [["a"]]


def test_the_bypass_severity_is_configurable() -> None:
    n = Notifier(window_s=30, bypass="error")
    assert n.offer(make_alert("e", severity="error"), now=0).action == "send"
    assert n.offer(make_alert("w", severity="warning"), now=0).action == "hold"
    never = Notifier(window_s=30, bypass=None)
    assert never.offer(make_alert("c", severity="critical"), now=0).action == "hold"


def test_firing_and_resolved_are_grouped_apart() -> None:
    n = Notifier(window_s=0)
    for key in ("x", "y"):
        sent(n, n.offer(make_alert(key), now=0).send)
    n.window_s = 10
    n.offer(make_alert("a"), now=1)
    n.offer(make_alert("x", "resolved"), now=2)
    n.offer(make_alert("b"), now=3)
    n.offer(make_alert("y", "resolved"), now=4)
    firing, resolved = n.due(now=12)
    assert (firing.status, keys([firing])) == ("firing", [["a", "b"]])
    assert (resolved.status, keys([resolved])) == ("resolved", [["x", "y"]])


def test_incident_channels_group_by_dedup_key() -> None:
    n = Notifier("incident", window_s=10)
    for key in ("a", "b", "c"):
        assert n.offer(make_alert(key), now=0).action == "hold"
    assert n.offer(make_alert("a"), now=1).action == "suppress"
    notes = n.due(now=10)
    assert sorted(keys(notes)) == [["a"], ["b"], ["c"]]


def test_a_flap_shorter_than_the_window_pages_nobody() -> None:
    n = Notifier(window_s=30)
    n.offer(make_alert("a"), now=0, ref="fire-a")
    n.offer(make_alert("b"), now=1, ref="fire-b")
    flap = n.offer(make_alert("a", "resolved"), now=2, ref="resolve-a")
    assert flap.action == "cancel" and set(flap.settled) == {"fire-a", "resolve-a"}
    (group,) = n.due(now=30)
    assert keys([group]) == [["b"]] and group.refs == ("fire-b",)
    assert n.state("a") is None and n.stats.flaps == 1


def test_a_firing_during_a_pending_resolve_cancels_both() -> None:
    n = Notifier(window_s=0)
    sent(n, n.offer(make_alert("a"), now=0).send)
    n.window_s = 30
    assert n.offer(make_alert("a", "resolved"), now=1, ref="res").action == "hold"
    again = n.offer(make_alert("a"), now=2, ref="fire")
    assert again.action == "cancel" and set(again.settled) == {"res", "fire"}
    assert n.due(now=100) == [] and n.state("a") == "firing"


def test_a_group_that_reaches_max_group_goes_at_once() -> None:
    n = Notifier(window_s=60, max_group=3)
    assert n.offer(make_alert("a"), now=0).action == "hold"
    assert n.offer(make_alert("b"), now=1).action == "hold"
    full = n.offer(make_alert("c"), now=2)
    assert full.action == "send" and keys(full.send) == [["a", "b", "c"]]
    assert n.next_due() is None


def test_a_permanent_refusal_undoes_the_state() -> None:
    n = Notifier(window_s=0)
    note = n.offer(make_alert("a"), now=0).send[0]
    assert n.state("a") == "firing"
    n.settle(note, delivered=False)
    assert n.state("a") is None and n.stats.reverted == 1
    # Nothing to resolve, and the next firing pages again.
    assert n.offer(make_alert("a", "resolved"), now=1).action == "suppress"
    assert n.offer(make_alert("a"), now=2).action == "send"


def test_a_refused_resolve_leaves_the_key_firing() -> None:
    n = Notifier(window_s=0)
    sent(n, n.offer(make_alert("a"), now=0).send)
    resolve = n.offer(make_alert("a", "resolved"), now=1).send[0]
    n.settle(resolve, delivered=False)
    assert n.state("a") == "firing"
    assert n.offer(make_alert("a", "resolved"), now=2).action == "send"


def test_drain_hands_out_every_group_now() -> None:
    n = Notifier(window_s=300)
    n.offer(make_alert("a"), now=0)
    sent(n, n.offer(make_alert("z", severity="critical"), now=0).send)
    n.offer(make_alert("z", "resolved"), now=1)
    notes = n.drain()
    assert [(x.status, keys([x])) for x in notes] == [
        ("firing", [["a"]]),
        ("resolved", [["z"]]),
    ]
    assert n.drain() == [] and n.next_due() is None


def test_memory_is_bounded_oldest_first() -> None:
    n = Notifier(window_s=0, memory=3)
    for key in ("a", "b", "c", "d"):
        sent(n, n.offer(make_alert(key), now=0).send)
    assert n.state("a") is None and n.state("d") == "firing"
    assert n.stats.forgotten == 1


def test_remembered_history_suppresses_repeats_after_a_restart() -> None:
    n = Notifier(window_s=0)
    n.remember(make_alert("a"))
    n.remember(make_alert("b"))
    n.remember(make_alert("b", "resolved"))
    assert n.offer(make_alert("a"), now=0).action == "suppress"
    assert n.offer(make_alert("a", "resolved"), now=0).action == "send"
    assert n.offer(make_alert("b"), now=0).action == "send"


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        Notifier(window_s=-1)
    with pytest.raises(ValueError, match="max_group"):
        Notifier(max_group=0)


def test_an_escalation_is_sent_again_and_only_upwards() -> None:
    n = Notifier(window_s=0)
    sent(n, n.offer(make_alert("a", severity="warning"), now=0).send)
    up = n.offer(make_alert("a", severity="critical"), now=1, ref="up")
    assert up.action == "send" and up.send[0].severity == "critical"
    assert up.send[0].refs == ("up",)
    sent(n, up.send)
    assert n.offer(make_alert("a", severity="critical"), now=2).action == "suppress"
    assert n.offer(make_alert("a", severity="error"), now=3).action == "suppress"
    assert n.stats.escalations == 1 and n.stats.duplicates == 2
    # The incident still resolves once.
    assert n.offer(make_alert("a", "resolved"), now=4).action == "send"


def test_an_escalation_replaces_the_firing_waiting_in_its_group() -> None:
    n = Notifier(window_s=30)
    n.offer(make_alert("a", severity="info"), now=0, ref="info")
    n.offer(make_alert("b"), now=0, ref="b")
    up = n.offer(make_alert("a", severity="error"), now=1, ref="error")
    assert (up.action, up.settled) == ("hold", ("info",))
    crit = n.offer(make_alert("a", severity="critical"), now=2, ref="crit")
    assert crit.action == "send" and crit.settled == ("error",)
    assert crit.send[0].refs == ("crit",)
    (group,) = n.due(now=30)
    assert keys([group]) == [["b"]]


def test_remembered_severity_keeps_the_highest_of_an_open_incident() -> None:
    n = Notifier(window_s=0)
    n.remember(make_alert("a", severity="critical"))
    n.remember(make_alert("a", severity="warning"))
    assert n.offer(make_alert("a", severity="error"), now=0).action == "suppress"
    assert n.offer(make_alert("a", severity="critical"), now=0).action == "suppress"
