"""The workflow trigger: Kafka anomalies to governed workflow submissions."""
