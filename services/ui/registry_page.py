"""The registry page's data: models, adapters, prompts and A/B tests from a RegistryState.

The dashboard reads the registry from its source of truth, the compacted topic
``undertow.registry.v1`` (:meth:`RegistryClient.load`), not from the ClickHouse ``registry``
mirror: the mirror is only filled where the action service runs with ``mirror_registry``, and
it lags the topic, while the gateway serves what the topic says. A full read of the topic costs
a consumer and a pass over every record, so the dashboard loads through a
:class:`~undertow.services.registry.client.CachedRegistry`, which shares one load between the
requests of a few seconds.

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

from typing import Any

from undertow.services.registry.state import RegistryState, Version
from undertow.services.ui.series import iso

TEMPLATE_PREVIEW = 300  # characters of a prompt template shown in the table


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
