"""The demo names its scenario's app apart from an earlier run's overlapping traffic, read from
the real warehouse: two runs in one state directory must not share an app whose event-time
window (and policy watermark) the first run already filled."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from undertow.demo import APP, traffic_app
from undertow.infra.stack import StackInfo
from undertow.schemas import topics
from undertow.schemas.events import event
from undertow.services.warehouse.client import connect
from undertow.services.warehouse.rows import insert_events

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def client(stack: StackInfo, database: str) -> Iterator[Client]:
    c = connect(stack.clickhouse_url, database=database)
    yield c
    c.close()


def store(client: Client, app: str, at: datetime, offset: int) -> None:
    record = event("prompt", {"messages": [], "model": "m"}, app=app, event_time=at)
    assert insert_events(client, [(record, topics.EVENTS, 0, offset)]) == 1


def test_an_app_is_reused_only_when_its_traffic_ended_before_the_new_window(
    client: Client,
) -> None:
    assert traffic_app(client, T0) == APP  # nothing stored yet
    store(client, APP, T0 - timedelta(minutes=1), 1)
    assert traffic_app(client, T0) == APP  # an older run ended before this window
    store(client, APP, T0 + timedelta(minutes=5), 2)
    assert traffic_app(client, T0) == f"{APP}-2"
    store(client, f"{APP}-2", T0 + timedelta(minutes=3), 3)
    assert traffic_app(client, T0) == f"{APP}-3"
    assert traffic_app(client, T0 + timedelta(minutes=6)) == APP  # later window: free again
