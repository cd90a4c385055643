-- Registry mirror: the latest state of every model, adapter and prompt version from the
-- compacted topic undertow.registry.v1 (Avro undertow.RegistryRecord). Unlike the event tables
-- this is state, not history: one row per (kind, name, version), the newest updated_at wins.
CREATE TABLE IF NOT EXISTS registry
(
    kind LowCardinality(String) COMMENT 'model | adapter | prompt',
    name String,
    version String,
    status LowCardinality(String) COMMENT 'candidate, active, retired',
    labels Array(String),
    base_model Nullable(String),
    adapter_path Nullable(String),
    template Nullable(String) COMMENT 'prompt template text',
    metadata Map(String, String),
    payload String DEFAULT '' COMMENT 'the whole record as JSON, for fields added later',
    event_id UUID COMMENT 'the record that set this state',
    updated_at DateTime64(6, 'UTC') COMMENT 'event_time of that record; the newest wins'
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (kind, name, version)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Latest state of each model, adapter and prompt version; read with FINAL';
