-- Drift baselines: every version of every segment's baseline (streams/drift/baseline.py), so
-- that all drift workers, on any machine, judge traffic against the same ones. Like registry
-- this is state, not history: one row per (segment, version), the newest activated_at wins.
-- The active baseline of a segment is its version with the greatest activated_at; activating
-- an older version inserts its row again with a newer activated_at (streams/drift/store.py).
-- A version saved without activating has activated_at 1970-01-01 (never active). No insert
-- deduplication window: an activation that repeats an earlier row must still land.
CREATE TABLE IF NOT EXISTS baselines
(
    segment String COMMENT 'segment key, e.g. app=chat/model=smollm2/prompt=v3',
    segment_fields Map(String, String) COMMENT 'the segment key as fields',
    version String COMMENT 'content hash of the baseline; drift events name it',
    created_at DateTime64(6, 'UTC') COMMENT 'when the baseline was built',
    activated_at DateTime64(6, 'UTC') COMMENT 'when this version last became active; 1970-01-01 if never',
    embedding_model LowCardinality(String) DEFAULT '' COMMENT 'model of the reference embeddings',
    rows UInt64 COMMENT 'scored events the baseline was built from',
    events Map(String, UInt64) COMMENT 'values summarised, by embedded event type and by scalar quantity',
    source Map(String, String) COMMENT 'where the rows came from: table and time range, or a file',
    body String CODEC(ZSTD(3)) COMMENT 'the whole baseline as JSON (Baseline.dumps), about 1 MB'
)
ENGINE = ReplacingMergeTree(activated_at)
ORDER BY (segment, version)
COMMENT 'Versions of the per-segment drift baselines; the newest activated_at of a segment is its active one; read with FINAL';
