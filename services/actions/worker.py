"""The action worker interface: one small class per action type, registered by name.

A worker gets one request (a decoded ``action`` record with ``phase="requested"``) and returns
an :class:`Outcome`; the service around it handles Kafka, idempotency and the result records.
A worker must be safe to run twice for one request (the service can die between finishing
and committing): rollback checks the registry's state, fine-tune is skipped by the service
once a result exists.

>>> sorted(WORKERS)
['fine_tune', 'promote', 'rollback']
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from undertow.errors import UndertowError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from undertow.services.actions.settings import ActionSettings
    from undertow.services.registry.client import RegistryClient

Phase = Literal["succeeded", "failed", "skipped"]
Progress = Callable[[Mapping[str, str]], None]


class ActionError(UndertowError):
    """A request that cannot be carried out as asked (bad parameters, unknown target)."""


@dataclass(frozen=True)
class Outcome:
    """How a request ended: the phase, one sentence, and figures for the result map."""

    phase: Phase
    detail: str
    result: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerContext:
    """What workers share: the settings, the registry, the warehouse, the clock (us)."""

    settings: ActionSettings
    registry: RegistryClient
    warehouse: Callable[[], Client]
    now_us: Callable[[], int]


class ActionWorker(ABC):
    """Carries out one action type; built with ``cls(context)``."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context

    action_type: ClassVar[str]
    # Longest time one request may take; the consumer's poll interval allows for it.
    max_seconds: float = 60.0

    @abstractmethod
    def handle(self, request: Mapping[str, Any], progress: Progress) -> Outcome:
        """Carry out ``request``; raise :class:`ActionError` for a request that cannot be."""

    def close(self) -> None:
        """Release what the worker holds."""
        return


# action type -> "module:Class"; imported only when run.
WORKERS: dict[str, str] = {
    "rollback": "undertow.services.actions.release:RollbackWorker",
    "promote": "undertow.services.actions.release:PromoteWorker",
    "fine_tune": "undertow.services.actions.finetune:FineTuneWorker",
}


def worker_class(name: str) -> type[ActionWorker]:
    """The worker class registered for action type ``name``."""
    try:
        module_name, _, attr = WORKERS[name].partition(":")
    except KeyError:
        raise ActionError(
            f"action worker: expected one of {sorted(WORKERS)}, got {name!r}"
        ) from None
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, ActionWorker)):
        raise ActionError(f"{WORKERS[name]} is not an ActionWorker")
    return cls


def parameter(request: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    """A request parameter, stripped; ``default`` when absent or empty."""
    value = str((request.get("parameters") or {}).get(name, "")).strip()
    return value or default
