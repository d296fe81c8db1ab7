"""Full inventory sync for drift: what the cloud says exists vs what the inventory holds.

Events can be lost upstream (a forwarder outage beyond Fluent Bit's buffer), so the collector
periodically lists the resources and turns every difference into a synthetic change
(`action="InventorySync"`) that goes through the same path as a real event. `diff` is pure;
`aws_inventory_changes` reads AWS with boto3 (clients are created per call, after the
endpoint settings are in place).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import boto3

from lambdas.collector.model import Resource, ResourceChange, change_of
from lambdas.collector.normalize import AWS_EC2, AWS_RDS

SYNC_ACTION = "InventorySync"


def _present(**values: Any) -> dict[str, Any]:
    """The pricing attributes the listing reports (numbers as floats, like the events)."""
    return {k: float(v) if isinstance(v, int | float) else str(v) for k, v in values.items() if v}


def sync_run_id(now: datetime) -> str:
    """Event ids of one sync run: unique per run, so a later run is never taken for a
    duplicate of an earlier one."""
    return f"sync:{now:%Y%m%dT%H%M%SZ}:{uuid.uuid4().hex[:8]}"


def diff(
    known: Sequence[Resource],
    observed: Iterable[ResourceChange],
    scope: set[str],
    now: datetime,
    sync_id: str,
) -> list[ResourceChange]:
    """Changes that make the inventory match `observed`. `scope` is the set of resource types
    that were listed: a known live resource of those types that was not observed is gone."""
    by_key = {r.key: r for r in known}
    out: list[ResourceChange] = []
    seen: set[tuple[str, str]] = set()
    for ob in observed:
        key = (ob.provider, ob.resource_id)
        seen.add(key)
        cur = by_key.get(key)
        if (
            cur is not None
            and cur.state == ob.state
            and cur.sku == ob.sku
            and all(cur.size.get(k) == v for k, v in ob.attributes.items())
            # A re-tag whose event was lost is drift too: the resource's cost belongs to
            # its new team.
            and (ob.tags is None or dict(cur.tags) == dict(ob.tags))
        ):
            continue
        out.append(ob)
    for r in known:
        if r.key not in seen and r.resource_type in scope and r.state != "deleted":
            out.append(
                change_of(r, f"{sync_id}:{r.resource_id}", SYNC_ACTION, now, state="deleted")
            )
    return out


def _tags(items: Any) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in items or []}


def caller_account(region: str) -> str:
    """The AWS account the collector's credentials list."""
    return str(boto3.client("sts", region_name=region).get_caller_identity()["Account"])


def aws_observed(
    region: str, now: datetime, billing_account_id: str, sync_id: str, account: str = ""
) -> list[ResourceChange]:
    ec2 = boto3.client("ec2", region_name=region)
    rds = boto3.client("rds", region_name=region)
    account = account or caller_account(region)
    billing = billing_account_id or account

    def change(rid: str, **kw: Any) -> ResourceChange:
        return ResourceChange(
            event_id=f"{sync_id}:{rid}",
            provider="aws",
            billing_account_id=billing,
            sub_account_id=account,
            region_id=region,
            resource_id=rid,
            action=SYNC_ACTION,
            event_time=now,
            **kw,
        )

    out: list[ResourceChange] = []
    for page in ec2.get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                state = inst["State"]["Name"]
                if state in ("terminated", "shutting-down"):
                    continue
                out.append(
                    change(
                        inst["InstanceId"],
                        service_name=AWS_EC2,
                        resource_type="Instance",
                        state="running" if state in ("pending", "running") else "stopped",
                        sku=inst["InstanceType"],
                        attributes=_present(platform_details=inst.get("PlatformDetails")),
                        tags=_tags(inst.get("Tags")),
                    )
                )
    for vol_page in ec2.get_paginator("describe_volumes").paginate():
        for vol in vol_page["Volumes"]:
            out.append(
                change(
                    vol["VolumeId"],
                    service_name=AWS_EC2,
                    resource_type="Volume",
                    state="available",
                    sku=vol["VolumeType"],
                    attributes={
                        "gib": float(vol["Size"]),
                        **_present(iops=vol.get("Iops"), throughput=vol.get("Throughput")),
                    },
                    tags=_tags(vol.get("Tags")),
                )
            )
    for db_page in rds.get_paginator("describe_db_instances").paginate():
        for db in db_page["DBInstances"]:
            out.append(
                change(
                    db["DBInstanceArn"],
                    service_name=AWS_RDS,
                    resource_type="DBInstance",
                    state="running" if db["DBInstanceStatus"] != "stopped" else "stopped",
                    sku=db["DBInstanceClass"],
                    attributes={
                        "engine": db["Engine"],
                        "gib": float(db.get("AllocatedStorage") or 0),
                        "multi_az": bool(db.get("MultiAZ")),
                        **_present(
                            storage_type=db.get("StorageType"),
                            iops=db.get("Iops"),
                            throughput=db.get("StorageThroughput"),
                        ),
                    },
                    tags=_tags(db.get("TagList")),
                )
            )
    return out


def aws_inventory_changes(
    region: str, known: Sequence[Resource], now: datetime, billing_account_id: str = ""
) -> list[ResourceChange]:
    sync_id = sync_run_id(now)
    account = caller_account(region)
    observed = aws_observed(region, now, billing_account_id, sync_id, account)
    # The listing covers the credentials' own account only: another account's resources in
    # the region were not looked for, so they are not gone.
    mine = [r for r in known if r.sub_account_id == account]
    return diff(mine, observed, {"Instance", "Volume", "DBInstance"}, now, sync_id)
