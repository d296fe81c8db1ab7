"""The local backend: the playbook's real `cct step` entrypoints as subprocesses, in order.

End to end: an anomaly event through the Processor (real PostgreSQL, shipped mapping and
policies) and the local backend, running the remediation steps against the moto server with
Vault's recorded exchanges (the steps' own test fixtures), checked in PostgreSQL and EC2.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lambdas.policy import load_policy_set
from lambdas.store.db import open_pool
from lambdas.trigger.local import LocalBackend
from lambdas.trigger.mapping import load_mapping
from lambdas.trigger.processor import Processor
from tests.steps.conftest import JWT
from tests.steps.replay import Replay, serving
from tests.support.services import ROOT
from tests.trigger.events import EC2, event_bytes

CCT = str(Path(sys.executable).with_name("cct"))
REGION = "us-east-1"


@pytest.fixture
def vault() -> Iterator[Replay]:
    with serving("vault.json") as replay:
        yield replay


@pytest.fixture
def pool(pg_dsn: str) -> Iterator[ConnectionPool]:
    p = open_pool(pg_dsn, application_name="cct-trigger-test")
    yield p
    p.close()


@pytest.fixture
def step_env(pg_dsn: str, vault: Replay, aws_env: str, tmp_path: Path) -> dict[str, str]:
    """What a step needs: the database, Vault (replayed), AWS (moto)."""
    jwt = tmp_path / "sa-token"
    jwt.write_text(JWT)
    return {
        **os.environ,
        "CCT_PG_DSN": pg_dsn,
        "VAULT_ADDR": vault.base_url,
        "CCT_STEP_VAULT_JWT_PATH": str(jwt),
        "CCT_AWS_ENDPOINT_URL": aws_env,
        "CCT_STEP_BACKEND": "local",
        "CCT_STEP_OPERATION_TIMEOUT_S": "60",
    }


def idle_instance(moto: str) -> str:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto)
    iid = str(
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.large")[
            "Instances"
        ][0]["InstanceId"]
    )
    now = datetime.now(UTC)
    boto3.client("cloudwatch", region_name=REGION, endpoint_url=moto).put_metric_data(
        Namespace="AWS/EC2",
        MetricData=[
            {
                "MetricName": "CPUUtilization",
                "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                "Timestamp": now - timedelta(hours=h, minutes=30),
                "StatisticValues": {"SampleCount": 60, "Sum": 60.0, "Minimum": 0.0, "Maximum": 2.0},
                "Unit": "Percent",
            }
            for h in range(24)
        ],
    )
    return iid


def seed_price(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            """insert into price_catalog (provider, service_name, region_id, sku, unit,
                   usd_per_unit, source, effective_from)
               values ('aws', %s, %s, 't3.large', 'hour', 0.0832, 'test', now() - interval '1 day')
               on conflict (provider, service_name, region_id, sku, unit) do nothing""",
            (EC2, REGION),
        )


def test_anomaly_runs_the_real_playbook_steps_in_order(
    pg_dsn: str, pool: ConnectionPool, step_env: dict[str, str], aws_env: str, uid: str
) -> None:
    seed_price(pg_dsn)
    iid = idle_instance(aws_env)
    processor = Processor(
        load_mapping(ROOT / "policies" / "playbooks.yaml"),
        load_policy_set(ROOT / "policies" / "optimization"),
        LocalBackend(command=[CCT], env=step_env),
        connection=pool.connection,
        stopping=threading.Event(),
    )
    raw = event_bytes(uid, 0, "firing", resource_id=iid)

    handled = processor.handle(raw)

    assert (handled.outcome, handled.reason) == ("created", "completed")
    with psycopg.connect(pg_dsn) as conn:
        run: Any = conn.execute(
            "select state, backend, estimated_monthly_saving_usd from optimization_runs"
            " where run_id = %s",
            (handled.run_id,),
        ).fetchone()
        action: Any = conn.execute(
            "select action, outcome, dry_run from optimization_actions where run_id = %s",
            (handled.run_id,),
        ).fetchone()
    # The shipped mapping starts dry runs: every step ran, nothing changed.
    assert run[0] == "dry_run" and run[1] == "local"
    assert run[2] is not None and Decimal(run[2]) > 0
    assert action == ("aws.ec2.stop_instance", "dry_run", True)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=aws_env)
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "running"
    # Redelivered: the run is settled, the steps do not run again.
    assert processor.handle(raw).outcome == "settled"
