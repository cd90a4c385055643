-- Hourly usage by app, model and prompt version, kept up to date from scores by a
-- materialized view: event counts, tokens and cost as sums, latency as mergeable quantile and
-- average states. Analysts read the usage_by_hour view, which merges the states.
-- Like traces, a redelivered event counts again unless its block was deduplicated on insert.
CREATE TABLE IF NOT EXISTS usage_hourly
(
    hour DateTime('UTC'),
    app LowCardinality(String),
    environment LowCardinality(String),
    model LowCardinality(String),
    prompt_name LowCardinality(String),
    prompt_version LowCardinality(String),
    events SimpleAggregateFunction(sum, UInt64),
    completions SimpleAggregateFunction(sum, UInt64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cached_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Float64),
    latency_ms_quantiles AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Float64),
    latency_ms_avg AggregateFunction(avg, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (app, environment, model, prompt_name, prompt_version, hour)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Hourly rollup states of events, tokens, cost and completion latency; query usage_by_hour';

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    app,
    environment,
    model,
    prompt_name,
    prompt_version,
    count() AS events,
    countIf(event_type = 'completion') AS completions,
    sum(toUInt64(ifNull(input_tokens, 0))) AS input_tokens,
    sum(toUInt64(ifNull(output_tokens, 0))) AS output_tokens,
    sum(toUInt64(ifNull(cached_tokens, 0))) AS cached_tokens,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    quantilesTDigestStateIf(0.5, 0.9, 0.99)(assumeNotNull(latency_ms), event_type = 'completion' AND latency_ms IS NOT NULL) AS latency_ms_quantiles,
    avgStateIf(assumeNotNull(latency_ms), event_type = 'completion' AND latency_ms IS NOT NULL) AS latency_ms_avg
FROM scores
GROUP BY hour, app, environment, model, prompt_name, prompt_version;

CREATE VIEW IF NOT EXISTS usage_by_hour AS
SELECT
    hour,
    app,
    environment,
    model,
    prompt_name,
    prompt_version,
    sum(events) AS events,
    sum(completions) AS completions,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(cost_usd) AS cost_usd,
    quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_ms_quantiles) AS latency_ms_p50_p90_p99,
    avgMerge(latency_ms_avg) AS latency_ms_avg
FROM usage_hourly
GROUP BY hour, app, environment, model, prompt_name, prompt_version
COMMENT 'Hourly events, tokens, cost and completion latency (avg, p50/p90/p99) by app, model and prompt version';
