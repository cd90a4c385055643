"""The producer SDK embedded in serving apps: traces and spans to Kafka, never in the way."""
