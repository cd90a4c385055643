"""The local stack as one unit: the Kafka broker, the warehouse, the topics and the migrations.

``up`` starts what is not running (broker and warehouse start side by side), creates missing
topics and applies pending migrations; every step is idempotent, so a second ``up`` finds the
running stack and changes nothing. Where settings name external clusters
(``bootstrap_servers``, ``clickhouse_url``), those are used and nothing local is started.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from undertow.infra import InfraError
from undertow.infra.kafka import BrokerInfo, KafkaBroker, ensure_topics, load_topics
from undertow.infra.warehouse import LocalWarehouse, WarehouseInfo
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.migrations import apply_migrations
from undertow.settings import StackSettings


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack answers, and what ``up`` did to get there."""

    bootstrap_servers: str
    clickhouse_url: str
    broker: BrokerInfo | None
    warehouse: WarehouseInfo | None
    topics_created: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class LocalStack:
    """Starts, finds and stops the local components under ``settings.home``."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.state_dir = settings.home.resolve()
        self.broker = KafkaBroker(
            state_dir=self.state_dir,
            cache_dir=settings.cache_dir,
            version=settings.kafka_version,
            host=settings.host,
            heap=settings.kafka_heap,
        )
        self.warehouse = LocalWarehouse(state_dir=self.state_dir, host=settings.host)

    def up(self) -> StackInfo:
        """Start or find every component, then create topics and apply migrations."""
        cluster = self.settings.clickhouse_cluster or None
        if cluster and not self.settings.clickhouse_url:
            raise InfraError(
                f"UNDERTOW_CLICKHOUSE_CLUSTER={cluster} needs UNDERTOW_CLICKHOUSE_URL: "
                "the local ClickHouse engine is one node, not a cluster"
            )
        timeout = self.settings.ready_timeout_s
        seconds: dict[str, float] = {}

        def timed(name: str, start: Any) -> Any:
            began = time.monotonic()
            result = start()
            seconds[name] = time.monotonic() - began
            return result

        broker: BrokerInfo | None = None
        warehouse: WarehouseInfo | None = None
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stack-up") as pool:
            broker_job = (
                None
                if self.settings.bootstrap_servers
                else pool.submit(timed, "broker", lambda: self.broker.start(timeout=timeout))
            )
            warehouse_job = (
                None
                if self.settings.clickhouse_url
                else pool.submit(timed, "warehouse", lambda: self.warehouse.start(timeout=timeout))
            )
            errors: list[str] = []
            for name, job in (("broker", broker_job), ("warehouse", warehouse_job)):
                if job is None:
                    continue
                try:
                    if name == "broker":
                        broker = job.result()
                    else:
                        warehouse = job.result()
                except InfraError as exc:
                    errors.append(f"{name}: {exc}")
            if errors:
                raise InfraError("the local stack did not come up:\n" + "\n".join(errors))

        bootstrap = self.settings.bootstrap_servers or (broker.bootstrap if broker else "")
        url = self.settings.clickhouse_url or (warehouse.url if warehouse else "")
        began = time.monotonic()
        created = ensure_topics(bootstrap, load_topics(self.settings.topics_file))
        seconds["topics"] = time.monotonic() - began
        began = time.monotonic()
        applied = apply_migrations(
            self.admin_client(url), self.settings.clickhouse_database, cluster=cluster
        )
        seconds["migrations"] = time.monotonic() - began
        return StackInfo(
            bootstrap_servers=bootstrap,
            clickhouse_url=url,
            broker=broker,
            warehouse=warehouse,
            topics_created=created,
            migrations_applied=[f"{m.version:03d}_{m.name}" for m in applied],
            seconds=seconds,
        )

    def status(self) -> StackInfo | None:
        """The running stack, or None when a local component it needs is not running."""
        broker = None if self.settings.bootstrap_servers else self.broker.status()
        warehouse = None if self.settings.clickhouse_url else self.warehouse.status()
        bootstrap = self.settings.bootstrap_servers or (broker.bootstrap if broker else None)
        url = self.settings.clickhouse_url or (warehouse.url if warehouse else None)
        if bootstrap is None or url is None:
            return None
        return StackInfo(bootstrap, url, broker, warehouse)

    def down(self) -> dict[str, bool]:
        """Stop the local components; True for each one that was running."""
        return {"broker": self.broker.stop(), "warehouse": self.warehouse.stop()}

    def require(self) -> StackInfo:
        """The running stack, or a clear error telling how to start it."""
        info = self.status()
        if info is None:
            raise InfraError(
                f"the local stack under {self.state_dir} is not running; "
                "start it with `undertow infra up`"
            )
        return info

    def admin_client(self, url: str) -> Any:
        """A warehouse client without a default database (for migrations)."""
        return connect(
            url,
            database=None,
            username=self.settings.clickhouse_user,
            password=self.settings.clickhouse_password.get_secret_value(),
        )

    def client(self, url: str) -> Any:
        """A warehouse client on the Undertow database."""
        return connect(
            url,
            database=self.settings.clickhouse_database,
            username=self.settings.clickhouse_user,
            password=self.settings.clickhouse_password.get_secret_value(),
        )
