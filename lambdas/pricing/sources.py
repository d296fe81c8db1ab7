"""Parse the providers' public price sources into catalog rows. Pure: documents in, rows out.

- AWS Price List Bulk API offer files (AmazonEC2, AmazonRDS, AmazonS3,
  AmazonS3GlacierDeepArchive): `products` + `terms.OnDemand`.
- Azure Retail Prices API pages: `{"Items": [...], "NextPageLink": ...}`.
- GCP Cloud Billing Catalog API `services/{6F81-5844-456A,95FF-2EF5-5EA1,9662-B51E-5089}/skus`
  pages (Compute Engine, Cloud Storage, Cloud SQL): `{"skus": [...]}`.

Only on-demand, shared-tenancy list prices are kept: that is what the run-rate estimate
uses; discounts come in through reconciliation with the bill. Licensed operating systems are
kept as their own SKUs (`m5.large/RunInstances:0002`, `Standard_D2s_v3/Windows`, the GCP
Windows Server licence per vCPU), next to the Linux price under the plain instance type.

A price file is operator input from outside: an item that cannot be read (a missing field, a
wrong type) or a price that is not a finite amount between 0 and `MAX_USD_PER_UNIT` is
rejected with its reason and place, counted, and the rest of the file is loaded. A NaN or
infinite price would otherwise reach every run-rate that uses it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lambdas.collector.normalize import (
    AWS_EC2,
    AWS_RDS,
    AZURE_DISK,
    AZURE_SQL,
    AZURE_VM,
    GCP_COMPUTE,
    GCP_SQL,
    RDS_ENGINES,
)
from lambdas.pricing.catalog import (
    AURORA_IO_OPTIMIZED_SKU,
    AWS_LINUX_OPERATION,
    AWS_USAGE_OPERATIONS,
    CLOUD_SQL_DISKS,
    GCP_WINDOWS_LICENSE,
    HOURS_PER_MONTH,
    SNAPSHOT_SKU,
    PriceKey,
)

AWS_S3 = "Amazon Simple Storage Service"
GCP_STORAGE = "Cloud Storage"


class PriceSourceError(ValueError):
    """A price document is not in the expected format. Retrying will not help."""


@dataclass(frozen=True, slots=True)
class PriceRow:
    key: PriceKey
    usd_per_unit: float
    source: str


# The dearest list prices are a few hundred dollars an hour (the largest memory instances);
# a million dollars per unit is a broken file, and the catalog's numeric(18, 8) tops out at
# 1e10.
MAX_USD_PER_UNIT = 1e6
MAX_KEY_CHARS = 256
EXAMPLES_PER_REASON = 3
# What reading a malformed item raises: its fields are looked up, converted and sliced
# (OverflowError: a JSON integer of 400 digits is no float).
_ITEM_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


def _number(value: Any) -> float:
    """A price field: a JSON number or a numeric string (AWS quotes them). Null, true or a
    list is not a price of $0 or $1: the item is unreadable."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{type(value).__name__} where a number belongs")
    return float(value)


def _list(value: Any, name: str) -> list[Any]:
    """A list field; a string would otherwise be walked character by character."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"{name} is a {type(value).__name__}, not a list")
    return value


@dataclass
class Rejects:
    """Items and rows of a price document that were not loaded: counted by reason, with the
    first few places (`Items[3]`, `products['ABC']`) as examples."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    page: int = 1  # of a paged source (Azure's NextPageLink, GCP's nextPageToken)

    def add(self, where: str, reason: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"page {self.page} {where}" if self.page > 1 else where)

    @contextmanager
    def item(self, where: str) -> Iterator[None]:
        try:
            yield
        except _ITEM_ERRORS as exc:
            self.add(where, f"unreadable item ({type(exc).__name__}: {str(exc)[:80]})")

    def valid(self, where: str, rows: Iterable[PriceRow]) -> list[PriceRow]:
        """The rows fit for the catalog; the others are rejected with their problem."""
        out = []
        for row in rows:
            if problem := row_problem(row):
                self.add(where, problem)
            else:
                out.append(row)
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Parsed(NamedTuple):
    rows: list[PriceRow]
    rejects: Rejects


def row_problem(row: PriceRow) -> str | None:
    """Why a row must not enter the catalog, or None."""
    for name, value in zip(PriceKey._fields, row.key, strict=True):
        # isprintable: no NUL (PostgreSQL text refuses it), no control characters, no lone
        # surrogates (not encodable).
        if (
            not isinstance(value, str)
            or not value
            or len(value) > MAX_KEY_CHARS
            or not value.isprintable()
        ):
            return f"{name} is not a printable text of 1 to {MAX_KEY_CHARS} characters"
    price = row.usd_per_unit
    if not isinstance(price, float) or not math.isfinite(price):
        return "price is not a finite number"
    if not 0 <= price <= MAX_USD_PER_UNIT:
        return f"price outside 0 to {MAX_USD_PER_UNIT:g} USD per unit"
    return None


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


def _ebs_keys(  # noqa: PLR0911 - one return per EBS price family
    family: str, attrs: Mapping[str, Any], region: str
) -> list[PriceKey]:
    """EBS storage and snapshot storage per GiB-month; io1/io2/gp3 IOPS (io2 in three tiers)
    and gp3 throughput."""
    volume = attrs.get("volumeApiName")
    usage = str(attrs.get("usagetype", ""))
    if family == "Storage" and volume:
        return [PriceKey("aws", AWS_EC2, region, volume, "gib_month")]
    # Standard-tier snapshot storage (not the archive tier).
    if family == "Storage Snapshot" and usage.endswith("EBS:SnapshotUsage"):
        return [PriceKey("aws", AWS_EC2, region, SNAPSHOT_SKU, "gib_month")]
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


# S3 storage per GiB-month by the usage type of its class (region prefix removed: `USW2-`,
# `EU-`; none in us-east-1), under the class names S3's API and lifecycle rules use. Deep
# Archive's capacity is in an offer file of its own; `...TimedStorage-GDA-Staging` in
# AmazonS3 is not it. Intelligent-Tiering is left out: its objects move between tiers by
# access, so no one price per GiB stands for the class (its frequent tier is Standard's
# price: a plan would show no saving).
_S3_OFFERS = ("AmazonS3", "AmazonS3GlacierDeepArchive")
_S3_CLASSES = {
    "TimedStorage-ByteHrs": "STANDARD",
    "TimedStorage-SIA-ByteHrs": "STANDARD_IA",
    "TimedStorage-ZIA-ByteHrs": "ONEZONE_IA",
    "TimedStorage-GIR-ByteHrs": "GLACIER_IR",
    "TimedStorage-GlacierByteHrs": "GLACIER",
    "TimedStorage-GDA-ByteHrs": "DEEP_ARCHIVE",
}
_S3_USAGE = re.compile(r"^(?:[A-Z]{2,4}\d?-)?(TimedStorage-[A-Za-z-]+)$")


def _s3_keys(attrs: Mapping[str, Any], region: str) -> list[PriceKey]:
    m = _S3_USAGE.match(str(attrs.get("usagetype", "")))
    storage_class = _S3_CLASSES.get(m.group(1)) if m else None
    if storage_class is None:
        return []
    return [PriceKey("aws", AWS_S3, region, storage_class, "gib_month")]


def _aurora_io_optimized(attrs: Mapping[str, Any]) -> bool:
    usage = str(attrs.get("usagetype", ""))
    return "InstanceUsageIOOptimized:" in usage or attrs.get("storage") == (
        "Aurora IO Optimization Mode"
    )


def parse_aws_offer(doc: Mapping[str, Any], source: str, rejects: Rejects) -> Iterator[PriceRow]:
    products = doc.get("products")
    terms = doc.get("terms")
    terms = terms.get("OnDemand") if isinstance(terms, Mapping) else None
    if not isinstance(products, Mapping) or not isinstance(terms, Mapping):
        raise PriceSourceError(f"{source}: not an AWS offer file (no products / terms.OnDemand)")
    offer = doc.get("offerCode")
    # RDS storage products priced for "Any" engine are yielded first, so that a product for
    # one named engine overrides them (parse() keeps the later duplicate).
    any_engine: list[PriceRow] = []
    named: list[PriceRow] = []
    for sku_id, product in products.items():
        where = f"products[{str(sku_id)[:40]!r}]"
        with rejects.item(where):
            rows = rejects.valid(where, _aws_product(offer, product, terms.get(sku_id), source))
            engine = product["attributes"].get("databaseEngine") if rows else None
            (any_engine if engine == "Any" else named).extend(rows)
    yield from any_engine
    yield from named


def _aws_product(offer: Any, product: Any, sku_terms: Any, source: str) -> list[PriceRow]:
    """Untrusted JSON (hence Any): a missing or mistyped field raises, and the caller rejects
    the product."""
    attrs = product.get("attributes") or {}
    region = attrs.get("regionCode")
    family = product.get("productFamily")
    if not region:
        return []
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
            if _aurora_io_optimized(attrs):
                # Same class, engine and deployment as the Standard product: without the
                # suffix whichever came last in the file priced every Aurora instance.
                sku += AURORA_IO_OPTIMIZED_SKU
            keys = [PriceKey("aws", AWS_RDS, region, sku, "hour")]
    elif offer == "AmazonRDS" and family in _RDS_UNITS:
        keys = _rds_keys(family, attrs, region)
    elif offer in _S3_OFFERS:
        # Most products of these offers carry no productFamily: the usage type says it all.
        keys = _s3_keys(attrs, region)
    priced = _aws_on_demand(sku_terms) if keys else None
    if priced is None:
        return []
    price, unit = priced
    if keys[0].service_name == AWS_S3 and unit != "GB-Mo":
        return []
    if keys[0].unit == "mibps_month":
        per_mibps = _PER_MIBPS.get(unit)
        if per_mibps is None:
            return []  # an unknown throughput unit: leave it unpriced, never guess
        price /= per_mibps
    return [PriceRow(key, price, source) for key in keys]


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
                begin = _number(dim.get("beginRange", 0))
                tiers.append((begin, _number(usd), str(dim.get("unit", ""))))
    if not tiers:
        return None
    tiers.sort()
    paid = [t for t in tiers if t[1] > 0]
    _, price, unit = paid[0] if paid else tiers[0]
    return price, unit


_AZ_DISK = re.compile(r"^([PES]\d+) (LRS|ZRS)( Disk)?$")
_AZ_DISK_SKU = {"P": "Premium", "E": "StandardSSD", "S": "Standard"}
# A full snapshot of a managed disk, kept on Standard HDD storage (the delete-disk action
# asks for Standard_LRS). The Standard SSD and Premium products have snapshot meters of
# their own, at about three times the price.
_AZ_SNAPSHOT = ("Standard HDD Managed Disks", "Snapshots LRS", "1 GB/Month")


# Block blob capacity of a general-purpose v2 account by access tier and redundancy,
# under `<tier>/<redundancy>` (`Cool/LRS`): the tiering plan compares the account's tier with
# the colder one at the account's own redundancy.
# ("Blob Storage", the legacy account kind, lists the same meters for LRS/GRS/RA-GRS only;
# reading both would let the file's order choose.)
_AZ_BLOB_PRODUCT = "General Block Blob v2"
_AZ_BLOB = re.compile(r"^(Hot|Cool|Cold|Archive) (LRS|ZRS|GRS|RA-GRS|GZRS|RA-GZRS) Data Stored$")


# Azure SQL Database vCore products ("SQL Database Single/Elastic Pool General Purpose -
# Compute Gen5", "... - SQL License"); serverless, zone-redundant and DTU products are others.
_AZ_SQL = re.compile(
    r"^SQL Database (?:Single/Elastic Pool|SingleDB) (General Purpose|Business Critical|Hyperscale)"
    r" - (?:Compute (Gen\d+)|SQL License)$"
)
_AZ_SQL_TIERS = {"General Purpose": "GP", "Business Critical": "BC", "Hyperscale": "HS"}
_AZ_SQL_STORAGE = re.compile(
    r"^SQL Database Single/Elastic Pool (General Purpose|Business Critical) - Storage$"
)
_AZ_VCORES = re.compile(r"^([1-9]\d{0,2}) vCore$")


def parse_azure_retail(doc: Mapping[str, Any], source: str, rejects: Rejects) -> Iterator[PriceRow]:
    items = doc.get("Items")
    if not isinstance(items, list):
        raise PriceSourceError(f"{source}: not an Azure Retail Prices page (no Items list)")
    for i, item in enumerate(items):
        with rejects.item(f"Items[{i}]"):
            yield from rejects.valid(f"Items[{i}]", _azure_item(item, source))


def _azure_item(item: Any, source: str) -> list[PriceRow]:
    if item.get("type") != "Consumption" or item.get("currencyCode") != "USD":
        return []
    region = item.get("armRegionName")
    service = item.get("serviceName")
    product = str(item.get("productName", ""))
    sku_name = str(item.get("skuName", ""))
    if service == "Virtual Machines" and item.get("unitOfMeasure") == "1 Hour":
        if "Spot" in sku_name or "Low Priority" in sku_name:
            return []
        # Windows meters are the same VM size with the licence in the price; their
        # productName ends in "Windows" ("Virtual Machines DSv3 Series Windows").
        sku = item["armSkuName"] + ("/Windows" if product.endswith(" Windows") else "")
        price = _number(item["retailPrice"])
        return [PriceRow(PriceKey("azure", AZURE_VM, region, sku, "hour"), price, source)]
    if service == "Storage":
        return _azure_storage(item, region, product, sku_name, source)
    if service == AZURE_SQL:
        return _azure_sql(item, region, product, sku_name, source)
    return []


def _azure_sql(
    item: Mapping[str, Any], region: str, product: str, sku_name: str, source: str
) -> list[PriceRow]:
    """A vCore database's compute per database-hour (`GP_Gen5_2/compute`, from the meter of
    its vCore count), its SQL Server licence per vCore-hour (`GP/license`), which Azure
    Hybrid Benefit (`licenseType` BasePrice) leaves out, and its data storage."""
    if item.get("unitOfMeasure") == "1 GB/Month":
        return _azure_sql_storage(item, region, product, source)
    m = _AZ_SQL.match(product)
    vcores = _AZ_VCORES.match(sku_name)
    if m is None or item.get("meterName") != "vCore" or item.get("unitOfMeasure") != "1 Hour":
        return []
    tier = _AZ_SQL_TIERS[m[1]]
    price = _number(item["retailPrice"])
    if m[2]:  # compute
        if vcores is None:
            return []
        key = PriceKey("azure", AZURE_SQL, region, f"{tier}_{m[2]}_{vcores[1]}/compute", "hour")
        return [PriceRow(key, price, source)]
    # The licence meter per vCore ("vCore"), or per database of N vCores ("N vCore").
    if vcores is not None:
        price /= int(vcores[1])
    elif sku_name != "vCore":
        return []
    return [
        PriceRow(PriceKey("azure", AZURE_SQL, region, f"{tier}/license", "hour"), price, source)
    ]


def _azure_sql_storage(
    item: Mapping[str, Any], region: str, product: str, source: str
) -> list[PriceRow]:
    """A vCore database's data storage per GB-month of its maximum size (`GP/storage`): the
    "<tier> Data Stored" meter, not the zone-redundant one ("... Zone Redundancy Data
    Stored"), the backup or the Hyperscale storage (billed as used)."""
    m = _AZ_SQL_STORAGE.match(product)
    if m is None or item.get("meterName") != f"{m[1]} Data Stored":
        return []
    key = PriceKey("azure", AZURE_SQL, region, f"{_AZ_SQL_TIERS[m[1]]}/storage", "gib_month")
    return [PriceRow(key, _number(item["retailPrice"]), source)]


def _azure_storage(
    item: Mapping[str, Any], region: str, product: str, sku_name: str, source: str
) -> list[PriceRow]:
    if "Managed Disks" in product:
        m = _AZ_DISK.match(str(item.get("meterName", "")))
        if m and item.get("unitOfMeasure") == "1/Month" and m.group(2) == "LRS":
            tier = m.group(1)
            sku = f"{_AZ_DISK_SKU[tier[0]]}_LRS/{tier}"
            key = PriceKey("azure", AZURE_DISK, region, sku, "hour")
            return [PriceRow(key, _number(item["retailPrice"]) / HOURS_PER_MONTH, source)]
        if (product, sku_name, item.get("unitOfMeasure")) == _AZ_SNAPSHOT:
            key = PriceKey("azure", AZURE_DISK, region, SNAPSHOT_SKU, "gib_month")
            return [PriceRow(key, _number(item["retailPrice"]), source)]
    if product == _AZ_BLOB_PRODUCT:
        m = _AZ_BLOB.match(str(item.get("meterName", "")))
        # Capacity is priced in volume tiers; the first (from 0 GB) is the list rate.
        if m and item.get("unitOfMeasure") == "1 GB/Month" and not item.get("tierMinimumUnits"):
            key = PriceKey("azure", AZURE_DISK, region, f"{m[1]}/{m[2]}", "gib_month")
            return [PriceRow(key, _number(item["retailPrice"]), source)]
    return []


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
    # Standard snapshot storage; "... Archive Snapshot ..." and regional variants ("Storage PD
    # Snapshot in <place>") are other SKUs.
    "Storage PD Snapshot": SNAPSHOT_SKU,
}


# Cloud Storage capacity by class ("Nearline Storage Iowa", "Standard Storage US
# Multi-region"); the early-deletion charges of the colder classes are SKUs of their own.
_GCS_CAPACITY = re.compile(r"^(Standard|Nearline|Coldline|Archive) Storage ")
# A dual-region's SKU names one of its regions ("Standard Storage Iowa Dual-region" in
# us-central1): read as that region's price, it would let the file's order choose.
_GCS_NOT_CAPACITY = re.compile(
    r"Early Delet|Retrieval|Operations|Autoclass|Dual-region", re.IGNORECASE
)


# Cloud SQL instances by engine and availability (Regional = high availability, twice the
# price): per vCPU and GiB of a custom tier, or per instance of a shared-core one. SQL
# Server is left out: its licence is priced apart, and a price without it would be low.
# "Extended RAM" beyond a tier's usual memory and commitments are other SKUs.
_CLOUD_SQL = re.compile(
    r"^Cloud SQL for (MySQL|PostgreSQL): (Zonal|Regional) - "
    r"(vCPU|RAM|Micro instance|Small instance|Standard storage|Low cost storage) in "
)
_CLOUD_SQL_ENGINES = {"MySQL": "mysql", "PostgreSQL": "postgres"}
# Description -> (part, the SKU's usage unit, the catalog's unit). The data disk: "Standard
# storage" is PD_SSD, "Low cost storage" PD_HDD (per GiB-month; Enterprise Plus and
# Hyperdisk storage are other SKUs).
_CLOUD_SQL_PARTS = {
    "vCPU": ("core", "h", "hour"),
    "RAM": ("ram", "GiBy.h", "hour"),
    "Micro instance": ("db-f1-micro", "h", "hour"),
    "Small instance": ("db-g1-small", "h", "hour"),
    "Standard storage": (CLOUD_SQL_DISKS["PD_SSD"], "GiBy.mo", "gib_month"),
    "Low cost storage": (CLOUD_SQL_DISKS["PD_HDD"], "GiBy.mo", "gib_month"),
}


def _gcp_unit_price(sku: Mapping[str, Any]) -> tuple[float, str] | None:
    for info in _list(sku.get("pricingInfo"), "pricingInfo"):
        expr = info.get("pricingExpression") or {}
        rates = _list(expr.get("tieredRates"), "tieredRates")
        if rates:
            money = rates[-1].get("unitPrice") or {}
            if money.get("currencyCode", "USD") != "USD":
                return None
            # Money in JSON leaves a zero field out: a missing units or nanos is 0.
            value = _number(money.get("units", 0)) + _number(money.get("nanos", 0)) / 1e9
            return value, str(expr.get("usageUnit"))
    return None


def parse_gcp_skus(doc: Mapping[str, Any], source: str, rejects: Rejects) -> Iterator[PriceRow]:
    skus = doc.get("skus")
    if not isinstance(skus, list):
        raise PriceSourceError(f"{source}: not a Cloud Billing Catalog page (no skus list)")
    for i, sku in enumerate(skus):
        with rejects.item(f"skus[{i}]"):
            yield from rejects.valid(f"skus[{i}]", _gcp_sku(sku, source))


def _gcp_sku(sku: Any, source: str) -> list[PriceRow]:
    category = sku.get("category") or {}
    if category.get("usageType") != "OnDemand":
        return []
    desc = str(sku.get("description", ""))
    priced = _gcp_unit_price(sku)
    if priced is None:
        return []
    value, unit = priced
    if _GCP_WINDOWS.match(desc) and unit == "h":
        key = PriceKey("gcp", GCP_COMPUTE, "global", GCP_WINDOWS_LICENSE, "hour")
        return [PriceRow(key, value, source)]
    rows = []
    for region in _list(sku.get("serviceRegions"), "serviceRegions"):
        if (m := _GCP_CORE_RAM.match(desc)) and unit in ("h", "GiBy.h"):
            kind = "core" if m.group(2) == "Core" else "ram"
            key = PriceKey("gcp", GCP_COMPUTE, region, f"{m.group(1).lower()}/{kind}", "hour")
            rows.append(PriceRow(key, value, source))
        elif (m := _GCP_FLAT_SKU.match(desc)) and unit == "h":
            key = PriceKey("gcp", GCP_COMPUTE, region, _GCP_FLAT[m.group(1)], "hour")
            rows.append(PriceRow(key, value, source))
        elif desc in _GCP_DISKS and unit == "GiBy.mo":
            key = PriceKey("gcp", GCP_COMPUTE, region, _GCP_DISKS[desc], "gib_month")
            rows.append(PriceRow(key, value, source))
        elif (storage_class := _gcs_class(sku, desc)) and unit == "GiBy.mo":
            key = PriceKey("gcp", GCP_STORAGE, region, storage_class, "gib_month")
            rows.append(PriceRow(key, value, source))
        elif (part := _cloud_sql_part(desc, unit)) is not None:
            rows.append(PriceRow(PriceKey("gcp", GCP_SQL, region, *part), value, source))
    return rows


def _cloud_sql_part(desc: str, unit: str) -> tuple[str, str] | None:
    """(`<engine>/<availability>/<part>`, unit) of a Cloud SQL instance SKU: `postgres/zonal/
    core` per vCPU-hour, `.../ram` per GiB-hour, `.../db-f1-micro` per instance-hour,
    `.../ssd` per GiB-month."""
    m = _CLOUD_SQL.match(desc)
    if m is None:
        return None
    part, wanted, catalog_unit = _CLOUD_SQL_PARTS[m[3]]
    if unit != wanted:
        return None
    return f"{_CLOUD_SQL_ENGINES[m[1]]}/{m[2].lower()}/{part}", catalog_unit


def _gcs_class(sku: Mapping[str, Any], desc: str) -> str | None:
    """The storage class of a Cloud Storage capacity SKU, as a bucket names it."""
    category = sku.get("category") or {}
    if category.get("serviceDisplayName") != GCP_STORAGE or _GCS_NOT_CAPACITY.search(desc):
        return None
    m = _GCS_CAPACITY.match(desc)
    return m[1].upper() if m else None


PARSERS = {"aws": parse_aws_offer, "azure": parse_azure_retail, "gcp": parse_gcp_skus}


def parse(provider: str, docs: Iterable[Mapping[str, Any]], source: str) -> Parsed:
    """All rows of a provider's documents (a later duplicate key wins) and what was
    rejected. A document that is not in the source's format raises PriceSourceError."""
    if provider not in PARSERS:
        raise PriceSourceError(f"unknown provider {provider!r}; known: {sorted(PARSERS)}")
    rows: dict[PriceKey, PriceRow] = {}
    rejects = Rejects()
    for page, doc in enumerate(docs, 1):
        rejects.page = page
        if not isinstance(doc, Mapping):
            raise PriceSourceError(f"{source}: expected a JSON object")
        for row in PARSERS[provider](doc, source, rejects):
            rows[row.key] = row
    return Parsed(list(rows.values()), rejects)
