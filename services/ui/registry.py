"""The registry page's data: models, adapters, prompts and A/B tests from a RegistryState.

The dashboard reads the registry from its source of truth, the compacted topic
``undertow.registry.v1`` (:meth:`RegistryClient.load`), not from the ClickHouse ``registry``
mirror: the mirror is only filled where the action service runs with ``mirror_registry``, and
it lags the topic, while the gateway serves what the topic says. A full read of the topic costs
a consumer and a pass over every record, so :class:`CachedRegistry` shares one load between
the requests of a few seconds.

>>> from undertow.services.registry.state import RegistryState, push_model, promote_model
>>> s = RegistryState()
>>> for r in push_model(s, "support", base_model="smol", now=1):
...     _ = s.apply(r)
>>> for r in promote_model(s, "support", "1", now=2):
...     _ = s.apply(r)
>>> registry_view(s)["models"][0]["active_version"]
'1'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from undertow.services.registry.state import RegistryState, Version
from undertow.services.ui.series import iso

RegistryLoader = Callable[[], RegistryState]
TEMPLATE_PREVIEW = 300  # characters of a prompt template shown in the table


class CachedRegistry:
    """A loader that loads at most once per ``ttl_s``; callers in between get the same state.

    A failed load is not cached: the next call tries again.
    """

    def __init__(
        self,
        load: RegistryLoader,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: RegistryState | None = None
        self._loaded_at = float("-inf")
        self.loads = 0

    def __call__(self) -> RegistryState:
        with self._lock:  # one load at a time; the others wait for its result
            if self._state is None or self._clock() - self._loaded_at >= self._ttl_s:
                self._state = self._load()
                self._loaded_at = self._clock()
                self.loads += 1
            return self._state


def _when(micros: int | None) -> str | None:
    return iso(micros / 1000) if micros else None


def _version(v: Version) -> dict[str, Any]:
    meta = v.metadata
    return {
        "version": v.version,
        "status": v.status,
        "labels": list(v.labels),
        "base_model": v.base_model,
        "adapter_path": v.adapter_path,
        "updated": _when(v.updated_us),
        "activated": _when(v.micros("activated_at")),
        "reason": meta.get("deactivated_reason") or meta.get("reason") or "",
    }


def registry_view(state: RegistryState) -> dict[str, Any]:
    """Every model with its versions (status, adapter) and active one, every adapter, every
    prompt with its versions and labels, and every A/B test, as JSON-ready dicts."""
    models = []
    for name in state.names("model"):
        active = state.active_model(name)
        models.append(
            {
                "name": name,
                "active_version": active.version if active else None,
                "active_adapter": active.adapter_path if active else None,
                "versions": [_version(v) for v in state.versions("model", name)],
            }
        )
    adapters = [
        {"name": name, "versions": [_version(v) for v in state.versions("adapter", name)]}
        for name in state.names("adapter")
    ]
    prompts = []
    for name in state.names("prompt"):
        versions = state.versions("prompt", name)
        if not versions:  # a name that only holds experiments
            continue
        rows = []
        for v in versions:
            row = _version(v)
            template = v.template or ""
            row["template"] = template[:TEMPLATE_PREVIEW] + (
                "…" if len(template) > TEMPLATE_PREVIEW else ""
            )
            rows.append(row)
        labels = {label: v.version for v in versions for label in v.labels}
        prompts.append({"name": name, "labels": dict(sorted(labels.items())), "versions": rows})
    experiments = [
        {
            "prompt": e.prompt,
            "test": e.test,
            "label": e.label,
            "status": e.status,
            "variants": dict(e.variants),
            "weights": dict(e.weights),
            "split_by": e.split_by,
            "control": e.control,
            "act": e.act,
        }
        for e in state.experiments()
    ]
    return {
        "models": models,
        "adapters": adapters,
        "prompts": prompts,
        "experiments": experiments,
    }
