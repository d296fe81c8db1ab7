"""The bridge's pure core: check an Alertmanager webhook payload and turn it into events.

Alertmanager only ever sends well-formed payloads; anything else is a misconfigured sender.
A payload is accepted or rejected as a whole, with a reason naming the first problem, so a
bad request never produces half of its events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lambdas.contract import ALERTNAME
from lambdas.events.cloudevents import anomaly_event, encode

WEBHOOK_VERSION = "4"
ANOMALY_ALERTNAME = ALERTNAME


class PayloadError(ValueError):
    """The request body is not an Alertmanager v4 webhook payload. Answer 400; do not retry."""


@dataclass(frozen=True)
class OutgoingEvent:
    key: bytes
    value: bytes
    type: str


@dataclass(frozen=True)
class Conversion:
    events: list[OutgoingEvent]
    # Alerts that are not cost anomalies: the routing never sends them here, so one that
    # arrives is counted and dropped rather than put on the anomalies topic.
    ignored: int


def parse_payload(body: bytes) -> list[dict[str, Any]]:
    """The alerts of a payload, checked field by field."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("body is not a JSON object")
    if doc.get("version") != WEBHOOK_VERSION:
        raise PayloadError(
            f"unsupported webhook payload version {doc.get('version')!r}; expected '4'"
        )
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("'alerts' is missing or not a list")
    for i, alert in enumerate(alerts):
        _check_alert(i, alert)
    return alerts


def _check_alert(i: int, alert: object) -> None:
    if not isinstance(alert, dict):
        raise PayloadError(f"alerts[{i}] is not an object")
    if alert.get("status") not in ("firing", "resolved"):
        raise PayloadError(f"alerts[{i}].status must be 'firing' or 'resolved'")
    for name in ("labels", "annotations"):
        value = alert.get(name, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise PayloadError(f"alerts[{i}].{name} must be an object of strings")
    for name in ("fingerprint", "startsAt"):
        if not isinstance(alert.get(name), str) or not alert[name]:
            raise PayloadError(f"alerts[{i}].{name} is missing")
    if "labels" not in alert:
        raise PayloadError(f"alerts[{i}].labels is missing")


def convert(body: bytes, received_at: str) -> Conversion:
    """All the events one webhook request must produce, keyed by alert fingerprint."""
    events: list[OutgoingEvent] = []
    ignored = 0
    for alert in parse_payload(body):
        if alert["labels"].get("alertname") != ANOMALY_ALERTNAME:
            ignored += 1
            continue
        event = anomaly_event(alert, received_at)
        events.append(
            OutgoingEvent(
                key=alert["fingerprint"].encode(), value=encode(event), type=event["type"]
            )
        )
    return Conversion(events=events, ignored=ignored)
