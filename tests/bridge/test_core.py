"""The bridge's pure core and the CloudEvents helpers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambdas.bridge.core import PayloadError, convert
from lambdas.events.cloudevents import InvalidEvent, decode, event_id


def alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "CostAnomaly", "severity": "warning", **labels},
        "annotations": {"summary": "step"},
        "startsAt": "2026-11-27T09:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": "a1b2c3d4e5f60718",
    }


def payload(*alerts: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "cct-bridge",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://am",
            "alerts": list(alerts),
        }
    ).encode()


def test_one_cloudevent_per_alert_keyed_by_fingerprint() -> None:
    firing = alert()
    resolved = {**alert("resolved"), "fingerprint": "ffff000011112222"}
    conv = convert(payload(firing, resolved), "2026-11-27T09:00:01.000Z")
    assert conv.ignored == 0
    assert [e.key for e in conv.events] == [b"a1b2c3d4e5f60718", b"ffff000011112222"]
    first = json.loads(conv.events[0].value)
    assert first == {
        "specversion": "1.0",
        "id": event_id("a1b2c3d4e5f60718", "2026-11-27T09:00:00.000Z", "firing"),
        "source": "/cct/bridge",
        "type": "io.cct.anomaly.detected",
        "subject": "a1b2c3d4e5f60718",
        "time": "2026-11-27T09:00:01.000Z",
        "datacontenttype": "application/json",
        "data": {
            "status": "firing",
            "labels": firing["labels"],
            "annotations": {"summary": "step"},
            "startsAt": "2026-11-27T09:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "a1b2c3d4e5f60718",
        },
    }
    assert json.loads(conv.events[1].value)["type"] == "io.cct.anomaly.resolved"


def test_event_id_is_stable_per_transition() -> None:
    a = convert(payload(alert()), "2026-11-27T09:00:01Z").events[0]
    again = convert(payload(alert()), "2026-11-27T09:05:00Z").events[0]
    resolved = convert(payload(alert("resolved")), "2026-11-27T09:06:00Z").events[0]
    ids = [json.loads(e.value)["id"] for e in (a, again, resolved)]
    assert ids[0] == ids[1] != ids[2]
    assert len(ids[0]) == 32


def test_non_anomaly_alerts_are_ignored_not_produced() -> None:
    conv = convert(payload(alert(), alert(alertname="Watchdog")), "2026-11-27T09:00:01Z")
    assert (len(conv.events), conv.ignored) == (1, 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not JSON: Expecting property name enclosed in double quotes"),
        (b"[]", "body is not a JSON object"),
        (b'{"version": "3", "alerts": []}', "unsupported webhook payload version '3'"),
        (b'{"version": "4"}', "'alerts' is missing or not a list"),
        (payload({**alert(), "status": "pending"}), "alerts[0].status must be 'firing' or"),
        (payload(alert(), {**alert(), "fingerprint": ""}), "alerts[1].fingerprint is missing"),
        (payload({**alert(), "labels": {"a": 1}}), "alerts[0].labels must be an object of strings"),
        (payload({k: v for k, v in alert().items() if k != "labels"}), "alerts[0].labels is"),
        (payload({**alert(), "startsAt": None}), "alerts[0].startsAt is missing"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        convert(body, "2026-11-27T09:00:01Z")
    assert str(err.value).startswith(message)


def test_decode_round_trip_and_errors() -> None:
    [event] = convert(payload(alert(resource_id="i-1")), "2026-11-27T09:00:01Z").events
    decoded = decode(event.value)
    assert decoded.detected and decoded.fingerprint == "a1b2c3d4e5f60718"
    assert decoded.labels["resource_id"] == "i-1"
    doc = json.loads(event.value)
    bad = [
        (b"", "empty message"),
        (b"\xff", "not JSON"),
        (json.dumps({**doc, "specversion": "0.3"}).encode(), "specversion must be '1.0'"),
        (json.dumps({**doc, "type": "x"}).encode(), "unknown event type 'x'"),
        (json.dumps({**doc, "id": 5}).encode(), "attribute 'id' is missing or not a string"),
        (json.dumps({**doc, "data": []}).encode(), "'data' is missing or not an object"),
    ]
    for raw, message in bad:
        with pytest.raises(InvalidEvent) as err:
            decode(raw)
        assert str(err.value).startswith(message), raw
