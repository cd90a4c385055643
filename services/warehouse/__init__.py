"""The one warehouse client: every read and write of ClickHouse goes through clickhouse-connect."""
