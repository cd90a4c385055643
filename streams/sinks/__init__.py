"""Where the stream processors' output becomes durable: the ClickHouse sink (``warehouse``)."""
