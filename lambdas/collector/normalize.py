"""Normalise the providers' event shapes to ResourceChange.

A record from Fluent Bit is the forwarder's envelope:
`{"provider": "aws"|"azure"|"gcp", "billing_account_id": "...", "event": {...},
"resource": {...}}` where `event` is the provider's event exactly as delivered and `resource`
(Azure only) is the ARM resource the forwarder read after the change, because Event Grid
events do not carry a VM size or disk tier. Everything here is pure. Records are decoded
JSON, so objects are plain dicts (an exact `dict` check is several times cheaper than an ABC
check on this per-event path).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from lambdas.collector.model import PROVIDERS, EventIgnored, EventRejected, ResourceChange
from lambdas.common.edge import holds_nul
from lambdas.forwarders.azure import arm_type, tagged_parent
from lambdas.pricing.catalog import (
    AZURE_SQL_TYPE,
    CLOUD_SQL_TYPE,
    azure_sql_objective,
    cloud_sql_engine,
)

AWS_EC2 = "Amazon Elastic Compute Cloud"
AWS_RDS = "Amazon Relational Database Service"
AZURE_VM = "Virtual Machines"
AZURE_DISK = "Storage"
GCP_COMPUTE = "Compute Engine"
# The managed databases' service names, as their price lists and billing exports name them.
GCP_SQL = "Cloud SQL"
AZURE_SQL = "SQL Database"

# CreateDBInstance names engines as RDS does; the price list as the console does.
RDS_ENGINES = {
    "postgres": "PostgreSQL",
    "mysql": "MySQL",
    "mariadb": "MariaDB",
    "aurora-postgresql": "Aurora PostgreSQL",
    "aurora-mysql": "Aurora MySQL",
}


def _req(obj: Mapping[str, Any], key: str, where: str) -> Any:
    value = obj.get(key)
    if value is None or value == "":
        raise EventRejected("missing_field", f"{where}: missing field {key!r}")
    return value


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise EventRejected(
            "wrong_type", f"{where}: expected an object, got {type(value).__name__}"
        )
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise EventRejected("wrong_type", f"{where}: expected a non-empty string, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    """A size, IOPS or throughput figure: finite and not negative, or the event is refused (a
    NaN would poison every total it is added to)."""
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise EventRejected(
            "wrong_type", f"{where}: expected a non-negative finite number, got {value!r}"
        )
    return number


def parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise EventRejected("wrong_type", f"{where}: expected an ISO 8601 time, got {value!r}")
    try:
        # Python 3.11 reads a trailing "Z" as UTC itself.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EventRejected("bad_time", f"{where}: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise EventRejected("bad_time", f"{where}: {value!r} has no time zone")
    try:
        return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
        raise EventRejected("bad_time", f"{where}: {value!r} is outside the calendar") from None


def _items(value: Any) -> list[Mapping[str, Any]]:
    """CloudTrail wraps lists as {"items": [...]}."""
    if isinstance(value, dict):
        value = value.get("items")
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _aws_tags(request: Mapping[str, Any], resource_type: str) -> dict[str, str] | None:
    tags: dict[str, str] = {}
    items = [
        tag
        for spec in _items(request.get("tagSpecificationSet"))
        if spec.get("resourceType") == resource_type
        for tag in spec.get("tags") or spec.get("tagSet", {}).get("items", [])
    ]
    items += request.get("tags") or []  # RDS: [{"key": .., "value": ..}]
    for tag in items:
        found = _tag(tag, False) if isinstance(tag, dict) else None
        if found is not None:
            tags[found[0]] = found[1] or ""
    return tags or None


def _az_to_region(zone: str) -> str:
    """us-east-1a -> us-east-1; us-central1-a -> us-central1."""
    return zone[:-1] if zone[-1:].isalpha() and zone[-2:-1].isdigit() else zone.rsplit("-", 1)[0]


EC2_STATES = {"pending": "running", "running": "running", "stopping": "stopped"}
EC2_ACTION_STATE = {
    "RunInstances": "running",
    "StartInstances": "running",
    "StopInstances": "stopped",
    "TerminateInstances": "deleted",
}


def normalize_aws(envelope: Mapping[str, Any], billing_account: str | None) -> list[ResourceChange]:
    event = _obj(envelope.get("event"), "event")
    detail_type = _req(event, "detail-type", "event")
    detail = _obj(_req(event, "detail", "event"), "event.detail")
    account = _str(_req(event, "account", "event"), "event.account")
    billing = billing_account or account
    region = _str(_req(event, "region", "event"), "event.region")
    when = parse_time(_req(event, "time", "event"), "event.time")
    if detail_type == "EC2 Instance State-change Notification":
        instance = _str(_req(detail, "instance-id", "event.detail"), "event.detail.instance-id")
        raw_state = _str(_req(detail, "state", "event.detail"), "event.detail.state")
        state = "deleted" if raw_state in ("shutting-down", "terminated") else raw_state
        return [
            ResourceChange(
                event_id=f"aws:{_req(event, 'id', 'event')}",
                provider="aws",
                billing_account_id=billing,
                sub_account_id=account,
                region_id=region,
                service_name=AWS_EC2,
                resource_id=instance,
                resource_type="Instance",
                action=f"state:{raw_state}",
                event_time=when,
                state=EC2_STATES.get(state, state),
            )
        ]
    if detail_type == "AWS API Call via CloudTrail":
        return _cloudtrail(detail, billing, account, region, when)
    raise EventIgnored(f"aws detail-type {detail_type!r} is not a lifecycle event")


def _cloudtrail(
    detail: Mapping[str, Any], billing: str, account: str, region: str, when: datetime
) -> list[ResourceChange]:
    name = _str(_req(detail, "eventName", "event.detail"), "event.detail.eventName")
    if detail.get("errorCode"):
        raise EventIgnored(f"{name} failed with {detail['errorCode']}")
    event_id = f"aws:{_req(detail, 'eventID', 'event.detail')}"
    identity = detail.get("userIdentity") or {}
    actor = identity.get("arn") or identity.get("principalId")
    request = _obj(detail.get("requestParameters") or {}, "event.detail.requestParameters")
    response = _obj(detail.get("responseElements") or {}, "event.detail.responseElements")
    base = {
        "provider": "aws",
        "billing_account_id": billing,
        "sub_account_id": account,
        "region_id": region,
        "action": name,
        "event_time": when,
        "actor": actor,
    }
    handler = _CLOUDTRAIL.get(name)
    if handler is None:
        raise EventIgnored(f"CloudTrail {name} does not change a run-rate")
    changes = handler(request, response, base)
    if not changes:
        raise EventRejected("missing_field", f"CloudTrail {name}: no resource id in the event")
    # One API call can touch several resources; each gets its own stable event id.
    return [
        ResourceChange(event_id=f"{event_id}/{rid}", resource_id=rid, **kw) for rid, kw in changes
    ]


Changes = list[tuple[str, dict[str, Any]]]


def _ct_instances(req: Mapping[str, Any], resp: Mapping[str, Any], base: dict[str, Any]) -> Changes:
    action = base["action"]
    items = _items(resp.get("instancesSet")) or _items(req.get("instancesSet"))
    tags = _aws_tags(req, "instance")
    out: Changes = []
    for item in items:
        rid = item.get("instanceId")
        if not isinstance(rid, str):
            continue
        kw = {**base, "service_name": AWS_EC2, "resource_type": "Instance"}
        kw["state"] = EC2_ACTION_STATE[action]
        if action == "RunInstances":
            kw["sku"] = item.get("instanceType") or req.get("instanceType")
            zone = (item.get("placement") or {}).get("availabilityZone")
            if zone:
                kw["region_id"] = _az_to_region(zone)
            item_tags = {
                str(t.get("key")): str(t.get("value", "")) for t in _items(item.get("tagSet"))
            }
            kw["tags"] = item_tags or tags
            # `platform` is "windows" for Windows and absent otherwise; `platformDetails`
            # names the billing product (e.g. "Red Hat Enterprise Linux") when present.
            details = item.get("platformDetails") or (
                "Windows" if item.get("platform") == "windows" else None
            )
            if details:
                kw["attributes"] = {"platform_details": str(details)}
        out.append((rid, kw))
    return out


def _ct_modify_instance(
    req: Mapping[str, Any], resp: Mapping[str, Any], base: dict[str, Any]
) -> Changes:
    rid = req.get("instanceId")
    raw = req.get("instanceType")
    sku = raw.get("value") if isinstance(raw, dict) else raw
    if sku is None and req.get("attribute") == "instanceType":
        sku = req.get("value")
    if not isinstance(rid, str):
        return []
    if sku is None:
        raise EventIgnored("ModifyInstanceAttribute does not change the instance type")
    return [(rid, {**base, "service_name": AWS_EC2, "resource_type": "Instance", "sku": sku})]


# ModifyVolume: (attribute, volumeModification target, request field)
_VOLUME_TARGETS = (("iops", "targetIops", "Iops"), ("throughput", "targetThroughput", "Throughput"))


def _ct_volume(req: Mapping[str, Any], resp: Mapping[str, Any], base: dict[str, Any]) -> Changes:
    action = base["action"]
    kw = {**base, "service_name": AWS_EC2, "resource_type": "Volume"}
    if action == "CreateVolume":
        rid = resp.get("volumeId")
        kw["sku"] = resp.get("volumeType") or req.get("volumeType") or "gp2"
        attrs = {"gib": _number(resp.get("size") or req.get("size") or 0, "volume size")}
        for name in ("iops", "throughput"):
            value = resp.get(name) or req.get(name)
            if value:
                attrs[name] = _number(value, f"volume {name}")
        kw["attributes"] = attrs
        kw["state"] = "available"
        kw["tags"] = _aws_tags(req, "volume")
        zone = resp.get("zone") or req.get("zone")
        if zone:
            kw["region_id"] = _az_to_region(zone)
    elif action == "ModifyVolume":
        inner = req.get("ModifyVolumeRequest") or req
        mod = (resp.get("ModifyVolumeResponse") or {}).get("volumeModification") or {}
        rid = inner.get("VolumeId") or inner.get("volumeId") or mod.get("volumeId")
        sku = mod.get("targetVolumeType") or inner.get("VolumeType") or inner.get("volumeType")
        size = mod.get("targetSize") or inner.get("Size") or inner.get("size")
        if sku:
            kw["sku"] = sku
        attrs = {}
        for name, target, field in _VOLUME_TARGETS:
            value = mod.get(target) or inner.get(field)
            if value:
                attrs[name] = _number(value, f"volume {name}")
        if size:
            attrs["gib"] = _number(size, "volume size")
        if attrs:
            kw["attributes"] = attrs
    else:  # DeleteVolume
        rid = req.get("volumeId")
        kw["state"] = "deleted"
    return [(rid, kw)] if isinstance(rid, str) else []


def _ct_db(req: Mapping[str, Any], resp: Mapping[str, Any], base: dict[str, Any]) -> Changes:
    action = base["action"]
    ident = req.get("dBInstanceIdentifier")
    if not isinstance(ident, str):
        return []
    arn = resp.get("dBInstanceArn") or (
        f"arn:aws:rds:{base['region_id']}:{base['sub_account_id']}:db:{ident.lower()}"
    )
    kw = {**base, "service_name": AWS_RDS, "resource_type": "DBInstance"}
    attrs: dict[str, Any] = {}
    if req.get("dBInstanceClass"):
        kw["sku"] = req["dBInstanceClass"]
    if req.get("engine"):
        attrs["engine"] = str(req["engine"])
    if "multiAZ" in req:
        attrs["multi_az"] = bool(req["multiAZ"])
    if action != "DeleteDBInstance":
        attrs.update(_db_storage(req, resp, action == "CreateDBInstance"))
    kw["attributes"] = attrs
    if action == "CreateDBInstance":
        kw["state"] = "running"
        kw["tags"] = _aws_tags(req, "db")
    elif action == "DeleteDBInstance":
        kw["state"] = "deleted"
    return [(arn, kw)]


# (attribute, field in CreateDBInstance / ModifyDBInstance and in the DBInstance response)
_DB_STORAGE_FIELDS = (
    ("gib", "allocatedStorage"),
    ("iops", "iops"),
    ("throughput", "storageThroughput"),
)


def _db_storage(req: Mapping[str, Any], resp: Mapping[str, Any], create: bool) -> dict[str, Any]:
    """Storage type, GiB, IOPS and throughput. The request states what changes; a modification
    applied later shows in the response's pendingModifiedValues; the response itself holds the
    current values (including the defaults AWS chose on create)."""
    pending = resp.get("pendingModifiedValues") or {}
    out: dict[str, Any] = {}
    storage = req.get("storageType") or pending.get("storageType") or resp.get("storageType")
    for name, field in _DB_STORAGE_FIELDS:
        value = req.get(field) or pending.get(field) or resp.get(field)
        if value:
            out[name] = _number(value, f"db {field}")
    if not storage and create:
        # CreateDBInstance's documented default: io1 when IOPS are given, else gp2.
        storage = "io1" if "iops" in out else "gp2"
    if storage:
        out["storage_type"] = str(storage)
    return out


# What an EC2 resource id's prefix says it is; CreateTags on anything else (security groups,
# images, snapshots, ...) changes no run-rate.
_EC2_TAGGED = {"i-": "Instance", "vol-": "Volume"}


def _tag(item: Mapping[str, Any], removed: bool) -> tuple[str, str | None] | None:
    key = item.get("key") if "key" in item else item.get("Key")
    if not isinstance(key, str) or not key:
        return None
    value = item.get("value") if "value" in item else item.get("Value")
    return key, None if removed else str(value if value is not None else "")


def _tag_changes(items: list[Any], removed: bool, what: str) -> dict[str, str | None]:
    if not items:
        raise EventRejected("missing_field", f"CloudTrail {what}: no tags")
    found = [_tag(i, removed) if isinstance(i, dict) else None for i in items]
    if None in found:
        raise EventRejected("missing_field", f"CloudTrail {what}: a tag without a key")
    return dict(t for t in found if t is not None)


def _ct_ec2_tags(req: Mapping[str, Any], resp: Mapping[str, Any], base: dict[str, Any]) -> Changes:
    """CreateTags / DeleteTags: the tags set or removed on each instance and volume named. A
    DeleteTags item with a value (an empty one too) removes the tag only where it has that
    value, as AWS does; without one, whatever its value."""
    action = base["action"]
    tag_items = _items(req.get("tagSet"))
    what: dict[str, Any]
    if action == "CreateTags":
        what = {"tag_changes": _tag_changes(tag_items, False, action)}
    elif not tag_items:
        # `aws ec2 delete-tags --resources i-...` removes all of the user's tags (AWS keeps
        # its own `aws:` ones).
        what = {"drop_user_tags": True}
    else:
        _tag_changes(tag_items, True, action)  # refuses an item without a key
        anyhow: dict[str, str | None] = {}
        only_if: dict[str, set[str]] = {}
        for item in tag_items:
            key, value = _tag(item, False) or ("", "")
            if item.get("value", item.get("Value")) is None:
                anyhow[key] = None
            else:
                only_if.setdefault(key, set()).add(str(value))
        what = {
            "tag_changes": anyhow,
            "tag_removals_if": {k: frozenset(v) for k, v in only_if.items() if k not in anyhow},
        }
    out: Changes = []
    for item in _items(req.get("resourcesSet")):
        rid = item.get("resourceId")
        if not isinstance(rid, str):
            continue
        kind = next((k for prefix, k in _EC2_TAGGED.items() if rid.startswith(prefix)), None)
        if kind is not None:
            kw = {**base, "service_name": AWS_EC2, "resource_type": kind, **what}
            out.append((rid, kw))
    if not out and _items(req.get("resourcesSet")):
        raise EventIgnored(f"{action} on no instance or volume")
    return out


def _ct_rds_tags(req: Mapping[str, Any], resp: Mapping[str, Any], base: dict[str, Any]) -> Changes:
    """AddTagsToResource / RemoveTagsFromResource on a DB instance (its ARN, the id the
    inventory keys it by); on snapshots, clusters or option groups it changes no run-rate."""
    arn = req.get("resourceName")
    if not isinstance(arn, str):
        return []
    # RDS identifiers are case-insensitive and kept in lower case, as the inventory's ARN.
    arn = arn.lower()
    if ":db:" not in arn:
        kind = (arn.split(":") + [""] * 6)[5]
        raise EventIgnored(f"{base['action']} on a {kind or 'resource'} that is no DB instance")
    if base["action"] == "RemoveTagsFromResource":
        keys = req.get("tagKeys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise EventRejected("missing_field", "CloudTrail RemoveTagsFromResource: no tagKeys")
        changes: dict[str, str | None] = dict.fromkeys(keys)
    else:
        changes = _tag_changes(list(req.get("tags") or []), False, base["action"])
    kw = {**base, "service_name": AWS_RDS, "resource_type": "DBInstance", "tag_changes": changes}
    return [(arn, kw)]


_CLOUDTRAIL: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any], dict[str, Any]], Changes]]
_CLOUDTRAIL = {
    "RunInstances": _ct_instances,
    "StartInstances": _ct_instances,
    "StopInstances": _ct_instances,
    "TerminateInstances": _ct_instances,
    "ModifyInstanceAttribute": _ct_modify_instance,
    "CreateVolume": _ct_volume,
    "ModifyVolume": _ct_volume,
    "DeleteVolume": _ct_volume,
    "CreateDBInstance": _ct_db,
    "ModifyDBInstance": _ct_db,
    "DeleteDBInstance": _ct_db,
    "CreateTags": _ct_ec2_tags,
    "DeleteTags": _ct_ec2_tags,
    "AddTagsToResource": _ct_rds_tags,
    "RemoveTagsFromResource": _ct_rds_tags,
}

AZURE_EVENT_TYPES = {
    "Microsoft.Resources.ResourceWriteSuccess",
    "Microsoft.Resources.ResourceDeleteSuccess",
    "Microsoft.Resources.ResourceActionSuccess",
}
# ResourceActionSuccess operations that change what a VM costs. A powered-off VM that is not
# deallocated is still billed for compute, so "stopped" is priced like "running" on Azure.
AZURE_ACTIONS = {
    "microsoft.compute/virtualmachines/start/action": "running",
    "microsoft.compute/virtualmachines/restart/action": "running",
    "microsoft.compute/virtualmachines/poweroff/action": "stopped",
    "microsoft.compute/virtualmachines/deallocate/action": "deallocated",
}
AZURE_TYPES = {
    "microsoft.compute/virtualmachines": (AZURE_VM, "Microsoft.Compute/virtualMachines"),
    "microsoft.compute/disks": (AZURE_DISK, "Microsoft.Compute/disks"),
    "microsoft.sql/servers/databases": (AZURE_SQL, AZURE_SQL_TYPE),
}
# Every logical server has a `master` database, which is not billed.
AZURE_FREE_DATABASES = frozenset({"master"})


# An Azure VM's instance view power state -> the inventory's state (AZURE_ACTIONS' words).
AZURE_POWER_STATES = {
    "running": "running",
    "starting": "running",
    "stopped": "stopped",
    "stopping": "stopped",
    "deallocated": "deallocated",
    "deallocating": "deallocated",
}


def _azure_power_state(props: Mapping[str, Any]) -> str | None:
    view = props.get("instanceView")
    statuses = view.get("statuses") if isinstance(view, Mapping) else None
    for status in statuses if isinstance(statuses, list) else []:
        code = status.get("code") if isinstance(status, Mapping) else None
        if isinstance(code, str) and code.startswith("PowerState/"):
            return AZURE_POWER_STATES.get(code.removeprefix("PowerState/").lower())
    return None


def _arm_fields(resource: Mapping[str, Any], rtype: str, written: bool) -> dict[str, Any]:
    """Size, tags and (after a write) state from the ARM resource the forwarder attached."""
    props = resource.get("properties") or {}
    out: dict[str, Any] = {}
    if isinstance(resource.get("tags"), dict):
        out["tags"] = {str(k): str(v) for k, v in resource["tags"].items()}
    elif written:
        # ARM leaves `tags` out of a resource that has none: its last tag was removed.
        out["tags"] = {}
    if rtype == "microsoft.compute/virtualmachines":
        out["sku"] = (props.get("hardwareProfile") or {}).get("vmSize")
        # A Windows VM pays the Windows rate unless it uses Azure Hybrid Benefit
        # (licenseType Windows_Server / Windows_Client).
        os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
        vm_attrs = {"os_type": os_disk.get("osType"), "license_type": props.get("licenseType")}
        out["attributes"] = {k: str(v) for k, v in vm_attrs.items() if v}
        if written:
            # A write is any PUT or PATCH (a tag edit too), not a start: the power state is
            # the instance view's, when the forwarder read it; without one, a written VM is
            # taken as running (it is, just after its creation).
            out["state"] = _azure_power_state(props) or "running"
    elif rtype == "microsoft.sql/servers/databases":
        out.update(_arm_database(resource, props, written))
    else:
        out["sku"] = (resource.get("sku") or {}).get("name")
        if props.get("diskSizeGB") is not None:
            out["attributes"] = {"gib": _number(props["diskSizeGB"], "properties.diskSizeGB")}
        if written:
            out["state"] = "available"
    return out


def _arm_database(
    resource: Mapping[str, Any], props: Mapping[str, Any], written: bool
) -> dict[str, Any]:
    """An Azure SQL database's size: the service objective it was asked to run at (a resize
    is billed at it within minutes; the event may come before it completes), else the one it
    runs at, else its ARM sku (`GP_Gen5` of 2 vCores); its licence, zone redundancy and
    maximum data size (what storage is billed for)."""
    sku = resource.get("sku")
    size = (
        props.get("requestedServiceObjectiveName")
        or props.get("currentServiceObjectiveName")
        or (azure_sql_objective(sku) if isinstance(sku, dict) and sku.get("name") else None)
    )
    attrs: dict[str, Any] = {"zone_redundant": bool(props.get("zoneRedundant"))}
    if props.get("licenseType"):
        attrs["license_type"] = str(props["licenseType"])
    if props.get("maxSizeBytes") is not None:
        attrs["gib"] = _number(props["maxSizeBytes"], "properties.maxSizeBytes") / 2**30
    out: dict[str, Any] = {"sku": size, "attributes": attrs}
    if written:
        out["state"] = "available"
    return out


# ARM containers whose deletion deletes the priced resources under them.
AZURE_CONTAINERS = {"microsoft.sql/servers": "Microsoft.Sql/servers"}
AZURE_RESOURCE_GROUP = "Microsoft.Resources/resourceGroups"


def azure_container(uri: str) -> str | None:
    """The type of the container an ARM id names (a resource group, a logical server), else
    None. A subscription is none: its deletion is not an event a forwarder sees."""
    parts = uri.strip("/").split("/")
    if len(parts) == 4 and parts[0].lower() == "subscriptions":
        return AZURE_RESOURCE_GROUP if parts[2].lower() == "resourcegroups" else None
    return AZURE_CONTAINERS.get(arm_type(uri)) if len(parts) == 8 else None


def held_by(provider: str, resource_id: str) -> tuple[str, str] | None:
    """(service, resource type) of an inventory resource a container's deletion can reach,
    from its id: Azure's priced resources (their ARM ids say their type)."""
    return AZURE_TYPES.get(arm_type(resource_id)) if provider == "azure" else None


def _azure_priced(uri: str, retagged: str | None, readable: bool) -> tuple[str, list[str], str]:
    """(ARM id, its segments, its lower-cased type) of the priced resource an event is about,
    or why not: a re-tag through the Tags API is its parent's change."""
    if retagged is not None:
        # Its tags written (the forwarder read the resource itself back) or deleted (all of
        # them removed): the resource's own change, not a sub-resource's.
        if not arm_type(retagged):
            raise EventIgnored("azure tags of a resource group or subscription: no run-rate")
        if not readable:
            raise EventIgnored("azure tags written, but the resource could not be read back")
        uri = retagged
    parts = uri.strip("/").split("/")
    if len(parts) < 8 or parts[0].lower() != "subscriptions":
        raise EventRejected("bad_resource_id", f"azure resourceUri {uri!r} is not an ARM id")
    rtype = arm_type(uri)
    if rtype not in AZURE_TYPES:
        # Besides the types not priced: a VM's extension, a server's firewall rule, which
        # are not the VM or the database, whose own row they must neither create nor change.
        if len(parts) > 8:
            raise EventIgnored(f"azure sub-resource {'/'.join(parts[7:])[:80]!r} is not priced")
        raise EventIgnored(f"azure resource type {rtype} is not priced")
    if rtype == "microsoft.sql/servers/databases" and parts[9].lower() in AZURE_FREE_DATABASES:
        raise EventIgnored("azure SQL master database: not billed")
    return uri, parts, rtype


def normalize_azure(
    envelope: Mapping[str, Any], billing_account: str | None
) -> list[ResourceChange]:
    event = _obj(envelope.get("event"), "event")
    # Event Grid schema uses eventType/eventTime, the CloudEvents schema type/time.
    event_type = event.get("eventType") or event.get("type")
    if event_type not in AZURE_EVENT_TYPES:
        raise EventRejected("unknown_event_type", f"azure event type {event_type!r} is unknown")
    data = _obj(_req(event, "data", "event"), "event.data")
    uri = _str(data.get("resourceUri") or event.get("subject"), "event.data.resourceUri")
    deleted = event_type.endswith("ResourceDeleteSuccess")
    resource = envelope.get("resource")
    operation = str(data.get("operationName") or "")
    kw: dict[str, Any] = {}
    region = None
    container = azure_container(uri)
    if container is not None:
        if not deleted:
            raise EventIgnored(f"azure {container} written or acted on: no run-rate of its own")
        # Deleting a resource group or a logical server deletes what it holds, and Event Grid
        # raises the event for the container only.
        parts = uri.strip("/").split("/")
        if not all(parts):
            raise EventRejected("bad_resource_id", f"azure resourceUri {uri!r} is not an ARM id")
        uri, service, resource_type = "/" + "/".join(parts), "", container
        subscription = parts[1]
        kw = {"state": "deleted", "contains": True}
    else:
        retagged = tagged_parent(uri)
        uri, parts, rtype = _azure_priced(uri, retagged, deleted or isinstance(resource, dict))
        service, resource_type = AZURE_TYPES[rtype]
        subscription = parts[1]
        if deleted and retagged is not None:
            kw["tags"] = {}
        elif deleted:
            kw["state"] = "deleted"
        elif event_type.endswith("ResourceActionSuccess"):
            state = AZURE_ACTIONS.get(operation.lower())
            if state is None:
                raise EventIgnored(f"azure action {operation} does not change a run-rate")
            kw["state"] = state
        if isinstance(resource, dict) and not deleted:
            region = resource.get("location")
            kw.update(_arm_fields(resource, rtype, event_type.endswith("ResourceWriteSuccess")))
    when = parse_time(event.get("eventTime") or event.get("time"), "event.eventTime")
    claims = data.get("claims") or {}
    actor = (
        claims.get("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn")
        or claims.get("appid")
        or ((data.get("authorization") or {}).get("evidence") or {}).get("principalId")
    )
    return [
        ResourceChange(
            event_id=f"azure:{_req(event, 'id', 'event')}",
            provider="azure",
            billing_account_id=billing_account or subscription,
            sub_account_id=subscription,
            region_id=region,
            service_name=service,
            resource_id=uri.lower(),
            resource_type=resource_type,
            action=operation or str(event_type),
            event_time=when,
            actor=actor,
            **kw,
        )
    ]


GCP_METHODS = {
    "compute.instances.insert": "running",
    "compute.instances.delete": "deleted",
    "compute.instances.start": "running",
    "compute.instances.stop": "stopped",
    "compute.instances.setMachineType": None,
    "compute.disks.insert": "available",
    "compute.disks.delete": "deleted",
    # Re-labels: setLabels replaces the whole label set (with its fingerprint).
    "compute.instances.setLabels": None,
    "compute.disks.setLabels": None,
    # Cloud SQL (long-running: an entry when the operation starts, with the request, and one
    # when it ends, without). A PATCH of the instance is logged as `update` too.
    "cloudsql.instances.create": "running",
    "cloudsql.instances.update": None,
    "cloudsql.instances.delete": "deleted",
}
# A Cloud SQL instance's activation policy -> the inventory's state (NEVER: stopped, billed
# for its disk only).
CLOUD_SQL_ACTIVATION = {"ALWAYS": "running", "NEVER": "stopped", "ON_DEMAND": "running"}
# What the Admin API gives an instance created without saying (a 10 GB SSD, zonal).
CLOUD_SQL_DEFAULTS = {"gib": 10.0, "disk_type": "PD_SSD", "availability": "zonal"}
# Project ids (a few legacy ones are domain-scoped, `example.com:shop`) and instance names.
_GCP_PROJECT = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_CLOUD_SQL_NAME = re.compile(r"^[a-z][a-z0-9-]{0,97}$")


def _gcp_tags(
    short: str, request: Mapping[str, Any], operation: Mapping[str, Any]
) -> dict[str, str] | None:
    """The labels a creation or a setLabels gives the resource; None when the entry does not
    say: other methods, and an operation's completion entry, which is logged later without
    the request (read as "all labels removed", it wiped every re-label seconds after it).
    The request of a setLabels that removes all labels has none (empty lists are left out
    of the log)."""
    relabel = short.endswith(".setLabels")
    if not relabel and short not in ("compute.instances.insert", "compute.disks.insert"):
        return None
    labels = _gcp_labels(request.get("labels"))
    completion = operation.get("last") is True and operation.get("first") is not True
    if labels is None and relabel and not completion:
        return {}
    return labels


def _gcp_labels(value: Any) -> dict[str, str] | None:
    """Labels as Compute's audit log writes them, a list of {key, value} (a real setLabels
    entry), or as the API takes them, a map (None: the request does not say)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, list):
        raise EventRejected("wrong_type", f"gcp request.labels: expected a list, got {value!r:.80}")
    found = [_tag(item, False) if isinstance(item, dict) else None for item in value]
    if None in found:
        raise EventRejected("missing_field", "gcp request.labels: a label without a key")
    return {key: label or "" for key, label in (t for t in found if t is not None)}


def _gcp_entry(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The audit LogEntry, from a Pub/Sub push body, a Pub/Sub message or the entry itself."""
    message = event.get("message", event)
    if isinstance(message, dict) and "data" in message and "protoPayload" not in message:
        try:
            data = base64.b64decode(message["data"], validate=True)
            # orjson, like the request body's parser, refuses lone surrogates, which no store
            # could write.
            decoded = orjson.loads(data)
        except (binascii.Error, ValueError, TypeError):
            raise EventRejected("bad_encoding", "gcp message.data is not base64 JSON") from None
        if b"\\u0000" in data and holds_nul(decoded):
            raise EventRejected("nul_character", "gcp message.data: a string holds a NUL character")
        return _obj(decoded, "message.data")
    return event


def _gcp_image_project(request: Mapping[str, Any], project: str) -> str | None:
    """The project of the boot disk's image or licence: public images with a paid licence
    live in projects such as windows-cloud or rhel-cloud. A `global/images/...` reference is
    an image of the instance's own project."""
    disks = [d for d in request.get("disks") or [] if isinstance(d, dict)]
    boot = next((d for d in disks if d.get("boot")), disks[0] if disks else None)
    if boot is None:
        return None
    licenses = [str(url) for url in boot.get("licenses") or []]
    image = (boot.get("initializeParams") or {}).get("sourceImage")
    for ref in [*licenses, *([str(image)] if image else [])]:
        parts = ref.split("/")
        if "projects" in parts[:-1]:
            return parts[parts.index("projects") + 1]
        if ref.startswith("global/"):
            return project
    return None


def _cloud_sql_name(
    name: str, request: Mapping[str, Any], body: Mapping[str, Any]
) -> tuple[str, str]:
    """(project, instance) of a Cloud SQL entry. Its resourceName is `projects/P/instances/N`;
    a creation's first entry may name the project only (the instance is the request's), and
    older entries wrote `instances/P:N`."""
    parts = name.split("/")
    project = instance = None
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "instances":
        project, instance = parts[1], parts[3]
    elif len(parts) == 2 and parts[0] == "projects":
        project, instance = parts[1], body.get("name") or request.get("instance")
    elif len(parts) == 2 and parts[0] == "instances" and ":" in parts[1]:
        project, instance = parts[1].rsplit(":", 1)
    if not (
        isinstance(project, str)
        and isinstance(instance, str)
        and _GCP_PROJECT.match(project)
        and _CLOUD_SQL_NAME.match(instance)
    ):
        raise EventRejected(
            "bad_resource_id", f"gcp resourceName {name[:120]!r} names no Cloud SQL instance"
        )
    return project, instance


def _cloud_sql_text(settings: Mapping[str, Any], key: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    return _str(value, f"request.body.settings.{key}")


def _cloud_sql_labels(value: Any, create: bool) -> dict[str, Any]:
    """A creation's labels are the instance's whole set; a PATCH merges its labels into the
    instance's, a label sent as null is removed (gcloud's `--remove-labels` and
    `--clear-labels` send that), and one that names none leaves them."""
    if value is None:
        return {"tags": {}} if create else {}
    labels = _obj(value, "request.body.settings.userLabels")
    for key, label in labels.items():
        if not isinstance(label, str) and not (label is None and not create):
            raise EventRejected(
                "wrong_type", f"request.body.settings.userLabels.{key[:40]}: got {label!r:.40}"
            )
    if create:
        return {"tags": dict(labels)}
    return {"tag_changes": dict(labels)}


def _cloud_sql_settings(body: Mapping[str, Any], create: bool) -> dict[str, Any]:
    """Tier, state, labels and pricing attributes a Cloud SQL request states (a PATCH states
    only what it changes)."""
    settings = _obj(body.get("settings") or {}, "request.body.settings")
    kw: dict[str, Any] = {}
    attrs: dict[str, Any] = dict(CLOUD_SQL_DEFAULTS) if create else {}
    if (tier := _cloud_sql_text(settings, "tier")) is not None:
        kw["sku"] = tier
    version = body.get("databaseVersion")
    if version is not None:
        version = _str(version, "request.body.databaseVersion")
        # POSTGRES_15 -> postgres; SQL Server and others keep their name and no price.
        attrs["engine"] = cloud_sql_engine(version) or version.partition("_")[0].lower()
    if (availability := _cloud_sql_text(settings, "availabilityType")) is not None:
        attrs["availability"] = availability.lower()
    size = settings.get("dataDiskSizeGb")
    if size is not None:  # a string in the API's JSON (int64)
        if isinstance(size, bool) or not isinstance(size, str | int | float):
            raise EventRejected("wrong_type", f"settings.dataDiskSizeGb: got {size!r:.40}")
        attrs["gib"] = _number(size, "settings.dataDiskSizeGb")
    if (disk := _cloud_sql_text(settings, "dataDiskType")) is not None:
        attrs["disk_type"] = disk
    if attrs:
        kw["attributes"] = attrs
    if (policy := _cloud_sql_text(settings, "activationPolicy")) is not None:
        kw["state"] = CLOUD_SQL_ACTIVATION.get(policy, "running")
    kw.update(_cloud_sql_labels(settings.get("userLabels"), create))
    return kw


def _cloud_sql(
    entry: Mapping[str, Any],
    payload: Mapping[str, Any],
    method: str,
    short: str,
    billing_account: str | None,
) -> list[ResourceChange]:
    request = _obj(payload.get("request") or {}, "protoPayload.request")
    body = _obj(request.get("body") or {}, "protoPayload.request.body")
    deleting = short == "cloudsql.instances.delete"
    if not body and not deleting:
        # The operation's end (logged without the request: read as a creation it would set a
        # stopped instance running again), or an update naming nothing.
        raise EventIgnored(f"gcp {method} entry states no change")
    name = _str(_req(payload, "resourceName", "protoPayload"), "protoPayload.resourceName")
    project, instance = _cloud_sql_name(name, request, body)
    kw: dict[str, Any]
    if deleting:
        kw = {"state": "deleted"}
    else:
        create = short == "cloudsql.instances.create"
        kw = {"state": "running"} if create else {}
        kw.update(_cloud_sql_settings(body, create))
    labels = (entry.get("resource") or {}).get("labels") or {}
    region = body.get("region") or labels.get("region") or None
    if region is not None:
        region = _str(region, "request.body.region")
    asset = f"//cloudsql.googleapis.com/projects/{project}/instances/{instance}"
    where = (project, region, GCP_SQL, asset, CLOUD_SQL_TYPE)
    return [_gcp_change(entry, payload, method, billing_account, where=where, kw=kw)]


def _gcp_change(
    entry: Mapping[str, Any],
    payload: Mapping[str, Any],
    method: str,
    billing_account: str | None,
    *,
    where: tuple[str, str | None, str, str, str],
    kw: Mapping[str, Any],
) -> ResourceChange:
    """The change of an audit entry; `where` = (project, region, service, asset name, type)."""
    project, region, service, asset, resource_type = where
    return ResourceChange(
        event_id=f"gcp:{_req(entry, 'insertId', 'logEntry')}",
        provider="gcp",
        billing_account_id=billing_account or project,
        sub_account_id=project,
        region_id=region,
        service_name=service,
        resource_id=asset,
        resource_type=resource_type,
        action=method,
        event_time=parse_time(_req(entry, "timestamp", "logEntry"), "logEntry.timestamp"),
        actor=(payload.get("authenticationInfo") or {}).get("principalEmail"),
        **kw,
    )


def normalize_gcp(envelope: Mapping[str, Any], billing_account: str | None) -> list[ResourceChange]:
    entry = _gcp_entry(_obj(envelope.get("event"), "event"))
    payload = _obj(_req(entry, "protoPayload", "logEntry"), "logEntry.protoPayload")
    method = _str(_req(payload, "methodName", "protoPayload"), "protoPayload.methodName")
    short = ".".join(
        method.split(".")[-3:]
    )  # v1.compute.instances.insert -> compute.instances.insert
    if short not in GCP_METHODS:
        raise EventIgnored(f"gcp method {method} does not change a run-rate")
    if (payload.get("status") or {}).get("code"):
        raise EventIgnored(f"gcp {method} failed")
    if short.startswith("cloudsql."):
        return _cloud_sql(entry, payload, method, short, billing_account)
    name = _str(_req(payload, "resourceName", "protoPayload"), "protoPayload.resourceName")
    parts = name.split("/")  # projects/P/zones/Z/instances/N
    if len(parts) != 6 or parts[0] != "projects" or parts[2] != "zones":
        raise EventRejected("bad_resource_id", f"gcp resourceName {name!r} is not a zonal resource")
    project, zone = parts[1], parts[3]
    request = payload.get("request") or {}
    kw: dict[str, Any] = {"state": GCP_METHODS[short]}
    is_disk = parts[4] == "disks"
    if short in ("compute.instances.insert", "compute.instances.setMachineType"):
        machine = request.get("machineType")
        if isinstance(machine, str):
            kw["sku"] = machine.rsplit("/", 1)[-1]
    operation = entry.get("operation")
    tags = _gcp_tags(short, request, operation if isinstance(operation, dict) else {})
    if tags is not None:
        kw["tags"] = tags
    if short == "compute.instances.insert":
        image_project = _gcp_image_project(request, project)
        if image_project:
            kw["attributes"] = {"image_project": image_project}
    if short == "compute.disks.insert":
        disk_type = request.get("type")
        kw["sku"] = disk_type.rsplit("/", 1)[-1] if isinstance(disk_type, str) else "pd-standard"
        if request.get("sizeGb") is not None:
            kw["attributes"] = {"gib": _number(request["sizeGb"], "request.sizeGb")}
    if kw["state"] is None:
        del kw["state"]
    kind = "Disk" if is_disk else "Instance"
    where = (
        project,
        _az_to_region(zone),
        GCP_COMPUTE,
        f"//compute.googleapis.com/{name}",
        f"compute.googleapis.com/{kind}",
    )
    return [_gcp_change(entry, payload, method, billing_account, where=where, kw=kw)]


_NORMALIZERS = {"aws": normalize_aws, "azure": normalize_azure, "gcp": normalize_gcp}


def normalize(record: Any, default_provider: str | None = None) -> list[ResourceChange]:
    """One Fluent Bit record -> the changes it carries. Raises EventRejected / EventIgnored."""
    if not isinstance(record, dict):
        raise EventRejected(
            "wrong_type", f"record: expected an object, got {type(record).__name__}"
        )
    provider = record.get("provider") or default_provider
    if provider not in PROVIDERS:
        raise EventRejected("unknown_provider", f"record: unknown provider {provider!r}")
    billing = record.get("billing_account_id")
    if billing is not None and not isinstance(billing, str):
        raise EventRejected("wrong_type", "record.billing_account_id: expected a string")
    try:
        return _NORMALIZERS[provider](record, billing or None)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError, RecursionError) as exc:
        if isinstance(exc, EventRejected):
            raise
        raise EventRejected("malformed_event", f"{provider} event: {exc}") from None


@dataclass(frozen=True)
class ChangeLimits:
    """What the collector accepts of one normalised change, checked before anything is stored
    (limits in CollectorSettings). Past these, a value would overflow a numeric column, make a
    VictoriaMetrics line too long to import, or sit in the inventory forever (a time in the far
    future makes every later real change of the resource look stale)."""

    max_value_chars: int = 1024
    max_tags: int = 64
    max_quantity: float = 1e9
    max_future_s: float = 3600.0


def check_change(ch: ResourceChange, limits: ChangeLimits, now: datetime) -> None:
    """Raise EventRejected naming the first value of `ch` beyond `limits`. On the collector's
    hot path: messages are built only for a value that fails."""
    most = limits.max_value_chars
    fields = (
        ("resource_id", ch.resource_id),
        ("billing_account_id", ch.billing_account_id),
        ("sub_account_id", ch.sub_account_id),
        ("region_id", ch.region_id),
        ("service_name", ch.service_name),
        ("resource_type", ch.resource_type),
        ("state", ch.state),
        ("sku", ch.sku),
        ("actor", ch.actor),
        ("event id", ch.event_id),
    )
    for where, text in fields:
        if text is not None:
            _check_text(where, text, most)
    # What an event sets and what it removes count together against the limit.
    removed = [(k, v) for k, values in ch.tag_removals_if.items() for v in values]
    changed = [(k, "" if v is None else v) for k, v in ch.tag_changes.items()]  # None: removed
    for pairs in (list((ch.tags or {}).items()), changed + removed):
        if len(pairs) > limits.max_tags:
            raise EventRejected(
                "too_many_tags", f"{len(pairs)} tags exceed the limit of {limits.max_tags}"
            )
        for k, v in pairs:
            if not (isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= most):
                _check_text(f"tag {str(k)[:40]!r}", f"{k}{v}", most)
    for name, value in ch.attributes.items():
        if isinstance(value, str):
            _check_text(f"attribute {name!r}", value, most)
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and not (math.isfinite(value) and abs(value) <= limits.max_quantity)
        ):
            raise EventRejected(
                "out_of_range", f"attribute {name!r}={value!r} is outside ±{limits.max_quantity:g}"
            )
    ahead = (ch.event_time - now).total_seconds()
    if ahead > limits.max_future_s:
        raise EventRejected(
            "future_time",
            f"event time {ch.event_time.isoformat()} is {ahead:.0f} s in the future (limit "
            f"{limits.max_future_s:g} s)",
        )


def _check_text(where: str, text: object, most: int) -> None:
    if not isinstance(text, str):
        # A provider field of the wrong JSON type that the normaliser passed through.
        raise EventRejected("wrong_type", f"{where}: expected a string, got {text!r:.80}")
    if len(text) > most:
        raise EventRejected(
            "value_too_long",
            f"{where} has {len(text)} characters, more than the limit of {most}",
        )
