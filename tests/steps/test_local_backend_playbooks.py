"""Every playbook the step tests run end to end, now through the trigger's real local backend:
each step is a `cct step` subprocess (the entrypoints the WorkflowTemplates name), AWS against
the moto server, Azure and GCP against their recorded exchanges, Vault replayed; checked in the
Submission, the cloud state and PostgreSQL (issue #7).

The local backend passes no approval and cannot resume, so a database resize ends the
submission at `awaiting_approval` with nothing changed (the runner-based tests cover the
approved resume)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.trigger.backends import Submission
from lambdas.trigger.core import WorkflowRun
from lambdas.trigger.local import LocalBackend
from tests.steps.cloud_cases import CASES, NOT_CLOUD, Case, params, recordings, values
from tests.steps.replay import Replay
from tests.steps.test_aws_playbooks import (
    EC2,
    REGION,
    _busy_enough_database,
    _client,
    _describe,
    _instance,
    _params,
    _put_cpu,
)

CCT = str(Path(sys.executable).with_name("cct"))
Serve = Callable[..., AbstractContextManager[Replay]]
Query = Callable[..., list[tuple[Any, ...]]]


def submit(
    playbook: str, run_id: str, parameters: dict[str, Any], env: dict[str, str]
) -> Submission:
    run = WorkflowRun(
        run_id=run_id,
        event_id=str(parameters["event-id"]),
        playbook=playbook,
        rule_id="test",
        parameters={k: str(v) for k, v in parameters.items()},
    )
    return LocalBackend(command=[CCT], env={**os.environ, **env}).submit(run)


def rows(db: Query, run_id: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    runs = db(
        "select state, backend, estimated_monthly_saving_usd, verified_monthly_saving_usd"
        " from optimization_runs where run_id = %s",
        run_id,
    )
    actions = db(
        "select action, outcome, dry_run from optimization_actions where run_id = %s", run_id
    )
    return runs, actions


@dataclass(frozen=True)
class AwsCase:
    """set_up makes the resource (and its metrics and prices) and returns the workflow
    parameters; check asserts the change moto now shows; saving is the estimate the
    runner-based test of the same playbook expects."""

    playbook: str
    action: str
    saving: str | None  # None: stops awaiting approval, nothing is priced into the row yet
    set_up: Callable[[str, Any, str], dict[str, Any]]
    check: Callable[[str, str], None]


def _resizable(moto: str, seed_prices: Any, uid: str) -> dict[str, Any]:
    seed_prices("aws", EC2, REGION, "hour", {"m5.xlarge": "0.192", "m5.large": "0.096"})
    iid = _instance(moto, "m5.xlarge")
    _put_cpu(moto, "AWS/EC2", "InstanceId", iid, avg=15.0, mx=40.0)
    return _params(iid)


def _resized(moto: str, iid: str) -> None:
    inst = _describe(moto, iid)
    assert (inst["InstanceType"], inst["State"]["Name"]) == ("m5.large", "running")


def _idle(moto: str, seed_prices: Any, uid: str) -> dict[str, Any]:
    seed_prices("aws", EC2, REGION, "hour", {"t3.large": "0.0832"})
    iid = _instance(moto, "t3.large", {"env": "dev"})
    _put_cpu(moto, "AWS/EC2", "InstanceId", iid, avg=1.0, mx=2.5)
    return _params(iid, **{"restart-schedule": "mon-fri 08:00-18:00"})


def _stopped(moto: str, iid: str) -> None:
    inst = _describe(moto, iid)
    assert inst["State"]["Name"] == "stopped"
    assert {"Key": "cct:restart-schedule", "Value": "mon-fri 08:00-18:00"} in inst["Tags"]


def _unattached(moto: str, seed_prices: Any, uid: str) -> dict[str, Any]:
    seed_prices("aws", EC2, REGION, "gib_month", {"gp3": "0.08", "snapshot": "0.05"})
    ec2 = _client("ec2", moto)
    return _params(
        ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3")["VolumeId"]
    )


def _deleted(moto: str, vid: str) -> None:
    ec2 = _client("ec2", moto)
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])["Volumes"]
    tag = {"Name": "tag:cct:source-volume", "Values": [vid]}
    assert len(ec2.describe_snapshots(Filters=[tag])["Snapshots"]) == 1


def _bucket(moto: str, seed_prices: Any, uid: str) -> dict[str, Any]:
    seed_prices(
        "aws",
        "Amazon Simple Storage Service",
        REGION,
        "gib_month",
        {"STANDARD": "0.023", "STANDARD_IA": "0.0125"},
    )
    bucket = f"cct-local-tiering-{uid}"
    _client("s3", moto).create_bucket(Bucket=bucket)
    size = {
        "MetricName": "BucketSizeBytes",
        "Dimensions": [
            {"Name": "BucketName", "Value": bucket},
            {"Name": "StorageType", "Value": "StandardStorage"},
        ],
        "Timestamp": datetime.now(UTC) - timedelta(hours=2),
        "Value": 500 * 2**30,
        "Unit": "Bytes",
    }
    _client("cloudwatch", moto).put_metric_data(Namespace="AWS/S3", MetricData=[size])
    return _params(bucket)


def _tiered(moto: str, bucket: str) -> None:
    rules = _client("s3", moto).get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [(r["ID"], r["Transitions"]) for r in rules] == [
        ("cct-tiering", [{"Days": 30, "StorageClass": "STANDARD_IA"}])
    ]


def _database(moto: str, seed_prices: Any, uid: str) -> dict[str, Any]:
    return _params(_busy_enough_database(moto, seed_prices, f"cct-local-db-{uid}"), service="rds")


def _class_unchanged(moto: str, ident: str) -> None:
    (db,) = _client("rds", moto).describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"]
    assert db["DBInstanceClass"] == "db.m5.xlarge"


AWS_CASES = [
    AwsCase("rightsize-compute", "aws.ec2.resize_instance", "70.08", _resizable, _resized),
    AwsCase("stop-idle-compute", "aws.ec2.stop_instance", "42.66", _idle, _stopped),
    AwsCase("delete-unattached-volume", "aws.ebs.delete_volume", "3.00", _unattached, _deleted),
    AwsCase("storage-tiering", "aws.s3.put_lifecycle_tiering", "5.25", _bucket, _tiered),
    AwsCase(
        "rightsize-database", "aws.rds.modify_instance_class", None, _database, _class_unchanged
    ),
]


def assert_awaiting_approval(db: Query, run_id: str, submission: Submission) -> None:
    """Waiting for a person: no action taken; `record`, which prices the run, has not run."""
    assert submission == Submission("created", "awaiting_approval")
    runs, actions = rows(db, run_id)
    assert runs == [("awaiting_approval", "local", None, None)]
    assert actions == []


@pytest.mark.parametrize("case", AWS_CASES, ids=[c.playbook for c in AWS_CASES])
def test_aws_playbook_through_the_local_backend(
    *,
    case: AwsCase,
    aws_env: str,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_prices: Any,
    db: Query,
    uid: str,
) -> None:
    parameters = case.set_up(aws_env, seed_prices, uid)
    run_id = f"cct-{case.playbook}-local-{uid}"
    with replay("vault.json") as vault:
        submission = submit(case.playbook, run_id, parameters, step_env(vault.base_url, aws_env))
    assert vault.unmatched == []

    case.check(aws_env, parameters["resource-id"])
    if case.saving is None:
        assert_awaiting_approval(db, run_id, submission)
        return
    assert submission == Submission("created", "completed")
    runs, actions = rows(db, run_id)
    saving = Decimal(case.saving)
    assert runs == [("succeeded", "local", saving, saving)]
    assert actions == [(case.action, "changed", False)]


@pytest.mark.parametrize("case", CASES, ids=[c.recording.removesuffix(".json") for c in CASES])
def test_recorded_playbook_through_the_local_backend(
    *,
    case: Case,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_case: Any,
    db: Query,
    uid: str,
) -> None:
    seed_case(case)
    run_id = f"cct-{case.playbook}-{case.provider}-local-{uid}"
    with replay(*recordings(case), values=values(case, run_id)) as r:
        submission = submit(case.playbook, run_id, params(case, uid), step_env(r.base_url))
    assert r.unmatched == [], [f"{u.method} {u.path}" for u in r.unmatched]
    writes = [x for x in r.requests if x.method != "GET" and not x.path.startswith(NOT_CLOUD)]

    if case.playbook == "rightsize-database":
        assert_awaiting_approval(db, run_id, submission)
        assert (r.state, writes) == ("start", [])
        return
    assert submission == Submission("created", "completed")
    # The recorded scenario reached its changed state through the playbook's own writes.
    assert r.state == case.final_state and writes
    runs, actions = rows(db, run_id)
    saving = Decimal(case.saving)
    assert runs == [("succeeded", "local", saving, saving)]
    assert actions == [(PLAYBOOKS[case.playbook].actions[case.provider], "changed", False)]
