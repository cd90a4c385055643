-- Traces are folded by (trace_id, event_id) where they are stored: exact by construction.
--
-- Until now the stream worker kept open traces in a Faust table and wrote one row per trace
-- once it was done (010). Whether a replayed record was counted twice then depended on when
-- offsets were committed, and a worker restarted after a crash sometimes counted one again
-- in a second part of its trace. Now the worker writes one `trace_spans` row per event, in
-- the same batch as its `events` and `scores` rows, keyed by (app, trace_id, event_id): a
-- redelivered or replayed event replaces its own row, so under FINAL every event counts
-- once whatever the delivery did. `traces` becomes a view that adds a trace's spans up when
-- it is read; it also shows traces still in progress (status 'open').
--
-- The table the worker wrote is kept, renamed traces_parts_v1, for reference; the spans of
-- the events already stored are filled in here from events and scores, so `traces` covers
-- all history.
DROP VIEW IF EXISTS trace_totals;

RENAME TABLE traces TO traces_parts_v1;

CREATE TABLE IF NOT EXISTS trace_spans
(
    trace_id String,
    event_id UUID,
    app LowCardinality(String),
    environment LowCardinality(String),
    event_type LowCardinality(String) COMMENT 'prompt | retrieval | completion | feedback',
    event_time DateTime64(6, 'UTC'),
    model LowCardinality(String) DEFAULT '',
    prompt_name LowCardinality(String) DEFAULT '',
    prompt_version LowCardinality(String) DEFAULT '',
    latency_ms Nullable(Float64) COMMENT 'as the event says (retrieval: lookup; completion: generation)',
    input_tokens Nullable(UInt32) COMMENT 'counted by the scorer where the provider did not say',
    output_tokens Nullable(UInt32),
    cached_tokens Nullable(UInt32),
    cost_usd Nullable(Float64) COMMENT 'completions: from the price table; NULL when not priced',
    toxicity Nullable(Float64),
    injection Nullable(Float64),
    feedback_score Nullable(Float64) COMMENT 'feedback events: the rating',
    written_at DateTime64(6, 'UTC') DEFAULT now64(6) COMMENT 'the newest row of an event wins'
)
ENGINE = ReplacingMergeTree(written_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (app, trace_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'One row per event with what its trace adds up (read with FINAL, or the traces view)';

INSERT INTO trace_spans
    (trace_id, event_id, app, environment, event_type, event_time, model, prompt_name,
     prompt_version, latency_ms, input_tokens, output_tokens, cached_tokens, cost_usd,
     toxicity, injection, feedback_score)
SELECT
    e.trace_id,
    e.event_id,
    e.app,
    e.environment,
    e.event_type,
    e.event_time,
    if(e.model != '', toString(e.model), toString(ifNull(s.model, ''))),
    if(e.prompt_name != '', toString(e.prompt_name), toString(ifNull(s.prompt_name, ''))),
    if(e.prompt_version != '', toString(e.prompt_version), toString(ifNull(s.prompt_version, ''))),
    coalesce(e.latency_ms, s.latency_ms),
    coalesce(s.input_tokens, e.input_tokens),
    coalesce(s.output_tokens, e.output_tokens),
    coalesce(s.cached_tokens, e.cached_tokens),
    s.cost_usd,
    s.toxicity,
    s.injection,
    e.feedback_score
FROM events AS e FINAL
LEFT JOIN (SELECT * FROM scores FINAL) AS s ON s.event_id = e.event_id
SETTINGS join_use_nulls = 1;

-- The accounting rules the worker's trace rows followed, now in one place:
-- * span_count counts distinct events (FINAL keeps one row per event_id);
-- * latency_ms sums retrievals and completions (time spent waiting on them; duration_ms is
--   the wall-clock span of the trace);
-- * tokens and cost are summed over completions only: a prompt's tokens are the
--   completion's input tokens, and counting both would bill them twice;
-- * feedback_score is the latest rating (by event time);
-- * status is 'complete' once a completion (or only feedback, the late part of a request)
--   was seen, else 'open'.
CREATE VIEW IF NOT EXISTS traces AS
SELECT
    t.app AS app,
    t.trace_id AS trace_id,
    any(t.environment) AS environment,
    min(t.event_time) AS start_time,
    max(t.event_time) AS end_time,
    toUInt32(count()) AS span_count,
    toUInt32(countIf(t.event_type = 'prompt')) AS prompts,
    toUInt32(countIf(t.event_type = 'retrieval')) AS retrievals,
    toUInt32(countIf(t.event_type = 'completion')) AS completions,
    toUInt32(countIf(t.event_type = 'feedback')) AS feedbacks,
    sumIf(ifNull(t.latency_ms, 0), t.event_type IN ('retrieval', 'completion')) AS latency_ms,
    toFloat64(dateDiff('microsecond', min(t.event_time), max(t.event_time))) / 1000 AS duration_ms,
    sumIf(toUInt64(ifNull(t.input_tokens, 0)), t.event_type = 'completion') AS input_tokens,
    sumIf(toUInt64(ifNull(t.output_tokens, 0)), t.event_type = 'completion') AS output_tokens,
    sumIf(toUInt64(ifNull(t.cached_tokens, 0)), t.event_type = 'completion') AS cached_tokens,
    input_tokens + output_tokens AS tokens,
    sumIf(ifNull(t.cost_usd, 0), t.event_type = 'completion') AS cost_usd,
    toUInt32(countIf(t.event_type = 'completion' AND t.cost_usd IS NULL)) AS unpriced_completions,
    arraySort(groupUniqArrayIf(toString(t.model), t.model != '')) AS models,
    arraySort(groupUniqArrayIf(toString(t.prompt_name), t.prompt_name != '')) AS prompt_names,
    arraySort(groupUniqArrayIf(toString(t.prompt_version), t.prompt_version != ''))
        AS prompt_versions,
    max(t.toxicity) AS max_toxicity,
    max(t.injection) AS max_injection,
    argMaxIf(t.feedback_score, t.event_time, t.event_type = 'feedback' AND t.feedback_score IS NOT NULL)
        AS feedback_score,
    if(completions > 0 OR feedbacks = span_count, 'complete', 'open') AS status
FROM trace_spans AS t FINAL
GROUP BY t.app, t.trace_id;

-- The name analysts used for the sum of a trace's parts: a trace is one row now.
CREATE VIEW IF NOT EXISTS trace_totals AS SELECT * FROM traces;

CREATE OR REPLACE VIEW v_traces AS
SELECT
    app,
    trace_id,
    environment,
    start_time,
    end_time,
    duration_ms,
    status,
    span_count AS spans,
    prompts,
    retrievals,
    completions,
    feedbacks,
    arrayStringConcat(models, ',') AS model,
    arrayStringConcat(prompt_names, ',') AS prompt_name,
    arrayStringConcat(prompt_versions, ',') AS prompt_version,
    input_tokens,
    output_tokens,
    cached_tokens,
    tokens,
    cost_usd,
    unpriced_completions,
    latency_ms,
    max_toxicity,
    max_injection,
    feedback_score
FROM traces
COMMENT 'What happened in each request: one row per trace with its event counts, model, prompt, tokens, cost, latency, worst scores and latest feedback';
