-- LLM-as-judge scores: one row per judged completion and rubric, written by the judge worker
-- (undertow worker --role judge; streams/judge_processor.py), which samples completions from
-- undertow.events.v1, asks a judge model to rate them by the rubrics of
-- streams/judge/rubrics.yaml, and also publishes each score as a feedback event
-- (source 'judge', label = rubric) with the same id. A reply the worker could not read has
-- a parse_error and a NULL score. The id is uuid5(completion event_id, rubric,
-- rubric_version), so a replay after a crash rewrites the same rows: query with FINAL.
CREATE TABLE IF NOT EXISTS judge_scores
(
    id UUID COMMENT 'uuid5 of completion_event_id, rubric and rubric_version; also the feedback event_id',
    completion_event_id UUID COMMENT 'event_id of the judged completion (events.event_id)',
    trace_id String COMMENT 'W3C trace id of the judged completion',
    event_time DateTime64(6, 'UTC') COMMENT 'when the judged completion happened',
    app LowCardinality(String),
    environment LowCardinality(String),
    model LowCardinality(String) DEFAULT '' COMMENT 'model that wrote the judged completion',
    model_version LowCardinality(String) DEFAULT '',
    prompt_name LowCardinality(String) DEFAULT '',
    prompt_version LowCardinality(String) DEFAULT '',
    attributes Map(String, String) COMMENT 'the completion''s attributes (A/B variant, tenant, ...)',
    rubric LowCardinality(String) COMMENT 'relevance | coherence | groundedness | a rubric of your own',
    rubric_version LowCardinality(String) COMMENT 'declared version, then a hash of the rubric text: <version>-<hash>',
    judge_model LowCardinality(String) COMMENT 'model that judged, as its server named it',
    score Nullable(Float64) COMMENT 'normalised to 0..1 (worst..best); NULL when the reply could not be read',
    raw_score Nullable(Float64) COMMENT 'the score on the rubric scale, as the judge gave it',
    scale LowCardinality(String) COMMENT 'the rubric scale, low..high, e.g. 1..5',
    parse_error Nullable(String) COMMENT 'why no score was taken (missing, ambiguous, out of scale, refused); NULL when scored',
    reason String DEFAULT '' CODEC(ZSTD(3)) COMMENT 'the judge''s stated reason (or its reply), truncated',
    latency_ms Nullable(Float64) COMMENT 'time the judge took to answer, retries included; NULL when not asked',
    judged_at DateTime64(6, 'UTC') COMMENT 'when the judge answered; the newest row of an id wins',
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(judged_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (app, rubric, event_time, id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'LLM-as-judge scores of sampled completions by rubric, normalised 0..1; use FINAL for one row per id';
