"""Open a clickhouse-connect client from a URL: the one way Undertow code reaches ClickHouse.

>>> client = connect("http://127.0.0.1:8123", database=None)  # doctest: +SKIP
>>> client.command("SELECT 1")  # doctest: +SKIP
1
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from undertow.services.warehouse import WarehouseError

_DEFAULT_PORTS = {"http": 8123, "https": 8443}


def connect(
    url: str,
    database: str | None = "undertow",
    username: str = "default",
    password: str = "",
    **kwargs: Any,
) -> Client:
    """A client for the ClickHouse HTTP interface at ``url`` (``http(s)://host[:port]``).

    ``database`` becomes the client's default database; pass None to use the server's default
    (needed before the migrations have created ``undertow``). Credentials in the URL are used
    when ``username``/``password`` are left at their defaults. Other keyword arguments go to
    ``clickhouse_connect.get_client`` (``compress``, ``settings``, ``connect_timeout``, ...).
    """
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise WarehouseError(f"expected a ClickHouse URL like http://host:8123, got {url!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise WarehouseError(f"bad port in ClickHouse URL {url!r}: {exc}") from exc
    if parts.username and username == "default":
        username = unquote(parts.username)
    if parts.password and not password:
        password = unquote(parts.password)
    try:
        return clickhouse_connect.get_client(
            host=parts.hostname,
            port=port,
            interface=parts.scheme,
            username=username,
            password=password,
            database=database or "__default__",
            **kwargs,
        )
    except ClickHouseError as exc:
        where = f"{parts.scheme}://{parts.hostname}:{port}"
        hint = f" (database {database!r}: have the migrations run?)" if database else ""
        raise WarehouseError(f"cannot connect to ClickHouse at {where}{hint}: {exc}") from exc
