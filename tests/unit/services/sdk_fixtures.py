"""Helpers for the SDK's unit tests: an SDK that spools everything, and reading its spool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from undertow.schemas.codec import AvroCodec
from undertow.services.sdk import SdkConfig, Undertow
from undertow.services.sdk.spool import Spool

HASH_KEY = "test-hash-key-0123"


def spool_only(spool_dir: Path, **overrides: Any) -> Undertow:
    """An SDK without a broker: every event it builds lands in ``spool_dir``."""
    settings: dict[str, Any] = {
        "app": "unit",
        "environment": "test",
        "bootstrap_servers": None,
        "spool_dir": spool_dir,
        "hash_key": HASH_KEY,
        "flush_at_exit": False,
        **overrides,
    }
    return Undertow(SdkConfig(**settings))


def spooled_events(spool_dir: Path) -> list[tuple[bytes, dict[str, Any]]]:
    """Every record in a closed SDK's spool, decoded: (key, event record), in spool order."""
    codec = AvroCodec()
    spool = Spool(spool_dir, max_bytes=1 << 40, segment_bytes=1 << 30)
    try:
        return [(key, codec.decode(value, "event").record) for key, value in spool]
    finally:
        spool.close()


def body(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The short type name and the fields of an event's body."""
    name, fields = record["body"]
    return name.removeprefix("undertow.").lower(), fields
