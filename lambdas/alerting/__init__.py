"""Alert routing: the Alertmanager configuration CCT deploys (docs/architecture.md, 4)."""
