"""The bridge's HTTP server against the real Kafka broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lambdas.bridge.server import Bridge
from lambdas.bridge.settings import BridgeSettings
from tests.bridge.test_core import alert, payload
from tests.routing.helpers import RecordingReceiver, consume_topic, events_of
from tests.support.kafka import auth as kafka_auth

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def bridge_settings(bootstrap: str, topic: str, zenduty_url: str | None = None) -> BridgeSettings:
    return BridgeSettings(
        kafka=kafka_auth(bootstrap, "bridge"),
        topic=topic,
        token=TOKEN,
        zenduty_url=zenduty_url,
        host="127.0.0.1",
        port=0,
        produce_timeout_s=5.0,
        relay_timeout_s=2.0,
        max_body_bytes=64 * 1024,
    )


async def metric(client: TestClient[Any, Any], line_prefix: str) -> float:
    text = await (await client.get("/metrics")).text()
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)
    ]
    return sum(values)


async def test_alerts_become_events_on_kafka_after_the_broker_ack(
    client: TestClient[Any, Any], kafka_bootstrap: str, uid: str
) -> None:
    alerts = [{**alert(resource_id=f"i-{n}"), "fingerprint": f"{uid}{n:06d}"} for n in range(3)]
    resp = await client.post("/v1/alerts", data=payload(*alerts), headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"events": 3, "ignored": 0, "invalid": []}
    records = await consume_topic(kafka_bootstrap, f"cct.test.bridge.{uid}", 3, 60)
    assert sorted(r.key for r in records) == [f"{uid}{n:06d}".encode() for n in range(3)]
    assert {e["type"] for e in events_of(records)} == {"io.cct.anomaly.detected"}
    assert (
        await metric(client, 'cct_bridge_events_produced_total{type="io.cct.anomaly.detected"}')
        == 3
    )


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
async def test_unauthenticated_requests_get_401_and_are_counted(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    resp = await client.post("/v1/alerts", data=payload(alert()), headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.json())["error"] == "unauthenticated"
    assert await metric(client, 'cct_bridge_rejected_total{reason="unauthenticated"}') == 1


async def test_a_token_that_is_not_utf8_is_a_401_not_a_500(client: TestClient[Any, Any]) -> None:
    from tests.support.http import raw_status

    assert client.port is not None
    header = b"Authorization: Bearer \xff\xfe"
    assert await raw_status(client.host, client.port, "/v1/alerts", header, b"{}") == 401
    assert await metric(client, 'cct_bridge_rejected_total{reason="unauthenticated"}') == 1


async def test_malformed_and_oversized_payloads_get_4xx_with_a_reason(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.post("/v1/alerts", data=b'{"version": "3"}', headers=AUTH)
    assert resp.status == 400
    assert await resp.json() == {
        "error": "malformed",
        "message": "unsupported webhook payload version '3'; expected '4'",
    }
    resp = await client.post("/v1/alerts", data=b"x" * (65 * 1024), headers=AUTH)
    assert resp.status == 413
    assert await metric(client, 'cct_bridge_rejected_total{reason="malformed"}') == 1
    assert await metric(client, 'cct_bridge_rejected_total{reason="too_large"}') == 1


async def test_relay_is_off_without_a_zenduty_url(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/relay/zenduty", data=payload(alert()), headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "relay_disabled"


async def test_relay_forwards_unchanged_and_maps_upstream_failures(
    kafka_bootstrap: str, uid: str
) -> None:
    with RecordingReceiver() as zenduty:
        url = f"{zenduty.url}/api/integration/prometheus/key-{uid}/"
        app = Bridge(bridge_settings(kafka_bootstrap, f"cct.test.bridge.{uid}", url)).app()
        async with TestClient(TestServer(app)) as c:
            body = payload(alert(severity="critical"))
            resp = await c.post("/v1/relay/zenduty", data=body, headers=AUTH)
            assert resp.status == 200
            [got] = zenduty.snapshot()
            assert got.path == f"/api/integration/prometheus/key-{uid}/"
            assert got.body == json.loads(body)
            assert "Authorization" not in got.headers  # our token stays with us
            zenduty.fail_next = 1
            resp = await c.post("/v1/relay/zenduty", data=body, headers=AUTH)
            assert resp.status == 502  # Alertmanager retries a 5xx
            assert await metric(c, 'cct_bridge_zenduty_relay_total{outcome="failed"}') == 1
            assert await metric(c, 'cct_bridge_zenduty_relay_total{outcome="delivered"}') == 1


async def test_unreadable_kafka_credentials_are_not_ready_and_a_503_not_a_crash(
    tmp_path: Any, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password file unreadable for a while (a Secret being replaced): the bridge says
    why it is not ready, answers 503 so Alertmanager retries, and its recheck keeps running
    until the file is back."""
    import asyncio
    import dataclasses

    import lambdas.bridge.server as server_module
    from tests.support.kafka import auth as kafka_auth

    monkeypatch.setattr(server_module, "RECHECK_S", 0.05)
    real = kafka_auth("127.0.0.1:1", "bridge")
    missing = dataclasses.replace(real, password_file=tmp_path / "password")
    settings = dataclasses.replace(bridge_settings("127.0.0.1:1", f"t.{uid}"), kafka=missing)
    bridge = Bridge(settings)
    async with TestClient(TestServer(bridge.app())) as c:
        resp = await c.post("/v1/alerts", data=payload(alert()), headers=AUTH)
        assert resp.status == 503
        assert "password" in (bridge.not_ready() or "")
        recheck = asyncio.create_task(bridge._recheck())
        await asyncio.sleep(0.3)
        assert not recheck.done(), "the recheck task died"
        recheck.cancel()
