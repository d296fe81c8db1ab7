"""Parse the providers' public price sources into catalog rows. Pure: documents in, rows out.

- AWS Price List Bulk API offer files (AmazonEC2, AmazonRDS): `products` + `terms.OnDemand`.
- Azure Retail Prices API pages: `{"Items": [...], "NextPageLink": ...}`.
- GCP Cloud Billing Catalog API `services/6F81-5844-456A/skus` pages: `{"skus": [...]}`.

Only on-demand, shared-tenancy list prices are kept: that is what the run-rate estimate
uses; discounts come in through reconciliation with the bill. Licensed operating systems are
kept as their own SKUs (`m5.large/RunInstances:0002`, `Standard_D2s_v3/Windows`, the GCP
Windows Server licence per vCPU), next to the Linux price under the plain instance type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lambdas.collector.normalize import (
    AWS_EC2,
    AWS_RDS,
    AZURE_DISK,
    AZURE_VM,
    GCP_COMPUTE,
    RDS_ENGINES,
)
from lambdas.pricing.catalog import (
    AWS_LINUX_OPERATION,
    AWS_USAGE_OPERATIONS,
    GCP_WINDOWS_LICENSE,
    HOURS_PER_MONTH,
    PriceKey,
)


class PriceSourceError(ValueError):
    """A price document is not in the expected format. Retrying will not help."""


@dataclass(frozen=True, slots=True)
class PriceRow:
    key: PriceKey
    usd_per_unit: float
    source: str


_AWS_OPERATIONS = frozenset({AWS_LINUX_OPERATION, *AWS_USAGE_OPERATIONS.values()})
_ENGINE_BY_LABEL = {label: engine for engine, label in RDS_ENGINES.items()}
# Storage priced per RDS instance: Aurora's is billed on the cluster.
_RDS_STORAGE_ENGINES = [e for e in RDS_ENGINES if not e.startswith("aurora")]
_RDS_VOLUME_TYPES = {
    "General Purpose": "gp2",
    "General Purpose-GP3": "gp3",
    "Provisioned IOPS": "io1",
    "Provisioned IOPS-IO2": "io2",
    "Magnetic": "standard",
}
_RDS_DEPLOYMENTS = ("Single-AZ", "Multi-AZ")
_EBS_PERFORMANCE_TYPES = ("io1", "io2", "gp3")
# Provisioned throughput is quoted per GiBps-month in the EC2 offer; the catalog keeps MiB/s.
_PER_MIBPS = {"MiBps-Mo": 1.0, "MBps-Mo": 1.0, "GiBps-mo": 1024.0, "GiBps-Mo": 1024.0}


def _rds_engines(attrs: Mapping[str, Any]) -> list[str]:
    """The engines a storage / IOPS / throughput product applies to ("Any" is every one)."""
    label = attrs.get("databaseEngine", "")
    if label == "Any":
        return _RDS_STORAGE_ENGINES
    engine = _ENGINE_BY_LABEL.get(label)
    return [engine] if engine in _RDS_STORAGE_ENGINES else []


def _rds_storage_type(family: str, attrs: Mapping[str, Any]) -> str | None:
    """The storage type of an RDS storage, IOPS or throughput product. IOPS and throughput
    products do not always carry volumeType; their usagetype names the type
    (RDS:PIOPS, RDS:GP3-PIOPS, RDS:Multi-AZ-GP3-Throughput, ...)."""
    if family == "Database Storage":
        return _RDS_VOLUME_TYPES.get(attrs.get("volumeType", ""))
    usage = str(attrs.get("usagetype", "")).upper()
    if "GP3" in usage:
        return "gp3"
    if family == "Provisioned IOPS":
        return "io2" if "IO2" in usage else "io1"
    return None


_RDS_UNITS = {
    "Database Storage": "gib_month",
    "Provisioned IOPS": "iops_month",
    "Provisioned Throughput": "mibps_month",
}


def _rds_keys(family: str, attrs: Mapping[str, Any], region: str) -> list[PriceKey]:
    unit = _RDS_UNITS[family]
    storage = _rds_storage_type(family, attrs)
    deployment = attrs.get("deploymentOption")
    if storage is None or deployment not in _RDS_DEPLOYMENTS:
        return []
    return [
        PriceKey("aws", AWS_RDS, region, f"{storage}/{engine}/{deployment}", unit)
        for engine in _rds_engines(attrs)
    ]


def _ec2_instance_keys(attrs: Mapping[str, Any], region: str) -> list[PriceKey]:
    # The usage operation encodes the operating system, pre-installed software and licence
    # model (RunInstances = Linux/UNIX, RunInstances:0002 = Windows, ...).
    operation = attrs.get("operation")
    if attrs.get("tenancy") != "Shared" or attrs.get("capacitystatus", "Used") != "Used":
        return []
    if operation not in _AWS_OPERATIONS:
        return []
    sku = attrs["instanceType"]
    if operation != AWS_LINUX_OPERATION:
        sku = f"{sku}/{operation}"
    return [PriceKey("aws", AWS_EC2, region, sku, "hour")]


EBS_SNAPSHOT_SKU = "snapshot"


def _ebs_keys(  # noqa: PLR0911 - one return per EBS price family
    family: str, attrs: Mapping[str, Any], region: str
) -> list[PriceKey]:
    """EBS storage and snapshot storage per GiB-month; io1/io2/gp3 IOPS (io2 in three tiers)
    and gp3 throughput."""
    volume = attrs.get("volumeApiName")
    usage = str(attrs.get("usagetype", ""))
    if family == "Storage" and volume:
        return [PriceKey("aws", AWS_EC2, region, volume, "gib_month")]
    # Standard-tier snapshot storage (not the archive tier): the delete-unattached-volume
    # playbook keeps a snapshot and prices it under this sku (steps.planning.SNAPSHOT_SKU).
    if family == "Storage Snapshot" and usage.endswith("EBS:SnapshotUsage"):
        return [PriceKey("aws", AWS_EC2, region, EBS_SNAPSHOT_SKU, "gib_month")]
    if family == "System Operation" and volume in _EBS_PERFORMANCE_TYPES:
        if "EBS:VolumeP-IOPS" not in usage:
            return []
        tier = usage.rsplit(".", 1)[-1]
        sku = f"{volume}/iops" + (f".{tier}" if tier in ("tier2", "tier3") else "")
        return [PriceKey("aws", AWS_EC2, region, sku, "iops_month")]
    if family == "Provisioned Throughput" and volume == "gp3":
        if "EBS:VolumeP-Throughput" not in usage:
            return []
        return [PriceKey("aws", AWS_EC2, region, "gp3/throughput", "mibps_month")]
    return []


def parse_aws_offer(doc: Mapping[str, Any], source: str) -> Iterator[PriceRow]:
    products = doc.get("products")
    terms = (doc.get("terms") or {}).get("OnDemand")
    if not isinstance(products, Mapping) or not isinstance(terms, Mapping):
        raise PriceSourceError(f"{source}: not an AWS offer file (no products / terms.OnDemand)")
    offer = doc.get("offerCode")
    # RDS storage products priced for "Any" engine are yielded first, so that a product for
    # one named engine overrides them (parse() keeps the later duplicate).
    any_engine: list[PriceRow] = []
    named: list[PriceRow] = []
    for sku_id, product in products.items():
        attrs = product.get("attributes") or {}
        region = attrs.get("regionCode")
        family = product.get("productFamily")
        if not region:
            continue
        keys: list[PriceKey] = []
        if offer == "AmazonEC2" and family == "Compute Instance":
            keys = _ec2_instance_keys(attrs, region)
        elif offer == "AmazonEC2":
            keys = _ebs_keys(family, attrs, region)
        elif offer == "AmazonRDS" and family == "Database Instance":
            engine = _ENGINE_BY_LABEL.get(attrs.get("databaseEngine", ""))
            deployment = attrs.get("deploymentOption")
            if engine and deployment in _RDS_DEPLOYMENTS:
                sku = f"{attrs['instanceType']}/{engine}/{deployment}"
                keys = [PriceKey("aws", AWS_RDS, region, sku, "hour")]
        elif offer == "AmazonRDS" and family in _RDS_UNITS:
            keys = _rds_keys(family, attrs, region)
        if not keys:
            continue
        priced = _aws_on_demand(terms.get(sku_id))
        if priced is None:
            continue
        price, unit = priced
        if keys[0].unit == "mibps_month":
            per_mibps = _PER_MIBPS.get(unit)
            if per_mibps is None:
                continue  # an unknown throughput unit: leave it unpriced, never guess
            price /= per_mibps
        rows = any_engine if attrs.get("databaseEngine") == "Any" else named
        rows.extend(PriceRow(key, price, source) for key in keys)
    yield from any_engine
    yield from named


def _aws_on_demand(sku_terms: Any) -> tuple[float, str] | None:
    """(USD per unit, unit) of a product's on-demand rate. A leading free tier (gp3 IOPS are
    quoted as 0-3000 at $0, then the rate) is not the rate: the first paid tier is; a product
    whose only tier is $0 is priced at 0."""
    if not isinstance(sku_terms, Mapping):
        return None
    tiers: list[tuple[float, float, str]] = []
    for term in sku_terms.values():
        for dim in (term.get("priceDimensions") or {}).values():
            usd = (dim.get("pricePerUnit") or {}).get("USD")
            if usd is not None:
                tiers.append((float(dim.get("beginRange") or 0), float(usd), dim.get("unit", "")))
    if not tiers:
        return None
    tiers.sort()
    paid = [t for t in tiers if t[1] > 0]
    _, price, unit = paid[0] if paid else tiers[0]
    return price, unit


_AZ_DISK = re.compile(r"^([PES]\d+) (LRS|ZRS)( Disk)?$")
_AZ_DISK_SKU = {"P": "Premium", "E": "StandardSSD", "S": "Standard"}


def parse_azure_retail(doc: Mapping[str, Any], source: str) -> Iterator[PriceRow]:
    items = doc.get("Items")
    if not isinstance(items, list):
        raise PriceSourceError(f"{source}: not an Azure Retail Prices page (no Items list)")
    for item in items:
        if item.get("type") != "Consumption" or item.get("currencyCode") != "USD":
            continue
        region = item.get("armRegionName")
        price = float(item.get("retailPrice") or 0.0)
        service = item.get("serviceName")
        product = str(item.get("productName", ""))
        sku_name = str(item.get("skuName", ""))
        if service == "Virtual Machines" and item.get("unitOfMeasure") == "1 Hour":
            if "Spot" in sku_name or "Low Priority" in sku_name:
                continue
            # Windows meters are the same VM size with the licence in the price; their
            # productName ends in "Windows" ("Virtual Machines DSv3 Series Windows").
            sku = item["armSkuName"] + ("/Windows" if product.endswith(" Windows") else "")
            yield PriceRow(PriceKey("azure", AZURE_VM, region, sku, "hour"), price, source)
        elif service == "Storage" and "Managed Disks" in product:
            m = _AZ_DISK.match(str(item.get("meterName", "")))
            if m and item.get("unitOfMeasure") == "1/Month" and m.group(2) == "LRS":
                tier = m.group(1)
                sku = f"{_AZ_DISK_SKU[tier[0]]}_LRS/{tier}"
                key = PriceKey("azure", AZURE_DISK, region, sku, "hour")
                yield PriceRow(key, price / HOURS_PER_MONTH, source)


_GCP_CORE_RAM = re.compile(r"^([A-Z0-9]+) (?:Predefined )?Instance (Core|Ram) running in ")
# The legacy shared-core types' own per-instance SKUs.
_GCP_FLAT = {
    "Micro Instance with burstable CPU": "f1-micro",
    "Small Instance with 1 VCPU": "g1-small",
}
_GCP_FLAT_SKU = re.compile(rf"^({'|'.join(_GCP_FLAT)}) running in ")
# Windows Server images are licensed per vCPU-hour at one price for every region; BYOL and
# SQL Server licences are other SKUs.
_GCP_WINDOWS = re.compile(r"^Licensing Fee for Windows Server \d{4} Datacenter Edition on VM$")
_GCP_DISKS = {
    "Storage PD Capacity": "pd-standard",
    "SSD backed PD Capacity": "pd-ssd",
    "Balanced PD Capacity": "pd-balanced",
}


def _gcp_unit_price(sku: Mapping[str, Any]) -> tuple[float, str] | None:
    for info in sku.get("pricingInfo") or []:
        expr = info.get("pricingExpression") or {}
        rates = expr.get("tieredRates") or []
        if rates:
            money = rates[-1].get("unitPrice") or {}
            if money.get("currencyCode", "USD") != "USD":
                return None
            value = float(money.get("units") or 0) + float(money.get("nanos") or 0) / 1e9
            return value, str(expr.get("usageUnit"))
    return None


def parse_gcp_skus(doc: Mapping[str, Any], source: str) -> Iterator[PriceRow]:
    skus = doc.get("skus")
    if not isinstance(skus, list):
        raise PriceSourceError(f"{source}: not a Cloud Billing Catalog page (no skus list)")
    for sku in skus:
        category = sku.get("category") or {}
        if category.get("usageType") != "OnDemand":
            continue
        desc = str(sku.get("description", ""))
        priced = _gcp_unit_price(sku)
        if priced is None:
            continue
        value, unit = priced
        if _GCP_WINDOWS.match(desc) and unit == "h":
            key = PriceKey("gcp", GCP_COMPUTE, "global", GCP_WINDOWS_LICENSE, "hour")
            yield PriceRow(key, value, source)
            continue
        for region in sku.get("serviceRegions") or []:
            if (m := _GCP_CORE_RAM.match(desc)) and unit in ("h", "GiBy.h"):
                kind = "core" if m.group(2) == "Core" else "ram"
                key = PriceKey("gcp", GCP_COMPUTE, region, f"{m.group(1).lower()}/{kind}", "hour")
                yield PriceRow(key, value, source)
            elif (m := _GCP_FLAT_SKU.match(desc)) and unit == "h":
                key = PriceKey("gcp", GCP_COMPUTE, region, _GCP_FLAT[m.group(1)], "hour")
                yield PriceRow(key, value, source)
            elif desc in _GCP_DISKS and unit == "GiBy.mo":
                key = PriceKey("gcp", GCP_COMPUTE, region, _GCP_DISKS[desc], "gib_month")
                yield PriceRow(key, value, source)


PARSERS = {"aws": parse_aws_offer, "azure": parse_azure_retail, "gcp": parse_gcp_skus}


def parse(provider: str, docs: Iterable[Mapping[str, Any]], source: str) -> list[PriceRow]:
    """All rows of a provider's documents; a later duplicate key wins."""
    if provider not in PARSERS:
        raise PriceSourceError(f"unknown provider {provider!r}; known: {sorted(PARSERS)}")
    rows: dict[PriceKey, PriceRow] = {}
    for doc in docs:
        if not isinstance(doc, Mapping):
            raise PriceSourceError(f"{source}: expected a JSON object")
        for row in PARSERS[provider](doc, source):
            rows[row.key] = row
    return list(rows.values())
