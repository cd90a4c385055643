"""What starts the real components locally: a Kafka broker from Maven jars and the embedded
ClickHouse engine behind ClickHouse's HTTP interface. Production points the same clients at
real clusters instead."""

from undertow.errors import UndertowError


class InfraError(UndertowError):
    """A local component could not be resolved, started, reached or stopped."""


__all__ = ["InfraError"]
