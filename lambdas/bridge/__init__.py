"""Alertmanager webhook → Kafka bridge (`cct serve bridge`)."""
