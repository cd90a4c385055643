"""State the stream processors keep between batches and across restarts: keyed checkpoints
(drift, policy) and the open traces' scoring contexts (ingest). Pure logic over a mapping and
a send function, so it is tested without Faust; the runtime supplies the Faust tables."""
