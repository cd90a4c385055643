-- Scores: one row per scored event from topic undertow.scored.v1 (Avro undertow.ScoredEvent),
-- with its segment (app, model, prompt version), scorer outputs, tokens and cost.
-- toxicity and injection default from the scores map, so a writer may fill either.
-- Re-scoring an event (new scorer or price table) inserts a newer scored_at, which wins at merge
-- time; query with FINAL for exactly one row per event.
CREATE TABLE IF NOT EXISTS scores
(
    event_id UUID,
    event_type LowCardinality(String) COMMENT 'prompt | retrieval | completion | feedback',
    trace_id String,
    span_id String,
    event_time DateTime64(6, 'UTC'),
    app LowCardinality(String),
    environment LowCardinality(String),
    model LowCardinality(String) DEFAULT '',
    prompt_name LowCardinality(String) DEFAULT '',
    prompt_version LowCardinality(String) DEFAULT '',
    scores Map(LowCardinality(String), Float64) COMMENT 'scorer name to score',
    scorer_versions Map(LowCardinality(String), String) COMMENT 'scorer name to the model or version that scored',
    toxicity Nullable(Float64) DEFAULT if(mapContains(scores, 'toxicity'), scores['toxicity'], NULL)
        COMMENT '0..1, higher is more toxic; NULL when not scored',
    injection Nullable(Float64) DEFAULT if(mapContains(scores, 'injection'), scores['injection'], NULL)
        COMMENT '0..1 likelihood of a prompt-injection attempt; NULL when not scored',
    input_tokens Nullable(UInt32),
    output_tokens Nullable(UInt32),
    cached_tokens Nullable(UInt32),
    tokens UInt32 DEFAULT ifNull(input_tokens, 0) + ifNull(output_tokens, 0) COMMENT 'input plus output tokens',
    cost_usd Nullable(Float64) COMMENT 'estimated from the price table; NULL when the model is not priced',
    price_table_version LowCardinality(String) DEFAULT '',
    latency_ms Nullable(Float64),
    scored_at DateTime64(6, 'UTC') DEFAULT now64(6) COMMENT 'when the scores were computed; the newest row wins',
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (app, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Per-event scores (toxicity, injection, ...), tokens and cost by app, model and prompt version; use FINAL for one row per event_id';
