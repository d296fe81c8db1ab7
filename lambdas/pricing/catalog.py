"""Pricing a resource from the price catalog. Pure: the catalog is passed in.

A resource's run-rate is the sum of its price parts: an AWS instance is one part, a GCP
machine type is N vCPU plus M GiB of memory (plus a licence per vCPU for Windows images), a
disk is GiB x a per-GiB-month price plus, where the volume type bills them, provisioned IOPS
and throughput above what the type includes, an RDS instance is its class plus its storage.
If any part is missing from the catalog the resource is unpriced (None), never $0.

This runs once per event on the collector's hot path: every part is one dict lookup with a
plain-tuple key (hashing and comparing a tuple is done in C, a dataclass key cost ~0.8 us).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, cast

HOURS_PER_MONTH = 730.0  # the providers' own convention for monthly prices
# Units priced per month: converted to per hour by HOURS_PER_MONTH.
MONTHLY_UNITS = frozenset({"gib_month", "iops_month", "mibps_month"})

# States in which a resource is billed. Azure bills a powered-off VM until it is deallocated.
_COMPUTE_BILLED = {"aws": {"running"}, "azure": {"running", "stopped"}, "gcp": {"running"}}


class PriceKey(NamedTuple):
    provider: str
    service_name: str
    region_id: str
    sku: str
    unit: str  # hour | gib_month | iops_month | mibps_month


PriceBook = Mapping[PriceKey, float]
# (region_id, sku, unit, quantity) of one priced part of a resource
Part = tuple[str, str, str, float]

# GCP predefined machine types: GiB of memory per vCPU by family and class.
_GCP_MEM = {
    "n1": {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9},
    "e2": {"standard": 4.0, "highmem": 8.0, "highcpu": 1.0},
    "n2": {"standard": 4.0, "highmem": 8.0, "highcpu": 1.0},
    "n2d": {"standard": 4.0, "highmem": 8.0, "highcpu": 1.0},
    "c2": {"standard": 4.0},
}
_GCP_TYPE = re.compile(r"^([a-z0-9]+)-(standard|highmem|highcpu)-(\d+)$")
_GCP_CUSTOM = re.compile(r"^(?:([a-z0-9]+)-)?custom-(\d+)-(\d+)$")
# E2 shared-core types are billed as a fraction of the E2 vCPU and RAM SKUs (e2-micro is
# 0.25 vCPU + 1 GiB: 0.25 x $0.021811 + 1 x $0.002923 = the $0.008376/h on the price page).
_GCP_E2_SHARED = {
    "e2-micro": ("e2", 0.25, 1.0),
    "e2-small": ("e2", 0.5, 2.0),
    "e2-medium": ("e2", 1.0, 4.0),
}
# The legacy N1 shared-core types have their own per-instance SKUs ("Micro Instance with
# burstable CPU", "Small Instance with 1 VCPU").
GCP_FLAT_TYPES = frozenset({"f1-micro", "g1-small"})
# Public image projects whose images carry a paid licence. Windows Server is priced (per
# vCPU-hour, one global SKU); the others are known to be licensed but not priced, so an
# instance booted from them is unpriced rather than priced as if it were free.
GCP_WINDOWS_PROJECT = "windows-cloud"
GCP_UNPRICED_LICENSED_PROJECTS = frozenset(
    {
        "rhel-cloud",
        "rhel-sap-cloud",
        "suse-cloud",
        "suse-sap-cloud",
        "windows-sql-cloud",
        "ubuntu-os-pro-cloud",
    }
)
GCP_WINDOWS_LICENSE = "license/windows-server"
# Standard-tier snapshot storage per GiB-month, under one sku for every provider: the
# delete-unattached-volume playbook keeps a snapshot and prices it under this key.
SNAPSHOT_SKU = "snapshot"

# Azure managed disks are priced per tier; a disk is billed at the smallest tier that holds it.
_AZURE_TIERS = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32767]
_AZURE_TIER_NAMES = ["1", "2", "3", "4", "6", "10", "15", "20", "30", "40", "50", "60", "70", "80"]
_AZURE_TIER_PREFIX = {"Premium_LRS": "P", "StandardSSD_LRS": "E", "Standard_LRS": "S"}
_STANDARD_HDD_SMALLEST = 32
# Azure Hybrid Benefit: a Windows VM with one of these licence types pays the base rate.
_AZURE_OWN_LICENSE = frozenset({"Windows_Server", "Windows_Client"})

# EC2 platform details (the instance's billing product, as RunInstances / DescribeInstances
# report it) -> the usage operation the price list keys its products by. AWS documents this
# table under "AMI billing information fields"; "Linux/UNIX" is plain RunInstances.
AWS_USAGE_OPERATIONS = {
    "Linux/UNIX": "RunInstances",
    "Red Hat BYOL Linux": "RunInstances:00g0",
    "Red Hat Enterprise Linux": "RunInstances:0010",
    "Red Hat Enterprise Linux with HA": "RunInstances:1010",
    "Red Hat Enterprise Linux with SQL Server Standard and HA": "RunInstances:1014",
    "Red Hat Enterprise Linux with SQL Server Enterprise and HA": "RunInstances:1110",
    "Red Hat Enterprise Linux with SQL Server Standard": "RunInstances:0014",
    "Red Hat Enterprise Linux with SQL Server Web": "RunInstances:0210",
    "Red Hat Enterprise Linux with SQL Server Enterprise": "RunInstances:0110",
    "SQL Server Enterprise": "RunInstances:0100",
    "SQL Server Standard": "RunInstances:0004",
    "SQL Server Web": "RunInstances:0200",
    "SUSE Linux": "RunInstances:000g",
    "Ubuntu Pro": "RunInstances:0g00",
    "Windows": "RunInstances:0002",
    "Windows BYOL": "RunInstances:0800",
    "Windows with SQL Server Enterprise": "RunInstances:0102",
    "Windows with SQL Server Standard": "RunInstances:0006",
    "Windows with SQL Server Web": "RunInstances:0202",
}
AWS_LINUX_OPERATION = "RunInstances"

# EBS: what gp3 includes; io2 IOPS are priced in three tiers (the price list's
# EBS:VolumeP-IOPS.io2, .tier2 and .tier3 products).
EBS_GP3_BASE_IOPS = 3000.0
EBS_GP3_BASE_MIBPS = 125.0
_IO2_TIERS = ((0.0, 32000.0, "io2/iops"), (32000.0, 64000.0, "io2/iops.tier2"))
_IO2_TOP = (64000.0, "io2/iops.tier3")

# RDS gp3 includes 3,000 IOPS and 125 MiB/s below 400 GiB and 12,000 IOPS and 500 MiB/s from
# 400 GiB (MySQL, MariaDB, PostgreSQL). Aurora storage is billed on the cluster, which is not
# an inventory resource, so an Aurora instance is its class only.
RDS_GP3_THRESHOLD_GIB = 400.0
RDS_GP3_BASE = {False: (3000.0, 125.0), True: (12000.0, 500.0)}
RDS_STORAGE_TYPES = frozenset({"gp2", "gp3", "io1", "io2", "standard"})
# An Aurora cluster on I/O-Optimized storage (RDS StorageType "aurora-iopt1") pays about 30 %
# more per instance hour than on Aurora Standard, and the offer file lists both products for
# the same class, engine and deployment: its instance prices carry this suffix.
AURORA_IO_OPTIMIZED_STORAGE = "aurora-iopt1"
AURORA_IO_OPTIMIZED_SKU = "/io-optimized"
# The inventory's resource types of the managed databases priced here besides RDS (their
# Cloud Asset Inventory and ARM type names).
CLOUD_SQL_TYPE = "sqladmin.googleapis.com/Instance"
AZURE_SQL_TYPE = "Microsoft.Sql/servers/databases"
# Volume / storage types whose IOPS are all provisioned and billed (EBS and RDS alike).
_PIOPS_TYPES = frozenset({"io1", "io2"})


# Cloud SQL (MySQL and PostgreSQL; SQL Server's licence is priced apart): an instance is its
# tier's vCPUs and GiB of memory (`db-custom-4-16384`, composed like a GCE custom machine) or a
# shared-core tier's flat rate, at its engine's and availability's prices (Regional, high
# availability, costs twice Zonal), plus its data disk per GiB-month (PD_SSD is the price
# list's "Standard storage", PD_HDD its "Low cost storage"). Legacy `db-n1-*` and Enterprise
# Plus tiers have other SKUs: unpriced.
CLOUD_SQL_ENGINES = {"MYSQL": "mysql", "POSTGRES": "postgres"}
CLOUD_SQL_FLAT_TIERS = frozenset({"db-f1-micro", "db-g1-small"})
CLOUD_SQL_DISKS = {"PD_SSD": "ssd", "PD_HDD": "hdd"}
# Azure SQL Database (vCore): a service objective (`GP_Gen5_2`) is its tier, hardware and
# vCores. Serverless (`GP_S_Gen5_2`), DTU (`S0`) and elastic pool databases are others.
AZURE_SQL_OBJECTIVE = re.compile(r"^(GP|BC|HS)_(Gen\d+)_([1-9]\d{0,2})$")
# Business Critical's zone redundancy costs nothing extra; General Purpose's and Hyperscale's
# is a meter of its own, not read (no price rather than a low one).
AZURE_SQL_FREE_ZONE_REDUNDANCY = frozenset({"BC"})
# Azure Hybrid Benefit: the SQL Server licence is the customer's own.
AZURE_SQL_OWN_LICENSE = "BasePrice"


def cloud_sql_engine(database_version: str) -> str | None:
    """The engine a Cloud SQL instance's prices are kept under (`POSTGRES_15` -> postgres)."""
    return CLOUD_SQL_ENGINES.get(database_version.partition("_")[0])


def cloud_sql_compute(tier: str, engine: str, availability: str) -> list[tuple[str, float]] | None:
    """(price sku, quantity per hour) of a Cloud SQL tier: `postgres/zonal/core` x vCPUs and
    `.../ram` x GiB, or `.../db-f1-micro` x 1; None for a tier not priced."""
    prefix = f"{engine}/{availability}/"
    if tier in CLOUD_SQL_FLAT_TIERS:
        return [(prefix + tier, 1.0)]
    shape = gcp_machine_shape(tier)
    if shape is None or shape[0] != "db":
        return None
    return [(prefix + "core", shape[1]), (prefix + "ram", shape[2])]


def azure_sql_objective(sku: Mapping[str, Any]) -> str:
    """The size a database runs at, as a resize names it (`GP_Gen5_2`), from its ARM sku when
    the database does not say (`currentServiceObjectiveName`): ARM reports a vCore sku as its
    family's name and vCore count (`{"name": "GP_Gen5", "family": "Gen5", "capacity": 2}`)."""
    name, capacity = str(sku["name"]), sku.get("capacity")
    if sku.get("family") and isinstance(capacity, int) and capacity > 0:
        return f"{name}_{capacity}"
    return name


def azure_sql_compute(
    objective: str, license_type: object, zone_redundant: bool
) -> list[tuple[str, float]] | None:
    """(price sku, quantity per hour) of an Azure SQL database's compute: `GP_Gen5_2/compute`
    x 1 plus `GP/license` x vCores unless the licence is the customer's own; None for a size
    not priced."""
    m = AZURE_SQL_OBJECTIVE.match(objective)
    if m is None or (zone_redundant and m[1] not in AZURE_SQL_FREE_ZONE_REDUNDANCY):
        return None
    parts = [(f"{objective}/compute", 1.0)]
    if license_type != AZURE_SQL_OWN_LICENSE:
        parts.append((f"{m[1]}/license", float(m[3])))
    return parts


@lru_cache(maxsize=4096)
def gcp_machine_shape(machine_type: str) -> tuple[str, float, float] | None:
    """(family, vCPUs, GiB memory) of a predefined, E2 shared-core or custom GCP machine
    type. Cached: there are few machine types and this runs per event."""
    if m := _GCP_TYPE.match(machine_type):
        family, klass, cpus = m.group(1), m.group(2), float(m.group(3))
        ratio = _GCP_MEM.get(family, {}).get(klass)
        return (family, cpus, cpus * ratio) if ratio is not None else None
    if machine_type in _GCP_E2_SHARED:
        return _GCP_E2_SHARED[machine_type]
    if m := _GCP_CUSTOM.match(machine_type):
        return (m.group(1) or "n1", float(m.group(2)), float(m.group(3)) / 1024.0)
    return None


def azure_disk_tier(sku: str, gib: float) -> str | None:
    """The tier a managed disk of this sku and size is billed at (`P15` for a 256 GiB
    Premium_LRS disk); None for a sku that is not priced per tier."""
    prefix = _AZURE_TIER_PREFIX.get(sku)
    if prefix is None:
        return None
    for cap, name in zip(_AZURE_TIERS, _AZURE_TIER_NAMES, strict=True):
        # Standard HDD has no tier below S4 (32 GiB): a smaller disk is billed as an S4.
        if gib <= cap and not (prefix == "S" and cap < _STANDARD_HDD_SMALLEST):
            return f"{prefix}{name}"
    return None


@dataclass(frozen=True, slots=True)
class Shape:
    """What pricing needs to know about a resource."""

    provider: str
    service_name: str
    resource_type: str
    region_id: str
    sku: str | None
    size: Mapping[str, Any]
    state: str


def _num(size: Mapping[str, Any], name: str) -> float | None:
    value = size.get(name)
    return float(value) if value is not None else None


def _ebs_performance(r: Shape, sku: str) -> list[Part] | None:
    """Provisioned IOPS and throughput parts of an EBS volume; None if they are unknown."""
    region = r.region_id
    if sku in _PIOPS_TYPES:
        iops = _num(r.size, "iops")
        if not iops:
            return None
        if sku == "io1":
            return [(region, "io1/iops", "iops_month", iops)]
        parts = [
            (region, name, "iops_month", min(iops, hi) - lo)
            for lo, hi, name in _IO2_TIERS
            if iops > lo
        ]
        if iops > _IO2_TOP[0]:
            parts.append((region, _IO2_TOP[1], "iops_month", iops - _IO2_TOP[0]))
        return parts
    if sku == "gp3":
        # A gp3 volume created without IOPS / throughput gets the included baseline.
        parts = []
        iops = _num(r.size, "iops") or EBS_GP3_BASE_IOPS
        mibps = _num(r.size, "throughput") or EBS_GP3_BASE_MIBPS
        if iops > EBS_GP3_BASE_IOPS:
            parts.append((region, "gp3/iops", "iops_month", iops - EBS_GP3_BASE_IOPS))
        if mibps > EBS_GP3_BASE_MIBPS:
            parts.append((region, "gp3/throughput", "mibps_month", mibps - EBS_GP3_BASE_MIBPS))
        return parts
    return []


def _rds_storage(r: Shape, engine: str, deployment: str) -> list[Part] | None:
    """Allocated storage, provisioned IOPS and throughput of a (non-Aurora) RDS instance."""
    gib = _num(r.size, "gib")
    storage = r.size.get("storage_type")
    if not gib or storage not in RDS_STORAGE_TYPES:
        return None
    sku = f"{storage}/{engine}/{deployment}"
    parts: list[Part] = [(r.region_id, sku, "gib_month", gib)]
    iops = _num(r.size, "iops")
    if storage in _PIOPS_TYPES:
        if not iops:
            return None
        parts.append((r.region_id, sku, "iops_month", iops))
    elif storage == "gp3":
        base_iops, base_mibps = RDS_GP3_BASE[gib >= RDS_GP3_THRESHOLD_GIB]
        mibps = _num(r.size, "throughput")
        if iops and iops > base_iops:
            parts.append((r.region_id, sku, "iops_month", iops - base_iops))
        if mibps and mibps > base_mibps:
            parts.append((r.region_id, sku, "mibps_month", mibps - base_mibps))
    return parts


def _aws_volume(r: Shape, sku: str) -> list[Part] | None:
    performance = _ebs_performance(r, sku)
    if performance is None:
        return None
    return [(r.region_id, sku, "gib_month", float(r.size.get("gib") or 0.0)), *performance]


def _aws_db(r: Shape, sku: str) -> list[Part] | None:
    engine = r.size.get("engine")
    if not engine:
        return None
    deployment = "Multi-AZ" if r.size.get("multi_az") else "Single-AZ"
    instance: Part = (r.region_id, f"{sku}/{engine}/{deployment}", "hour", 1.0)
    if engine.startswith("aurora"):
        if r.size.get("storage_type") == AURORA_IO_OPTIMIZED_STORAGE:
            instance = (r.region_id, instance[1] + AURORA_IO_OPTIMIZED_SKU, "hour", 1.0)
        return [instance]
    storage = _rds_storage(r, engine, deployment)
    return [instance, *storage] if storage is not None else None


def _aws_instance(r: Shape, sku: str) -> list[Part] | None:
    details = r.size.get("platform_details")
    # Events without platform details (no `platform` field) are Linux/UNIX launches.
    operation = AWS_USAGE_OPERATIONS.get(details) if details else AWS_LINUX_OPERATION
    if operation is None:
        return None
    if operation != AWS_LINUX_OPERATION:
        sku = f"{sku}/{operation}"
    return [(r.region_id, sku, "hour", 1.0)]


_AWS_TYPES = {"Volume": _aws_volume, "DBInstance": _aws_db}


def _aws(r: Shape, sku: str) -> list[Part] | None:
    return _AWS_TYPES.get(r.resource_type, _aws_instance)(r, sku)


def _azure_sql(r: Shape, sku: str) -> list[Part] | None:
    """Compute and licence, and the maximum data size per GB-month (Hyperscale bills the
    storage used, which no event says: unpriced)."""
    compute = azure_sql_compute(sku, r.size.get("license_type"), bool(r.size.get("zone_redundant")))
    gib = _num(r.size, "gib")
    if compute is None or not gib or sku.startswith("HS_"):
        return None
    storage: Part = (r.region_id, f"{sku.partition('_')[0]}/storage", "gib_month", gib)
    return [*((r.region_id, name, "hour", q) for name, q in compute), storage]


def _azure(r: Shape, sku: str) -> list[Part] | None:
    if r.resource_type == AZURE_SQL_TYPE:
        return _azure_sql(r, sku)
    if r.resource_type == "Microsoft.Compute/disks":
        tier = azure_disk_tier(sku, float(r.size.get("gib") or 0.0))
        return [(r.region_id, f"{sku}/{tier}", "hour", 1.0)] if tier else None
    if r.size.get("os_type") == "Windows" and r.size.get("license_type") not in _AZURE_OWN_LICENSE:
        sku = f"{sku}/Windows"
    return [(r.region_id, sku, "hour", 1.0)]


def _cloud_sql_storage(r: Shape) -> Part | None:
    engine, availability = r.size.get("engine"), r.size.get("availability")
    disk = CLOUD_SQL_DISKS.get(str(r.size.get("disk_type") or "PD_SSD"))
    gib = _num(r.size, "gib")
    if not (engine and availability and disk and gib):
        return None
    return (r.region_id, f"{engine}/{availability}/{disk}", "gib_month", gib)


def _cloud_sql(r: Shape, sku: str) -> list[Part] | None:
    storage = _cloud_sql_storage(r)  # None unless engine, availability and disk are known
    if storage is None:
        return None
    compute = cloud_sql_compute(sku, str(r.size["engine"]), str(r.size["availability"]))
    if compute is None:
        return None
    return [*((r.region_id, name, "hour", q) for name, q in compute), storage]


def _gcp(r: Shape, sku: str) -> list[Part] | None:
    region = r.region_id
    if r.resource_type == CLOUD_SQL_TYPE:
        return _cloud_sql(r, sku)
    if r.resource_type.endswith("/Disk"):
        return [(region, sku, "gib_month", float(r.size.get("gib") or 0.0))]
    image_project = r.size.get("image_project")
    if image_project in GCP_UNPRICED_LICENSED_PROJECTS:
        return None
    windows = image_project == GCP_WINDOWS_PROJECT
    if sku in GCP_FLAT_TYPES:
        # The Windows licence of a shared-core VM is a per-instance fee not priced here.
        return None if windows else [(region, sku, "hour", 1.0)]
    shape = gcp_machine_shape(sku)
    if shape is None or (windows and sku in _GCP_E2_SHARED):
        return None
    family, cpus, mem = shape
    parts: list[Part] = [
        (region, f"{family}/core", "hour", cpus),
        (region, f"{family}/ram", "hour", mem),
    ]
    if windows:
        parts.append(("global", GCP_WINDOWS_LICENSE, "hour", cpus))
    return parts


_PARTS = {"aws": _aws, "azure": _azure, "gcp": _gcp}


def parts(r: Shape) -> list[Part] | None:
    """The priced parts of a resource while it is billed; None if it cannot be priced."""
    if not r.sku or r.provider not in _PARTS:
        return None
    return _PARTS[r.provider](r, r.sku)


def is_billed(provider: str, resource_type: str, state: str) -> bool:
    if state == "deleted":
        return False
    compute = resource_type in ("Instance", "DBInstance") or resource_type.endswith(
        ("virtualMachines", "/Instance")
    )
    return state in _COMPUTE_BILLED.get(provider, set()) if compute else True


def _stopped_db_parts(r: Shape) -> list[Part] | None:
    """A stopped RDS instance still pays for its storage and provisioned IOPS, a stopped
    Cloud SQL instance for its data disk."""
    if r.resource_type == CLOUD_SQL_TYPE:
        storage = _cloud_sql_storage(r)
        return [storage] if storage is not None else None
    engine = r.size.get("engine")
    if not engine:
        return None
    if engine.startswith("aurora"):
        return []
    deployment = "Multi-AZ" if r.size.get("multi_az") else "Single-AZ"
    return _rds_storage(r, engine, deployment)


def usd_per_hour(book: PriceBook, r: Shape) -> float | None:
    """Run-rate in USD/h: 0 when not billed in this state, None when unpriced."""
    if is_billed(r.provider, r.resource_type, r.state):
        priced = parts(r)
    elif r.state == "stopped" and r.resource_type in ("DBInstance", CLOUD_SQL_TYPE):
        priced = _stopped_db_parts(r)
    else:
        return 0.0
    if priced is None:
        return None
    total = 0.0
    for region, sku, unit, quantity in priced:
        key = cast(PriceKey, (r.provider, r.service_name, region, sku, unit))
        price = book.get(key)
        if price is None:
            return None
        total += (price / HOURS_PER_MONTH if unit in MONTHLY_UNITS else price) * quantity
    return total
