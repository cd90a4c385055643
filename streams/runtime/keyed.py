"""The Faust side of a checkpointed keyed processor (drift, policy).

A state table whose values are checkpoints (:mod:`undertow.streams.state.checkpoint`), the
batches handed to the processor since the last checkpoint (acknowledged only after it), and a
lock that keeps batches, timers and checkpoints from interleaving.

Invariant: a record is acknowledged only once the checkpoint holding its effect is on the
broker, so the committed offset never passes a record whose effect could be lost; records
replayed after a crash are told from new ones by their origin offsets, which every
checkpoint carries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from undertow.streams.records import SourceRecord
from undertow.streams.state.checkpoint import KeyedStates

if TYPE_CHECKING:
    from undertow.streams.runtime.intake import Batch
    from undertow.streams.runtime.worker import Runtime

logger = logging.getLogger(__name__)


class KeyedStage:
    """State table, held batches and lock of one keyed processor; see the module doc."""

    def __init__(self, runtime: Runtime, name: str, partitions: int, help_text: str) -> None:
        self.runtime = runtime
        self.app: Any = runtime.app
        app = self.app
        self.name = name
        settings = runtime.settings
        # Keys and values are bytes encoded by streams/state/checkpoint.py, so the changelog
        # topic (created by ensure_worker_topics) is given with raw serializers: Faust's
        # recovery decodes with the topic's, json by default.
        changelog = app.topic(
            settings.state_changelog_topic,
            partitions=partitions,
            key_serializer="raw",
            value_serializer="raw",
            compacting=True,
        )
        self.table: Any = app.Table(
            name, partitions=partitions, changelog_topic=changelog, help=help_text
        )
        self.table.key_serializer = "raw"
        self.table.value_serializer = "raw"
        self.states = KeyedStates(self.table.data, window=settings.origin_window)
        self.lock = asyncio.Lock()
        self.held: list[Batch] = []
        self.last = time.monotonic()
        self.interval_s = settings.checkpoint_interval_s

    @property
    def generation(self) -> int:
        return self.runtime.generation

    async def checkpoint(
        self, state_of: Callable[[str], dict[str, Any] | None], forget: Callable[[int], None]
    ) -> None:
        """Write the changed states (waiting for the broker), then acknowledge the records
        they hold. Call with :attr:`lock` held."""
        if self.app.rebalancing:
            return  # the assignment is changing; the next checkpoint runs in the new one
        generation = self.generation
        owned = self.runtime.owned(self.runtime.settings.repartition_topic)
        # Only keys of partitions this worker owns now: a key whose partition moved is its new
        # owner's to write (the new owner loads the last checkpoint and replays the rest).
        writes = [w for w in self.states.checkpoints(generation, state_of) if w[0] in owned]
        topic = self.table.changelog_topic
        pending = [
            await topic.send(
                key=key,
                value=value,
                partition=partition,
                key_serializer="raw",
                value_serializer="raw",
                force=True,
            )
            for partition, key, value in writes
        ]
        if pending:
            await asyncio.gather(*pending)
        for _, key, value in writes:
            self.table.data[key] = value
        self.states.written(generation)
        held, self.held = self.held, []
        for batch in held:
            await batch.acknowledge()
        forget(generation)
        self.last = time.monotonic()
        if writes:
            logger.debug(
                "checkpoint: %d keys, %d bytes, %d batches acknowledged",
                len(writes),
                sum(len(v) for _, _, v in writes),
                len(held),
            )

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    def run(
        self,
        process: Callable[[list[SourceRecord], int], Any],
        emit: Callable[[Any], Awaitable[None]],
        state_of: Callable[[str], dict[str, Any] | None],
        forget: Callable[[int], None],
    ) -> None:
        """Consume the repartition topic into ``process`` (on a thread) and ``emit`` its
        output, checkpointing every ``checkpoint_interval_s``. Records reach ``process`` in
        offset order per partition, each once per seek; repeats are acknowledged with the
        checkpoint that holds their first delivery."""
        runtime = self.runtime

        async def stage(batch: Batch) -> None:
            async with self.lock:
                if batch.generation is not None and batch.generation != self.generation:
                    # Fetched before a rebalance that came while the batch waited for the
                    # lock: the partition may be another worker's now. Never acknowledged
                    # (Faust refuses stale acknowledgements); read again by its owner.
                    logger.debug("a batch of an older consumer generation left out")
                    return
                if batch.records:
                    output = await asyncio.to_thread(process, batch.records, self.generation)
                    await emit(output)
                self.held.append(batch)
                if self.due():
                    await self.checkpoint(state_of, forget)

        runtime.consume(
            (runtime.settings.repartition_topic,), f"undertow.streams.{self.name}", stage
        )

        async def checkpoint_timer() -> None:
            async with self.lock:
                if self.held or self.states.dirty(self.generation):
                    await self.checkpoint(state_of, forget)

        runtime.timer(self.interval_s, f"undertow.streams.{self.name}.checkpoint", checkpoint_timer)
