-- Analyst views: the questions people ask of the warehouse, answered once, in SQL that runs
-- on the embedded engine (chdb) and on a ClickHouse server alike. They read the base tables
-- with FINAL (every one of them is a ReplacingMergeTree), so a redelivered record never
-- counts twice. They are plain views: nothing is stored, each query reads the tables again,
-- so filter on their time column (the filter reaches the tables underneath).
-- docs/analysts.md describes every column and has example queries; the Grafana dashboards in
-- infra/grafana/dashboards read these views and nothing else.
-- CREATE OR REPLACE: applying this file again (or by hand) leaves exactly these definitions.

-- v_traces: what happened in each request? One row per trace, its parts added up (traces is
-- written by the stream worker; late feedback forms another part, see 010).
CREATE OR REPLACE VIEW v_traces AS
SELECT
    app,
    trace_id,
    any(t.environment) AS environment,
    min(t.start_time) AS start_time,
    max(t.end_time) AS end_time,
    toFloat64(dateDiff('microsecond', min(t.start_time), max(t.end_time))) / 1000 AS duration_ms,
    count() AS parts,
    sum(t.span_count) AS spans,
    sum(t.prompts) AS prompts,
    sum(t.retrievals) AS retrievals,
    sum(t.completions) AS completions,
    sum(t.feedbacks) AS feedbacks,
    arrayStringConcat(arraySort(groupUniqArrayArray(t.models)), ',') AS model,
    arrayStringConcat(arraySort(groupUniqArrayArray(t.prompt_names)), ',') AS prompt_name,
    arrayStringConcat(arraySort(groupUniqArrayArray(t.prompt_versions)), ',') AS prompt_version,
    sum(t.input_tokens) AS input_tokens,
    sum(t.output_tokens) AS output_tokens,
    sum(t.cached_tokens) AS cached_tokens,
    sum(t.tokens) AS tokens,
    sum(t.cost_usd) AS cost_usd,
    sum(t.unpriced_completions) AS unpriced_completions,
    sum(t.latency_ms) AS latency_ms,
    max(t.max_toxicity) AS max_toxicity,
    max(t.max_injection) AS max_injection,
    argMaxIf(t.feedback_score, t.end_time, t.feedback_score IS NOT NULL) AS feedback_score
FROM traces AS t FINAL
GROUP BY app, trace_id
COMMENT 'What happened in each request: one row per trace with its event counts, model, prompt, tokens, cost, latency, worst scores and latest feedback';

-- v_cost_by_hour: what does each model cost and how fast is it, hour by hour? Completions
-- only, from scores (one row per event with FINAL). Latency quantiles are exact and
-- interpolated like numpy.percentile: quantileExactInclusive keeps the hour's latencies in
-- memory while it runs, which is fine per hour, app and model.
CREATE OR REPLACE VIEW v_cost_by_hour AS
SELECT
    toStartOfHour(s.event_time) AS hour,
    s.app AS app,
    s.model AS model,
    count() AS completions,
    sum(toUInt64(ifNull(s.input_tokens, 0))) AS input_tokens,
    sum(toUInt64(ifNull(s.output_tokens, 0))) AS output_tokens,
    sum(toUInt64(s.tokens)) AS tokens,
    sum(ifNull(s.cost_usd, 0)) AS cost_usd,
    countIf(s.cost_usd IS NULL) AS unpriced_completions,
    avg(s.latency_ms) AS latency_ms_avg,
    quantileExactInclusive(0.5)(s.latency_ms) AS latency_ms_p50,
    quantileExactInclusive(0.95)(s.latency_ms) AS latency_ms_p95
FROM scores AS s FINAL
WHERE s.event_type = 'completion'
GROUP BY hour, app, model
COMMENT 'What each model costs and how fast it answers, per hour and app: completions, tokens, cost_usd, latency avg, p50 and p95';

-- v_drift_history: where and when did traffic drift? Per hour, segment, monitored stream,
-- detector and baseline: how often the detector reported, how often it detected a change,
-- and its statistic against its threshold.
CREATE OR REPLACE VIEW v_drift_history AS
SELECT
    toStartOfHour(d.event_time) AS hour,
    d.app AS app,
    d.environment AS environment,
    d.segment AS segment,
    d.stream AS stream,
    d.detector AS detector,
    d.baseline_version AS baseline_version,
    count() AS evaluations,
    countIf(d.detected) AS detections,
    max(d.statistic) AS statistic_max,
    argMax(d.statistic, d.event_time) AS statistic_last,
    argMax(d.threshold, d.event_time) AS threshold,
    if(countIf(d.detected) > 0, minIf(d.event_time, d.detected), NULL) AS first_detected_at,
    if(countIf(d.detected) > 0, maxIf(d.event_time, d.detected), NULL) AS last_detected_at,
    max(d.window_current) AS window_current,
    max(d.window_reference) AS window_reference
FROM drift AS d FINAL
GROUP BY hour, app, environment, segment, stream, detector, baseline_version
COMMENT 'Where and when traffic drifted: per hour, segment, stream, detector and baseline, the evaluations, detections, statistic and threshold';

-- v_alerts: which incidents fired, how bad did they get, and how long until they resolved?
-- One row per incident (dedup_key): the policy engine sends one firing alert, another on each
-- escalation, and one resolved alert. severity is the highest reached; duration_s is NULL
-- while the incident is still open.
CREATE OR REPLACE VIEW v_alerts AS
SELECT
    a.dedup_key AS dedup_key,
    argMin(a.app, a.event_time) AS app,
    argMin(a.environment, a.event_time) AS environment,
    argMin(a.rule, a.event_time) AS rule,
    argMin(a.segment, a.event_time) AS segment,
    arrayElement(
        ['info', 'warning', 'error', 'critical'],
        greatest(1, max(indexOf(['info', 'warning', 'error', 'critical'], toString(a.severity))))
    ) AS severity,
    argMinIf(a.summary, a.event_time, a.status = 'firing') AS summary,
    countIf(a.status = 'firing') AS firings,
    minIf(a.event_time, a.status = 'firing') AS first_fired_at,
    maxIf(a.event_time, a.status = 'firing') AS last_fired_at,
    argMax(a.status, (a.event_time, a.status = 'resolved')) AS last_status,
    max(a.event_time) AS last_event_at,
    if(countIf(a.status = 'resolved') > 0, maxIf(a.event_time, a.status = 'resolved'), NULL)
        AS resolved_at,
    if(
        countIf(a.status = 'resolved') > 0,
        toFloat64(dateDiff(
            'microsecond',
            minIf(a.event_time, a.status = 'firing'),
            maxIf(a.event_time, a.status = 'resolved')
        )) / 1e6,
        NULL
    ) AS duration_s,
    argMin(a.trace_id, a.event_time) AS trace_id,
    argMax(a.sql, a.event_time) AS sql,
    argMax(a.runbook_url, a.event_time) AS runbook_url
FROM alerts AS a FINAL
GROUP BY a.dedup_key
COMMENT 'Which incidents fired, how bad they got and how long they lasted: one row per dedup_key, first firing, last status, highest severity, duration';

-- v_top_injection_attempts: who tried to inject what? Prompts the injection scorer rated 0.5
-- or more (more likely an attempt than not), with the prompt text as stored in events. For
-- analysts only: prompt text is personal data wherever users type it.
CREATE OR REPLACE VIEW v_top_injection_attempts AS
SELECT
    s.event_time AS event_time,
    s.app AS app,
    s.environment AS environment,
    s.model AS model,
    s.prompt_name AS prompt_name,
    s.prompt_version AS prompt_version,
    s.injection AS injection,
    s.toxicity AS toxicity,
    e.prompt_text AS prompt_text,
    e.truncated AS truncated,
    e.user_hash AS user_hash,
    s.trace_id AS trace_id,
    s.event_id AS event_id
FROM scores AS s FINAL
INNER JOIN
(
    SELECT event_id, prompt_text, truncated, user_hash
    FROM events FINAL
    WHERE event_type = 'prompt'
      AND event_id IN (SELECT event_id FROM scores WHERE event_type = 'prompt' AND injection >= 0.5)
) AS e ON e.event_id = s.event_id
WHERE s.event_type = 'prompt' AND s.injection >= 0.5
ORDER BY s.injection DESC, s.event_time DESC
COMMENT 'Who tried to inject what: prompts scored 0.5 or more by the injection scorer, with their text, app and time, most likely first';

-- v_ab_results: how does each variant of an A/B test do so far? Per app, test and variant:
-- completions (errors apart), people's mean rating, the judge's mean score per rubric, mean
-- cost and latency. The same observations as `undertow ab report` (services/experiments/
-- observations.py): each completion takes its trace's latest rating per source and rubric.
-- A descriptive summary; the sequential decision (and its error guarantees) is the report's.
CREATE OR REPLACE VIEW v_ab_results AS
WITH
    completion AS
    (
        SELECT
            c.event_id AS event_id,
            c.trace_id AS trace_id,
            c.app AS app,
            c.attributes['ab.test'] AS ab_test,
            c.attributes['ab.variant'] AS variant,
            c.prompt_name AS prompt_name,
            c.prompt_version AS prompt_version,
            c.latency_ms AS latency_ms,
            c.event_time AS event_time,
            ifNull(c.finish_reason, '') = 'error' AS is_error
        FROM events AS c FINAL
        WHERE c.event_type = 'completion' AND c.attributes['ab.test'] != ''
    ),
    rating AS
    (
        SELECT
            f.trace_id AS trace_id,
            ifNull(f.feedback_source, 'user') = 'judge' AS by_judge,
            if(by_judge, if(ifNull(f.feedback_label, '') = '', 'score', f.feedback_label), '')
                AS rubric,
            argMax(f.feedback_score, f.event_time) AS score
        FROM events AS f FINAL
        WHERE f.event_type = 'feedback' AND f.feedback_score IS NOT NULL
          AND f.trace_id IN (SELECT trace_id FROM completion)
        GROUP BY trace_id, by_judge, rubric
    ),
    judged AS
    (
        SELECT app, ab_test, variant, rubric, avg(score) AS mean, count() AS n
        FROM
        (
            SELECT c.app AS app, c.ab_test AS ab_test, c.variant AS variant, r.rubric AS rubric,
                   r.score AS score
            FROM completion AS c
            INNER JOIN rating AS r ON r.trace_id = c.trace_id
            WHERE NOT c.is_error AND r.by_judge
        )
        GROUP BY app, ab_test, variant, rubric
    ),
    judge_summary AS
    (
        SELECT
            app,
            ab_test,
            variant,
            mapFromArrays(groupArray(rubric), groupArray(mean)) AS judge_score_mean,
            mapFromArrays(groupArray(rubric), groupArray(n)) AS judge_ratings
        FROM judged
        GROUP BY app, ab_test, variant
    ),
    per_completion AS
    (
        SELECT
            c.app AS app,
            c.ab_test AS ab_test,
            c.variant AS variant,
            c.prompt_name AS prompt_name,
            c.prompt_version AS prompt_version,
            c.event_time AS event_time,
            c.is_error AS is_error,
            c.latency_ms AS latency_ms,
            if(u.rated = 1, u.score, NULL) AS user_score,
            if(k.priced = 1, k.cost_usd, NULL) AS cost_usd
        FROM completion AS c
        LEFT JOIN
        (
            SELECT trace_id, score, toUInt8(1) AS rated FROM rating WHERE NOT by_judge
        ) AS u ON u.trace_id = c.trace_id
        LEFT JOIN
        (
            SELECT event_id, cost_usd, toUInt8(1) AS priced
            FROM scores FINAL
            WHERE event_type = 'completion' AND cost_usd IS NOT NULL
              AND event_id IN (SELECT event_id FROM completion)
        ) AS k ON k.event_id = c.event_id
    ),
    variant_summary AS
    (
        SELECT
            app,
            ab_test,
            variant,
            arrayStringConcat(arraySort(groupUniqArray(prompt_name)), ',') AS prompt_name,
            arrayStringConcat(arraySort(groupUniqArray(prompt_version)), ',') AS prompt_version,
            min(event_time) AS first_completion_at,
            max(event_time) AS last_completion_at,
            countIf(NOT is_error) AS completions,
            countIf(is_error) AS errors,
            countIf(NOT is_error AND user_score IS NOT NULL) AS user_ratings,
            avgIf(user_score, NOT is_error) AS user_feedback_mean,
            avgIf(cost_usd, NOT is_error) AS cost_usd_mean,
            avgIf(latency_ms, NOT is_error) AS latency_ms_mean
        FROM per_completion
        GROUP BY app, ab_test, variant
    )
SELECT
    v.app AS app,
    v.ab_test AS ab_test,
    v.variant AS variant,
    v.prompt_name AS prompt_name,
    v.prompt_version AS prompt_version,
    v.first_completion_at AS first_completion_at,
    v.last_completion_at AS last_completion_at,
    v.completions AS completions,
    v.errors AS errors,
    v.user_ratings AS user_ratings,
    v.user_feedback_mean AS user_feedback_mean,
    j.judge_score_mean AS judge_score_mean,
    j.judge_ratings AS judge_ratings,
    v.cost_usd_mean AS cost_usd_mean,
    v.latency_ms_mean AS latency_ms_mean
FROM variant_summary AS v
LEFT JOIN judge_summary AS j
    ON j.app = v.app AND j.ab_test = v.ab_test AND j.variant = v.variant
COMMENT 'How each variant of an A/B test does so far: completions, mean user feedback, mean judge score per rubric, mean cost and latency (descriptive; decide with undertow ab report)';

-- v_judge_scores: what does the judge think of each model and prompt, rubric by rubric? One
-- row per judged completion and rubric (FINAL: the newest judgement of an id), with the A/B
-- test and variant lifted out of the attributes.
CREATE OR REPLACE VIEW v_judge_scores AS
SELECT
    j.event_time AS event_time,
    j.judged_at AS judged_at,
    j.app AS app,
    j.environment AS environment,
    j.model AS model,
    j.model_version AS model_version,
    j.prompt_name AS prompt_name,
    j.prompt_version AS prompt_version,
    j.attributes['ab.test'] AS ab_test,
    j.attributes['ab.variant'] AS ab_variant,
    j.rubric AS rubric,
    j.rubric_version AS rubric_version,
    j.judge_model AS judge_model,
    j.score AS score,
    j.raw_score AS raw_score,
    j.scale AS scale,
    j.parse_error AS parse_error,
    j.reason AS reason,
    j.latency_ms AS latency_ms,
    j.trace_id AS trace_id,
    j.completion_event_id AS completion_event_id
FROM judge_scores AS j FINAL
COMMENT 'What the LLM judge thinks of each model and prompt: one row per judged completion and rubric, score 0..1 (NULL with parse_error when unreadable)';

-- v_actions: what did the automation do, and how fast? One row per requested action
-- (rollback, promote, fine-tune) with its latest answer from the workers: phase is the latest
-- answer's phase ('requested' while none came), seconds_to_answer runs from the request to
-- that answer, done says whether it is final (succeeded, failed or skipped).
CREATE OR REPLACE VIEW v_actions AS
SELECT
    r.event_time AS requested_at,
    r.app AS app,
    r.environment AS environment,
    r.action_type AS action_type,
    r.target AS target,
    r.reason AS reason,
    r.parameters AS parameters,
    if(a.answered = 1, a.last_phase, 'requested') AS phase,
    a.answered = 1 AND a.last_phase IN ('succeeded', 'failed', 'skipped') AS done,
    if(a.answered = 1 AND a.started = 1, a.started_at, NULL) AS started_at,
    if(a.answered = 1, a.answered_at, NULL) AS answered_at,
    if(
        a.answered = 1,
        toFloat64(dateDiff('microsecond', r.event_time, a.answered_at)) / 1e6,
        NULL
    ) AS seconds_to_answer,
    if(a.answered = 1, a.answers, 0) AS answers,
    a.last_result AS result,
    toString(r.event_id) AS request_id,
    r.trace_id AS trace_id
FROM actions AS r FINAL
LEFT JOIN
(
    SELECT
        assumeNotNull(x.request_id) AS answered_request_id,
        argMax(x.phase, (x.event_time, x.phase != 'started')) AS last_phase,
        argMax(x.result, (x.event_time, x.phase != 'started')) AS last_result,
        max(x.event_time) AS answered_at,
        toUInt8(countIf(x.phase = 'started') > 0) AS started,
        minIf(x.event_time, x.phase = 'started') AS started_at,
        count() AS answers,
        toUInt8(1) AS answered
    FROM actions AS x FINAL
    WHERE x.phase != 'requested' AND x.request_id IS NOT NULL
    GROUP BY x.request_id
) AS a ON a.answered_request_id = toString(r.event_id)
WHERE r.phase = 'requested'
COMMENT 'What the automation did and how fast: each requested action (rollback, promote, fine-tune) joined with its latest answer, phase and seconds to answer';
