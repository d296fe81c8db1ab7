"""Hostile Alertmanager payloads at the bridge, producing to the real Kafka broker: a payload
nested too deep is refused with a 400; an alert the trigger would dead-letter (a NUL, an
oversized label) is dropped and counted while the rest of its group is produced."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.bridge.core import PayloadError, convert
from lambdas.events.cloudevents import decode
from tests.bridge.test_core import alert, payload
from tests.bridge.test_server import AUTH, metric
from tests.routing.helpers import consume_topic
from tests.support.hostile import json_values, mutate


async def test_deep_json_is_a_400_not_a_500(client: TestClient[Any, Any]) -> None:
    for depth in (40, 10_000):  # 10,000 deep fits the test's 64 KiB body limit
        body = b'{"a":' * depth + b"1" + b"}" * depth
        resp = await client.post("/v1/alerts", data=body, headers=AUTH)
        assert resp.status == 400, depth
        assert "JSON nests" in (await resp.json())["message"]
    assert await metric(client, 'cct_bridge_rejected_total{reason="malformed"}') == 2


async def test_poison_alerts_are_dropped_and_counted_the_rest_produced(
    client: TestClient[Any, Any], kafka_bootstrap: str, uid: str
) -> None:
    good = [{**alert(resource_id=f"i-{n}"), "fingerprint": f"{uid}{n:06d}"} for n in range(2)]
    nul = {**alert(team="pay\x00ments"), "fingerprint": f"{uid}nul"}
    huge = {**alert(resource_id="i-" + "x" * 10_000), "fingerprint": f"{uid}huge"}
    # JSON's "\ud800" decodes to a lone surrogate: no event id or Kafka key can be made of it.
    broken_key = {**alert(), "fingerprint": f"{uid}\ud800"}
    broken_label = {**alert(team="pay\ud800ments"), "fingerprint": f"{uid}label"}
    alerts = (good[0], nul, huge, broken_key, broken_label, good[1])
    resp = await client.post("/v1/alerts", data=payload(*alerts), headers=AUTH)
    assert resp.status == 200
    doc = await resp.json()
    assert doc["events"] == 2
    assert [m.split(":")[0] for m in doc["invalid"]] == [f"alerts[{i}]" for i in (1, 2, 3, 4)]
    assert "NUL" in doc["invalid"][0] and "longer than the limit" in doc["invalid"][1]
    assert "fingerprint is not valid Unicode" in doc["invalid"][2]
    assert "label 'team' is not valid Unicode" in doc["invalid"][3]
    records = await consume_topic(kafka_bootstrap, f"cct.test.bridge.{uid}", 2, 60)
    assert sorted(r.key for r in records) == [f"{uid}{n:06d}".encode() for n in range(2)]
    assert await metric(client, 'cct_bridge_rejected_total{reason="invalid_alert"}') == 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), json_values)
def test_any_value_anywhere_in_a_payload_converts_or_is_refused(
    data: st.DataObject, value: Any
) -> None:
    doc = json.loads(payload(alert(resource_id="i-1"), alert("resolved", resource_id="i-2")))
    mutate(data, doc, value)
    try:
        conversion = convert(json.dumps(doc).encode(), "2026-11-27T09:00:01.000Z")
    except PayloadError:
        return
    for event in conversion.events:  # whatever is produced, the trigger accepts
        decode(event.value)


@given(st.binary(max_size=200))
def test_any_bytes_convert_or_are_refused(raw: bytes) -> None:
    with contextlib.suppress(PayloadError):
        convert(raw, "2026-11-27T09:00:01.000Z")
