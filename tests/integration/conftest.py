"""One real local stack (Kafka broker + ClickHouse engine) per test session, started by the
project's own code in a temporary state directory and stopped at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from undertow.infra.stack import LocalStack, StackInfo
from undertow.services.warehouse.migrations import apply_migrations
from undertow.settings import StackSettings


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> StackSettings:
    home: Path = tmp_path_factory.mktemp("undertow-home")
    return StackSettings(home=home, clickhouse_database="undertow_test")


@pytest.fixture(scope="session")
def stack(stack_settings: StackSettings) -> Iterator[StackInfo]:
    local = LocalStack(stack_settings)
    try:
        yield local.up()
    finally:
        local.down()


@pytest.fixture(scope="session")
def local_stack(stack_settings: StackSettings, stack: StackInfo) -> LocalStack:
    return LocalStack(stack_settings)


@pytest.fixture(scope="module")
def database(
    local_stack: LocalStack, stack: StackInfo, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database of its own for the test module, migrated, dropped at the end."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = f"undertow_{module}_{uuid.uuid4().hex[:8]}"
    admin = local_stack.admin_client(stack.clickhouse_url)
    apply_migrations(admin, name)
    yield name
    admin.command(f"DROP DATABASE IF EXISTS {name}")
