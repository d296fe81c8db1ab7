"""Parse the providers' public price sources into catalog rows. Pure: documents in, rows out.

- AWS Price List Bulk API offer files (AmazonEC2, AmazonRDS): `products` + `terms.OnDemand`.
- Azure Retail Prices API pages: `{"Items": [...], "NextPageLink": ...}`.
- GCP Cloud Billing Catalog API `services/6F81-5844-456A/skus` pages: `{"skus": [...]}`.

Only the on-demand, Linux / no-licence, shared-tenancy list price of each SKU is kept: that
is what the run-rate estimate uses; discounts come in through reconciliation with the bill.
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
from lambdas.pricing.catalog import HOURS_PER_MONTH, PriceKey


class PriceSourceError(ValueError):
    """A price document is not in the expected format. Retrying will not help."""


@dataclass(frozen=True, slots=True)
class PriceRow:
    key: PriceKey
    usd_per_unit: float
    source: str


_ENGINE_BY_LABEL = {label: engine for engine, label in RDS_ENGINES.items()}


def parse_aws_offer(doc: Mapping[str, Any], source: str) -> Iterator[PriceRow]:
    products = doc.get("products")
    terms = (doc.get("terms") or {}).get("OnDemand")
    if not isinstance(products, Mapping) or not isinstance(terms, Mapping):
        raise PriceSourceError(f"{source}: not an AWS offer file (no products / terms.OnDemand)")
    offer = doc.get("offerCode")
    for sku_id, product in products.items():
        attrs = product.get("attributes") or {}
        region = attrs.get("regionCode")
        family = product.get("productFamily")
        if not region:
            continue
        key: PriceKey | None = None
        if offer == "AmazonEC2" and family == "Compute Instance":
            if (
                attrs.get("operatingSystem") == "Linux"
                and attrs.get("tenancy") == "Shared"
                and attrs.get("preInstalledSw") == "NA"
                and attrs.get("capacitystatus", "Used") == "Used"
            ):
                key = PriceKey("aws", AWS_EC2, region, attrs["instanceType"], "hour")
        elif offer == "AmazonEC2" and family == "Storage" and attrs.get("volumeApiName"):
            key = PriceKey("aws", AWS_EC2, region, attrs["volumeApiName"], "gib_month")
        elif offer == "AmazonRDS" and family == "Database Instance":
            engine = _ENGINE_BY_LABEL.get(attrs.get("databaseEngine", ""))
            deployment = attrs.get("deploymentOption")
            if engine and deployment in ("Single-AZ", "Multi-AZ"):
                sku = f"{attrs['instanceType']}/{engine}/{deployment}"
                key = PriceKey("aws", AWS_RDS, region, sku, "hour")
        if key is None:
            continue
        price = _aws_on_demand_usd(terms.get(sku_id))
        if price is not None:
            yield PriceRow(key, price, source)


def _aws_on_demand_usd(sku_terms: Any) -> float | None:
    if not isinstance(sku_terms, Mapping):
        return None
    for term in sku_terms.values():
        for dim in (term.get("priceDimensions") or {}).values():
            usd = (dim.get("pricePerUnit") or {}).get("USD")
            if usd is not None and dim.get("beginRange", "0") == "0":
                return float(usd)
    return None


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
            if "Windows" in product or "Spot" in sku_name or "Low Priority" in sku_name:
                continue
            yield PriceRow(
                PriceKey("azure", AZURE_VM, region, item["armSkuName"], "hour"), price, source
            )
        elif service == "Storage" and "Managed Disks" in product:
            m = _AZ_DISK.match(str(item.get("meterName", "")))
            if m and item.get("unitOfMeasure") == "1/Month" and m.group(2) == "LRS":
                tier = m.group(1)
                sku = f"{_AZ_DISK_SKU[tier[0]]}_LRS/{tier}"
                key = PriceKey("azure", AZURE_DISK, region, sku, "hour")
                yield PriceRow(key, price / HOURS_PER_MONTH, source)


_GCP_CORE_RAM = re.compile(r"^([A-Z0-9]+) (?:Predefined )?Instance (Core|Ram) running in ")
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
        for region in sku.get("serviceRegions") or []:
            if (m := _GCP_CORE_RAM.match(desc)) and unit in ("h", "GiBy.h"):
                kind = "core" if m.group(2) == "Core" else "ram"
                key = PriceKey("gcp", GCP_COMPUTE, region, f"{m.group(1).lower()}/{kind}", "hour")
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
