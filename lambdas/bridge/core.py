"""The bridge's pure core: check an Alertmanager webhook payload and turn it into events.

Alertmanager only ever sends well-formed payloads; anything else is a misconfigured sender.
A payload is accepted or rejected as a whole, with a reason naming the first problem, so a
bad request never produces half of its events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lambdas.common.edge import TooDeep, loads_bounded
from lambdas.contract import ALERTNAME
from lambdas.events.cloudevents import (
    EventLimits,
    InvalidEvent,
    anomaly_event,
    decode,
    encode,
    is_utf8,
)

log = logging.getLogger("cct.bridge")

WEBHOOK_VERSION = "4"
# Alertmanager's payload nests five levels deep; anything far deeper is not from it.
MAX_JSON_DEPTH = 32
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
    # Alerts whose event the trigger would refuse (a NUL, an oversized label): dropped with
    # the reason, counted, so the rest of the group is still produced.
    invalid: list[str] = field(default_factory=list)


def parse_payload(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> list[dict[str, Any]]:
    """The alerts of a payload, checked field by field."""
    try:
        doc = loads_bounded(body, max_depth)
    except TooDeep as exc:
        raise PayloadError(str(exc)) from None
    except ValueError as exc:
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


def convert(
    body: bytes,
    received_at: str,
    limits: EventLimits = EventLimits(),  # noqa: B008
    max_depth: int = MAX_JSON_DEPTH,
) -> Conversion:
    """All the events one webhook request must produce, keyed by alert fingerprint."""
    events: list[OutgoingEvent] = []
    invalid: list[str] = []
    ignored = 0
    for i, alert in enumerate(parse_payload(body, max_depth)):
        if alert["labels"].get("alertname") != ANOMALY_ALERTNAME:
            ignored += 1
            continue
        # The event id and the Kafka key are made from these before the trigger's check runs.
        broken = [name for name in ("fingerprint", "startsAt") if not is_utf8(alert[name])]
        if broken:
            reason = f"{broken[0]} is not valid Unicode text (a lone surrogate)"
            log.warning("alert dropped", extra={"alert": i, "reason": reason})
            invalid.append(f"alerts[{i}]: {reason}")
            continue
        event = anomaly_event(alert, received_at)
        value = encode(event)
        try:
            # The trigger's own check: what it would dead-letter never reaches the topic.
            decode(value, limits)
        except InvalidEvent as exc:
            log.warning("alert dropped", extra={"alert": i, "reason": str(exc)})
            invalid.append(f"alerts[{i}]: {exc}")
            continue
        events.append(
            OutgoingEvent(key=alert["fingerprint"].encode(), value=value, type=event["type"])
        )
    return Conversion(events=events, ignored=ignored, invalid=invalid)
