-- Traces are now written by the stream worker: one row per trace once it is complete (a
-- completion, then trace_idle_s of quiet) or too old, from its Faust table of open traces
-- (streams/trace_store.py). The worker counts each event once however often it was
-- delivered, which the materialized view over scores (004) could not promise, so the view
-- goes, and its AggregatingMergeTree table is kept, renamed, for the rows it already holds.
--
-- A trace row is keyed by (app, trace_id, part): `part` is the first event id the worker saw
-- of it. Written again after a crash, the same part replaces itself (the version with more
-- spans wins). Events arriving after a trace was written (late feedback) form another part:
-- a trace's figures are the sum of its parts (the trace_totals view adds them up).
DROP VIEW IF EXISTS traces_mv;

RENAME TABLE traces TO traces_rollup_v1;

CREATE TABLE IF NOT EXISTS traces
(
    trace_id String,
    part String COMMENT 'first event id of this part of the trace; usually one part per trace',
    app LowCardinality(String),
    environment LowCardinality(String),
    start_time DateTime64(6, 'UTC') COMMENT 'earliest event of the part',
    end_time DateTime64(6, 'UTC') COMMENT 'latest event of the part',
    span_count UInt32 COMMENT 'distinct events',
    prompts UInt32,
    retrievals UInt32,
    completions UInt32,
    feedbacks UInt32,
    latency_ms Float64 COMMENT 'summed latency of retrievals and completions',
    duration_ms Float64 COMMENT 'end_time - start_time',
    input_tokens UInt64 COMMENT 'over completions only',
    output_tokens UInt64,
    cached_tokens UInt64,
    tokens UInt64 COMMENT 'input plus output tokens',
    cost_usd Float64,
    unpriced_completions UInt32 COMMENT 'completions the price table could not price (not in cost_usd)',
    models Array(String),
    prompt_names Array(String),
    prompt_versions Array(String),
    max_toxicity Nullable(Float64),
    max_injection Nullable(Float64),
    feedback_score Nullable(Float64) COMMENT 'the latest feedback score of the part',
    readiness LowCardinality(String) COMMENT 'complete (a completion, then quiet) or expired (max age)',
    written_at DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX idx_start start_time TYPE minmax GRANULARITY 4
)
ENGINE = ReplacingMergeTree(span_count)
PARTITION BY toYYYYMM(start_time)
ORDER BY (app, trace_id, part)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'One row per trace (per part, when events came after it was written): spans, latency, tokens, cost, worst scores, feedback; read with FINAL, or trace_totals';

CREATE VIEW IF NOT EXISTS trace_totals AS
SELECT
    app,
    trace_id,
    any(environment) AS environment,
    min(start_time) AS start_time,
    max(end_time) AS end_time,
    count() AS parts,
    sum(span_count) AS span_count,
    sum(prompts) AS prompts,
    sum(retrievals) AS retrievals,
    sum(completions) AS completions,
    sum(feedbacks) AS feedbacks,
    sum(latency_ms) AS latency_ms,
    toFloat64(dateDiff('microsecond', min(t.start_time), max(t.end_time))) / 1000 AS duration_ms,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(tokens) AS tokens,
    sum(cost_usd) AS cost_usd,
    sum(unpriced_completions) AS unpriced_completions,
    arraySort(groupUniqArrayArray(models)) AS models,
    arraySort(groupUniqArrayArray(prompt_versions)) AS prompt_versions,
    max(max_toxicity) AS max_toxicity,
    max(max_injection) AS max_injection,
    argMaxIf(t.feedback_score, t.end_time, t.feedback_score IS NOT NULL) AS feedback_score
FROM traces AS t FINAL
GROUP BY app, trace_id;
