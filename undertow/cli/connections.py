"""Where the commands find Kafka and ClickHouse: ``UNDERTOW_BOOTSTRAP_SERVERS`` and
``UNDERTOW_CLICKHOUSE_*``, else the running local stack's (``undertow infra up``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from undertow.settings import StackSettings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def bootstrap_servers() -> str:
    """The Kafka bootstrap servers."""
    settings = StackSettings()
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    from undertow.infra.stack import LocalStack

    return LocalStack(settings).require().bootstrap_servers


def warehouse() -> Client:
    """A ClickHouse client on the configured database."""
    from undertow.services.warehouse.client import connect

    settings = StackSettings()
    url = settings.clickhouse_url
    if url is None:
        from undertow.infra.stack import LocalStack

        url = LocalStack(settings).require().clickhouse_url
    return connect(
        url,
        database=settings.clickhouse_database,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
    )
