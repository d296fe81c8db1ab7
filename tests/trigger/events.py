"""Anomaly events as the bridge puts them on Kafka, for the trigger's tests."""

from __future__ import annotations

from typing import Any

from lambdas.events.cloudevents import anomaly_event, encode

EC2 = "Amazon Elastic Compute Cloud"
RDS = "Amazon Relational Database Service"


def labels(uid: str, n: int = 0, /, **overrides: str) -> dict[str, str]:
    return {
        "alertname": "CostAnomaly",
        "severity": "warning",
        "level": "resource",
        "provider": "aws",
        "billing_account_id": "111122223333",
        "sub_account_id": "444455556666",
        "region_id": "us-east-1",
        "service_name": EC2,
        "resource_id": f"i-{uid}{n:04d}",
        "resource_type": "Instance",
        "team": "payments",
        "env": "dev",
        "rule": "day0_step",
        "source": "detector",
        **overrides,
    }


def event_doc(uid: str, n: int = 0, status: str = "firing", /, **overrides: str) -> dict[str, Any]:
    alert = {
        "status": status,
        "labels": labels(uid, n, **overrides),
        "annotations": {"delta_usd_per_hour": "0.50", "summary": "cost step"},
        "startsAt": "2026-11-27T09:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{uid}{n:06d}",
    }
    return anomaly_event(alert, "2026-11-27T09:00:01.000Z")


def event_bytes(uid: str, n: int = 0, status: str = "firing", /, **overrides: str) -> bytes:
    return encode(event_doc(uid, n, status, **overrides))
