"""The contract: Avro schemas, ClickHouse migrations and the codec that reads and writes records."""
