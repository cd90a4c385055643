-- Drift: statistics and detections per segment from topic undertow.drift.v1 (Avro
-- undertow.DriftEvent). detected rows are the change points; the rest trace the statistic.
CREATE TABLE IF NOT EXISTS drift
(
    event_id UUID,
    event_time DateTime64(6, 'UTC'),
    app LowCardinality(String),
    environment LowCardinality(String),
    segment String COMMENT 'segment key, e.g. app=chat/model=smollm2/prompt=v3',
    segment_fields Map(LowCardinality(String), String) COMMENT 'the segment key as fields',
    stream LowCardinality(String) COMMENT 'monitored quantity: embedding_distance, toxicity, latency_ms, ...',
    detector LowCardinality(String) COMMENT 'adwin, page_hinkley, mmd, ...',
    statistic Float64,
    threshold Float64,
    detected Bool,
    window_reference UInt64 COMMENT 'events in the reference window',
    window_current UInt64 COMMENT 'events in the current window',
    baseline_version LowCardinality(String) DEFAULT '',
    example_event_ids Array(String) COMMENT 'event_ids of examples from the current window',
    nearest_topics Array(String),
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (segment, stream, detector, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Drift statistics and detections per segment, stream and detector';
