"""The SDK's settings: one frozen object, every field explicit.

A library never reads the environment; the serving app builds :class:`SdkConfig` from its own
settings and passes it to :class:`~undertow.services.sdk.client.Undertow`. Validation happens
here, at construction, and raises :class:`SdkConfigError` — the one place the SDK raises.

>>> cfg = SdkConfig(app="support-bot", bootstrap_servers="localhost:9092", hash_key="s3cret")
>>> cfg.sample_rate
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from undertow.errors import ConfigError
from undertow.schemas.topics import EVENTS

if TYPE_CHECKING:
    from undertow.schemas.codec import AvroCodec

BuiltinRedaction = Literal["email", "phone", "card"]
BUILTIN_REDACTIONS: tuple[BuiltinRedaction, ...] = ("email", "phone", "card")
KiB = 1024
MiB = 1024 * KiB


class SdkConfigError(ConfigError):
    """An :class:`SdkConfig` field has a value the SDK cannot use."""


@dataclass(frozen=True)
class SdkConfig:
    """How one :class:`Undertow` client records and delivers events.

    ``bootstrap_servers=None`` runs without Kafka: every event goes to the spool (needs
    ``spool_dir``), which a later process with a broker replays. ``hash_key`` keys the
    HMAC-SHA256 of user and session ids; without it those ids are dropped, never sent raw.
    ``spool_dir=None`` disables the spool: records that cannot be delivered are counted as
    failed. ``redact`` runs after the built-in patterns, on the background thread.
    """

    app: str
    bootstrap_servers: str | None = None
    environment: str = "production"
    topic: str = EVENTS
    hash_key: str | bytes | None = field(default=None, repr=False)

    # -- encoding -------------------------------------------------------------------------
    codec: AvroCodec | None = field(default=None, repr=False)
    schema_registry_url: str | None = None
    schema_registry_config: Mapping[str, str] = field(default_factory=dict, repr=False)

    # -- delivery -------------------------------------------------------------------------
    queue_size: int = 100_000
    message_timeout_ms: int = 15_000
    producer_queue_limit: int = 200_000
    producer_overrides: Mapping[str, Any] = field(default_factory=dict)
    replay_interval_s: float = 2.0
    flush_at_exit: bool = True
    exit_timeout_s: float = 5.0

    # -- spool ----------------------------------------------------------------------------
    spool_dir: Path | str | None = None
    spool_max_bytes: int = 256 * MiB
    spool_segment_bytes: int = 4 * MiB

    # -- payload --------------------------------------------------------------------------
    max_text_bytes: int = 32 * KiB
    max_messages: int = 256
    max_documents: int = 64
    max_attributes: int = 64
    max_attribute_bytes: int = 1 * KiB
    max_event_bytes: int = 900 * KiB
    sample_rate: float = 1.0
    builtin_redactions: tuple[BuiltinRedaction, ...] = BUILTIN_REDACTIONS
    redact: Callable[[str], str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.app, str) or not self.app.strip():
            problems.append(f"app: expected a non-empty name, got {self.app!r}")
        if self.bootstrap_servers is not None and not str(self.bootstrap_servers).strip():
            problems.append("bootstrap_servers: expected host:port[,host:port] or None, got ''")
        if self.bootstrap_servers is None and self.spool_dir is None:
            problems.append("bootstrap_servers is None: a spool_dir is needed to keep events")
        if self.hash_key is not None and len(self.hash_key) < 8:
            problems.append("hash_key: expected at least 8 characters or bytes")
        if self.codec is not None and self.schema_registry_url:
            problems.append("give codec or schema_registry_url, not both")
        if not 0.0 <= self.sample_rate <= 1.0:
            problems.append(f"sample_rate: expected 0..1, got {self.sample_rate}")
        for name in (
            "queue_size",
            "message_timeout_ms",
            "producer_queue_limit",
            "spool_max_bytes",
            "spool_segment_bytes",
            "max_text_bytes",
            "max_messages",
            "max_documents",
            "max_attributes",
            "max_attribute_bytes",
            "max_event_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}: expected a positive integer, got {value!r}")
        if self.replay_interval_s <= 0 or self.exit_timeout_s < 0:
            problems.append("replay_interval_s must be > 0 and exit_timeout_s >= 0")
        if self.max_text_bytes < 16:
            problems.append(f"max_text_bytes: expected at least 16, got {self.max_text_bytes}")
        unknown = set(self.builtin_redactions) - set(BUILTIN_REDACTIONS)
        if unknown:
            problems.append(
                f"builtin_redactions: unknown {sorted(unknown)}; expected {BUILTIN_REDACTIONS}"
            )
        if self.redact is not None and not callable(self.redact):
            problems.append("redact: expected a callable str -> str")
        if problems:
            raise SdkConfigError("invalid SdkConfig: " + "; ".join(problems))

    @property
    def hash_key_bytes(self) -> bytes | None:
        """The HMAC key as bytes (a str key is UTF-8 encoded)."""
        if self.hash_key is None:
            return None
        return self.hash_key.encode() if isinstance(self.hash_key, str) else bytes(self.hash_key)
