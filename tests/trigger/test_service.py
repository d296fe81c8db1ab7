"""`cct serve trigger` as a real process: real Kafka and PostgreSQL, the Argo backend
against the fake Kubernetes API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from lambdas import contract
from lambdas.alerting.config import AlertRoutingSettings, render_alertmanager_config
from lambdas.events.cloudevents import decode
from lambdas.trigger.core import workflow_name
from tests.routing.helpers import (
    CCT,
    RecordingReceiver,
    alertmanager_process,
    anomaly_alert,
    bridge_process,
    committed_and_end,
    post_alerts,
    produce,
    read_topic,
    trigger_process,
    wait_until,
)
from tests.support.kafka import handler_env
from tests.support.services import ROOT
from tests.trigger.events import event_bytes
from tests.trigger.fake_kube import FakeKube

TOKEN = "kube-token"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(TOKEN) as fake:
        yield fake


def trigger_env(
    tmp_path: Path, kube: FakeKube, kafka: str, pg_dsn: str, uid: str
) -> dict[str, str]:
    token = tmp_path / "kube.token"
    token.write_text(TOKEN)
    return {
        **handler_env(kafka, "trigger"),
        "CCT_PG_DSN": pg_dsn,
        "CCT_TRIGGER_TOPIC": f"cct.test.anomalies.{uid}",
        "CCT_TRIGGER_DLQ_TOPIC": f"cct.test.anomalies.{uid}.dlq",
        "CCT_TRIGGER_UNMAPPED_TOPIC": f"cct.test.anomalies.{uid}.unmapped",
        "CCT_TRIGGER_GROUP": f"cct-trigger-{uid}",
        "CCT_TRIGGER_BACKEND": "argo",
        "CCT_TRIGGER_ARGO_NAMESPACE": "cct-system",
        "CCT_TRIGGER_KUBE_API_URL": kube.url,
        "CCT_TRIGGER_KUBE_TOKEN_FILE": str(token),
    }


def run_ids(uid: str, count: int) -> set[str]:
    return {
        workflow_name(decode(event_bytes(uid, n)).incident, "stop-idle-compute")
        for n in range(count)
    }


def runs_in_db(pg_dsn: str, ids: set[str]) -> list[tuple[str, str]]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select run_id, state from optimization_runs where run_id = any(%s)", (list(ids),)
        ).fetchall()
    return [(str(r), str(s)) for r, s in rows]


def test_events_become_workflows_poison_goes_to_the_dlq_offsets_are_committed(
    tmp_path: Path, kube: FakeKube, kafka_bootstrap: str, pg_dsn: str, uid: str
) -> None:
    env = trigger_env(tmp_path, kube, kafka_bootstrap, pg_dsn, uid)
    topic = env["CCT_TRIGGER_TOPIC"]
    items: list[tuple[bytes | None, bytes]] = [
        (f"fp{n}".encode(), event_bytes(uid, n)) for n in range(5)
    ]
    items.append((b"fp0", event_bytes(uid, 0)))  # the same event delivered twice
    items.append((b"poison", b'{"specversion": "1.0", "id": "x"}'))
    items.append((b"fp9", event_bytes(uid, 9, "resolved")))
    produce(kafka_bootstrap, topic, items)

    with trigger_process(tmp_path, env) as trigger:
        wait_until(lambda: len(kube.created_names()) >= 5, 120, "five workflows")
        wait_until(
            lambda: committed_and_end(kafka_bootstrap, topic, env["CCT_TRIGGER_GROUP"])[0] == 8,
            120,
            "all eight offsets committed",
            interval=0.3,
        )

        def scrape() -> str:
            with urllib.request.urlopen(trigger.metrics_url) as resp:
                return str(resp.read().decode())

        def lag_lines() -> list[str]:
            prefix = "cct_trigger_consumer_lag_messages{"
            return [line for line in scrape().splitlines() if line.startswith(prefix)]

        # Everything was handled, so every partition that received events reports no lag
        # (the gauge is set after each batch, a moment after the last commit).
        wait_until(
            lambda: bool(lag_lines()) and all(line.endswith(" 0.0") for line in lag_lines()),
            30,
            "consumer lag reported as zero",
            interval=0.3,
        )
        metrics = scrape()
        trigger.proc.send_signal(signal.SIGTERM)
        assert trigger.proc.wait(timeout=20) == 0

    expected = run_ids(uid, 5)
    assert sorted(kube.created_names()) == sorted(expected)
    assert sorted(runs_in_db(pg_dsn, expected)) == sorted((r, "submitted") for r in expected)
    [dead] = read_topic(kafka_bootstrap, env["CCT_TRIGGER_DLQ_TOPIC"], expected=1)
    headers = dict(dead.headers)
    assert dead.key == b"poison" and dead.value == b'{"specversion": "1.0", "id": "x"}'
    assert headers["cct-dlq-reason"] == b"attribute 'source' is missing or not a string"
    assert headers["cct-dlq-source"].startswith(f"{topic}/".encode())
    assert 'cct_trigger_events_total{outcome="created"} 5.0' in metrics
    assert 'cct_trigger_events_total{outcome="dead_letter"} 1.0' in metrics
    assert 'cct_trigger_events_total{outcome="resolved"} 1.0' in metrics


def test_a_fresh_group_skips_history_and_unmapped_anomalies_are_published_with_the_reason(
    tmp_path: Path, kube: FakeKube, kafka_bootstrap: str, pg_dsn: str, uid: str
) -> None:
    env = trigger_env(tmp_path, kube, kafka_bootstrap, pg_dsn, uid)
    env["CCT_TRIGGER_FRESH_GROUP_START_S"] = "2"
    topic = env["CCT_TRIGGER_TOPIC"]
    # History: on the topic before this consumer group ever existed.
    produce(kafka_bootstrap, topic, [(f"old{n}".encode(), event_bytes(uid, n)) for n in range(3)])
    time.sleep(3)
    unmapped = event_bytes(uid, 7, "firing", level="service", resource_type="")
    with trigger_process(tmp_path, env) as trigger:
        log = tmp_path / "trigger.log"
        wait_until(lambda: "fresh consumer group" in log.read_text(), 60, "the fresh group's start")
        produce(kafka_bootstrap, topic, [(b"fp5", event_bytes(uid, 5)), (b"fp7", unmapped)])
        [record] = read_topic(kafka_bootstrap, env["CCT_TRIGGER_UNMAPPED_TOPIC"], expected=1)
        wait_until(lambda: len(kube.created_names()) >= 1, 60, "the new event's workflow")
        with urllib.request.urlopen(trigger.metrics_url) as resp:
            metrics = resp.read().decode()
    # Only the new mapped event started a workflow; none of the history did.
    assert kube.created_names() == [
        workflow_name(decode(event_bytes(uid, 5)).incident, "stop-idle-compute")
    ]
    event = json.loads(record.value or b"")
    assert record.key == b"fp7"
    assert event["type"] == contract.UNMAPPED and event["source"] == contract.EVENT_SOURCE_TRIGGER
    assert event["data"]["original_id"] == decode(unmapped).id
    assert event["data"]["labels"]["level"] == "service"
    assert event["data"]["reason"].startswith("no playbook rule matches (database-rightsize: ")
    assert "level='service'" in event["data"]["reason"]
    assert 'cct_trigger_unmapped_total{level="service",resource_type=""} 1.0' in metrics
    assert 'cct_trigger_events_total{outcome="unmapped"} 1.0' in metrics


def test_killed_mid_batch_and_restarted_every_anomaly_is_handled_exactly_once(
    tmp_path: Path, kube: FakeKube, kafka_bootstrap: str, pg_dsn: str, uid: str
) -> None:
    count, before_kill = 30, 10
    env = trigger_env(tmp_path, kube, kafka_bootstrap, pg_dsn, uid)
    produce(
        kafka_bootstrap,
        env["CCT_TRIGGER_TOPIC"],
        [(f"fp{n}".encode(), event_bytes(uid, n)) for n in range(count)],
    )
    # The API holds the 11th create: the trigger dies with a submission in flight, which the
    # API completes afterwards (the worst case: created, but never committed).
    kube.hold_after = before_kill
    with trigger_process(tmp_path / "first", env) as first:
        wait_until(lambda: kube.held >= 1, 120, "the trigger to be mid-batch")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    assert len(kube.created_names()) == before_kill
    kube.hold_after = None
    kube.release.set()
    with trigger_process(tmp_path / "second", env):
        wait_until(lambda: len(kube.created_names()) >= count, 120, "every workflow")
        wait_until(
            lambda: (
                committed_and_end(
                    kafka_bootstrap, env["CCT_TRIGGER_TOPIC"], env["CCT_TRIGGER_GROUP"]
                )[0]
                == count
            ),
            120,
            "every offset committed",
            interval=0.3,
        )

    expected = run_ids(uid, count)
    created = kube.created_names()
    assert len(created) == count and set(created) == expected  # each exactly once
    # The in-flight event was redelivered to the new trigger and met AlreadyExists.
    assert [code for _, code in kube.attempts].count(409) >= 1
    assert all(code in (201, 409) for _, code in kube.attempts)
    assert sorted(runs_in_db(pg_dsn, expected)) == sorted((r, "submitted") for r in expected)


def test_an_invalid_mapping_file_stops_the_trigger_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "playbooks.yaml"
    bad.write_text("version: 1\nrules: []\n")
    (tmp_path / "playbooks.schema.json").write_text(
        (ROOT / "policies" / "playbooks.schema.json").read_text()
    )
    result = subprocess.run(
        [CCT, "serve", "trigger"],
        env={
            **os.environ,
            "CCT_PG_DSN": "postgresql://unused",
            "CCT_PLAYBOOKS_FILE": str(bad),
            "CCT_KAFKA_CA_FILE": str(tmp_path / "unused-ca"),
            "CCT_KAFKA_USERNAME": "trigger",
            "CCT_KAFKA_PASSWORD_FILE": str(tmp_path / "unused"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"cct serve trigger: {bad}: rules: [] should be non-empty" in result.stderr


def test_alert_posted_to_alertmanager_becomes_one_workflow(
    tmp_path: Path, kube: FakeKube, kafka_bootstrap: str, pg_dsn: str, uid: str
) -> None:
    """The whole path on real processes: Alertmanager -> bridge -> Kafka -> trigger."""
    env = trigger_env(tmp_path, kube, kafka_bootstrap, pg_dsn, uid)
    with (
        RecordingReceiver() as zenduty,
        bridge_process(
            tmp_path / "bridge",
            kafka_bootstrap,
            env["CCT_TRIGGER_TOPIC"],
            zenduty_url=f"{zenduty.url}/api/integration/prometheus/key-{uid}/",
        ) as bridge,
    ):
        config = render_alertmanager_config(
            AlertRoutingSettings(
                bridge_url=f"{bridge.url}/v1/alerts",
                zenduty_relay_url=f"{bridge.url}/v1/relay/zenduty",
                token_file=str(tmp_path / "bridge" / "bridge.token"),
            )
        )
        with (
            alertmanager_process(tmp_path / "am", config) as am,
            trigger_process(tmp_path / "trigger", env),
        ):
            post_alerts(am, [anomaly_alert(uid, "critical", env="dev")])
            wait_until(lambda: len(kube.created_names()) == 1, 90, "the workflow")
            wait_until(zenduty.snapshot, 60, "the page")
            # Time for a late duplicate delivery to show up as a second workflow.
            time.sleep(1.5)
    [name] = kube.created_names()
    assert name.startswith("cct-stop-idle-compute-")
    [workflow] = kube.objects.values()
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert params["resource-id"] == f"i-{uid}-dev"  # the recorded dev instance
    assert runs_in_db(pg_dsn, {name}) == [(name, "submitted")]


async def test_a_partition_revoked_mid_batch_is_no_crash() -> None:
    """A replica joined or left while a batch was handled: committing or reading the position
    of a partition this replica no longer owns raises IllegalStateError in aiokafka, which
    used to end the trigger. The record is handled; its new owner may see it again."""
    import threading
    from types import SimpleNamespace

    from aiokafka import TopicPartition
    from aiokafka.errors import IllegalStateError

    from lambdas.trigger.service import TriggerService

    tp = TopicPartition("cct.cost.anomalies", 0)

    class Revoked:
        def assignment(self) -> set[TopicPartition]:
            return {tp}  # as read just before the rebalance finished

        def highwater(self, _: TopicPartition) -> int:
            return 10

        async def position(self, _: TopicPartition) -> int:
            raise IllegalStateError(f"No current assignment for partition {tp}")

        async def commit(self, _: object) -> None:
            raise IllegalStateError(f"Partition {tp} is not assigned")

    service = TriggerService(None, None, threading.Event())  # type: ignore[arg-type]
    await service._observe_lag(Revoked())
    await service._commit(Revoked(), tp, SimpleNamespace(offset=4))
    assert service.metrics.commit_failures._value.get() == 1

    # The rest of a fetched batch of a partition revoked meanwhile is left to its new owner.
    handled: list[int] = []

    class RevokedAfterOne:
        def assignment(self) -> set[TopicPartition]:
            return {tp} if not handled else set()

    async def one(_c: object, _p: object, _tp: object, record: SimpleNamespace) -> None:
        handled.append(record.offset)

    service._one = one  # type: ignore[method-assign,assignment]
    batch = {tp: [SimpleNamespace(offset=n) for n in (4, 5, 6)]}
    assert await service._handle_batch(RevokedAfterOne(), None, batch, asyncio.Event())  # type: ignore[arg-type]
    assert handled == [4]


def test_a_trigger_started_while_kafka_is_down_waits_not_ready_and_stops_cleanly(
    tmp_path: Path, kube: FakeKube, kafka_bootstrap: str, pg_dsn: str, uid: str
) -> None:
    """Kafka unreachable at start: the trigger stays up, not ready with the reason, and keeps
    trying (it used to exit, and recovery waited for the restart back-off)."""
    import urllib.error

    from tests.support.procs import free_port

    env = trigger_env(tmp_path, kube, kafka_bootstrap, pg_dsn, uid)
    env["CCT_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    with trigger_process(tmp_path, env) as trigger:
        readyz = trigger.metrics_url.replace("/metrics", "/readyz")

        def not_ready_reason() -> str:
            try:
                urllib.request.urlopen(readyz, timeout=5)
            except urllib.error.HTTPError as exc:
                return exc.read().decode() if exc.code == 503 else ""
            return ""

        wait_until(lambda: "Kafka unreachable" in not_ready_reason(), 30, "not ready with why")
        time.sleep(3.0)  # a few start attempts later
        assert trigger.proc.poll() is None, "the trigger exited while Kafka was down"
        trigger.proc.send_signal(signal.SIGTERM)
        assert trigger.proc.wait(timeout=20) == 0


async def test_a_fresh_group_whose_start_lookup_fails_still_skips_history() -> None:
    """The end-offset lookup times out (a broker restarting) while a new group is assigned:
    the partition is read from the earliest offset, and its floor still keeps old anomalies
    from starting workflows (it used to be left without one)."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaTimeoutError

    from lambdas.trigger.service import FreshGroupStart

    tp = TopicPartition("cct.cost.anomalies", 0)

    class Restarting:
        async def committed(self, _: TopicPartition) -> None:
            return None

        async def end_offsets(self, _: object) -> None:
            raise KafkaTimeoutError()

    start = FreshGroupStart(Restarting(), 3600.0)
    with pytest.raises(KafkaTimeoutError):  # aiokafka logs a listener's error and goes on
        await start.on_partitions_assigned([tp])
    assert start.ready.is_set()
    assert abs(start.floor[tp] / 1000 - (time.time() - 3600.0)) < 60
