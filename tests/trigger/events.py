"""Anomaly events as the bridge puts them on Kafka, for the trigger's tests."""

from __future__ import annotations

from typing import Any

from lambdas.events.cloudevents import anomaly_event, encode
from tests.contract.recorded import recorded_alert

EC2 = "Amazon Elastic Compute Cloud"
RDS = "Amazon Relational Database Service"


def labels(uid: str, n: int = 0, /, **overrides: str) -> dict[str, str]:
    """The labels the real detector sent for a new dev instance (the recording of
    tests/contract), with this test's uid in its ids; `overrides` for hostile cases."""
    alert = recorded_alert("dev-instance", f"{uid}{n:04d}")
    return {**alert["labels"], **overrides}


def recorded_annotations(uid: str, n: int = 0) -> dict[str, str]:
    found: dict[str, str] = recorded_alert("dev-instance", f"{uid}{n:04d}")["annotations"]
    return found


def event_doc(uid: str, n: int = 0, status: str = "firing", /, **overrides: str) -> dict[str, Any]:
    alert = {
        "status": status,
        "labels": labels(uid, n, **overrides),
        "annotations": recorded_annotations(uid, n),
        "startsAt": "2026-11-27T09:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{uid}{n:06d}",
    }
    return anomaly_event(alert, "2026-11-27T09:00:01.000Z")


def event_bytes(uid: str, n: int = 0, status: str = "firing", /, **overrides: str) -> bytes:
    return encode(event_doc(uid, n, status, **overrides))
