-- Embeddings: one row per (event, embedded field), from the enrich processor. Vectors feed the
-- drift detectors and nearest-neighbour searches (cosineDistance, L2Distance).
CREATE TABLE IF NOT EXISTS embeddings
(
    event_id UUID,
    field LowCardinality(String) COMMENT 'prompt | completion | query: which text was embedded',
    trace_id String,
    event_time DateTime64(6, 'UTC'),
    app LowCardinality(String),
    model LowCardinality(String) COMMENT 'embedding model name',
    dimensions UInt16 DEFAULT length(vector),
    vector Array(Float32) CODEC(ZSTD(1)),
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (app, field, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Embedding vectors of prompts, completions and retrieval queries, one row per (event_id, field)';
