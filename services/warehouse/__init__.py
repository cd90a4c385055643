"""The one warehouse client: every read and write of ClickHouse goes through clickhouse-connect.

``client.connect`` opens a client for a ClickHouse HTTP URL (a server in production, the local
embedded engine of ``undertow.infra.warehouse`` otherwise); ``migrations.apply_migrations``
brings the schema in ``schemas/clickhouse`` up to date.
"""

from undertow.errors import UndertowError


class WarehouseError(UndertowError):
    """ClickHouse could not be reached, refused a statement, or its schema is not as expected."""


__all__ = ["WarehouseError"]
