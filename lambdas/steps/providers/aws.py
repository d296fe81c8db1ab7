"""AWS actions (boto3): EC2 resize and stop, EBS delete after snapshot, S3 lifecycle tiering,
RDS resize. Clients are created per step from Vault-issued credentials, never at import;
boto3 itself is imported only when an AWS step runs, so Azure and GCP steps start faster."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lambdas.steps import polling
from lambdas.steps.action import (
    Action,
    State,
    register,
    resize_or_restore,
    resized,
    snapshot_reusable,
    started_at,
)
from lambdas.steps.errors import AccessDenied, InvalidInput, NotFound, Permanent, Retryable

log = logging.getLogger("cct.steps")

RESTART_SCHEDULE_TAG = "cct:restart-schedule"
STOPPED_BY_TAG = "cct:stopped-by"
SNAPSHOT_SOURCE_TAG = "cct:source-volume"
TIERING_RULE_ID = "cct-tiering"

# Throttling codes (some arrive with HTTP 400); any HTTP 5xx is retryable too, whatever its code.
_THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "SlowDown",
    }
)
_DENIED = frozenset(
    {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure"}
)
_NOT_FOUND = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidVolume.NotFound",
        "DBInstanceNotFound",
        "DBInstanceNotFoundFault",
        "NoSuchBucket",
    }
)
_MALFORMED = frozenset({"InvalidInstanceID.Malformed", "InvalidVolumeID.Malformed"})
# The Vault-issued session credential ran out during a long wait: a retried step logs in
# again and gets a fresh one.
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
# The resource is between states (stopping, modifying): it settles on its own.
_BUSY = frozenset({"IncorrectInstanceState", "InvalidDBInstanceState", "IncorrectState"})


# Every session of this process shares one botocore data loader, so each service model is
# parsed once per process: EC2's is megabytes of JSON, and parsing it again for every new
# credential cost 2.5 to 10 s per step on a busy 2-core machine (client creation, not the
# call, dominated a step). The loader only reads botocore's bundled data files.
_LOADER: list[Any] = []
# The services the actions below make clients for.
SERVICES = ("ec2", "rds", "cloudwatch", "s3")


def botocore_session() -> Any:
    import botocore.session

    session = botocore.session.get_session()
    if _LOADER:
        session.register_component("data_loader", _LOADER[0])
    else:
        _LOADER.append(session.get_component("data_loader"))
    return session


def warm(region: str = "us-east-1") -> None:
    """Parse the steps' service models now (a process that forks steps calls this once)."""
    import boto3

    session = boto3.session.Session(
        botocore_session=botocore_session(),
        region_name=region,
        aws_access_key_id="warm-up",
        aws_secret_access_key="warm-up",  # noqa: S106 - no call is made with it
    )
    for service in SERVICES:
        session.client(service)  # type: ignore[call-overload]


@dataclass
class AwsSession:
    """boto3 clients for one region, made from one Vault-issued credential."""

    region: str
    credentials: Mapping[str, str] = field(repr=False)
    endpoint_url: str | None = None
    # Polls of a running operation: from poll_initial_s, doubling up to poll_max_s.
    poll_initial_s: float = polling.POLL_INITIAL_S
    poll_max_s: float = polling.POLL_MAX_S
    timeout_s: float = 900.0
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            import botocore.config

            session = boto3.session.Session(
                botocore_session=botocore_session(),
                region_name=self.region,
                aws_access_key_id=self.credentials["aws_access_key_id"],
                aws_secret_access_key=self.credentials["aws_secret_access_key"],
                aws_session_token=self.credentials.get("aws_session_token"),
            )
            self._clients[service] = session.client(
                service,  # type: ignore[call-overload]
                endpoint_url=self.endpoint_url,
                # Throttling is retried by the workflow with backoff; botocore's own
                # retries would hide it and stretch the step past its deadline.
                config=botocore.config.Config(retries={"max_attempts": 2, "mode": "standard"}),
            )
        return self._clients[service]

    def wait(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout_s
        if not polling.wait_until(check, deadline, self.poll_initial_s, self.poll_max_s):
            raise Retryable(f"{what}: not finished after {self.timeout_s:.0f}s")


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def aws_errors(what: str, permissions: tuple[str, ...]) -> Iterator[None]:
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _THROTTLING or status >= 500:
            raise Retryable(f"{what}: {code or f'HTTP {status}'}") from None
        if code in _EXPIRED:
            raise Retryable(f"{what}: {code} (the step's credential expired)") from None
        if code in _DENIED:
            raise AccessDenied(
                f"{what}: {code}: access denied; the role needs {', '.join(permissions)}"
            ) from None
        if code in _NOT_FOUND:
            raise NotFound(f"{what}: {code}") from None
        if code in _MALFORMED:
            raise InvalidInput(f"{what}: {code}") from None
        if code in _BUSY:
            raise Retryable(f"{what}: {code} (resource is changing state)") from None
        message = exc.response.get("Error", {}).get("Message", "")
        raise Permanent(f"{what}: {code}: {message}") from None
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
    ) as exc:
        raise Retryable(f"{what}: {type(exc).__name__}") from None


def _tags(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def _cpu(
    session: AwsSession,
    namespace: str,
    dimension: str,
    ident: str,
    end: float,
    *,
    hours: int,
    permissions: tuple[str, ...],
) -> dict[str, Any]:
    end_dt = datetime.fromtimestamp(end, UTC)
    with aws_errors(f"cloudwatch:GetMetricStatistics {ident}", permissions):
        resp = session.client("cloudwatch").get_metric_statistics(
            Namespace=namespace,
            MetricName="CPUUtilization",
            Dimensions=[{"Name": dimension, "Value": ident}],
            StartTime=end_dt - timedelta(hours=hours),
            EndTime=end_dt,
            Period=3600,
            Statistics=["Average", "Maximum"],
        )
    points = resp.get("Datapoints", [])
    return {
        "source": f"cloudwatch {namespace}/CPUUtilization",
        "datapoints": len(points),
        "peak_hourly_avg_cpu_percent": max((p["Average"] for p in points), default=None),
        "max_cpu_percent": max((p["Maximum"] for p in points), default=None),
    }


# --- EC2 ---------------------------------------------------------------------------------

_EC2_BASE = {
    "resource_id": {"type": "string", "pattern": "^i-[0-9a-f]{8,17}$"},
    "region": {"type": "string", "minLength": 1},
}
_BUSY_INSTANCE = frozenset({"pending", "stopping", "shutting-down"})


def _read_instance(session: AwsSession, params: Mapping[str, Any], perms: tuple[str, ...]) -> State:
    iid = params["resource_id"]
    with aws_errors(f"ec2:DescribeInstances {iid}", perms):
        resp = session.client("ec2").describe_instances(InstanceIds=[iid])
    inst = resp["Reservations"][0]["Instances"][0]
    status = inst["State"]["Name"]
    if status == "terminated":
        raise NotFound(f"instance {iid} is terminated")
    return {
        "sku": inst["InstanceType"],
        "status": status,
        "region": session.region,
        "tags": _tags(inst.get("Tags")),
        "busy": status in _BUSY_INSTANCE,
    }


def _instance_status(session: AwsSession, iid: str, perms: tuple[str, ...]) -> str:
    return str(_read_instance(session, {"resource_id": iid}, perms)["status"])


def _stop(session: AwsSession, iid: str, perms: tuple[str, ...]) -> None:
    with aws_errors(f"ec2:StopInstances {iid}", perms):
        session.client("ec2").stop_instances(InstanceIds=[iid])
    session.wait(f"stop {iid}", lambda: _instance_status(session, iid, perms) == "stopped")


def _start(session: AwsSession, iid: str, perms: tuple[str, ...]) -> None:
    with aws_errors(f"ec2:StartInstances {iid}", perms):
        session.client("ec2").start_instances(InstanceIds=[iid])
    session.wait(f"start {iid}", lambda: _instance_status(session, iid, perms) == "running")


RESIZE_PERMS = (
    "ec2:DescribeInstances",
    "ec2:StopInstances",
    "ec2:ModifyInstanceAttribute",
    "ec2:StartInstances",
    "cloudwatch:GetMetricStatistics",
)


def _resize_apply(session: AwsSession, params: Mapping[str, Any], before: State) -> None:
    iid, target = params["resource_id"], params["target_sku"]
    if before["busy"]:
        raise Retryable(f"instance {iid} is {before['status']}; retry when it settles")
    if before["status"] == "running":
        _stop(session, iid, RESIZE_PERMS)

    def set_type(sku: str) -> None:
        with aws_errors(f"ec2:ModifyInstanceAttribute {iid}", RESIZE_PERMS):
            session.client("ec2").modify_instance_attribute(
                InstanceId=iid, InstanceType={"Value": sku}
            )

    resize_or_restore(
        before, target, set_type, lambda: _start(session, iid, RESIZE_PERMS), f"instance {iid}"
    )


register(
    Action(
        name="aws.ec2.resize_instance",
        provider="aws",
        description="stop the EC2 instance, change its instance type, start it again",
        service_name="Amazon Elastic Compute Cloud",
        price_unit="hour",
        schema={
            "type": "object",
            "properties": {**_EC2_BASE, "target_sku": {"type": "string", "minLength": 1}},
            "required": ["resource_id", "region", "target_sku"],
            "additionalProperties": False,
        },
        permissions=RESIZE_PERMS,
        read=lambda s, p: _read_instance(s, p, RESIZE_PERMS),
        apply=_resize_apply,
        is_done=resized,
        metrics=lambda s, p, end, h: _cpu(
            s, "AWS/EC2", "InstanceId", p["resource_id"], end, hours=h, permissions=RESIZE_PERMS
        ),
    )
)

STOP_PERMS = (
    "ec2:DescribeInstances",
    "ec2:StopInstances",
    "ec2:CreateTags",
    "ec2:DeleteTags",
    "cloudwatch:GetMetricStatistics",
)


def _stop_apply(session: AwsSession, params: Mapping[str, Any], before: State) -> None:
    iid = params["resource_id"]
    if before["busy"]:
        raise Retryable(f"instance {iid} is {before['status']}; retry when it settles")
    ec2 = session.client("ec2")
    tags = {RESTART_SCHEDULE_TAG: params["restart_schedule"], STOPPED_BY_TAG: "cct"}
    # Tag first so a stopped instance always carries its restart schedule.
    with aws_errors(f"ec2:CreateTags {iid}", STOP_PERMS):
        ec2.create_tags(Resources=[iid], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    if before["status"] == "stopped":
        return
    try:
        _stop(session, iid, STOP_PERMS)
    except Exception:
        # Put the tags back as they were: remove the ones CCT added, restore the values it
        # overwrote (an earlier schedule, say).
        old = before["tags"]
        with aws_errors(f"ec2:DeleteTags {iid}", STOP_PERMS):
            added = [{"Key": k} for k in tags if k not in old]
            if added:
                ec2.delete_tags(Resources=[iid], Tags=added)
        with aws_errors(f"ec2:CreateTags {iid}", STOP_PERMS):
            overwritten = [{"Key": k, "Value": old[k]} for k in tags if k in old]
            if overwritten:
                ec2.create_tags(Resources=[iid], Tags=overwritten)
        raise


register(
    Action(
        name="aws.ec2.stop_instance",
        provider="aws",
        description="stop the idle EC2 instance and tag it with its restart schedule",
        service_name="Amazon Elastic Compute Cloud",
        price_unit="hour",
        schema={
            "type": "object",
            "properties": {**_EC2_BASE, "restart_schedule": {"type": "string", "minLength": 4}},
            "required": ["resource_id", "region", "restart_schedule"],
            "additionalProperties": False,
        },
        permissions=STOP_PERMS,
        read=lambda s, p: _read_instance(s, p, STOP_PERMS),
        apply=_stop_apply,
        is_done=lambda st, p: (
            st["status"] == "stopped"
            and st["tags"].get(RESTART_SCHEDULE_TAG) == p["restart_schedule"]
        ),
        metrics=lambda s, p, end, h: _cpu(
            s, "AWS/EC2", "InstanceId", p["resource_id"], end, hours=h, permissions=STOP_PERMS
        ),
    )
)

# --- EBS ---------------------------------------------------------------------------------

VOLUME_PERMS = (
    "ec2:DescribeVolumes",
    "ec2:DescribeSnapshots",
    "ec2:CreateSnapshot",
    "ec2:CreateTags",
    "ec2:DeleteVolume",
)


def _find_snapshot(session: AwsSession, vid: str) -> dict[str, Any] | None:
    with aws_errors(f"ec2:DescribeSnapshots {vid}", VOLUME_PERMS):
        snaps = session.client("ec2").describe_snapshots(
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{SNAPSHOT_SOURCE_TAG}", "Values": [vid]}],
        )["Snapshots"]
    usable = [s for s in snaps if s["State"] in ("pending", "completed")]
    return max(usable, key=lambda s: s["StartTime"]) if usable else None


def _read_volume(session: AwsSession, params: Mapping[str, Any]) -> State:
    vid = params["resource_id"]
    snap = _find_snapshot(session, vid)
    snapshot = (
        {
            "snapshot_id": snap["SnapshotId"],
            "snapshot_state": snap["State"],
            "snapshot_started_at": snap["StartTime"].astimezone(UTC).isoformat(),
        }
        if snap
        else {}
    )
    try:
        with aws_errors(f"ec2:DescribeVolumes {vid}", VOLUME_PERMS):
            vol = session.client("ec2").describe_volumes(VolumeIds=[vid])["Volumes"][0]
    except NotFound:
        # Deleting is the goal: a volume that is gone was already deleted.
        return {"exists": False, "region": session.region, **snapshot}
    return {
        "exists": True,
        "status": vol["State"],
        "sku": vol["VolumeType"],
        "size_gib": vol["Size"],
        "attached_to": [a["InstanceId"] for a in vol.get("Attachments", [])],
        "region": session.region,
        "tags": _tags(vol.get("Tags")),
        "busy": vol["State"] == "creating",
        **snapshot,
    }


def _delete_volume_apply(session: AwsSession, params: Mapping[str, Any], before: State) -> None:
    vid = params["resource_id"]
    if before["attached_to"]:
        raise Permanent(f"volume {vid} is attached to {before['attached_to']}; not deleting")
    ec2 = session.client("ec2")
    snap_id = before.get("snapshot_id")
    # The same decision as Azure's and GCP's: one still being taken is this run's, however
    # long a large volume takes; an older one is an earlier run's (its delete failed: the
    # volume was attached again and written to since), not a backup of what is deleted now.
    pending = before.get("snapshot_state") == "pending"
    if snap_id and not snapshot_reusable(
        snap_id, started_at(before.get("snapshot_started_at")), pending
    ):
        snap_id = None
    if not snap_id:
        with aws_errors(f"ec2:CreateSnapshot {vid}", VOLUME_PERMS):
            snap_id = ec2.create_snapshot(
                VolumeId=vid,
                Description=f"cct: before deleting unattached volume {vid}",
                TagSpecifications=[
                    {
                        "ResourceType": "snapshot",
                        "Tags": [{"Key": SNAPSHOT_SOURCE_TAG, "Value": vid}],
                    }
                ],
            )["SnapshotId"]

    def snapshot_completed() -> bool:
        with aws_errors(f"ec2:DescribeSnapshots {snap_id}", VOLUME_PERMS):
            snap = ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]
        if snap["State"] == "error":
            raise Permanent(f"snapshot {snap_id} of {vid} failed; volume kept")
        return bool(snap["State"] == "completed")

    session.wait(f"snapshot {snap_id}", snapshot_completed)
    with aws_errors(f"ec2:DeleteVolume {vid}", VOLUME_PERMS):
        ec2.delete_volume(VolumeId=vid)


register(
    Action(
        name="aws.ebs.delete_volume",
        provider="aws",
        description="snapshot the unattached EBS volume, then delete it",
        service_name="Amazon Elastic Compute Cloud",
        price_unit="gib_month",
        schema={
            "type": "object",
            "properties": {
                "resource_id": {"type": "string", "pattern": "^vol-[0-9a-f]{8,17}$"},
                "region": {"type": "string", "minLength": 1},
            },
            "required": ["resource_id", "region"],
            "additionalProperties": False,
        },
        permissions=VOLUME_PERMS,
        read=_read_volume,
        apply=_delete_volume_apply,
        is_done=lambda st, p: not st["exists"],
    )
)

# --- S3 ----------------------------------------------------------------------------------

S3_PERMS = (
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
    "cloudwatch:GetMetricStatistics",
)
S3_CLASSES = ["STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER"]


def _read_lifecycle(session: AwsSession, params: Mapping[str, Any]) -> State:
    import botocore.exceptions

    bucket = params["resource_id"]
    with aws_errors(f"s3:GetLifecycleConfiguration {bucket}", S3_PERMS):
        try:
            rules = session.client("s3").get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        except botocore.exceptions.ClientError as exc:
            # A bucket without any lifecycle rule answers with this error, not an empty list.
            if _code(exc) != "NoSuchLifecycleConfiguration":
                raise
            rules = []
    return {"exists": True, "sku": "STANDARD", "region": session.region, "rules": rules}


def _tiering_rule(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ID": TIERING_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "Transitions": [
            {"Days": params["transition_days"], "StorageClass": params["storage_class"]}
        ],
    }


def _lifecycle_done(state: State, params: Mapping[str, Any]) -> bool:
    want = _tiering_rule(params)
    for rule in state["rules"]:
        if rule.get("ID") == TIERING_RULE_ID:
            return bool(
                rule.get("Status") == "Enabled" and rule.get("Transitions") == want["Transitions"]
            )
    return False


def _lifecycle_apply(session: AwsSession, params: Mapping[str, Any], before: State) -> None:
    bucket = params["resource_id"]
    # Keep the bucket's other rules: the put replaces the whole configuration.
    rules = [r for r in before["rules"] if r.get("ID") != TIERING_RULE_ID]
    rules.append(_tiering_rule(params))
    with aws_errors(f"s3:PutLifecycleConfiguration {bucket}", S3_PERMS):
        session.client("s3").put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": rules}
        )


def _bucket_size(
    session: AwsSession, params: Mapping[str, Any], end: float, hours: int
) -> dict[str, Any]:
    bucket = params["resource_id"]
    end_dt = datetime.fromtimestamp(end, UTC)
    with aws_errors(f"cloudwatch:GetMetricStatistics {bucket}", S3_PERMS):
        points = session.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/S3",
            MetricName="BucketSizeBytes",
            Dimensions=[
                {"Name": "BucketName", "Value": bucket},
                {"Name": "StorageType", "Value": "StandardStorage"},
            ],
            StartTime=end_dt - timedelta(hours=hours),
            EndTime=end_dt,
            Period=86400,
            # S3 publishes one value per bucket per day, so the daily maximum is that value.
            Statistics=["Maximum"],
        )["Datapoints"]
    latest = max(points, key=lambda p: p["Timestamp"]) if points else None
    return {
        "source": "cloudwatch AWS/S3/BucketSizeBytes",
        "datapoints": len(points),
        "size_gib": latest["Maximum"] / 2**30 if latest else None,
    }


register(
    Action(
        name="aws.s3.put_lifecycle_tiering",
        provider="aws",
        description="add a lifecycle rule moving the bucket's objects to a colder class",
        service_name="Amazon Simple Storage Service",
        price_unit="gib_month",
        schema={
            "type": "object",
            "properties": {
                "resource_id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
                "region": {"type": "string", "minLength": 1},
                "transition_days": {"type": "integer", "minimum": 1},
                "storage_class": {"enum": S3_CLASSES},
            },
            "required": ["resource_id", "region", "transition_days", "storage_class"],
            "additionalProperties": False,
        },
        permissions=S3_PERMS,
        read=_read_lifecycle,
        apply=_lifecycle_apply,
        is_done=_lifecycle_done,
        metrics=_bucket_size,
    )
)

# --- RDS ---------------------------------------------------------------------------------

RDS_PERMS = ("rds:DescribeDBInstances", "rds:ModifyDBInstance", "cloudwatch:GetMetricStatistics")


def _read_db(session: AwsSession, params: Mapping[str, Any]) -> State:
    ident = params["resource_id"]
    with aws_errors(f"rds:DescribeDBInstances {ident}", RDS_PERMS):
        db = session.client("rds").describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][
            0
        ]
    pending_values = db.get("PendingModifiedValues") or {}
    pending = pending_values.get("DBInstanceClass")
    return {
        "sku": db["DBInstanceClass"],
        "pending_sku": pending,
        # Other changes queued for the next maintenance window (an engine upgrade...).
        "pending_other": sorted(str(k) for k in pending_values if k != "DBInstanceClass"),
        "status": db["DBInstanceStatus"],
        "engine": db["Engine"],
        # The price catalog keys RDS instance prices by class, engine and deployment.
        "deployment": "Multi-AZ" if db.get("MultiAZ") else "Single-AZ",
        "region": session.region,
        "busy": db["DBInstanceStatus"] != "available" or pending is not None,
    }


def _rds_apply(session: AwsSession, params: Mapping[str, Any], before: State) -> None:
    ident = params["resource_id"]
    if before["status"] != "available":
        raise Retryable(f"database {ident} is {before['status']}; retry when available")
    if before.get("pending_other"):
        # ApplyImmediately applies every change queued for the maintenance window with the
        # resize: what was approved is the class, not those.
        raise Permanent(
            f"database {ident} has changes queued for its maintenance window "
            f"({', '.join(before['pending_other'])}); applying the resize now would apply them "
            "too: resize after the window, or apply them first"
        )
    # A single API call: it either takes effect or changes nothing.
    with aws_errors(f"rds:ModifyDBInstance {ident}", RDS_PERMS):
        session.client("rds").modify_db_instance(
            DBInstanceIdentifier=ident,
            DBInstanceClass=params["target_sku"],
            ApplyImmediately=True,
        )


register(
    Action(
        name="aws.rds.modify_instance_class",
        provider="aws",
        description="change the RDS instance class (applied immediately)",
        service_name="Amazon Relational Database Service",
        price_unit="hour",
        schema={
            "type": "object",
            "properties": {
                "resource_id": {"type": "string", "pattern": "^[a-zA-Z][a-zA-Z0-9-]{0,62}$"},
                "region": {"type": "string", "minLength": 1},
                "target_sku": {"type": "string", "pattern": "^db\\."},
            },
            "required": ["resource_id", "region", "target_sku"],
            "additionalProperties": False,
        },
        permissions=RDS_PERMS,
        read=_read_db,
        apply=_rds_apply,
        is_done=lambda st, p: p["target_sku"] in (st["sku"], st["pending_sku"]),
        metrics=lambda s, p, end, h: _cpu(
            s,
            "AWS/RDS",
            "DBInstanceIdentifier",
            p["resource_id"],
            end,
            hours=h,
            permissions=RDS_PERMS,
        ),
    )
)
