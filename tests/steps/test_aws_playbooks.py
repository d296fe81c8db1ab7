"""Every playbook end to end on AWS: real boto3 against the moto server, credentials from
Vault's recorded exchanges, each step run as a `cct step` subprocess, results checked in the
cloud state and in PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest

from lambdas.steps.errors import NotFound
from lambdas.steps.providers.aws import AwsSession
from lambdas.steps.registry import ACTIONS
from tests.steps.conftest import assert_no_secrets
from tests.steps.faults import Fault, fault_proxy
from tests.steps.replay import Replay
from tests.steps.runner import RunResult, call_step, run_playbook

REGION = "us-east-1"
EC2 = "Amazon Elastic Compute Cloud"


@pytest.fixture
def vault(replay: Callable[..., AbstractContextManager[Replay]]) -> Iterator[Replay]:
    with replay("vault.json") as r:
        yield r


@pytest.fixture
def env(aws_env: str, vault: Replay, step_env: Callable[..., dict[str, str]]) -> dict[str, str]:
    return step_env(vault.base_url, aws_env)


# IAM names that differ from the API operation's name.
_IAM_NAMES = {
    "s3:GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "s3:PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
}
_IAM_PREFIX = {"monitoring": "cloudwatch"}


@pytest.fixture
def aws_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The IAM action of every AWS API call the steps make in this process."""
    calls: list[str] = []
    original = AwsSession.client

    def client(self: AwsSession, service: str) -> Any:
        c = original(self, service)

        def record(model: Any, **_: Any) -> None:
            prefix = model.service_model.endpoint_prefix
            name = f"{_IAM_PREFIX.get(prefix, prefix)}:{model.name}"
            calls.append(_IAM_NAMES.get(name, name))

        c.meta.events.register("before-call", record, unique_id="cct-test-iam")
        return c

    monkeypatch.setattr(AwsSession, "client", client)
    return calls


def assert_declared(calls: list[str], action: str) -> None:
    """Every API call the playbook made is among the action's declared IAM permissions."""
    assert calls
    assert set(calls) <= set(ACTIONS[action].permissions), set(calls) - set(
        ACTIONS[action].permissions
    )


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)  # type: ignore[call-overload]


def _put_cpu(endpoint: str, namespace: str, dim: str, ident: str, *, avg: float, mx: float) -> None:
    now = datetime.now(UTC)
    data = [
        {
            "MetricName": "CPUUtilization",
            "Dimensions": [{"Name": dim, "Value": ident}],
            "Timestamp": now - timedelta(hours=h, minutes=30),
            "StatisticValues": {"SampleCount": 60, "Sum": avg * 60, "Minimum": 0.0, "Maximum": mx},
            "Unit": "Percent",
        }
        for h in range(24)
    ]
    _client("cloudwatch", endpoint).put_metric_data(Namespace=namespace, MetricData=data)


def _instance(endpoint: str, itype: str, tags: dict[str, str] | None = None) -> str:
    ec2 = _client("ec2", endpoint)
    spec: dict[str, Any] = {
        "ImageId": "ami-12c6146b",
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": itype,
    }
    if tags:
        spec["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    return str(ec2.run_instances(**spec)["Instances"][0]["InstanceId"])


def _describe(endpoint: str, iid: str) -> dict[str, Any]:
    inst = _client("ec2", endpoint).describe_instances(InstanceIds=[iid])
    return dict(inst["Reservations"][0]["Instances"][0])


def _params(resource_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "aws",
        "service": "ec2",
        "resource-id": resource_id,
        "resource-type": "x",
        "action": "x",
        "environment": "dev",
        "team": "payments",
        "account-id": "123456789012",
        "region": REGION,
        "tags": "{}",
        "estimated-monthly-impact-usd": "50",
        "dry-run": "false",
        "event-id": f"evt-{uuid.uuid4().hex[:8]}",
        **extra,
    }


def _run_row(db: Callable[..., list[tuple[Any, ...]]], run_id: str) -> tuple[Any, ...]:
    rows = db(
        "select state, reason, estimated_monthly_saving_usd, verified_monthly_saving_usd,"
        " backend from optimization_runs where run_id = %s",
        run_id,
    )
    assert rows, f"no optimization_runs row for {run_id}"
    return rows[0]


def _action_row(db: Callable[..., list[tuple[Any, ...]]], run_id: str) -> tuple[Any, ...]:
    rows = db(
        "select action, outcome, reason, before_state, after_state, dry_run,"
        " estimated_monthly_saving_usd, verified_monthly_saving_usd"
        " from optimization_actions where run_id = %s",
        run_id,
    )
    assert len(rows) == 1, rows
    return rows[0]


def test_rightsize_compute_resizes_from_cloudwatch_and_records_savings(
    *, env: dict[str, str], aws_env: str, vault: Replay, seed_prices: Any, db: Any, uid: str
) -> None:
    seed_prices(
        "aws",
        EC2,
        REGION,
        "hour",
        {"m5.xlarge": "0.192", "m5.large": "0.096", "m5.2xlarge": "0.384"},
    )
    iid = _instance(aws_env, "m5.xlarge")
    _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=15.0, mx=40.0)
    run_id = f"cct-rightsize-compute-{uid}"

    result = run_playbook("rightsize-compute", run_id, _params(iid), env, inprocess=False)

    assert result.failed_step is None, result.runs[-1]
    assert result.outputs["plan"]["action_params"]["target_sku"] == "m5.large"
    assert result.outputs["execute"]["outcome"] == "changed"
    inst = _describe(aws_env, iid)
    assert (inst["InstanceType"], inst["State"]["Name"]) == ("m5.large", "running")
    state, _, est, verified, backend = _run_row(db, run_id)
    assert (state, est, verified, backend) == (
        "succeeded",
        Decimal("70.08"),
        Decimal("70.08"),
        "local",
    )
    action, outcome, _, before, after, dry, *_ = _action_row(db, run_id)
    assert (action, outcome, dry) == ("aws.ec2.resize_instance", "changed", False)
    assert before["sku"] == "m5.xlarge" and after["sku"] == "m5.large"
    # Every step logged in with Kubernetes auth, and revoked its lease and its token.
    steps_with_cloud = 3  # analyze, execute, verify
    assert len(vault.calls("POST", "/v1/auth/kubernetes/login")) == steps_with_cloud
    revokes = vault.calls("PUT", "/v1/sys/leases/revoke")
    assert [r.body for r in revokes] == [
        {"lease_id": "aws/sts/cct-remediation/h6Tn0rMZzfXkPqzRHu3Q4T3v"}
    ] * steps_with_cloud
    assert len(vault.calls("POST", "/v1/auth/token/revoke-self")) == steps_with_cloud
    creds = vault.calls("POST", "/v1/aws/sts/cct-remediation")
    assert creds[0].headers["x-vault-token"] == "hvs.CAESIVAULT-CLIENT-TOKEN-SECRET-0123456789"
    assert vault.unmatched == []
    assert_no_secrets(result.text)

    # Running execute again with the same plan changes nothing and says so.
    doc = {
        "run_id": run_id,
        "playbook": "rightsize-compute",
        "parameters": _params(iid),
        "previous": {k: result.outputs[k] for k in ("analyze", "plan", "approve")},
    }
    again = call_step("execute", doc, env, inprocess=True)
    assert again.exit_code == 0
    assert again.output["outcome"] == "already_done"
    assert _describe(aws_env, iid)["InstanceType"] == "m5.large"


def test_an_execute_retried_after_its_own_stop_starts_the_instance_again(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, uid: str
) -> None:
    seed_prices("aws", EC2, REGION, "hour", {"m5.xlarge": "0.192", "m5.large": "0.096"})
    iid = _instance(aws_env, "m5.xlarge")
    _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=10.0, mx=30.0)
    doc: dict[str, Any] = {
        "run_id": f"cct-rightsize-compute-killed-{uid}",
        "playbook": "rightsize-compute",
        "parameters": _params(iid),
        "previous": {},
    }
    for step in ("analyze", "plan", "approve"):
        run = call_step(step, doc, env, inprocess=True)
        assert run.exit_code == 0, run.output
        doc["previous"][step] = run.output
    # The first execute stopped the instance, then its pod was killed (deadline, eviction).
    _client("ec2", aws_env).stop_instances(InstanceIds=[iid])

    retried = call_step("execute", doc, env, inprocess=True)

    assert (retried.exit_code, retried.output["outcome"]) == (0, "changed"), retried.output
    inst = _describe(aws_env, iid)
    assert (inst["InstanceType"], inst["State"]["Name"]) == ("m5.large", "running")
    doc["previous"]["execute"] = retried.output
    verified = call_step("verify", doc, env, inprocess=True)
    assert verified.output["verified"] is True, verified.output


def test_boto3_signs_with_the_vault_issued_key(
    aws_env: str, vault: Replay, step_env: Any, seed_prices: Any, uid: str
) -> None:
    iid = _instance(aws_env, "m5.xlarge")
    with fault_proxy(aws_env) as proxy:
        env = step_env(vault.base_url, proxy.url)
        doc = {
            "run_id": f"cct-x-{uid}",
            "playbook": "rightsize-compute",
            "parameters": _params(iid),
            "previous": {},
        }
        run = call_step("analyze", doc, env)
        seen = proxy.authorizations
    assert run.exit_code == 0, run.output
    assert seen and all("Credential=ASIAVAULTISSUED0EXAMPLE/" in a for a in seen)


def test_rightsize_dry_run_changes_nothing(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str
) -> None:
    seed_prices("aws", EC2, REGION, "hour", {"m5.xlarge": "0.192", "m5.large": "0.096"})
    iid = _instance(aws_env, "m5.xlarge")
    _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=10.0, mx=30.0)
    run_id = f"cct-rightsize-compute-dry-{uid}"

    result = run_playbook(
        "rightsize-compute", run_id, _params(iid, **{"dry-run": "true"}), env, inprocess=True
    )

    assert result.failed_step is None
    assert result.outputs["execute"]["outcome"] == "dry_run"
    assert _describe(aws_env, iid)["InstanceType"] == "m5.xlarge"
    assert _run_row(db, run_id)[0] == "dry_run"
    assert _action_row(db, run_id)[1] == "dry_run"


WithFault = Callable[[Fault, str, str, str], RunResult]
ResizeWithFault = Callable[[Fault], tuple[RunResult, str, str]]


@pytest.fixture
def with_fault(aws_env: str, vault: Replay, step_env: Any) -> WithFault:
    """Runs (fault, playbook, resource id, run id): the playbook with `fault` injected in
    front of moto."""

    def run(fault: Fault, playbook: str, resource_id: str, run_id: str) -> RunResult:
        with fault_proxy(aws_env, fault) as proxy:
            result = run_playbook(
                playbook,
                run_id,
                _params(resource_id),
                step_env(vault.base_url, proxy.url),
                inprocess=True,
            )
            assert proxy.hits.get(fault.action, 0) >= 1
        return result

    return run


@pytest.fixture
def resize_with_fault(
    with_fault: WithFault, aws_env: str, seed_prices: Any, uid: str
) -> ResizeWithFault:
    """rightsize-compute of a fresh m5.xlarge (CPU low enough for an m5.large) with a fault
    injected: the run's result, the instance and the run id."""

    def run(fault: Fault) -> tuple[RunResult, str, str]:
        seed_prices("aws", EC2, REGION, "hour", {"m5.xlarge": "0.192", "m5.large": "0.096"})
        iid = _instance(aws_env, "m5.xlarge")
        _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=10.0, mx=30.0)
        run_id = f"cct-rightsize-compute-{fault.action.lower()}-{uid}"
        return with_fault(fault, "rightsize-compute", iid, run_id), iid, run_id

    return run


@pytest.mark.parametrize(
    ("fault", "error_type", "detail"),
    [
        # The modify refused: the instance is started again as it was.
        (
            Fault("ModifyInstanceAttribute", 403, "UnauthorizedOperation"),
            "AccessDenied",
            "ec2:ModifyInstanceAttribute",
        ),
        # The modify worked but the instance does not start at its new type (AWS refuses
        # some type and image pairs, or has no capacity for it): the old type is set back
        # and the instance started, not left stopped at the new one.
        (Fault("StartInstances", 400, "Unsupported", times=1), "Permanent", "Unsupported"),
    ],
    ids=["modify-refused", "start-refused-at-the-new-type"],
)
def test_failed_resize_restores_the_instance_and_records_the_reason(
    *,
    fault: Fault,
    error_type: str,
    detail: str,
    resize_with_fault: ResizeWithFault,
    aws_env: str,
    db: Any,
    aws_calls: list[str],
) -> None:
    result, iid, run_id = resize_with_fault(fault)

    assert result.failed_step == "execute"
    assert_declared(aws_calls, "aws.ec2.resize_instance")
    error = result.outputs.get("execute") or result.runs[-2].output["error"]
    assert error["type"] == error_type
    assert detail in error["message"]
    inst = _describe(aws_env, iid)
    assert (inst["InstanceType"], inst["State"]["Name"]) == ("m5.xlarge", "running")
    state, reason, *_ = _run_row(db, run_id)
    assert state == "failed"
    assert fault.code in reason and "restored" in reason
    assert _action_row(db, run_id)[1] == "restored"


# Throttling is matched by its code (several AWS APIs throttle with HTTP 400),
# server errors by their status whatever the code.
@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "RequestLimitExceeded"), (503, "Unavailable")],
    ids=["throttled", "server-error"],
)
def test_throttling_and_server_errors_are_retried(
    *,
    status: int,
    code: str,
    with_fault: WithFault,
    aws_env: str,
    seed_prices: Any,
    db: Any,
    uid: str,
) -> None:
    seed_prices("aws", EC2, REGION, "gib_month", {"gp3": "0.08", "snapshot": "0.05"})
    vid = _client("ec2", aws_env).create_volume(
        AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3"
    )["VolumeId"]
    # botocore may retry by itself; enough failed answers that one reaches the step.
    throttled = Fault("DescribeVolumes", status, code, times=3)
    run_id = f"cct-delete-unattached-volume-thr-{uid}"
    result = with_fault(throttled, "delete-unattached-volume", vid, run_id)
    assert [r.exit_code for r in result.runs[:2]] == [75, 0]
    assert result.runs[0].output["error"]["retryable"] is True
    assert code in result.runs[0].output["error"]["message"]
    assert result.failed_step is None
    assert _run_row(db, run_id)[0] == "succeeded"


def test_an_action_failing_until_its_retries_run_out_is_on_record(
    *, resize_with_fault: ResizeWithFault, aws_env: str, db: Any
) -> None:
    """AWS has no capacity to start the instance, every attempt (a 5xx, retryable): when the
    retries run out the run fails and its action row says what happened (there was none)."""
    no_capacity = Fault("StartInstances", 500, "InsufficientInstanceCapacity")
    result, iid, run_id = resize_with_fault(no_capacity)
    assert result.failed_step == "execute"
    executes = [r for r in result.runs if r.step == "execute"]
    assert len(executes) > 1 and all(r.exit_code == 75 for r in executes)
    assert _run_row(db, run_id)[0] == "failed"
    outcome = _action_row(db, run_id)[1]
    assert outcome == "failed"  # stopped: no start could succeed
    inst = _describe(aws_env, iid)
    assert inst["InstanceType"] == "m5.xlarge"  # the old type was set back each time


def test_stop_idle_compute_stops_and_tags_the_restart_schedule(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str, aws_calls: list[str]
) -> None:
    seed_prices("aws", EC2, REGION, "hour", {"t3.large": "0.0832"})
    iid = _instance(aws_env, "t3.large", {"env": "dev"})
    _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=1.0, mx=2.5)
    run_id = f"cct-stop-idle-compute-{uid}"

    result = run_playbook(
        "stop-idle-compute",
        run_id,
        _params(iid, **{"restart-schedule": "mon-fri 08:00-18:00"}),
        env,
        inprocess=True,
    )

    assert result.failed_step is None, result.runs[-1]
    assert_declared(aws_calls, "aws.ec2.stop_instance")
    inst = _describe(aws_env, iid)
    assert inst["State"]["Name"] == "stopped"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["cct:restart-schedule"] == "mon-fri 08:00-18:00"
    # Running 50 of 168 hours a week: 118/168 of 0.0832 * 730.
    expected = (Decimal("60.74") * Decimal(118) / Decimal(168)).quantize(Decimal("0.01"))
    assert _run_row(db, run_id)[2] == expected


def test_failed_stop_puts_the_tags_back_as_they_were(
    *, aws_env: str, vault: Replay, step_env: Any, seed_prices: Any, db: Any, uid: str
) -> None:
    seed_prices("aws", EC2, REGION, "hour", {"t3.large": "0.0832"})
    before = {"env": "dev", "cct:restart-schedule": "mon-fri 09:00-17:00"}
    iid = _instance(aws_env, "t3.large", before)
    _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=1.0, mx=2.5)
    run_id = f"cct-stop-idle-compute-fail-{uid}"
    denied = Fault("StopInstances", 403, "UnauthorizedOperation")
    with fault_proxy(aws_env, denied) as proxy:
        result = run_playbook(
            "stop-idle-compute",
            run_id,
            _params(iid, **{"restart-schedule": "mon-fri 08:00-18:00"}),
            step_env(vault.base_url, proxy.url),
            inprocess=True,
        )

    assert result.failed_step == "execute"
    assert "ec2:StopInstances" in result.runs[-2].output["error"]["message"]
    inst = _describe(aws_env, iid)
    assert inst["State"]["Name"] == "running"
    # The schedule CCT overwrote is back, the marker it added is gone.
    assert {t["Key"]: t["Value"] for t in inst["Tags"]} == before
    assert _action_row(db, run_id)[1] == "restored"
    assert _run_row(db, run_id)[0] == "failed"


def test_stop_idle_compute_never_stops_production(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str
) -> None:
    seed_prices("aws", EC2, REGION, "hour", {"t3.large": "0.0832"})
    iid = _instance(aws_env, "t3.large", {"env": "prod"})
    _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=1.0, mx=2.0)
    run_id = f"cct-stop-idle-compute-prod-{uid}"

    result = run_playbook(
        "stop-idle-compute", run_id, _params(iid, environment="prod"), env, inprocess=True
    )

    assert result.failed_step is None
    assert result.outputs["execute"]["outcome"] == "skipped"
    assert _describe(aws_env, iid)["State"]["Name"] == "running"
    state, reason, *_ = _run_row(db, run_id)
    assert state == "succeeded" and "production" in reason


def test_delete_unattached_volume_snapshots_first(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str, aws_calls: list[str]
) -> None:
    seed_prices("aws", EC2, REGION, "gib_month", {"gp3": "0.08", "snapshot": "0.05"})
    ec2 = _client("ec2", aws_env)
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3")["VolumeId"]
    run_id = f"cct-delete-unattached-volume-{uid}"

    result = run_playbook("delete-unattached-volume", run_id, _params(vid), env, inprocess=True)

    assert result.failed_step is None, result.runs[-1]
    assert_declared(aws_calls, "aws.ebs.delete_volume")
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])["Volumes"]
    snaps = ec2.describe_snapshots(Filters=[{"Name": "tag:cct:source-volume", "Values": [vid]}])[
        "Snapshots"
    ]
    assert len(snaps) == 1
    assert result.outputs["verify"]["state"]["snapshot_id"] == snaps[0]["SnapshotId"]
    state, _, est, verified, _ = _run_row(db, run_id)
    assert (state, est, verified) == ("succeeded", Decimal("3.00"), Decimal("3.00"))
    # The volume is gone: executing again is "already done", not an error.
    doc = {
        "run_id": run_id,
        "playbook": "delete-unattached-volume",
        "parameters": _params(vid),
        "previous": {k: result.outputs[k] for k in ("analyze", "plan", "approve")},
    }
    again = call_step("execute", doc, env, inprocess=True)
    assert (again.exit_code, again.output["outcome"]) == (0, "already_done")


def test_an_earlier_run_s_snapshot_is_not_taken_for_a_backup_of_the_volume_now(
    *,
    env: dict[str, str],
    aws_env: str,
    seed_prices: Any,
    uid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An earlier run snapshotted the volume, then its delete failed (the volume was attached
    again and written to): a later run takes a new snapshot before deleting, not the old one
    (older than SNAPSHOT_REUSE_S; 0 here, so the one just made counts as old)."""
    from lambdas.steps import action

    seed_prices("aws", EC2, REGION, "gib_month", {"gp3": "0.08", "snapshot": "0.05"})
    ec2 = _client("ec2", aws_env)
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3")["VolumeId"]
    tags = [{"ResourceType": "snapshot", "Tags": [{"Key": "cct:source-volume", "Value": vid}]}]
    old = ec2.create_snapshot(VolumeId=vid, TagSpecifications=tags)["SnapshotId"]
    monkeypatch.setattr(action, "SNAPSHOT_REUSE_S", 0.0)
    run_id = f"cct-delete-unattached-volume-old-snap-{uid}"

    result = run_playbook("delete-unattached-volume", run_id, _params(vid), env, inprocess=True)

    assert result.failed_step is None, result.runs[-1]
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])["Volumes"]
    snaps = ec2.describe_snapshots(Filters=[{"Name": "tag:cct:source-volume", "Values": [vid]}])[
        "Snapshots"
    ]
    assert len(snaps) == 2
    assert result.outputs["execute"]["before"]["snapshot_id"] == old  # seen, and not reused


def test_missing_instance_is_a_permanent_not_found(env: dict[str, str], uid: str) -> None:
    doc = {
        "run_id": f"cct-x-{uid}",
        "playbook": "rightsize-compute",
        "parameters": _params("i-0000000000000000f"),
        "previous": {},
    }
    run = call_step("analyze", doc, env, inprocess=True)
    assert run.exit_code == 1
    assert run.output["error"]["type"] == "Permanent"
    assert "not found" in run.output["error"]["message"]
    assert "InvalidInstanceID.NotFound" in run.output["error"]["message"]


def test_attached_volume_is_left_alone(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str
) -> None:
    ec2 = _client("ec2", aws_env)
    iid = _instance(aws_env, "t3.micro")
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, VolumeType="gp3")["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
    run_id = f"cct-delete-unattached-volume-att-{uid}"

    result = run_playbook("delete-unattached-volume", run_id, _params(vid), env, inprocess=True)

    assert result.outputs["plan"]["noop"] is True
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["State"] == "in-use"
    assert "attached" in _run_row(db, run_id)[1]


def test_storage_tiering_adds_a_lifecycle_rule_and_keeps_others(
    *, env: dict[str, str], aws_env: str, load_prices: Any, db: Any, uid: str, aws_calls: list[str]
) -> None:
    # S3 Standard $0.023 and Standard-IA $0.0125 per GiB-month in us-east-1, from the offer.
    load_prices("aws", "aws_s3_offer.json")
    bucket = f"cct-tiering-{uid}"
    s3 = _client("s3", aws_env)
    s3.create_bucket(Bucket=bucket)
    logs_rule = {
        "ID": "expire-logs",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 90},
    }
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [logs_rule]}
    )
    _client("cloudwatch", aws_env).put_metric_data(
        Namespace="AWS/S3",
        MetricData=[
            {
                "MetricName": "BucketSizeBytes",
                "Dimensions": [
                    {"Name": "BucketName", "Value": bucket},
                    {"Name": "StorageType", "Value": "StandardStorage"},
                ],
                "Timestamp": datetime.now(UTC) - timedelta(hours=2),
                "Value": 500 * 2**30,
                "Unit": "Bytes",
            }
        ],
    )
    run_id = f"cct-storage-tiering-{uid}"

    result = run_playbook("storage-tiering", run_id, _params(bucket), env, inprocess=True)

    assert result.failed_step is None, result.runs[-1]
    assert_declared(aws_calls, "aws.s3.put_lifecycle_tiering")
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(rules) == {"expire-logs", "cct-tiering"}
    assert rules["cct-tiering"]["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}]
    assert _run_row(db, run_id)[2] == Decimal("5.25"), result.outputs["analyze"]


def test_a_bucket_without_lifecycle_rules_reads_as_no_rules(
    aws_env: str, uid: str, aws_calls: list[str]
) -> None:
    """S3 answers NoSuchLifecycleConfiguration rather than an empty list; only that code means
    "no rules" (a missing bucket stays an error)."""
    bucket = f"cct-norules-{uid}"
    _client("s3", aws_env).create_bucket(Bucket=bucket)
    action = ACTIONS["aws.s3.put_lifecycle_tiering"]
    session = AwsSession(
        region=REGION,
        credentials={"aws_access_key_id": "test", "aws_secret_access_key": "test"},
        endpoint_url=aws_env,
    )

    assert action.read(session, {"resource_id": bucket})["rules"] == []
    with pytest.raises(NotFound, match="NoSuchBucket"):
        action.read(session, {"resource_id": f"{bucket}-absent"})
    assert_declared(aws_calls, action.name)


def _busy_enough_database(endpoint: str, seed_prices: Any, ident: str) -> str:
    """A db.m5.xlarge whose CPU peaks at 12 % hourly average: db.m5.large is enough."""
    seed_prices(
        "aws",
        "Amazon Relational Database Service",
        REGION,
        "hour",
        {"db.m5.xlarge": "0.342", "db.m5.large": "0.171"},
    )
    _client("rds", endpoint).create_db_instance(
        DBInstanceIdentifier=ident,
        DBInstanceClass="db.m5.xlarge",
        Engine="postgres",
        MasterUsername="cct",
        MasterUserPassword="not-a-real-pass-1",
        AllocatedStorage=20,
    )
    _put_cpu(endpoint, "AWS/RDS", "DBInstanceIdentifier", ident, avg=12.0, mx=35.0)
    return ident


def test_rightsize_database_waits_for_approval_then_resizes(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str, aws_calls: list[str]
) -> None:
    ident = _busy_enough_database(aws_env, seed_prices, f"cct-db-{uid}")
    rds = _client("rds", aws_env)
    run_id = f"cct-rightsize-database-{uid}"
    params = _params(ident, service="rds")

    first = run_playbook("rightsize-database", run_id, params, env, inprocess=True)

    assert first.awaiting_approval
    assert first.outputs["plan"]["approval_required"] is True
    assert _run_row(db, run_id)[0] == "awaiting_approval"
    assert (
        rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]["DBInstanceClass"]
        == "db.m5.xlarge"
    )

    done = run_playbook(
        "rightsize-database",
        run_id,
        params,
        env,
        approval={"approved": True, "by": "alice"},
        resume=first,
        inprocess=True,
    )

    assert done.failed_step is None, done.runs[-1]
    assert_declared(aws_calls, "aws.rds.modify_instance_class")
    assert done.outputs["approve"] == {
        "status": "approved",
        "required": True,
        "by": "alice",
        "reasons": ["playbook rightsize-database always requires a human approval"],
    }
    assert (
        rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]["DBInstanceClass"]
        == "db.m5.large"
    )
    assert _run_row(db, run_id)[:1] == ("succeeded",)
    decisions = db(
        "select source, verdict, policy_ids from policy_decisions where run_id = %s", run_id
    )
    assert decisions == [("step", "require-approval", ["playbook:rightsize-database"])]


def test_rejected_database_resize_changes_nothing(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str
) -> None:
    ident = _busy_enough_database(aws_env, seed_prices, f"cct-db-rej-{uid}")
    rds = _client("rds", aws_env)
    run_id = f"cct-rightsize-database-rej-{uid}"
    params = _params(ident, service="rds")
    first = run_playbook("rightsize-database", run_id, params, env, inprocess=True)

    done = run_playbook(
        "rightsize-database",
        run_id,
        params,
        env,
        approval={"approved": False, "by": "bob"},
        resume=first,
        inprocess=True,
    )

    assert done.failed_step == "approve"
    assert (
        rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]["DBInstanceClass"]
        == "db.m5.xlarge"
    )
    assert _run_row(db, run_id)[:2] == ("failed", "rejected by bob")


def test_policy_deny_stops_the_run(
    *, env: dict[str, str], aws_env: str, seed_prices: Any, db: Any, uid: str
) -> None:
    seed_prices("aws", EC2, REGION, "hour", {"m5.xlarge": "0.192", "m5.large": "0.096"})
    iid = _instance(aws_env, "m5.xlarge")
    _put_cpu(aws_env, "AWS/EC2", "InstanceId", iid, avg=10.0, mx=30.0)
    run_id = f"cct-rightsize-compute-deny-{uid}"
    db(
        "insert into policy_decisions (decision_id, source, run_id, verdict, policy_ids, reasons,"
        " input) values (%s, 'precheck', %s, 'deny', %s, %s, %s)",
        f"{run_id}/precheck",
        run_id,
        ["freeze-window"],
        ["change freeze until Monday"],
        json.dumps({}),
    )

    result = run_playbook("rightsize-compute", run_id, _params(iid), env, inprocess=True)

    assert result.failed_step == "approve"
    assert _describe(aws_env, iid)["InstanceType"] == "m5.xlarge"
    state, reason, *_ = _run_row(db, run_id)
    assert state == "denied" and "change freeze until Monday" in reason
