"""The stream worker of one role, built in one function from one settings object.

:func:`build_app` builds the worker's :class:`~undertow.streams.runtime.Runtime` (the only
code that knows Faust, :mod:`undertow.streams.runtime`) and wires the processor of
``settings.role`` to it (:mod:`undertow.streams.roles`: ingest, drift, policy, judge). Each
role is its own consumer group, so roles scale and restart independently.

Example (``undertow worker`` does this)::

    settings = WorkerSettings(bootstrap_servers="127.0.0.1:9092",
                              clickhouse_url="http://127.0.0.1:8123")
    ensure_worker_topics(settings)
    app = build_app(settings, enricher=default_enricher(settings))
    run_worker(app)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from undertow.errors import ConfigError
from undertow.streams.roles import drift, ingest, judge, policy
from undertow.streams.roles.drift import BaselineSource
from undertow.streams.roles.ingest import Enrich
from undertow.streams.runtime.worker import Runtime, WorkerHealth, run_worker
from undertow.streams.scoring.enrich import ContextLookup, Enricher
from undertow.streams.settings import WorkerSettings

EnricherFactory = Callable[[ContextLookup], Enrich]


def build_app(
    settings: WorkerSettings,
    *,
    enricher: EnricherFactory | None = None,
    health: WorkerHealth | None = None,
    partitions: int | None = None,
    baselines: BaselineSource | None = None,
) -> Any:
    """The Faust app (``faust.App``) running the ``settings.role`` processor.

    ``enricher`` builds the scoring hook given the open traces' context lookup (see
    :func:`default_enricher`); it is used when ``settings.enrich`` is on, and without one
    events are stored unscored. ``health`` records a fatal failure. ``partitions`` is the
    partition count of the role's keyed input (ingest: the event topic, with which the
    open-traces table is co-partitioned; drift and policy: their repartition topic, with which
    their state table is); None asks the broker. ``baselines``: where the drift role reads its
    baselines (default: the warehouse's ``baselines`` table).
    """
    runtime = Runtime(settings, health)
    if settings.role == "ingest":
        if partitions is None:
            partitions = event_partitions(settings)
        scored = _partitions(settings, settings.scored_topic) if settings.publish_scored else None
        ingest.add(runtime, enricher if settings.enrich else None, partitions, scored)
    elif settings.role == "judge":
        judge.add(runtime)
    else:
        if partitions is None:
            partitions = _partitions(settings, settings.repartition_topic)
        if settings.role == "drift":
            drift.add(runtime, partitions, baselines)
        else:
            policy.add(runtime, partitions)
    return runtime.app


def event_partitions(settings: WorkerSettings) -> int:
    """The partition count of the event topic, from the broker."""
    from undertow.infra.kafka import topic_partitions

    counts = topic_partitions(str(settings.bootstrap_servers))
    if settings.events_topic not in counts:
        raise ConfigError(
            f"the topic {settings.events_topic} does not exist on {settings.bootstrap_servers}; "
            "create the topics first (undertow infra up, or infra/topics.yaml)"
        )
    return counts[settings.events_topic]


def role_sources(settings: WorkerSettings) -> tuple[str, ...]:
    """The topics a drift or policy worker reads before repartitioning them."""
    if settings.role == "drift":
        return (settings.scored_topic,)
    return (settings.scored_topic, settings.drift_topic)


def _partitions(settings: WorkerSettings, topic: str) -> int:
    from undertow.infra.kafka import topic_partitions

    counts = topic_partitions(str(settings.bootstrap_servers))
    if topic not in counts:
        raise ConfigError(
            f"the topic {topic} does not exist on {settings.bootstrap_servers}; "
            "create the topics first (undertow infra up, or infra/topics.yaml)"
        )
    return counts[topic]


def ensure_worker_topics(settings: WorkerSettings) -> int:
    """Create the role's own topics if missing; returns the partition count of its keyed input.

    ingest: the open-traces changelog, compacted, with as many partitions as the event topic
    (Faust recovers changelog partition *n* to the owner of event partition *n*). drift and
    policy: the repartition topic, with as many partitions as the scored topic, and their
    state changelog, compacted, co-partitioned with it and taking checkpoints of up to
    ``state_max_bytes``.
    """
    from undertow.infra.kafka import TopicSpec, ensure_topics

    compacted = {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": "60000",
        "segment.ms": "3600000",
    }
    if settings.role == "judge":
        return event_partitions(settings)  # reads the event topic; no state of its own
    if settings.role == "ingest":
        partitions = event_partitions(settings)
        specs = [TopicSpec(settings.traces_changelog_topic, partitions, compacted)]
    else:
        for topic in role_sources(settings):
            _partitions(settings, topic)  # a clear error when the pipeline's topics are missing
        partitions = _partitions(settings, settings.scored_topic)
        specs = [
            TopicSpec(
                settings.repartition_topic,
                partitions,
                {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
            ),
            TopicSpec(
                settings.state_changelog_topic,
                partitions,
                {**compacted, "max.message.bytes": str(settings.state_max_bytes)},
            ),
        ]
    ensure_topics(str(settings.bootstrap_servers), specs)
    if settings.role != "ingest":
        partitions = _partitions(settings, settings.repartition_topic)
    return partitions


def default_enricher(settings: WorkerSettings) -> EnricherFactory:
    """Builds the :class:`Enricher` the settings name: embedder, toxicity and injection
    scorers by registered name, the shipped token encodings and price table."""

    def build(contexts: ContextLookup) -> Enrich:
        import undertow.streams.scoring  # noqa: F401  (registers the implementations)
        from undertow.streams.scoring.base import (
            create,
            create_embedder,
            embedder_factory,
            scorer_factory,
        )
        from undertow.streams.scoring.cost import PriceTable
        from undertow.streams.scoring.tokens import TokenCounter

        embedder = create_embedder(
            settings.embedder,
            **_supported(
                embedder_factory(settings.embedder),
                model_name_or_path=settings.embedding_model,
                device=settings.device,
                batch_size=settings.embedding_batch_size,
            ),
        )

        def scorer(name: str | None, **options: Any) -> Any:
            return create(name, **_supported(scorer_factory(name), **options)) if name else None

        toxicity = scorer(
            settings.toxicity,
            model_path=settings.toxicity_model_path,
            checkpoint=settings.toxicity_checkpoint,
            device=settings.device,
        )
        injection = scorer(
            settings.injection, artifact=settings.injection_artifact, embedder=embedder
        )
        return Enricher(
            embedder,
            toxicity=toxicity,
            injection=injection,
            counter=TokenCounter(),
            prices=PriceTable.load(settings.price_table),
            contexts=contexts,
            max_documents=settings.max_context_documents,
        )

    return build


def _supported(factory: Callable[..., Any] | None, **options: Any) -> dict[str, Any]:
    """The options (not None) that ``factory`` takes by name."""
    if factory is None:
        return {}
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {
        name: value
        for name, value in options.items()
        if value is not None and (takes_any or name in params)
    }


__all__ = [
    "BaselineSource",
    "EnricherFactory",
    "WorkerHealth",
    "build_app",
    "default_enricher",
    "ensure_worker_topics",
    "event_partitions",
    "role_sources",
    "run_worker",
]
