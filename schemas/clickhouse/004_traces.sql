-- Traces: one row per trace_id, rolled up from scores by a materialized view as events arrive.
-- Each insert adds a partial row; merges combine them. Read with FINAL or GROUP BY trace_id.
-- A redelivered event counts again unless its block was deduplicated at insert time, so these
-- sums are exact after a clean run and may overcount after a replay (scores FINAL is exact).
CREATE TABLE IF NOT EXISTS traces
(
    trace_id String,
    app LowCardinality(String),
    environment SimpleAggregateFunction(any, LowCardinality(String)),
    start_time SimpleAggregateFunction(min, DateTime64(6, 'UTC')) COMMENT 'earliest event of the trace',
    end_time SimpleAggregateFunction(max, DateTime64(6, 'UTC')) COMMENT 'latest event of the trace',
    span_count SimpleAggregateFunction(sum, UInt64) COMMENT 'events in the trace',
    completions SimpleAggregateFunction(sum, UInt64),
    latency_ms SimpleAggregateFunction(sum, Float64) COMMENT 'summed latency of retrievals and completions',
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Float64),
    models SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    prompt_versions SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    max_toxicity SimpleAggregateFunction(max, Nullable(Float64)),
    max_injection SimpleAggregateFunction(max, Nullable(Float64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (app, trace_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Per-trace totals (spans, latency, tokens, cost, worst scores) rolled up from scores; read with FINAL';

CREATE MATERIALIZED VIEW IF NOT EXISTS traces_mv TO traces AS
SELECT
    trace_id,
    app,
    any(environment) AS environment,
    min(event_time) AS start_time,
    max(event_time) AS end_time,
    count() AS span_count,
    countIf(event_type = 'completion') AS completions,
    sum(ifNull(latency_ms, 0)) AS latency_ms,
    sum(toUInt64(ifNull(input_tokens, 0))) AS input_tokens,
    sum(toUInt64(ifNull(output_tokens, 0))) AS output_tokens,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    groupUniqArrayIf(toString(model), model != '') AS models,
    groupUniqArrayIf(toString(prompt_version), prompt_version != '') AS prompt_versions,
    max(toxicity) AS max_toxicity,
    max(injection) AS max_injection
FROM scores
GROUP BY trace_id, app;
