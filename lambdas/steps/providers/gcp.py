"""GCP actions through the Google Cloud REST APIs: GCE resize and stop, persistent disk delete
after snapshot, GCS lifecycle tiering, Cloud SQL tier change; utilization from Cloud
Monitoring. Requests and responses are the APIs' documented JSON (what the google-cloud
client libraries send over REST); operations are followed until DONE."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lambdas.pricing.catalog import cloud_sql_engine
from lambdas.steps import polling
from lambdas.steps.action import (
    SNAPSHOTS_PER_RUN,
    Action,
    State,
    last_snapshot,
    register,
    resize_or_restore,
    resized,
    snapshot_to_take,
    started_at,
)
from lambdas.steps.errors import NotFound, Permanent, Retryable
from lambdas.steps.rest import RestClient

RESTART_SCHEDULE_LABEL = "cct-restart-schedule"
SNAPSHOT_SOURCE_LABEL = "cct-source-disk"
_HOSTS = {
    "compute": "https://compute.googleapis.com",
    "storage": "https://storage.googleapis.com",
    "sqladmin": "https://sqladmin.googleapis.com",
    "monitoring": "https://monitoring.googleapis.com",
}
_STATUS = {"RUNNING": "running", "TERMINATED": "stopped", "STOPPED": "stopped"}
_BUSY = frozenset({"PROVISIONING", "STAGING", "STOPPING", "SUSPENDING", "REPAIRING"})
# Operation errors that clear up on their own (capacity, rate limits).
_RETRY_OP_ERRORS = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "RESOURCE_OPERATION_RATE_EXCEEDED",
        "RATE_LIMIT_EXCEEDED",
    }
)
_ZONE = r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/zones/[a-z]+-[a-z]+[0-9]+-[a-z]"
_NAME = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
_INSTANCE = f"{_ZONE}/instances/{_NAME}"
_DISK = f"{_ZONE}/disks/{_NAME}"


@dataclass
class GcpSession:
    token: str = field(repr=False)
    api_url: str | None = None
    timeout_s: float = 30.0
    operation_timeout_s: float = 900.0
    poll_initial_s: float = polling.POLL_INITIAL_S
    poll_max_s: float = polling.POLL_MAX_S
    # The run (its workflow's name) this step belongs to: names the snapshots it takes.
    run_id: str = ""
    _clients: dict[str, RestClient] = field(default_factory=dict, repr=False)

    def api(self, service: str) -> RestClient:
        if service not in self._clients:
            self._clients[service] = RestClient(
                self.api_url or _HOSTS[service], self.token, timeout_s=self.timeout_s
            )
        return self._clients[service]

    def compute_op(self, op: Mapping[str, Any], what: str, needs: tuple[str, ...]) -> None:
        """Wait for a zonal Compute Engine operation (the `wait` method blocks up to 2 min)."""
        zone = str(op["zone"]).rsplit("/", 1)[1]
        project = str(op["selfLink"]).split("/projects/", 1)[1].split("/", 1)[0]
        path = f"/compute/v1/projects/{project}/zones/{zone}/operations/{op['name']}/wait"
        api = self.api("compute")
        done = api.poll(
            lambda: api.json("POST", path, needs=needs),
            lambda d: d.get("status") == "DONE",
            self.operation_timeout_s,
            what,
            interval_s=0.0,
        )
        _raise_op_error(done, what)

    def sql_op(
        self, op: Mapping[str, Any], project: str, what: str, needs: tuple[str, ...]
    ) -> None:
        api = self.api("sqladmin")
        done = api.poll(
            lambda: api.json("GET", f"/v1/projects/{project}/operations/{op['name']}", needs=needs),
            lambda d: d.get("status") == "DONE",
            self.operation_timeout_s,
            what,
            interval_s=self.poll_max_s,
            initial_s=self.poll_initial_s,
        )
        _raise_op_error(done, what)


def _raise_op_error(op: Mapping[str, Any], what: str) -> None:
    errors = (op.get("error") or {}).get("errors") or []
    if errors:
        code = str(errors[0].get("code", ""))
        message = f"{what}: {code}: {errors[0].get('message', '')}"
        if code in _RETRY_OP_ERRORS:
            raise Retryable(message)
        raise Permanent(message)


def _series(
    session: GcpSession,
    project: str,
    metric_filter: str,
    aligner: str,
    period_s: int,
    *,
    end: float,
    hours: int,
    needs: tuple[str, ...],
) -> list[dict[str, Any]]:
    end_dt = datetime.fromtimestamp(end, UTC)
    doc = session.api("monitoring").json(
        "GET",
        f"/v3/projects/{project}/timeSeries",
        params={
            "filter": metric_filter,
            "interval.startTime": f"{end_dt - timedelta(hours=hours):%Y-%m-%dT%H:%M:%SZ}",
            "interval.endTime": f"{end_dt:%Y-%m-%dT%H:%M:%SZ}",
            "aggregation.alignmentPeriod": f"{period_s}s",
            "aggregation.perSeriesAligner": aligner,
        },
        needs=needs,
    )
    points: list[dict[str, Any]] = []
    for series in doc.get("timeSeries", []):
        points.extend(series.get("points", []))
    return points


def _value(point: Mapping[str, Any]) -> float:
    value = point["value"]
    return float(value.get("doubleValue", value.get("int64Value", 0)))


def _cpu(
    session: GcpSession,
    project: str,
    metric_filter: str,
    end: float,
    hours: int,
    *,
    needs: tuple[str, ...],
) -> dict[str, Any]:
    means = _series(
        session, project, metric_filter, "ALIGN_MEAN", 3600, end=end, hours=hours, needs=needs
    )
    maxes = _series(
        session, project, metric_filter, "ALIGN_MAX", 3600, end=end, hours=hours, needs=needs
    )
    # Cloud Monitoring reports utilization as a fraction; CCT speaks percent.
    return {
        "source": "cloud monitoring " + metric_filter.split('"')[1],
        "datapoints": len(means),
        "peak_hourly_avg_cpu_percent": max((_value(p) * 100 for p in means), default=None),
        "max_cpu_percent": max((_value(p) * 100 for p in maxes), default=None),
    }


def _project(resource_id: str) -> str:
    return resource_id.split("/")[1]


# --- Compute Engine instances ------------------------------------------------------------

RESIZE_PERMS = (
    "compute.instances.get",
    "compute.instances.stop",
    "compute.instances.setMachineType",
    "compute.instances.start",
    "compute.zoneOperations.get",
    "monitoring.timeSeries.list",
)


def _read_instance(session: GcpSession, params: Mapping[str, Any], needs: tuple[str, ...]) -> State:
    inst = session.api("compute").json("GET", f"/compute/v1/{params['resource_id']}", needs=needs)
    zone = str(inst["zone"]).rsplit("/", 1)[1]
    return {
        "sku": str(inst["machineType"]).rsplit("/", 1)[1],
        "status": _STATUS.get(inst["status"], inst["status"].lower()),
        "region": zone.rsplit("-", 1)[0],
        "zone": zone,
        "tags": inst.get("labels", {}),
        "label_fingerprint": inst.get("labelFingerprint"),
        "busy": inst["status"] in _BUSY,
    }


def _instance_call(
    session: GcpSession, params: Mapping[str, Any], verb: str, body: Any, needs: tuple[str, ...]
) -> None:
    op = session.api("compute").json(
        "POST", f"/compute/v1/{params['resource_id']}/{verb}", body=body, needs=needs
    )
    session.compute_op(op, f"{verb} {params['resource_id']}", needs)


def _resize_apply(session: GcpSession, params: Mapping[str, Any], before: State) -> None:
    if before["busy"]:
        raise Retryable(f"instance is {before['status']}; retry when it settles")
    if before["status"] == "running":
        _instance_call(session, params, "stop", None, RESIZE_PERMS)

    def set_type(sku: str) -> None:
        body = {"machineType": f"zones/{before['zone']}/machineTypes/{sku}"}
        _instance_call(session, params, "setMachineType", body, RESIZE_PERMS)

    resize_or_restore(
        before,
        params["target_sku"],
        set_type,
        lambda: _instance_call(session, params, "start", None, RESIZE_PERMS),
        params["resource_id"],
    )


def _instance_cpu(
    session: GcpSession,
    params: Mapping[str, Any],
    end: float,
    hours: int,
    needs: tuple[str, ...],
) -> dict[str, Any]:
    name = params["resource_id"].rsplit("/", 1)[1]
    flt = (
        'metric.type = "compute.googleapis.com/instance/cpu/utilization" AND '
        f'metric.labels.instance_name = "{name}"'
    )
    return _cpu(session, _project(params["resource_id"]), flt, end, hours, needs=needs)


register(
    Action(
        name="gcp.compute.resize_instance",
        provider="gcp",
        description="stop the GCE instance, set its machine type, start it again",
        service_name="Compute Engine",
        price_unit="hour",
        schema={
            "type": "object",
            "properties": {
                "resource_id": {"type": "string", "pattern": _INSTANCE},
                "target_sku": {"type": "string", "pattern": "^[a-z0-9]+-[a-z0-9-]+$"},
            },
            "required": ["resource_id", "target_sku"],
            "additionalProperties": False,
        },
        permissions=RESIZE_PERMS,
        read=lambda s, p: _read_instance(s, p, RESIZE_PERMS),
        apply=_resize_apply,
        is_done=resized,
        metrics=lambda s, p, end, h: _instance_cpu(s, p, end, h, RESIZE_PERMS),
    )
)

STOP_PERMS = (
    "compute.instances.get",
    "compute.instances.setLabels",
    "compute.instances.stop",
    "compute.zoneOperations.get",
    "monitoring.timeSeries.list",
)


def schedule_label(schedule: str) -> str:
    """GCP label values allow only lowercase letters, digits, `-` and `_`."""
    return schedule.replace(" ", "_").replace(":", "")


def _set_labels(session: GcpSession, params: Mapping[str, Any], labels: dict[str, str]) -> None:
    current = _read_instance(session, params, STOP_PERMS)
    _instance_call(
        session,
        params,
        "setLabels",
        {"labels": labels, "labelFingerprint": current["label_fingerprint"]},
        STOP_PERMS,
    )


def _stop_apply(session: GcpSession, params: Mapping[str, Any], before: State) -> None:
    if before["busy"]:
        raise Retryable(f"instance is {before['status']}; retry when it settles")
    old = dict(before["tags"])
    new = {
        **old,
        RESTART_SCHEDULE_LABEL: schedule_label(params["restart_schedule"]),
        "cct-stopped-by": "cct",
    }
    _set_labels(session, params, new)
    if before["status"] == "stopped":
        return
    try:
        _instance_call(session, params, "stop", None, STOP_PERMS)
    except Exception:
        _set_labels(session, params, old)
        raise


register(
    Action(
        name="gcp.compute.stop_instance",
        provider="gcp",
        description="stop the idle GCE instance and label it with its restart schedule",
        service_name="Compute Engine",
        price_unit="hour",
        schema={
            "type": "object",
            "properties": {
                "resource_id": {"type": "string", "pattern": _INSTANCE},
                "restart_schedule": {"type": "string", "minLength": 4},
            },
            "required": ["resource_id", "restart_schedule"],
            "additionalProperties": False,
        },
        permissions=STOP_PERMS,
        read=lambda s, p: _read_instance(s, p, STOP_PERMS),
        apply=_stop_apply,
        is_done=lambda st, p: (
            st["status"] == "stopped"
            and st["tags"].get(RESTART_SCHEDULE_LABEL) == schedule_label(p["restart_schedule"])
        ),
        metrics=lambda s, p, end, h: _instance_cpu(s, p, end, h, STOP_PERMS),
    )
)

# --- Persistent disks --------------------------------------------------------------------

DISK_PERMS = (
    "compute.disks.get",
    "compute.disks.createSnapshot",
    "compute.snapshots.create",
    # The snapshot is created with a label naming its disk; labels on create need this.
    "compute.snapshots.setLabels",
    "compute.snapshots.get",
    "compute.disks.delete",
    "compute.zoneOperations.get",
)


# Snapshot states that end on their own (READY or FAILED).
_SNAPSHOT_PENDING = frozenset({"CREATING", "UPLOADING"})


def snapshot_name(disk_id: str, run_id: str, generation: int) -> str:
    """The run's `generation`th snapshot of the disk. Snapshot names are global per project
    and at most 63 characters: the disk's name (cut to fit) and a hash of the disk's full id,
    the run and the generation. A retry of the run finds the same name; no other run does,
    so a snapshot another run took is neither reused nor overwritten."""
    digest = hashlib.sha256(f"{disk_id}\n{run_id}\n{generation}".encode()).hexdigest()[:12]
    return f"{disk_id.rsplit('/', 1)[1][:46]}-cct-{digest}"


def _snapshot_names(disk_id: str, run_id: str) -> list[str]:
    return [snapshot_name(disk_id, run_id, g) for g in range(SNAPSHOTS_PER_RUN)]


def _snapshot_path(disk_id: str, name: str) -> str:
    return f"/compute/v1/projects/{_project(disk_id)}/global/snapshots/{name}"


def _read_disk(session: GcpSession, params: Mapping[str, Any]) -> State:
    rid = params["resource_id"]
    api = session.api("compute")
    found = last_snapshot(
        _snapshot_names(rid, session.run_id),
        lambda name: api.json("GET", _snapshot_path(rid, name), needs=DISK_PERMS),
    )
    snapshot: dict[str, Any] = {}
    if found:  # none yet: the before state says so
        name, snap = found
        snapshot = {
            "snapshot_id": name,
            "snapshot_state": snap["status"],
            "snapshot_started_at": started_at(snap.get("creationTimestamp")),
        }
    try:
        disk = api.json("GET", f"/compute/v1/{rid}", needs=DISK_PERMS)
    except NotFound:
        return {"exists": False, **snapshot}
    zone = rid.split("/")[3]
    return {
        "exists": True,
        "status": disk["status"],
        "sku": str(disk["type"]).rsplit("/", 1)[1],
        "size_gib": int(disk["sizeGb"]),
        "attached_to": list(disk.get("users", [])),
        "region": zone.rsplit("-", 1)[0],
        "tags": disk.get("labels", {}),
        "busy": disk["status"] in ("CREATING", "RESTORING"),
        **snapshot,
    }


def _delete_disk_apply(session: GcpSession, params: Mapping[str, Any], before: State) -> None:
    rid = params["resource_id"]
    if before["attached_to"]:
        raise Permanent(f"disk is used by {before['attached_to']}; not deleting")
    if not session.run_id:
        raise Permanent("no run id: this run's snapshot cannot be told from another run's")
    api = session.api("compute")
    state = before.get("snapshot_state")
    name, reused = snapshot_to_take(
        _snapshot_names(rid, session.run_id), before, state in _SNAPSHOT_PENDING
    )
    if not reused:
        # A new snapshot: an older one of this run (retried days later) is no backup of the
        # disk as it is now.
        state = None
    if state in _SNAPSHOT_PENDING:
        # An earlier attempt's snapshot still being made (a large disk outlasts a step's
        # wait): wait for it; creating it again under its name is a 409.
        done = api.poll(
            lambda: api.json("GET", _snapshot_path(rid, name), needs=DISK_PERMS),
            lambda d: d.get("status") not in _SNAPSHOT_PENDING,
            session.operation_timeout_s,
            f"snapshot {rid}",
            interval_s=session.poll_max_s,
            initial_s=session.poll_initial_s,
        )
        state = done.get("status")
    if state not in (None, "READY"):
        raise Permanent(
            f"snapshot {name} of {rid} is {state}: disk kept (delete the snapshot for a new "
            "one to be taken)"
        )
    if state is None:
        op = api.json(
            "POST",
            f"/compute/v1/{rid}/createSnapshot",
            body={"name": name, "labels": {SNAPSHOT_SOURCE_LABEL: rid.rsplit("/", 1)[1]}},
            needs=DISK_PERMS,
        )
        session.compute_op(op, f"snapshot {rid}", DISK_PERMS)
    op = api.json("DELETE", f"/compute/v1/{rid}", needs=DISK_PERMS)
    session.compute_op(op, f"delete {rid}", DISK_PERMS)


register(
    Action(
        name="gcp.compute.delete_disk",
        provider="gcp",
        description="snapshot the unattached persistent disk, then delete it",
        service_name="Compute Engine",
        price_unit="gib_month",
        schema={
            "type": "object",
            "properties": {"resource_id": {"type": "string", "pattern": _DISK}},
            "required": ["resource_id"],
            "additionalProperties": False,
        },
        permissions=DISK_PERMS,
        read=_read_disk,
        apply=_delete_disk_apply,
        is_done=lambda st, p: not st["exists"],
    )
)

# --- Cloud Storage -----------------------------------------------------------------------

GCS_PERMS = ("storage.buckets.get", "storage.buckets.update", "monitoring.timeSeries.list")


def _read_bucket(session: GcpSession, params: Mapping[str, Any]) -> State:
    bucket = session.api("storage").json(
        "GET", f"/storage/v1/b/{params['resource_id']}", needs=GCS_PERMS
    )
    return {
        "exists": True,
        "sku": bucket["storageClass"],
        # Where its storage is priced: a region or a multi-region (`us`). A dual-region
        # bucket reports a multi-region's name (`US`, with `customPlacementConfig`) but is
        # priced otherwise, and the catalog has no dual-region prices: none, not `us`'s.
        "region": ""
        if bucket.get("locationType") == "dual-region"
        else str(bucket["location"]).lower(),
        "project_number": bucket.get("projectNumber"),
        "rules": bucket.get("lifecycle", {}).get("rule", []),
    }


def _gcs_rule(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "action": {"type": "SetStorageClass", "storageClass": params["storage_class"]},
        "condition": {"age": params["transition_days"], "matchesStorageClass": ["STANDARD"]},
    }


def _gcs_apply(session: GcpSession, params: Mapping[str, Any], before: State) -> None:
    # GCS rules have no ids, so no rule can be told apart as CCT's: every rule the bucket has
    # is kept (a user's own STANDARD -> ARCHIVE after a year too) and CCT's is added, which
    # `is_done` found missing. Where several move the same objects, GCS applies the cheapest.
    rules = [*before["rules"], _gcs_rule(params)]
    session.api("storage").json(
        "PATCH",
        f"/storage/v1/b/{params['resource_id']}",
        body={"lifecycle": {"rule": rules}},
        needs=GCS_PERMS,
    )


def _bucket_size(
    session: GcpSession, params: Mapping[str, Any], end: float, hours: int
) -> dict[str, Any]:
    flt = (
        'metric.type = "storage.googleapis.com/storage/total_bytes" AND '
        f'resource.labels.bucket_name = "{params["resource_id"]}"'
    )
    # Cloud Monitoring accepts the project number, which the bucket's metadata carries.
    bucket = _read_bucket(session, params)
    points = _series(
        session,
        str(bucket["project_number"]),
        flt,
        "ALIGN_MEAN",
        86400,
        end=end,
        hours=hours,
        needs=GCS_PERMS,
    )
    latest = max(points, key=lambda p: p["interval"]["endTime"]) if points else None
    return {
        "source": "cloud monitoring storage.googleapis.com/storage/total_bytes",
        "datapoints": len(points),
        "size_gib": _value(latest) / 2**30 if latest else None,
    }


register(
    Action(
        name="gcp.storage.set_lifecycle_tiering",
        provider="gcp",
        description="add a lifecycle rule moving STANDARD objects to a colder storage class",
        service_name="Cloud Storage",
        price_unit="gib_month",
        schema={
            "type": "object",
            "properties": {
                "resource_id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$"},
                "transition_days": {"type": "integer", "minimum": 1},
                "storage_class": {"enum": ["NEARLINE", "COLDLINE", "ARCHIVE"]},
            },
            "required": ["resource_id", "transition_days", "storage_class"],
            "additionalProperties": False,
        },
        permissions=GCS_PERMS,
        read=_read_bucket,
        apply=_gcs_apply,
        is_done=lambda st, p: _gcs_rule(p) in st["rules"],
        metrics=_bucket_size,
    )
)

# --- Cloud SQL ---------------------------------------------------------------------------

SQL_PERMS = ("cloudsql.instances.get", "cloudsql.instances.update", "monitoring.timeSeries.list")


def _read_sql(session: GcpSession, params: Mapping[str, Any]) -> State:
    inst = session.api("sqladmin").json("GET", f"/v1/{params['resource_id']}", needs=SQL_PERMS)
    return {
        "sku": inst["settings"]["tier"],
        # What its price depends on besides the tier: `POSTGRES_15` -> postgres, and
        # REGIONAL (high availability) costs twice ZONAL.
        "engine": cloud_sql_engine(str(inst.get("databaseVersion", ""))),
        "availability": str(inst["settings"].get("availabilityType", "ZONAL")).lower(),
        "status": inst["state"],
        "region": inst["region"],
        "settings_version": inst["settings"].get("settingsVersion"),
        "busy": inst["state"] != "RUNNABLE",
    }


def _sql_apply(session: GcpSession, params: Mapping[str, Any], before: State) -> None:
    if before["busy"]:
        raise Retryable(f"instance is {before['status']}; retry when RUNNABLE")
    # settingsVersion makes the update conditional: a concurrent change makes it fail
    # instead of silently overwriting someone else's settings.
    op = session.api("sqladmin").json(
        "PATCH",
        f"/v1/{params['resource_id']}",
        body={
            "settings": {
                "tier": params["target_sku"],
                "settingsVersion": before["settings_version"],
            }
        },
        needs=SQL_PERMS,
    )
    session.sql_op(op, _project(params["resource_id"]), "set Cloud SQL tier", SQL_PERMS)


def _sql_cpu(
    session: GcpSession, params: Mapping[str, Any], end: float, hours: int
) -> dict[str, Any]:
    project, name = _project(params["resource_id"]), params["resource_id"].rsplit("/", 1)[1]
    flt = (
        'metric.type = "cloudsql.googleapis.com/database/cpu/utilization" AND '
        f'resource.labels.database_id = "{project}:{name}"'
    )
    return _cpu(session, project, flt, end, hours, needs=SQL_PERMS)


register(
    Action(
        name="gcp.sql.set_tier",
        provider="gcp",
        description="change the Cloud SQL instance's machine tier (restarts it)",
        service_name="Cloud SQL",
        price_unit="hour",
        schema={
            "type": "object",
            "properties": {
                "resource_id": {
                    "type": "string",
                    # A few legacy projects are domain-scoped (`example.com:shop`).
                    "pattern": (
                        "^projects/(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
                        "/instances/[a-z][a-z0-9-]*$"
                    ),
                },
                "target_sku": {"type": "string", "pattern": "^db-"},
            },
            "required": ["resource_id", "target_sku"],
            "additionalProperties": False,
        },
        permissions=SQL_PERMS,
        read=_read_sql,
        apply=_sql_apply,
        is_done=lambda st, p: st["sku"] == p["target_sku"],
        metrics=_sql_cpu,
    )
)
