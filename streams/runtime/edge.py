"""What the stream runtime assumes of Faust, checked before a worker starts.

The runtime replaces private attributes of faust-streaming's consumer (docs/faust.md lists
why, each with its upstream report). A Faust upgrade that renamed or reshaped one of them
would otherwise switch a workaround off without a word, and the worker would lose or repeat
records under faults. So:

* :data:`FAUST_VERSION` and :data:`AIOKAFKA_VERSION` are the exact versions the workarounds
  were written and tested against (``pyproject.toml`` pins them); :func:`check_versions`
  refuses others;
* :func:`check_edge` verifies, on the app about to run, that every attribute the runtime
  replaces or calls exists with the expected shape (a coroutine function where one is
  awaited, the parameter names it is called with), and refuses to start otherwise, naming
  each mismatch. ``tests/unit/streams/runtime/test_edge.py`` runs it against the installed
  Faust.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from undertow.errors import UndertowError

FAUST_VERSION = "0.15.3"
AIOKAFKA_VERSION = "0.14.0"


class EdgeError(UndertowError):
    """The installed Faust is not the one the runtime's workarounds were written against."""


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_versions(version: Callable[[str], str | None] = installed_version) -> None:
    """Refuse to run on another faust-streaming or aiokafka than the pinned ones."""
    wrong = [
        f"{name} {found or 'not installed'} (expected {expected})"
        for name, expected in (("faust-streaming", FAUST_VERSION), ("aiokafka", AIOKAFKA_VERSION))
        if (found := version(name)) != expected
    ]
    if wrong:
        raise EdgeError(
            "the stream runtime works around bugs of faust-streaming "
            f"{FAUST_VERSION} with aiokafka {AIOKAFKA_VERSION} by replacing private "
            f"attributes, and found {', '.join(wrong)}; install the pinned versions "
            "(pip install -e .), or review docs/faust.md and "
            "undertow/streams/runtime/edge.py before moving the pins"
        )


@dataclass(frozen=True)
class Expect:
    """One attribute the runtime relies on: where (dotted from the app), what shape."""

    path: str
    kind: str  # "coroutine", "function", "mapping", "mutable mapping", "set", "int", "bool"
    params: tuple[str, ...] | None = None  # parameter names, self excluded, in order


EXPECTED: tuple[Expect, ...] = (
    # runtime.consumer
    Expect("consumer.ack", "function", ("message",)),
    Expect("consumer.perform_seek", "coroutine", ()),
    Expect("consumer.seek", "coroutine", ("partition", "offset")),
    Expect("consumer.assignment", "function", ()),
    Expect("consumer.earliest_offsets", "coroutine", ("partitions",)),
    Expect("consumer.highwaters", "coroutine", ("partitions",)),
    Expect("consumer._committed_offset", "mapping"),
    Expect("consumer_generation_id", "int"),
    Expect("assignor.assigned_actives", "function", ()),
    Expect("rebalancing", "bool"),
    Expect("in_recovery", "bool"),
    Expect("consumer._get_active_partitions", "function", ()),
    Expect("consumer._buffered_partitions", "set"),
    Expect("consumer._paused_partitions", "set"),
    Expect("consumer.resume_partitions", "function", ("tps",)),
    # runtime.seeks
    Expect("consumer._seek", "coroutine", ("partition", "offset")),
    Expect("consumer._read_offset", "mutable mapping"),
    Expect("consumer.scheduler.iterate", "function", ("records",)),
    Expect("consumer._thread.call_thread", "coroutine", ("fun", "args", "kwargs")),
    Expect("consumer._thread._ensure_consumer", "function", ()),
    Expect(
        "consumer._thread._fetch_records",
        "coroutine",
        ("consumer", "active_partitions", "timeout", "max_records"),
    ),
    Expect("consumer._thread.seek_to_committed", "coroutine", ()),
)


def _resolve(root: Any, path: str) -> Any:
    value = root
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _params(fn: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def _mismatch(value: Any, expect: Expect) -> str | None:
    kind = expect.kind
    if kind == "mapping" and not isinstance(value, Mapping):
        return f"a mapping, found {type(value).__name__}"
    if kind == "mutable mapping" and not isinstance(value, MutableMapping):
        return f"a mutable mapping, found {type(value).__name__}"
    if kind == "set" and not isinstance(value, set):
        return f"a set, found {type(value).__name__}"
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        return f"an int, found {type(value).__name__}"
    if kind == "bool" and not isinstance(value, bool):
        return f"a bool, found {type(value).__name__}"
    if kind in ("coroutine", "function"):
        if not callable(value):
            return f"a callable, found {type(value).__name__}"
        if kind == "coroutine" and not inspect.iscoroutinefunction(value):
            return "a coroutine function, found a plain callable"
        if expect.params is not None and _params(value) != expect.params:
            return f"parameters {expect.params}, found {_params(value)}"
    return None


def check_edge(app: Any) -> None:
    """Verify every attribute of :data:`EXPECTED` on ``app`` (a ``faust.App`` not yet
    started, before the runtime replaces anything); :class:`EdgeError` names each one
    missing or of another shape."""
    problems = []
    for expect in EXPECTED:
        try:
            value = _resolve(app, expect.path)
        except AttributeError:
            problems.append(f"app.{expect.path} is missing")
            continue
        wrong = _mismatch(value, expect)
        if wrong:
            problems.append(f"app.{expect.path}: expected {wrong}")
    if problems:
        raise EdgeError(
            "the installed Faust does not have what the stream runtime's workarounds "
            "replace or call (docs/faust.md): " + "; ".join(problems)
        )


__all__ = [
    "AIOKAFKA_VERSION",
    "EXPECTED",
    "FAUST_VERSION",
    "EdgeError",
    "check_edge",
    "check_versions",
]
