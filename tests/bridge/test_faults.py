"""Faults on the real brokers: nothing lost between Alertmanager and Kafka."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lambdas.alerting.config import AlertRoutingSettings, render_alertmanager_config
from tests.bridge.test_core import alert, payload
from tests.routing.helpers import (
    FlakyProxy,
    alertmanager_process,
    anomaly_alert,
    bridge_process,
    events_of,
    post_alerts,
    private_kafka,
    read_topic,
    wait_until,
)


def post_until_accepted(url: str, token: str, body: bytes, statuses: list[int]) -> None:
    """What Alertmanager does for a webhook: try again until a 2xx (here without a deadline)."""
    while True:
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                statuses.append(resp.status)
                return
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
            assert exc.code >= 500, exc.read()
        except (urllib.error.URLError, OSError):
            statuses.append(0)
        time.sleep(0.2)


def test_broker_stopped_and_restarted_while_producing_loses_nothing(
    tmp_path: Path, uid: str
) -> None:
    count = 40
    topic = f"cct.test.faults.{uid}"
    statuses: list[int] = []
    with (
        private_kafka(tmp_path / "kafka") as broker,
        bridge_process(
            tmp_path / "bridge",
            broker.bootstrap,
            topic,
            extra_env={"CCT_BRIDGE_PRODUCE_TIMEOUT_S": "2"},
        ) as bridge,
    ):
        bodies = [
            payload({**alert(resource_id=f"i-{n}"), "fingerprint": f"{uid}{n:06d}"})
            for n in range(count)
        ]
        sent = threading.Event()

        def sender() -> None:
            for body in bodies:
                post_until_accepted(f"{bridge.url}/v1/alerts", bridge.token, body, statuses)
                time.sleep(0.05)
            sent.set()

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        wait_until(lambda: len(statuses) >= 15, 30, "the first alerts")
        broker.stop()
        time.sleep(2)
        broker.start()
        assert sent.wait(120), f"sender stuck; statuses so far {statuses[-10:]}"
        records = read_topic(broker.bootstrap, topic, expected=count, timeout=90)

    keys = {r.key for r in records}
    assert keys == {f"{uid}{n:06d}".encode() for n in range(count)}, "an alert was lost"
    # While the broker was down the bridge answered 5xx, never a false 2xx.
    assert any(s >= 500 or s == 0 for s in statuses)
    # A retry after a timed-out ack may produce an event twice: with the same id.
    by_key: dict[bytes | None, set[str]] = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(json.loads(r.value or b"{}")["id"])
    assert all(len(ids) == 1 for ids in by_key.values())


@pytest.mark.parametrize("forward_failed", [False, True], ids=["before-produce", "after-produce"])
def test_bridge_answering_5xx_once_alertmanager_retry_yields_one_event(
    tmp_path: Path, kafka_bootstrap: str, uid: str, forward_failed: bool
) -> None:
    topic = f"cct.test.retry.{uid}"
    with (
        bridge_process(tmp_path / "bridge", kafka_bootstrap, topic) as bridge,
        FlakyProxy(bridge.url, failures=1, forward_failed=forward_failed) as proxy,
    ):
        config = render_alertmanager_config(
            AlertRoutingSettings(
                bridge_url=f"{proxy.url}/v1/alerts",
                zenduty_relay_url=f"{proxy.url}/v1/relay/zenduty",
                token_file=str(tmp_path / "bridge" / "bridge.token"),
            )
        )
        with alertmanager_process(tmp_path / "am", config) as am:
            post_alerts(am, [anomaly_alert(uid)])
            wait_until(lambda: 200 in proxy.answers, 60, "Alertmanager's retry to succeed")
            records = read_topic(kafka_bootstrap, topic, expected=2, timeout=3)
        assert proxy.answers == [500, 200]

    events = events_of(records)
    assert len({e["id"] for e in events}) == 1  # one event, whatever the failure point
    # Failing before the bridge produced leaves exactly one record; failing after it leaves
    # the same event twice, which the trigger turns into one workflow (tests/trigger).
    assert len(records) == (2 if forward_failed else 1)


def test_broker_restart_behind_a_real_alertmanager_loses_no_alert(tmp_path: Path, uid: str) -> None:
    """The same outage with Alertmanager as the sender: its retries (within a flush, then
    at the next group_interval) carry every alert through the bridge's 503s."""
    count = 30
    topic = f"cct.test.amfaults.{uid}"
    with (
        private_kafka(tmp_path / "kafka") as broker,
        bridge_process(
            tmp_path / "bridge",
            broker.bootstrap,
            topic,
            extra_env={"CCT_BRIDGE_PRODUCE_TIMEOUT_S": "2"},
        ) as bridge,
    ):
        config = render_alertmanager_config(
            AlertRoutingSettings(
                bridge_url=f"{bridge.url}/v1/alerts",
                zenduty_relay_url=f"{bridge.url}/v1/relay/zenduty",
                token_file=str(tmp_path / "bridge" / "bridge.token"),
            )
        )
        with alertmanager_process(tmp_path / "am", config) as am:
            for n in range(count):
                if n == count // 3:
                    broker.stop()
                if n == 2 * count // 3:
                    broker.start()
                post_alerts(am, [anomaly_alert(f"{uid}{n}", resource_id=f"i-{uid}-{n}")])
                time.sleep(0.1)
            records = read_topic(broker.bootstrap, topic, expected=count, timeout=90)
        log = (tmp_path / "bridge" / "bridge.log").read_text()

    resources = {e["data"]["labels"]["resource_id"] for e in events_of(records)}
    assert resources == {f"i-{uid}-{n}" for n in range(count)}, "an alert was lost"
    assert "answering 503 so Alertmanager retries" in log  # the outage was seen
