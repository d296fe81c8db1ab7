"""Each real service answers as the real thing would. These run first in CI and say
plainly which service is broken."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from lambdas.common.vm import Sample, VictoriaMetrics
from tests.support.kafka import client_kwargs


def test_victoriametrics_write_then_query(vm: VictoriaMetrics, uid: str) -> None:
    now_ms = int(time.time() * 1000)
    vm.import_samples([Sample("cct_smoke_value", {"run": uid}, 42.5, now_ms)])
    deadline = time.monotonic() + 15
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline and not result:
        result = vm.query(f'cct_smoke_value{{run="{uid}"}}')
        time.sleep(0.2)
    assert result, "sample never became queryable"
    assert float(result[0]["value"][1]) == 42.5  # type: ignore[index]


def test_vmalert_dry_run_accepts_valid_rules_and_rejects_broken(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "groups:\n  - name: g\n    interval: 3s\n    rules:\n"
        "      - alert: CostAnomaly\n        expr: sum(cct_cost_rate_usd_per_hour) > 10\n"
        "        labels: {severity: warning}\n"
    )
    ok = subprocess.run(["vmalert", "-dryRun", f"-rule={good}"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: sum(\n")
    fail = subprocess.run(["vmalert", "-dryRun", f"-rule={bad}"], capture_output=True, text=True)
    assert fail.returncode != 0


def test_amtool_checks_config_and_alertmanager_accepts_alert(
    alertmanager_url: str, tmp_path: Path, uid: str
) -> None:
    cfg = tmp_path / "am.yml"
    cfg.write_text("route:\n  receiver: r\nreceivers:\n  - name: r\n")
    check = subprocess.run(["amtool", "check-config", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    now = datetime.now(UTC)
    alert = [
        {
            "labels": {"alertname": "CostAnomaly", "smoke": uid, "severity": "info"},
            "annotations": {"summary": "smoke test"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=5)).isoformat(),
        }
    ]
    req = urllib.request.Request(
        f"{alertmanager_url}/api/v2/alerts",
        data=json.dumps(alert).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(
        f"{alertmanager_url}/api/v2/alerts?filter=smoke%3D%22{uid}%22", timeout=5
    ) as resp:
        alerts = json.loads(resp.read())
    assert [a["labels"]["smoke"] for a in alerts] == [uid]


def test_kafka_produce_and_consume_through_a_consumer_group(kafka_bootstrap: str, uid: str) -> None:
    topic, group = f"cct.smoke.{uid}", f"smoke-{uid}"
    kafka = client_kwargs(kafka_bootstrap)  # the admin: the smoke test checks the broker

    async def scenario() -> list[bytes]:
        admin = AIOKafkaAdminClient(**kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(**kafka, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, f"m{i}".encode(), key=f"k{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            **kafka,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while len(got) < 5:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        got.extend(r.value for r in records if r.value is not None)
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    assert sorted(asyncio.run(scenario())) == [f"m{i}".encode() for i in range(5)]


def test_postgres_round_trip_on_migrated_schema(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "insert into policy_decisions"
            " (decision_id, source, verdict, policy_ids, reasons, input)"
            " values (%s, 'precheck', 'deny', %s, %s, '{}'::jsonb)",
            ("smoke-1", ["p1"], ["because"]),
        )
        row = conn.execute(
            "select verdict, policy_ids, reasons from policy_decisions"
            " where decision_id = 'smoke-1'"
        ).fetchone()
    assert row == ("deny", ["p1"], ["because"])


def test_s3_round_trip_on_moto(aws_env: str, uid: str) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)
    bucket = f"cct-smoke-{uid}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    body = s3.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read()
    assert body == b"hello"
