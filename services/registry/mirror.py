"""The registry's mirror in ClickHouse: every change read from the topic is written to the
``registry`` table, where SQL can read the registry's latest state.

The topic stays the source of truth; the mirror lags it and is only filled where the action
service runs with ``mirror_registry``. One row per (kind, name, version), the newest
``updated_at`` wins (read it with ``FINAL``), so writing a change twice leaves one current row.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from undertow.services.registry.state import RegistryState, Version
from undertow.services.warehouse.rows import REGISTRY_COLUMNS, registry_row

log = logging.getLogger("undertow.services.registry")


class RegistryMirror:
    """Writes every registry change into the ``registry`` table (newest ``updated_at`` wins).

    A :class:`~undertow.services.registry.client.Follower` listener; ``warehouse`` returns a
    ClickHouse client.
    """

    def __init__(self, warehouse: Callable[[], Any]) -> None:
        self.warehouse = warehouse
        self.rows = 0

    def __call__(self, state: RegistryState, changed: list[Version]) -> None:
        rows = [registry_row(_as_record(v)) for v in changed]
        try:
            self.warehouse().insert("registry", rows, column_names=list(REGISTRY_COLUMNS))
            self.rows += len(rows)
        except Exception as exc:  # the mirror lags; the topic stays the truth
            log.warning("registry mirror: %s rows not written: %s", len(rows), exc)


def _as_record(v: Version) -> dict[str, Any]:
    return {
        "kind": v.kind,
        "name": v.name,
        "version": v.version,
        "status": v.status,
        "labels": list(v.labels),
        "base_model": v.base_model,
        "adapter_path": v.adapter_path,
        "template": v.template,
        "metadata": dict(v.metadata),
        "event_id": v.event_id or str(uuid.uuid4()),
        "event_time": datetime.fromtimestamp(v.updated_us / 1_000_000, UTC),
    }
