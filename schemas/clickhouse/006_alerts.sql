-- Alerts raised by the policy rules, from topic undertow.alerts.v1 (Avro undertow.Alert).
-- Rows with one dedup_key are one incident: firing, then resolved.
CREATE TABLE IF NOT EXISTS alerts
(
    event_id UUID,
    event_time DateTime64(6, 'UTC'),
    app LowCardinality(String),
    environment LowCardinality(String),
    trace_id String,
    rule LowCardinality(String),
    severity LowCardinality(String) COMMENT 'info | warning | error | critical',
    status LowCardinality(String) COMMENT 'firing | resolved',
    dedup_key String COMMENT 'alerts with one key are one incident',
    segment String DEFAULT '',
    summary String,
    evidence Map(String, String),
    sql Nullable(String) COMMENT 'a query an analyst can run to see the evidence',
    runbook_url Nullable(String),
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (dedup_key, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Alerts raised by rules over scores and drift; one incident per dedup_key';
