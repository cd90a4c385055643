-- Raw events: one row per record of topic undertow.events.v1 (Avro record undertow.Event).
-- Envelope columns come first; the body of each event type fills its own columns, and the
-- columns of the other types stay NULL (measures, texts) or empty (maps, arrays, names).
-- Segment names (model, prompt_name, prompt_version, store) are '' when absent so they group
-- and sort without NULLs. Duplicates of an event_id (redelivered records) are dropped at
-- insert time for a retried identical block, and collapse at merge time otherwise: query
-- with FINAL for exact counts.
CREATE TABLE IF NOT EXISTS events
(
    event_id UUID COMMENT 'unique id of the record; duplicates collapse on it',
    event_type LowCardinality(String) COMMENT 'prompt | retrieval | completion | feedback',
    trace_id String COMMENT 'W3C trace id (32 hex) joining the events of one request',
    span_id String COMMENT 'W3C span id (16 hex) of this operation',
    parent_span_id Nullable(String) COMMENT 'span id of the parent operation; NULL for a root span',
    event_time DateTime64(6, 'UTC') COMMENT 'when it happened',
    app LowCardinality(String),
    environment LowCardinality(String) COMMENT 'production, staging, dev',
    user_hash Nullable(String) COMMENT 'keyed hash of the end user id, never the raw id',
    session_hash Nullable(String) COMMENT 'keyed hash of the session id',
    attributes Map(String, String) COMMENT 'free-form string attributes from the SDK',

    -- shared by prompt and completion (and latency by retrieval)
    model LowCardinality(String) DEFAULT '' COMMENT 'model asked for (prompt) or that answered (completion)',
    prompt_name LowCardinality(String) DEFAULT '' COMMENT 'versioned prompt template, if any',
    prompt_version LowCardinality(String) DEFAULT '',
    latency_ms Nullable(Float64) COMMENT 'retrieval: lookup time; completion: request to last token',
    truncated Bool DEFAULT false COMMENT 'the SDK cut a text to its payload cap',

    -- prompt
    prompt_messages Array(Tuple(role LowCardinality(String), content String)) CODEC(ZSTD(3))
        COMMENT 'chat messages in order; a plain prompt is one user message',
    prompt_text String ALIAS arrayStringConcat(arrayMap(m -> tupleElement(m, 'content'), prompt_messages), '\n')
        COMMENT 'the message contents joined by newlines (computed on read)',
    template_variables Map(String, String),

    -- retrieval
    retrieval_query Nullable(String) CODEC(ZSTD(3)),
    retrieval_documents Array(Tuple(id String, score Nullable(Float32), text Nullable(String), source Nullable(String))) CODEC(ZSTD(3))
        COMMENT 'documents returned, best first, with the store''s relevance score',
    retrieval_store LowCardinality(String) DEFAULT '' COMMENT 'vector or search store queried',
    retrieval_top_k Nullable(UInt32),

    -- completion
    model_version LowCardinality(String) DEFAULT '',
    adapter LowCardinality(String) DEFAULT '' COMMENT 'LoRA adapter applied, if any',
    completion_text Nullable(String) CODEC(ZSTD(3)) COMMENT 'the generated text',
    input_tokens Nullable(UInt32) COMMENT 'prompt tokens, when known',
    output_tokens Nullable(UInt32) COMMENT 'completion tokens, when known',
    cached_tokens Nullable(UInt32) COMMENT 'prompt tokens served from the provider cache',
    time_to_first_token_ms Nullable(Float64),
    finish_reason LowCardinality(Nullable(String)) COMMENT 'stop, length, content_filter, tool_calls, error',

    -- feedback
    feedback_score Nullable(Float64) COMMENT 'numeric rating, e.g. 1 thumbs up, 0 down',
    feedback_label LowCardinality(Nullable(String)),
    feedback_comment Nullable(String),
    feedback_source LowCardinality(Nullable(String)) COMMENT 'user, annotator, judge',

    -- ingest bookkeeping
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6),

    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (app, event_type, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Raw LLM traffic events (prompt, retrieval, completion, feedback), one row per event_id; use FINAL for exact counts';
