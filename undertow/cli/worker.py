"""``undertow worker``: run one stream processor (ingest, drift, policy or judge) in the
foreground."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

import typer

from undertow.cli.console import console
from undertow.settings import StackSettings


def worker(
    role: Annotated[
        Literal["ingest", "drift", "policy", "judge"] | None,
        typer.Option(help="the processor to run (default: ingest)"),
    ] = None,
    log_batches: Annotated[
        bool, typer.Option(help="log one line per batch with the time of each step")
    ] = False,
) -> None:
    """Run a stream worker in the foreground until SIGTERM or Ctrl-C.

    ingest: events from Kafka into ClickHouse, scored (embeddings, toxicity, injection,
    tokens and cost, retrieval quality) into scores and embeddings and onto the scored topic;
    finished traces into traces; undecodable records to the dead-letter topic.

    drift: scored events per segment through online detectors against the segment's baseline
    (undertow baseline build); drift events into the drift table and onto the drift topic.

    policy: scored and drift events through the alert rules (undertow rules check); alerts
    into the alerts table and onto the alerts topic, for undertow alerts serve.

    judge: a sample of completions rated by a judge model (UNDERTOW_WORKER_JUDGE_*) by rubric
    into judge_scores, and onto the event topic as feedback events (source judge).

    Settings come from UNDERTOW_WORKER_* variables; Kafka and ClickHouse default to the local
    stack's. Offsets are committed only after the warehouse stored the rows.
    """
    from undertow.infra.stack import LocalStack
    from undertow.streams.app import (
        WorkerHealth,
        build_app,
        default_enricher,
        ensure_worker_topics,
        run_worker,
    )
    from undertow.streams.settings import WorkerSettings

    overrides: dict[str, Any] = {"role": role} if role else {}
    settings = WorkerSettings(**overrides)
    stack_settings = StackSettings()
    given = settings.model_fields_set
    defaults: dict[str, Any] = {}
    if "data_dir" not in given:
        defaults["data_dir"] = stack_settings.home / "worker"
    if "clickhouse_database" not in given:
        defaults["clickhouse_database"] = stack_settings.clickhouse_database
    if settings.bootstrap_servers is None or settings.clickhouse_url is None:
        stack = LocalStack(stack_settings)
        bootstrap = stack_settings.bootstrap_servers
        url = stack_settings.clickhouse_url
        if (settings.bootstrap_servers or bootstrap) is None or (
            settings.clickhouse_url or url
        ) is None:
            info = stack.require()
            bootstrap, url = bootstrap or info.bootstrap_servers, url or info.clickhouse_url
        defaults["bootstrap_servers"] = settings.bootstrap_servers or bootstrap
        defaults["clickhouse_url"] = settings.clickhouse_url or url
    settings = settings.model_copy(update=defaults)
    logging.getLogger("undertow.streams").setLevel(logging.DEBUG if log_batches else logging.INFO)
    if log_batches:  # with Faust's own account of rebalances and table recovery
        logging.getLogger("faust").setLevel(logging.INFO)
    if logging.getLogger().level > logging.DEBUG:
        # The sink reports outages itself, once per interval; the HTTP client would per try.
        for noisy in ("urllib3", "clickhouse_connect"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    health = WorkerHealth()
    partitions = ensure_worker_topics(settings)
    began = time.perf_counter()
    faust_app = build_app(
        settings,
        enricher=default_enricher(settings) if settings.role == "ingest" else None,
        health=health,
        partitions=partitions,
    )
    if settings.role == "ingest":
        source = settings.events_topic
        doing = (
            f"scoring with {settings.embedder}, {settings.toxicity or 'no toxicity'}, "
            f"{settings.injection or 'no injection'}"
            if settings.enrich
            else "scoring off"
        )
    elif settings.role == "drift":
        source, doing = settings.scored_topic, f"drift events to {settings.drift_topic}"
    elif settings.role == "judge":
        source = settings.events_topic
        doing = (
            f"judging {settings.judge_sample_rate:.0%} of completions with "
            f"{settings.judge_model} at {settings.judge_base_url}"
        )
    else:
        source = f"{settings.scored_topic} + {settings.drift_topic}"
        doing = f"alerts to {settings.alerts_topic}"
    console.print(
        f"worker {settings.role} (group {settings.consumer_group}): "
        f"{source} on {settings.bootstrap_servers} -> "
        f"{settings.clickhouse_url}/{settings.clickhouse_database}; {doing} "
        f"(ready in {time.perf_counter() - began:.1f} s)",
        highlight=False,
    )
    code = run_worker(faust_app, health)
    if code:
        raise typer.Exit(code)
