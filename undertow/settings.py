"""Frozen settings for the entrypoints, read once from ``UNDERTOW_*`` environment variables.

Libraries never read the environment: the CLI builds one of these and passes values down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    return Path.home() / ".cache" / "undertow"


class StackSettings(BaseSettings):
    """Where the local stack keeps its state and how to reach Kafka and ClickHouse.

    ``bootstrap_servers`` and ``clickhouse_url`` point at external clusters when set; when
    unset, the local broker and warehouse recorded under ``home`` are used.
    ``clickhouse_cluster`` (``UNDERTOW_CLICKHOUSE_CLUSTER``) names the ClickHouse cluster the
    migrations are applied to; it needs ``clickhouse_url`` (the local engine is one node).
    """

    model_config = SettingsConfigDict(env_prefix="UNDERTOW_", frozen=True, extra="ignore")

    home: Path = Field(default=Path(".undertow"), description="project state directory")
    cache_dir: Path = Field(default_factory=_default_cache, description="downloaded jars")
    host: str = Field(default="127.0.0.1", description="interface local services bind to")
    kafka_version: str = "4.1.1"
    kafka_heap: str = "512m"
    ready_timeout_s: float = 90.0
    topics_file: Path | None = None
    bootstrap_servers: str | None = None
    clickhouse_url: str | None = None
    clickhouse_database: str = "undertow"
    clickhouse_cluster: str | None = Field(
        default=None,
        description="a cluster of the ClickHouse servers' remote_servers: migrations then run "
        "ON CLUSTER with replicated, sharded tables (docs/scale-out.md); unset: one node",
    )
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    schema_registry_url: str | None = None
    wire_format: Literal["single-object", "confluent"] = "single-object"
