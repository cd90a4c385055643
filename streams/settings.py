"""Frozen settings of the stream worker, read once from ``UNDERTOW_WORKER_*`` variables.

The ``undertow worker`` command builds one :class:`WorkerSettings` and passes it to
:func:`undertow.streams.app.build_app`; nothing below the entrypoint reads the environment.

>>> s = WorkerSettings(bootstrap_servers="127.0.0.1:9092", clickhouse_url="http://127.0.0.1:8123")
>>> s.consumer_group
'undertow-ingest'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from undertow.schemas import topics

Role = Literal["ingest"]


class WorkerSettings(BaseSettings):
    """Where the worker reads and writes, how it batches, and how it rides out outages.

    One worker process runs one processor ``role``, and each role is its own Kafka consumer
    group (Faust: one app is one group), so roles scale and restart independently. Leaving
    ``bootstrap_servers`` or ``clickhouse_url`` unset makes the CLI use the local stack's.
    """

    model_config = SettingsConfigDict(env_prefix="UNDERTOW_WORKER_", frozen=True, extra="ignore")

    role: Role = Field(default="ingest", description="the processor this worker runs")
    group_id: str = Field(default="", description="Kafka consumer group; default 'undertow-<role>'")
    bootstrap_servers: str | None = None
    clickhouse_url: str | None = None
    clickhouse_database: str = "undertow"
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    events_topic: str = topics.EVENTS
    deadletter_topic: str = topics.DEADLETTER

    # Micro-batches: the sink writes (and the scorers run) once per batch.
    batch_size: int = Field(default=500, ge=1, le=100_000)
    batch_window_s: float = Field(default=0.5, gt=0, le=60)

    # The sink's retries while the warehouse is away: capped exponential backoff, forever.
    retry_backoff_min_s: float = Field(default=0.2, gt=0)
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    clickhouse_timeout_s: float = Field(
        default=30.0, gt=0, description="one insert attempt's connect + send/receive limit"
    )

    # Processor toggles.
    enrich: bool = Field(default=True, description="call the enrich hook (scorers) per batch")

    # Kafka consumer behaviour. The session timeout bounds how long a crashed worker keeps its
    # partitions; the poll interval bounds how long a blocked agent (warehouse away, buffers
    # full) may go without polling before the group drops it (it rejoins afterwards).
    session_timeout_s: float = Field(default=30.0, ge=1)
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    max_poll_interval_s: float = Field(default=1000.0, ge=1)
    commit_interval_s: float = Field(default=1.0, gt=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    stream_buffer_maxsize: int = Field(default=4096, ge=1)

    # Faust's own state (no tables yet) and its web server, which is off unless a port is set.
    data_dir: Path = Field(default=Path(".undertow/worker"))
    web_port: int | None = Field(default=None, ge=0, le=65535)
    web_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.retry_backoff_max_s < self.retry_backoff_min_s:
            raise ValueError("retry_backoff_max_s must be >= retry_backoff_min_s")
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            raise ValueError("heartbeat_interval_s must be at most a third of session_timeout_s")
        if self.web_host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"web_host must be a loopback address, got {self.web_host!r}")
        return self

    @property
    def consumer_group(self) -> str:
        """The Kafka consumer group (and Faust app id) of this worker."""
        return self.group_id or f"undertow-{self.role}"
