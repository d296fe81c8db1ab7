"""Pricing a resource from the price catalog. Pure: the catalog is passed in.

A resource's run-rate is the sum of its price components (an AWS instance is one component;
a GCP machine type is N vCPU plus M GiB of memory; a disk is GiB x a per-GiB-month price).
If any component is missing from the catalog the resource is unpriced (None), never $0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HOURS_PER_MONTH = 730.0  # the providers' own convention for monthly prices

# States in which a resource is billed. Azure bills a powered-off VM until it is deallocated.
_COMPUTE_BILLED = {"aws": {"running"}, "azure": {"running", "stopped"}, "gcp": {"running"}}


@dataclass(frozen=True, slots=True)
class PriceKey:
    provider: str
    service_name: str
    region_id: str
    sku: str
    unit: str  # hour | gib_month


@dataclass(frozen=True, slots=True)
class Component:
    key: PriceKey
    quantity: float


PriceBook = Mapping[PriceKey, float]

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

# Azure managed disks are priced per tier; a disk is billed at the smallest tier that holds it.
_AZURE_TIERS = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32767]
_AZURE_TIER_NAMES = ["1", "2", "3", "4", "6", "10", "15", "20", "30", "40", "50", "60", "70", "80"]
_AZURE_TIER_PREFIX = {"Premium_LRS": "P", "StandardSSD_LRS": "E", "Standard_LRS": "S"}


def gcp_machine_shape(machine_type: str) -> tuple[str, float, float] | None:
    """(family, vCPUs, GiB memory) of a predefined or custom GCP machine type."""
    if m := _GCP_TYPE.match(machine_type):
        family, klass, cpus = m.group(1), m.group(2), float(m.group(3))
        ratio = _GCP_MEM.get(family, {}).get(klass)
        return (family, cpus, cpus * ratio) if ratio is not None else None
    if m := _GCP_CUSTOM.match(machine_type):
        return (m.group(1) or "n1", float(m.group(2)), float(m.group(3)) / 1024.0)
    return None


def azure_disk_tier(sku: str, gib: float) -> str | None:
    prefix = _AZURE_TIER_PREFIX.get(sku)
    if prefix is None:
        return None
    for cap, name in zip(_AZURE_TIERS, _AZURE_TIER_NAMES, strict=True):
        if gib <= cap:
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

    def key(self, sku: str, unit: str) -> PriceKey:
        return PriceKey(self.provider, self.service_name, self.region_id, sku, unit)


def _aws(r: Shape, sku: str) -> list[Component] | None:
    if r.resource_type == "Volume":
        return [Component(r.key(sku, "gib_month"), float(r.size.get("gib") or 0.0))]
    if r.resource_type == "DBInstance":
        engine = r.size.get("engine")
        if not engine:
            return None
        deployment = "Multi-AZ" if r.size.get("multi_az") else "Single-AZ"
        return [Component(r.key(f"{sku}/{engine}/{deployment}", "hour"), 1.0)]
    return [Component(r.key(sku, "hour"), 1.0)]


def _azure(r: Shape, sku: str) -> list[Component] | None:
    if r.resource_type == "Microsoft.Compute/disks":
        tier = azure_disk_tier(sku, float(r.size.get("gib") or 0.0))
        return [Component(r.key(f"{sku}/{tier}", "hour"), 1.0)] if tier else None
    return [Component(r.key(sku, "hour"), 1.0)]


def _gcp(r: Shape, sku: str) -> list[Component] | None:
    if r.resource_type.endswith("/Disk"):
        return [Component(r.key(sku, "gib_month"), float(r.size.get("gib") or 0.0))]
    shape = gcp_machine_shape(sku)
    if shape is None:
        return None
    family, cpus, mem = shape
    return [
        Component(r.key(f"{family}/core", "hour"), cpus),
        Component(r.key(f"{family}/ram", "hour"), mem),
    ]


_COMPONENTS = {"aws": _aws, "azure": _azure, "gcp": _gcp}


def components(r: Shape) -> list[Component] | None:
    """The price components of a resource while it is billed; None if it cannot be priced."""
    if not r.sku or r.provider not in _COMPONENTS:
        return None
    return _COMPONENTS[r.provider](r, r.sku)


def is_billed(provider: str, resource_type: str, state: str) -> bool:
    if state == "deleted":
        return False
    compute = resource_type in ("Instance", "DBInstance") or resource_type.endswith(
        ("virtualMachines", "/Instance")
    )
    return state in _COMPUTE_BILLED.get(provider, set()) if compute else True


def usd_per_hour(book: PriceBook, r: Shape) -> float | None:
    """Run-rate in USD/h: 0 when not billed in this state, None when unpriced."""
    billed = is_billed(r.provider, r.resource_type, r.state)
    if not billed:
        return 0.0
    parts = components(r)
    if parts is None:
        return None
    total = 0.0
    for part in parts:
        price = book.get(part.key)
        if price is None:
            return None
        per_hour = price / HOURS_PER_MONTH if part.key.unit == "gib_month" else price
        total += per_hour * part.quantity
    return total
