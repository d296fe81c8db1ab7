"""Anomaly events on `cct.cost.anomalies`: built by the bridge, read by the trigger.

One event per Alertmanager alert transition, in CloudEvents 1.0 structured JSON mode. The id
is a hash of (fingerprint, startsAt, status), so a webhook that Alertmanager redelivers, or
that the bridge produces twice after a broker hiccup, yields the same id, and everything
downstream can deduplicate on it. The incident id (`incident_id`) is the same for every alert
of one incident, escalations included: what the trigger names its workflows after.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from lambdas import contract

SPEC_VERSION = "1.0"
SOURCE = contract.EVENT_SOURCE_BRIDGE
DETECTED = contract.DETECTED
RESOLVED = contract.RESOLVED
TYPES = {"firing": DETECTED, "resolved": RESOLVED}

# 128 bits of sha256: collisions are out of reach and the id stays short enough for
# Kubernetes label values (63 characters).
_ID_HEX = 32


class InvalidEvent(ValueError):
    """The bytes are not an anomaly event CCT understands. Not retryable: dead-letter it."""


@dataclass(frozen=True)
class EventLimits:
    """What a reader accepts of one event, checked before anything is stored or planned.

    max_bytes: the whole message. max_labels: labels plus annotations. max_value_chars: any
    one label or annotation name or value (Prometheus label values of real resources are far
    shorter; the store indexes some of them). NUL characters are always refused: PostgreSQL
    text cannot hold them.
    """

    max_bytes: int = 256 * 1024
    max_labels: int = 128
    max_value_chars: int = 4096


def event_id(fingerprint: str, starts_at: str, status: str) -> str:
    digest = hashlib.sha256(f"{fingerprint}\x1f{starts_at}\x1f{status}".encode())
    return digest.hexdigest()[:_ID_HEX]


def incident_id(labels: Mapping[str, str], starts_at: str) -> str:
    """The incident an alert belongs to, the same for each of its alerts: its labels without
    the ones an escalation changes (`contract.ESCALATING_LABELS`), and its startsAt, which
    the detector keeps from the incident's opening. The event id cannot serve: an escalation
    changes the fingerprint, and a workflow keyed by it started the same playbook again for
    each severity. A later incident on the same series starts later, so it is another one."""
    kept = sorted((k, v) for k, v in labels.items() if k not in contract.ESCALATING_LABELS)
    # JSON: no label name or value can run into the next.
    digest = hashlib.sha256(json.dumps([kept, starts_at]).encode())
    return digest.hexdigest()[:_ID_HEX]


def anomaly_event(alert: Mapping[str, Any], time: str) -> dict[str, Any]:
    """The CloudEvent for one alert of an Alertmanager webhook (payload version 4).

    `time` is when the bridge received it (RFC 3339); the alert itself keeps startsAt/endsAt.
    """
    status = alert["status"]
    fingerprint = alert["fingerprint"]
    return {
        "specversion": SPEC_VERSION,
        "id": event_id(fingerprint, alert["startsAt"], status),
        "source": SOURCE,
        "type": TYPES[status],
        "subject": fingerprint,
        "time": time,
        "datacontenttype": "application/json",
        "data": {
            "status": status,
            "labels": dict(alert["labels"]),
            "annotations": dict(alert.get("annotations") or {}),
            "startsAt": alert["startsAt"],
            "endsAt": alert.get("endsAt", ""),
            "fingerprint": fingerprint,
        },
    }


def unmapped_event(raw: bytes, reason: str, time: str) -> dict[str, Any]:
    """The `UNMAPPED` event the trigger publishes for a detected anomaly (`raw`, already
    decoded once) that no playbook rule matches: its data plus the reason and its id."""
    original = json.loads(raw)
    digest = hashlib.sha256(f"{original['id']}\x1funmapped".encode()).hexdigest()[:_ID_HEX]
    return {
        "specversion": SPEC_VERSION,
        "id": digest,
        "source": contract.EVENT_SOURCE_TRIGGER,
        "type": contract.UNMAPPED,
        "subject": original["subject"],
        "time": time,
        "datacontenttype": "application/json",
        "data": {**original["data"], "reason": reason, "original_id": original["id"]},
    }


def encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class AnomalyEvent:
    """The parts of an anomaly event the trigger acts on."""

    id: str
    type: str
    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str

    @property
    def detected(self) -> bool:
        return self.type == DETECTED

    @property
    def incident(self) -> str:
        return incident_id(self.labels, self.starts_at)


def decode(raw: bytes | None, limits: EventLimits = EventLimits()) -> AnomalyEvent:
    """Parse and check one event; raise InvalidEvent naming the first problem found."""
    if not raw:
        raise InvalidEvent("empty message")
    if len(raw) > limits.max_bytes:
        raise InvalidEvent(f"message of {len(raw)} bytes exceeds the limit of {limits.max_bytes}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidEvent("not a JSON object")
    if doc.get("specversion") != SPEC_VERSION:
        raise InvalidEvent(f"specversion must be {SPEC_VERSION!r}, got {doc.get('specversion')!r}")
    for attr in ("id", "source", "type", "subject"):
        if not isinstance(doc.get(attr), str) or not doc[attr]:
            raise InvalidEvent(f"attribute {attr!r} is missing or not a string")
    if doc["type"] not in (DETECTED, RESOLVED):
        raise InvalidEvent(f"unknown event type {doc['type']!r}")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent("'data' is missing or not an object")
    labels = data.get("labels")
    annotations = data.get("annotations", {})
    if not _str_map(labels):
        raise InvalidEvent("'data.labels' must be an object of strings")
    if not _str_map(annotations):
        raise InvalidEvent("'data.annotations' must be an object of strings")
    starts_at = data.get("startsAt")
    if not isinstance(starts_at, str) or not starts_at:
        raise InvalidEvent("'data.startsAt' is missing")
    _check_sizes(doc, labels, annotations, limits)
    return AnomalyEvent(
        id=doc["id"],
        type=doc["type"],
        fingerprint=doc["subject"],
        labels=labels,
        annotations=annotations,
        starts_at=starts_at,
    )


def _check_sizes(
    doc: dict[str, Any], labels: dict[str, str], annotations: dict[str, str], limits: EventLimits
) -> None:
    if len(labels) + len(annotations) > limits.max_labels:
        raise InvalidEvent(
            f"{len(labels) + len(annotations)} labels and annotations exceed the limit of "
            f"{limits.max_labels}"
        )
    strings = [("attribute " + a, doc[a]) for a in ("id", "source", "type", "subject")]
    # Name and value each within the limit, as documented: the detector cuts its ranked lists
    # to exactly max_value_chars, and counting the name too dropped such alerts whole.
    for kind, entries in (("label", labels), ("annotation", annotations)):
        for k, v in entries.items():
            strings += [(f"{kind} name {k[:40]!r}", k), (f"{kind} {k[:40]!r}", v)]
    for where, text in strings:
        if "\x00" in text:
            raise InvalidEvent(f"{where[:80]} contains a NUL character")
        if not is_utf8(text):
            raise InvalidEvent(f"{where[:80]} is not valid Unicode text (a lone surrogate)")
    for where, text in strings:
        if len(text) > limits.max_value_chars:
            raise InvalidEvent(
                f"{where[:80]} is longer than the limit of {limits.max_value_chars} characters"
            )


def is_utf8(text: str) -> bool:
    """Whether `text` can be written as UTF-8. JSON's escape "\\ud800" decodes to a lone
    surrogate, which no Kafka key, event id or PostgreSQL text parameter accepts."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _str_map(value: object) -> TypeGuard[dict[str, str]]:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )
