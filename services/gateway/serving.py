"""What the gateway serves, as the registry says: which model version it serves, and which
prompt version each request gets.

A :class:`~undertow.services.registry.client.Follower` keeps the registry current on a thread.
When the active version of the served model changes, :class:`ServingView` tells the backend
(the local backend loads or drops the LoRA adapter between generations; an upstream backend
asks its server for the version's served name) and records the switch. A request that names a
prompt (``undertow.prompt_name``) gets a version resolved here: an explicit
``prompt_version``, else the variant of a running A/B test on the label (sticky per user or
session), else the version holding the label (``production`` by default). The template,
filled with the request's ``variables``, goes first as the system message.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from undertow.services.gateway.errors import InvalidRequest
from undertow.services.registry.client import Follower
from undertow.services.registry.state import (
    DEFAULT_LABEL,
    RegistryError,
    RegistryState,
    Version,
    assign_variant,
)

log = logging.getLogger("undertow.services.gateway")

_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class ResolvedPrompt:
    """The prompt version a request gets, its filled text and the A/B test that chose it."""

    name: str
    version: str
    text: str
    test: str | None = None
    variant: str | None = None

    def attributes(self) -> dict[str, str]:
        if self.test is None or self.variant is None:
            return {}
        return {"ab.test": self.test, "ab.variant": self.variant}


def render(template: str, variables: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` filled; a missing variable is the caller's error.
    Other braces (JSON examples in a prompt) stay as written.

    >>> render("Answer as {persona}. {\\"a\\": 1}", {"persona": "a pirate"})
    'Answer as a pirate. {"a": 1}'
    """
    missing = sorted({m.group(1) for m in _VARIABLE.finditer(template)} - set(variables))
    if missing:
        raise InvalidRequest(
            f"the prompt template needs variables {missing}; send them in undertow.variables",
            param="undertow.variables",
        )
    return _VARIABLE.sub(lambda m: variables[m.group(1)], template)


def unit_hash(unit: str) -> str:
    """A stable, non-reversible id for sticky assignment (raw user ids never stored)."""
    return hashlib.sha256(unit.encode()).hexdigest()[:32]


class ServingView:
    """Follows the registry for one served model and resolves prompts."""

    def __init__(
        self,
        follower: Follower,
        model_name: str,
        on_model: Callable[[Version | None], None] | None = None,
    ) -> None:
        self.follower = follower
        self.model_name = model_name
        self.on_model = on_model
        self.serving: Version | None = None
        self.switched_at: float | None = None
        self.switches = 0
        self._lock = threading.Lock()
        follower.on_change(self._changed)

    def start(self, wait_s: float = 30.0) -> None:
        self.follower.start(wait_s=wait_s)
        with self.follower.lock:
            self._apply(self.follower.state)

    def close(self) -> None:
        self.follower.close()

    def _changed(self, state: RegistryState, _: list[Version]) -> None:
        self._apply(state)

    def _apply(self, state: RegistryState) -> None:
        active = state.active_model(self.model_name)
        with self._lock:
            same = (self.serving.key, self.serving.event_id) if self.serving else None
            new = (active.key, active.event_id) if active else None
            if same == new:
                return
            previous = self.serving
            self.serving = active
            self.switched_at = time.time()
            self.switches += 1
        log.info(
            "registry: %s now serves %s (was %s)",
            self.model_name,
            active.describe() if active else "the configured model (no active version)",
            previous.describe() if previous else "none",
        )
        if self.on_model is not None:
            self.on_model(active)

    def resolve_prompt(
        self,
        name: str,
        *,
        version: str | None,
        label: str | None,
        units: Mapping[str, str | None],
        variables: Mapping[str, str],
    ) -> ResolvedPrompt:
        """The prompt version this request gets, filled with ``variables``. ``units`` gives
        the request's ``user`` and ``session`` for sticky assignment; a request without the
        test's unit gets the labelled version and is not counted in the test."""
        with self.follower.lock:
            state = self.follower.state
            test = variant = None
            try:
                if version is None:
                    experiment = state.experiment(name, label or DEFAULT_LABEL)
                    unit = units.get(experiment.split_by) if experiment is not None else None
                    if experiment is not None and unit:
                        variant = assign_variant(experiment, unit_hash(unit))
                        version, test = experiment.variants[variant], experiment.test
                chosen = state.prompt(name, label=label, version=version)
            except RegistryError as exc:
                raise InvalidRequest(str(exc), param="undertow.prompt_name") from None
        return ResolvedPrompt(
            name, chosen.version, render(chosen.template or "", variables), test, variant
        )
