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

Role = Literal["ingest", "drift", "policy", "judge"]


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
    drift_topic: str = topics.DRIFT
    alerts_topic: str = topics.ALERTS
    actions_topic: str = topics.ACTIONS

    # Micro-batches: the sink writes (and the scorers run) once per batch. Faust's take_events
    # holds new records back while the agent works on a batch and starts the window only
    # afterwards, so under load batches fill from the records queued meanwhile and the window
    # only adds latency when traffic is light: keep it short (bench/worker_throughput.py).
    batch_size: int = Field(default=500, ge=1, le=100_000)
    batch_window_s: float = Field(default=0.1, gt=0, le=60)

    # The sink's retries while the warehouse is away: capped exponential backoff, forever.
    retry_backoff_min_s: float = Field(default=0.2, gt=0)
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    clickhouse_timeout_s: float = Field(
        default=30.0, gt=0, description="one insert attempt's connect + send/receive limit"
    )

    # Scoring (the enrich hook). Off: events are stored as they came, nothing else.
    enrich: bool = Field(default=True, description="score each batch (embeddings, scorers, cost)")
    scored_topic: str = topics.SCORED
    publish_scored: bool = Field(default=True, description="publish ScoredEvent records")
    embedder: str = Field(default="minilm", description="registered embedder name")
    embedding_model: str | None = Field(
        default=None, description="hub name or local folder; None: the bundled MiniLM"
    )
    embedding_batch_size: int = Field(default=16, ge=1, le=4096)
    device: str = Field(default="cpu", description="torch device of the models (cpu, cuda)")
    toxicity: str | None = Field(
        default="toxicity.profanity",
        description="registered toxicity scorer; toxicity.detoxify in production; None: off",
    )
    toxicity_model_path: Path | None = Field(
        default=None, description="toxicity.detoxify: transformers folder or cached hub name"
    )
    toxicity_checkpoint: Path | None = Field(
        default=None, description="toxicity.detoxify: a Detoxify .ckpt file"
    )
    injection: str | None = Field(
        default="injection.minilm_lr", description="registered injection scorer; None: off"
    )
    injection_artifact: Path | None = Field(
        default=None, description="injection.minilm_lr: classifier artifact (default: shipped)"
    )
    price_table: Path | None = Field(
        default=None, description="price table YAML (default: the one shipped with Undertow)"
    )
    max_context_documents: int = Field(
        default=8, ge=0, le=100, description="retrieved documents embedded per retrieval"
    )

    # Open traces (a Faust table): written to ``traces`` once complete or too old.
    trace_idle_s: float = Field(default=30.0, gt=0)
    trace_max_age_s: float = Field(default=600.0, gt=0)
    trace_scan_interval_s: float = Field(default=1.0, gt=0, le=60)

    # Keyed state of the drift and policy roles (streams/state/checkpoint.py): written to the
    # table's changelog every checkpoint_interval_s; records are acknowledged (and so
    # committed) only once the state they went into is written.
    checkpoint_interval_s: float = Field(default=2.0, gt=0, le=600)
    state_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024 * 1024,
        description="largest checkpoint of one key (a drift segment holds windows of vectors)",
    )
    origin_window: int = Field(
        default=10_000,
        ge=100,
        description=(
            "how far below the highest origin offset a key folded a record is still told "
            "apart exactly from a repeat (streams/state/folded.py)"
        ),
    )

    # drift: baselines come from the warehouse's baselines table (undertow baseline build),
    # polled for changes; the monitor keeps `drift_window` recent events per stream.
    baseline_poll_s: float = Field(default=10.0, gt=0)
    # A starting drift worker needs its baselines before it reads a record (events read
    # without them would pass undetected): it waits this long for the warehouse to answer,
    # then stops with the warehouse's error.
    baseline_wait_s: float = Field(default=300.0, gt=0)
    drift_window: int = Field(default=500, ge=20, le=10_000)

    # policy: the rules (default: streams/rules.yaml) and how often quiet streams move on.
    rules_file: Path | None = None
    policy_tick_s: float = Field(default=1.0, gt=0, le=60)

    # judge: an OpenAI-compatible judge model (vLLM in production; offline `undertow gateway`)
    # rates a deterministic sample of completions by rubric (streams/roles/judge.py).
    judge_base_url: str = Field(
        default="http://127.0.0.1:8300/v1", description="the judge server's /v1 URL"
    )
    judge_model: str = Field(default="SmolLM2-135M-Instruct", description="model name to ask for")
    judge_api_key: SecretStr = Field(default=SecretStr(""), description="bearer key; '' sends none")
    judge_sample_rate: float = Field(
        default=0.1, ge=0, le=1, description="fraction of completions judged, by event id hash"
    )
    judge_concurrency: int = Field(default=4, ge=1, le=256, description="judge calls at once")
    judge_timeout_s: float = Field(default=60.0, gt=0, description="one judge call's limit")
    judge_max_attempts: int = Field(
        default=4, ge=1, le=20, description="tries per call before waiting with backoff"
    )
    judge_max_tokens: int = Field(default=96, ge=1, le=4096)
    judge_json_mode: bool = Field(
        default=False, description="ask for response_format json_object (vLLM supports it)"
    )
    judge_rubrics_file: Path | None = Field(
        default=None, description="rubric YAML (default: streams/judge/rubrics.yaml)"
    )
    judge_rubrics: tuple[str, ...] = Field(
        default=(), description="rubric names to run; empty: all in the file"
    )
    judge_exclude_apps: tuple[str, ...] = Field(
        default=("undertow-judge",),
        description="apps never judged: the judge's own traffic through an Undertow gateway",
    )
    judge_cache_traces: int = Field(default=10_000, ge=1, description="traces of prompts kept")
    judge_cache_age_s: float = Field(default=600.0, gt=0)
    judge_lookup_wait_s: float = Field(
        default=30.0, ge=0, description="how long to wait for a missed prompt in the warehouse"
    )
    judge_max_input_chars: int = Field(default=4000, ge=100)
    judge_reason_chars: int = Field(default=500, ge=0, le=10_000)

    # Kafka consumer behaviour. The session timeout bounds how long a crashed worker keeps its
    # partitions; the poll interval bounds how long a blocked agent (warehouse away, buffers
    # full) may go without polling before the group drops it (it rejoins afterwards).
    session_timeout_s: float = Field(default=30.0, ge=1)
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    max_poll_interval_s: float = Field(default=1000.0, ge=1)
    commit_interval_s: float = Field(default=1.0, gt=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    stream_buffer_maxsize: int = Field(default=4096, ge=1)

    # Faust's own state (the open-traces table is in memory, rebuilt from its changelog topic
    # on start) and its web server, which is off unless a port is set.
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

    @property
    def traces_changelog_topic(self) -> str:
        """The changelog topic of the open-traces table (``infra/topics.yaml`` creates the
        default group's; a worker with its own group creates its own, like Faust would)."""
        return f"{self.consumer_group}-traces-changelog"

    @property
    def repartition_topic(self) -> str:
        """drift: scored events keyed by segment; policy: scored and drift events by app."""
        what = {"drift": "segments", "policy": "apps"}.get(self.role, self.role)
        return f"{self.consumer_group}-{what}-repartition"

    @property
    def state_changelog_topic(self) -> str:
        """The changelog topic of the drift or policy role's state table."""
        return f"{self.consumer_group}-{self.role}-changelog"
