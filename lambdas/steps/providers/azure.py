"""Azure actions through the Azure Resource Manager REST API: VM resize and deallocate,
managed disk delete after snapshot, Blob lifecycle tiering, Azure SQL database resize.

Requests and responses are ARM's documented JSON (the same the azure-mgmt SDKs send);
long-running operations are followed through their Azure-AsyncOperation or Location header.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lambdas.pricing.catalog import azure_sql_objective
from lambdas.steps import polling
from lambdas.steps.action import (
    SNAPSHOTS_PER_RUN,
    Action,
    State,
    last_snapshot,
    register,
    resized,
    snapshot_to_take,
    started_at,
)
from lambdas.steps.errors import NotFound, Permanent, Retryable
from lambdas.steps.rest import RestClient

COMPUTE_API = "2024-07-01"
DISK_API = "2024-03-02"
STORAGE_API = "2023-05-01"
SQL_API = "2021-11-01"
TAGS_API = "2021-04-01"
METRICS_API = "2023-10-01"
RESTART_SCHEDULE_TAG = "cct-restart-schedule"
SNAPSHOT_SOURCE_TAG = "cct-source-disk"
TIERING_RULE = "cct-tiering"
_TERMINAL = {"Succeeded", "Failed", "Canceled"}
_ARM_ID = r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"


@dataclass
class AzureSession:
    rest: RestClient
    operation_timeout_s: float = 900.0
    poll_initial_s: float = polling.POLL_INITIAL_S
    poll_max_s: float = polling.POLL_MAX_S
    # The run (its workflow's name) this step belongs to: names the snapshots it takes.
    run_id: str = ""

    def wait(self, resp_headers: Mapping[str, str], what: str, needs: tuple[str, ...]) -> None:
        """Follow an ARM long-running operation to its end."""
        async_url = resp_headers.get("Azure-AsyncOperation")
        location = resp_headers.get("Location")
        if async_url:
            doc = self.rest.poll(
                lambda: self.rest.json("GET", async_url, needs=needs),
                lambda d: d.get("status") in _TERMINAL,
                self.operation_timeout_s,
                what,
                interval_s=self.poll_max_s,
                initial_s=self.poll_initial_s,
            )
            if doc.get("status") != "Succeeded":
                err = doc.get("error") or {}
                raise Permanent(
                    f"{what}: {doc.get('status')}: {err.get('code')} {err.get('message')}"
                )
        elif location:
            self.rest.poll(
                lambda: {"done": self.rest.call("GET", location, needs=needs).status_code != 202},
                lambda d: bool(d["done"]),
                self.operation_timeout_s,
                what,
                interval_s=self.poll_max_s,
                initial_s=self.poll_initial_s,
            )


def _schema(provider_path: str, extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "resource_id": {"type": "string", "pattern": _ARM_ID + provider_path + "/[^/]+$"},
            **extra,
        },
        "required": ["resource_id", *required],
        "additionalProperties": False,
    }


def _metric(
    session: AzureSession,
    resource_id: str,
    metric: str,
    aggregations: str,
    end: float,
    *,
    hours: int,
    needs: tuple[str, ...],
) -> list[dict[str, Any]]:
    end_dt = datetime.fromtimestamp(end, UTC)
    span = f"{(end_dt - timedelta(hours=hours)):%Y-%m-%dT%H:%M:%SZ}/{end_dt:%Y-%m-%dT%H:%M:%SZ}"
    doc = session.rest.json(
        "GET",
        f"{resource_id}/providers/Microsoft.Insights/metrics",
        params={
            "api-version": METRICS_API,
            "metricnames": metric,
            "timespan": span,
            "interval": "PT1H",
            "aggregation": aggregations,
        },
        needs=needs,
    )
    points: list[dict[str, Any]] = []
    for value in doc.get("value", []):
        for series in value.get("timeseries", []):
            points.extend(p for p in series.get("data", []) if "average" in p or "maximum" in p)
    return points


def _cpu(
    session: AzureSession,
    resource_id: str,
    metric: str,
    end: float,
    hours: int,
    *,
    needs: tuple[str, ...],
) -> dict[str, Any]:
    points = _metric(session, resource_id, metric, "Average,Maximum", end, hours=hours, needs=needs)
    return {
        "source": f"azure monitor {metric}",
        "datapoints": len(points),
        "peak_hourly_avg_cpu_percent": max(
            (p["average"] for p in points if "average" in p), default=None
        ),
        "max_cpu_percent": max((p["maximum"] for p in points if "maximum" in p), default=None),
    }


# --- Virtual machines --------------------------------------------------------------------

# Following a long-running operation reads its status resource, which ARM authorizes too.
COMPUTE_OPERATION_READ = "Microsoft.Compute/locations/operations/read"

VM_PERMS = (
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/write",
    COMPUTE_OPERATION_READ,
    "Microsoft.Insights/metrics/read",
)


def _read_vm(session: AzureSession, params: Mapping[str, Any], needs: tuple[str, ...]) -> State:
    vm = session.rest.json(
        "GET",
        params["resource_id"],
        params={"api-version": COMPUTE_API, "$expand": "instanceView"},
        needs=needs,
    )
    props = vm["properties"]
    power = [
        s["code"].split("/", 1)[1]
        for s in props.get("instanceView", {}).get("statuses", [])
        if s.get("code", "").startswith("PowerState/")
    ]
    status = power[0] if power else "unknown"
    return {
        "sku": props["hardwareProfile"]["vmSize"],
        "status": status,
        "region": vm["location"],
        "tags": vm.get("tags", {}),
        "busy": props.get("provisioningState") not in ("Succeeded", "Failed")
        or status in ("starting", "stopping", "deallocating"),
    }


def _resize_apply(session: AzureSession, params: Mapping[str, Any], before: State) -> None:
    if before["busy"]:
        raise Retryable(f"VM is {before['status']}; retry when it settles")
    # One PATCH: ARM resizes in place (restarting the VM) or refuses and changes nothing.
    resp = session.rest.call(
        "PATCH",
        params["resource_id"],
        params={"api-version": COMPUTE_API},
        body={"properties": {"hardwareProfile": {"vmSize": params["target_sku"]}}},
        needs=VM_PERMS,
    )
    session.wait(resp.headers, "resize VM", VM_PERMS)


register(
    Action(
        name="azure.compute.resize_vm",
        provider="azure",
        description="change the Azure VM's size (ARM restarts it)",
        service_name="Virtual Machines",
        price_unit="hour",
        schema=_schema(
            "Microsoft.Compute/virtualMachines",
            {"target_sku": {"type": "string", "pattern": "^Standard_"}},
            ["target_sku"],
        ),
        permissions=VM_PERMS,
        read=lambda s, p: _read_vm(s, p, VM_PERMS),
        apply=_resize_apply,
        # ARM restarts a running VM on the new size; verify confirms it came back.
        is_done=resized,
        metrics=lambda s, p, end, h: _cpu(
            s, p["resource_id"], "Percentage CPU", end, h, needs=VM_PERMS
        ),
    )
)

DEALLOCATE_PERMS = (
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/deallocate/action",
    COMPUTE_OPERATION_READ,
    "Microsoft.Resources/tags/write",
    "Microsoft.Insights/metrics/read",
)


def _set_tags(session: AzureSession, resource_id: str, op: str, tags: dict[str, str]) -> None:
    session.rest.call(
        "PATCH",
        f"{resource_id}/providers/Microsoft.Resources/tags/default",
        params={"api-version": TAGS_API},
        body={"operation": op, "properties": {"tags": tags}},
        needs=DEALLOCATE_PERMS,
    )


def _deallocate_apply(session: AzureSession, params: Mapping[str, Any], before: State) -> None:
    rid = params["resource_id"]
    if before["busy"]:
        raise Retryable(f"VM is {before['status']}; retry when it settles")
    tags = {RESTART_SCHEDULE_TAG: params["restart_schedule"], "cct-stopped-by": "cct"}
    _set_tags(session, rid, "Merge", tags)
    if before["status"] == "deallocated":
        return
    try:
        resp = session.rest.call(
            "POST",
            f"{rid}/deallocate",
            params={"api-version": COMPUTE_API},
            needs=DEALLOCATE_PERMS,
        )
        session.wait(resp.headers, "deallocate VM", DEALLOCATE_PERMS)
    except Exception:
        # Put the tags back as they were: remove the ones CCT added, restore the values it
        # overwrote (an earlier schedule, say).
        old = before["tags"]
        added = {k: v for k, v in tags.items() if k not in old}
        overwritten = {k: old[k] for k in tags if k in old}
        if added:
            _set_tags(session, rid, "Delete", added)
        if overwritten:
            _set_tags(session, rid, "Merge", overwritten)
        raise


register(
    Action(
        name="azure.compute.deallocate_vm",
        provider="azure",
        description="deallocate the idle Azure VM and tag it with its restart schedule",
        service_name="Virtual Machines",
        price_unit="hour",
        schema=_schema(
            "Microsoft.Compute/virtualMachines",
            {"restart_schedule": {"type": "string", "minLength": 4}},
            ["restart_schedule"],
        ),
        permissions=DEALLOCATE_PERMS,
        read=lambda s, p: _read_vm(s, p, DEALLOCATE_PERMS),
        apply=_deallocate_apply,
        is_done=lambda st, p: (
            st["status"] == "deallocated"
            and st["tags"].get(RESTART_SCHEDULE_TAG) == p["restart_schedule"]
        ),
        metrics=lambda s, p, end, h: _cpu(
            s, p["resource_id"], "Percentage CPU", end, h, needs=DEALLOCATE_PERMS
        ),
    )
)

# --- Managed disks -----------------------------------------------------------------------

DISK_PERMS = (
    "Microsoft.Compute/disks/read",
    "Microsoft.Compute/disks/delete",
    "Microsoft.Compute/snapshots/read",
    "Microsoft.Compute/snapshots/write",
    COMPUTE_OPERATION_READ,
)


SNAPSHOT_STORAGE = "Standard_LRS"


def snapshot_name(disk_id: str, run_id: str, generation: int) -> str:
    """The run's `generation`th snapshot of the disk, within ARM's 80 characters: the disk's
    name (cut to fit) and a hash of the disk (ARM ids are case-insensitive), the run and the
    generation. A retry of the run finds the same name; no other run does, so a snapshot
    another run took is neither reused nor overwritten."""
    key = f"{disk_id.lower()}\n{run_id}\n{generation}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{disk_id.rsplit('/', 1)[1][:63]}-cct-{digest}"


def _snapshot_ids(disk_id: str, run_id: str) -> list[str]:
    group = disk_id.rsplit("/providers/Microsoft.Compute/disks/", 1)[0]
    return [
        f"{group}/providers/Microsoft.Compute/snapshots/{snapshot_name(disk_id, run_id, g)}"
        for g in range(SNAPSHOTS_PER_RUN)
    ]


def _read_disk(session: AzureSession, params: Mapping[str, Any]) -> State:
    rid = params["resource_id"]
    found = last_snapshot(
        _snapshot_ids(rid, session.run_id),
        lambda snap_id: session.rest.json(
            "GET", snap_id, params={"api-version": DISK_API}, needs=DISK_PERMS
        ),
    )
    snapshot: dict[str, Any] = {}
    if found:  # none yet: the before state says so
        snap_id, snap = found
        snapshot = {
            "snapshot_id": snap_id,
            "snapshot_state": snap["properties"].get("provisioningState"),
            "snapshot_started_at": started_at(snap["properties"].get("timeCreated")),
        }
    try:
        disk = session.rest.json("GET", rid, params={"api-version": DISK_API}, needs=DISK_PERMS)
    except NotFound:
        # Deleting is the goal: a disk that is gone was already deleted.
        return {"exists": False, **snapshot}
    props = disk["properties"]
    return {
        "exists": True,
        "status": props.get("diskState"),
        "sku": disk["sku"]["name"],
        "size_gib": props["diskSizeGB"],
        "tier": props.get("tier"),
        "attached_to": [disk["managedBy"]] if disk.get("managedBy") else [],
        "region": disk["location"],
        "tags": disk.get("tags", {}),
        "busy": props.get("provisioningState") not in ("Succeeded", "Failed"),
        **snapshot,
    }


def _delete_disk_apply(session: AzureSession, params: Mapping[str, Any], before: State) -> None:
    rid = params["resource_id"]
    if before["attached_to"] or before["status"] != "Unattached":
        raise Permanent(f"disk is {before['status']} ({before['attached_to']}); not deleting")
    if not session.run_id:
        raise Permanent("no run id: this run's snapshot cannot be told from another run's")
    state = before.get("snapshot_state")
    pending = state is not None and state not in _TERMINAL
    snap_id, reused = snapshot_to_take(_snapshot_ids(rid, session.run_id), before, pending)
    if not reused:
        # A new snapshot: an older one of this run (retried days later) is no backup of the
        # disk as it is now.
        state, pending = None, False
    if pending:
        # An earlier attempt's snapshot still being taken (a large disk outlasts a step's
        # wait): wait for it rather than sending a second create while it is in progress.
        done = session.rest.poll(
            lambda: session.rest.json(
                "GET", snap_id, params={"api-version": DISK_API}, needs=DISK_PERMS
            ),
            lambda d: d["properties"].get("provisioningState") in _TERMINAL,
            session.operation_timeout_s,
            f"snapshot {snap_id}",
            interval_s=session.poll_max_s,
            initial_s=session.poll_initial_s,
        )
        state = done["properties"].get("provisioningState")
    if state != "Succeeded":
        # A new snapshot, or this run's that failed: ARM's PUT creates it or tries again.
        resp = session.rest.call(
            "PUT",
            snap_id,
            params={"api-version": DISK_API},
            body={
                "location": before["region"],
                # Standard HDD storage, the snapshot meter the plan priced it at.
                "sku": {"name": SNAPSHOT_STORAGE},
                "tags": {SNAPSHOT_SOURCE_TAG: rid.rsplit("/", 1)[1]},
                "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": rid}},
            },
            needs=DISK_PERMS,
        )
        session.wait(resp.headers, "snapshot disk", DISK_PERMS)
    resp = session.rest.call("DELETE", rid, params={"api-version": DISK_API}, needs=DISK_PERMS)
    session.wait(resp.headers, "delete disk", DISK_PERMS)


register(
    Action(
        name="azure.compute.delete_disk",
        provider="azure",
        description="snapshot the unattached managed disk, then delete it",
        service_name="Storage",
        price_unit="gib_month",
        schema=_schema("Microsoft.Compute/disks", {}, []),
        permissions=DISK_PERMS,
        read=_read_disk,
        apply=_delete_disk_apply,
        is_done=lambda st, p: not st["exists"],
    )
)

# --- Blob storage lifecycle --------------------------------------------------------------

BLOB_PERMS = (
    "Microsoft.Storage/storageAccounts/read",
    "Microsoft.Storage/storageAccounts/managementPolicies/read",
    "Microsoft.Storage/storageAccounts/managementPolicies/write",
    "Microsoft.Insights/metrics/read",
)


def _read_policy(session: AzureSession, params: Mapping[str, Any]) -> State:
    rid = params["resource_id"]
    account = session.rest.json("GET", rid, params={"api-version": STORAGE_API}, needs=BLOB_PERMS)
    try:
        policy = session.rest.json(
            "GET",
            f"{rid}/managementPolicies/default",
            params={"api-version": STORAGE_API},
            needs=BLOB_PERMS,
        )
        rules = policy["properties"]["policy"]["rules"]
    except NotFound:
        rules = []
    return {
        "exists": True,
        "sku": account["properties"].get("accessTier", "Hot"),
        "redundancy": blob_redundancy(account),
        "region": account["location"],
        "rules": rules,
    }


def blob_redundancy(account: Mapping[str, Any]) -> str | None:
    """The replication of a standard general-purpose v2 storage account (sku `Standard_RAGRS`)
    as the price list writes it (`RA-GRS`), which its access tiers are priced at. None, so the
    plan finds no price rather than another kind's: a premium account (no access tiers), a v1
    account (none either) or a legacy BlobStorage one (meters of its own, not read)."""
    sku_name = str((account.get("sku") or {}).get("name", ""))
    performance, _, replication = sku_name.partition("_")
    if account.get("kind") != "StorageV2" or performance != "Standard" or not replication:
        return None
    return {"RAGRS": "RA-GRS", "RAGZRS": "RA-GZRS"}.get(replication, replication)


def _tier_rule(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "enabled": True,
        "name": TIERING_RULE,
        "type": "Lifecycle",
        "definition": {
            "filters": {"blobTypes": ["blockBlob"]},
            "actions": {
                "baseBlob": {
                    f"tierTo{params['storage_class']}": {
                        "daysAfterModificationGreaterThan": params["transition_days"]
                    }
                }
            },
        },
    }


def _policy_apply(session: AzureSession, params: Mapping[str, Any], before: State) -> None:
    rules = [r for r in before["rules"] if r.get("name") != TIERING_RULE]
    rules.append(_tier_rule(params))
    session.rest.call(
        "PUT",
        f"{params['resource_id']}/managementPolicies/default",
        params={"api-version": STORAGE_API},
        body={"properties": {"policy": {"rules": rules}}},
        needs=BLOB_PERMS,
    )


def _used_capacity(
    session: AzureSession, params: Mapping[str, Any], end: float, hours: int
) -> dict[str, Any]:
    points = _metric(
        session,
        params["resource_id"],
        "UsedCapacity",
        "Average",
        end,
        hours=hours,
        needs=BLOB_PERMS,
    )
    latest = max(points, key=lambda p: p["timeStamp"]) if points else None
    return {
        "source": "azure monitor UsedCapacity",
        "datapoints": len(points),
        "size_gib": latest["average"] / 2**30 if latest else None,
    }


register(
    Action(
        name="azure.storage.put_tiering_policy",
        provider="azure",
        description="add a lifecycle management rule moving block blobs to a colder tier",
        service_name="Storage",
        price_unit="gib_month",
        schema=_schema(
            "Microsoft.Storage/storageAccounts",
            {
                "transition_days": {"type": "integer", "minimum": 1},
                "storage_class": {"enum": ["Cool", "Cold", "Archive"]},
            },
            ["transition_days", "storage_class"],
        ),
        permissions=BLOB_PERMS,
        read=_read_policy,
        apply=_policy_apply,
        is_done=lambda st, p: _tier_rule(p) in st["rules"],
        metrics=_used_capacity,
    )
)

# --- Azure SQL ---------------------------------------------------------------------------

SQL_PERMS = (
    "Microsoft.Sql/servers/databases/read",
    "Microsoft.Sql/servers/databases/write",
    "Microsoft.Sql/locations/databaseAzureAsyncOperation/read",
    "Microsoft.Insights/metrics/read",
)


def _read_sql(session: AzureSession, params: Mapping[str, Any]) -> State:
    db = session.rest.json(
        "GET", params["resource_id"], params={"api-version": SQL_API}, needs=SQL_PERMS
    )
    props = db["properties"]
    current = props.get("currentServiceObjectiveName")
    size = current or azure_sql_objective(db["sku"])
    requested = props.get("requestedServiceObjectiveName", current)
    return {
        "sku": size,
        # BasePrice: Azure Hybrid Benefit, the SQL Server licence is the customer's own.
        "license": props.get("licenseType", "LicenseIncluded"),
        # General Purpose and Hyperscale pay a zone-redundancy meter the catalog does not read.
        "zone_redundant": bool(props.get("zoneRedundant")),
        "status": props["status"],
        "region": db["location"],
        "busy": props["status"] != "Online" or requested != current,
    }


def _sql_apply(session: AzureSession, params: Mapping[str, Any], before: State) -> None:
    if before["busy"]:
        raise Retryable(f"database is {before['status']}; retry when online")
    resp = session.rest.call(
        "PATCH",
        params["resource_id"],
        params={"api-version": SQL_API},
        body={"sku": {"name": params["target_sku"]}},
        needs=SQL_PERMS,
    )
    session.wait(resp.headers, "resize database", SQL_PERMS)


register(
    Action(
        name="azure.sql.update_database_sku",
        provider="azure",
        description="change the Azure SQL database's service objective (vCores)",
        service_name="SQL Database",
        price_unit="hour",
        schema=_schema(
            "Microsoft.Sql/servers/[^/]+/databases",
            {"target_sku": {"type": "string", "pattern": "^[A-Z]+_Gen[0-9]+_[0-9]+$"}},
            ["target_sku"],
        ),
        permissions=SQL_PERMS,
        read=_read_sql,
        apply=_sql_apply,
        is_done=lambda st, p: st["sku"] == p["target_sku"],
        metrics=lambda s, p, end, h: _cpu(
            s, p["resource_id"], "cpu_percent", end, h, needs=SQL_PERMS
        ),
    )
)
