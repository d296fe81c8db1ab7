"""CloudEvents 1.0 JSON helpers for the events CCT puts on Kafka (docs/architecture.md, 5)."""
