-- Actions: rollback and fine-tune commands and their results, from topic undertow.actions.v1
-- (Avro undertow.Action). A result row points at its request through request_id.
CREATE TABLE IF NOT EXISTS actions
(
    event_id UUID,
    event_time DateTime64(6, 'UTC'),
    app LowCardinality(String),
    environment LowCardinality(String),
    trace_id String,
    action_type LowCardinality(String) COMMENT 'rollback, fine_tune, ...',
    target String COMMENT 'what it acts on: a model or prompt name',
    phase LowCardinality(String) COMMENT 'requested | started | succeeded | failed | skipped',
    request_id Nullable(String) COMMENT 'event_id of the request this result answers',
    reason String DEFAULT '',
    parameters Map(String, String),
    result Map(String, String),
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (target, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Rollback and fine-tune commands and their results, by target';
