"""Adapters from the providers' native billing formats to FOCUS 1.0 rows.

- AWS CUR 2.0 (Data Exports, `COST_AND_USAGE_REPORT` table), CSV or Parquet.
- Azure cost details exports (actual or amortized), CSV.
- GCP BigQuery billing export rows, as newline-delimited JSON (`bq extract` / query output).

Each returns an Arrow table with every FOCUS 1.0 column (see focus.FOCUS_COLUMNS); the tests
run the FinOps Foundation's focus-validator on the output. Adapters work row by row in Python:
native exports are converted once, and the fast path (FOCUS files) never comes through here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from lambdas.billing.focus import BillingFileError, focus_schema, read_batches

Row = dict[str, Any]


def _iso(value: Any) -> str | None:
    """FOCUS timestamps as the validator wants them: 2024-09-01T00:00:00Z."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        text = str(value).strip()
        if len(text) == 10 and text[2] == "/":  # Azure's MM/DD/YYYY
            dt = datetime.strptime(text, "%m/%d/%Y").replace(tzinfo=UTC)
        else:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" UTC", "+00:00"))
            dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BillingFileError(f"{value!r} is not a number") from None


def _empty_row() -> Row:
    return dict.fromkeys(focus_schema().names)


def to_table(rows: Iterable[Row]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=focus_schema())


# --- AWS CUR 2.0 -----------------------------------------------------------------------------

_AWS_SERVICES = {
    "AmazonEC2": ("Amazon Elastic Compute Cloud", "Compute"),
    "AmazonRDS": ("Amazon Relational Database Service", "Databases"),
    "AmazonS3": ("Amazon Simple Storage Service", "Storage"),
    "AWSLambda": ("AWS Lambda", "Compute"),
    "AmazonVPC": ("Amazon Virtual Private Cloud", "Networking"),
}
_AWS_CHARGE = {
    "Usage": "Usage",
    "DiscountedUsage": "Usage",
    "SavingsPlanCoveredUsage": "Usage",
    "SavingsPlanNegation": "Usage",
    "Tax": "Tax",
    "Credit": "Credit",
    "Refund": "Credit",
    "BundledDiscount": "Credit",
    "RIFee": "Purchase",
    "Fee": "Purchase",
    "SavingsPlanRecurringFee": "Purchase",
    "SavingsPlanUpfrontFee": "Purchase",
}


def _map(value: Any) -> dict[str, str]:
    """CUR 2.0 map columns arrive as a list of (key, value) from Parquet or JSON from CSV."""
    if value is None or value == "":
        return {}
    if isinstance(value, list):
        return {str(k): str(v) for k, v in value}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    parsed = json.loads(value)
    return {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}


def _aws_tag_key(key: str) -> str:
    # CUR 2.0 names user tags user_<key> and AWS tags aws_<key>; FOCUS keeps the tag's own key.
    return key.removeprefix("user_").removeprefix("user:")


# EffectiveCost of CUR 2.0's commitment line items, as AWS amortizes them ("Understanding
# your amortized costs"): line item type -> (columns added, columns subtracted). The covered
# usage carries its share of the commitment; the commitment an hour left unused is the
# recurring fee's part (Savings Plans) or the RI fee's (its amortized upfront and recurring
# parts); an upfront payment is spread over the term, never counted in the hour it was paid.
_CUR2_AMORTIZED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "SavingsPlanCoveredUsage": (("savings_plan_savings_plan_effective_cost",), ()),
    "SavingsPlanRecurringFee": (
        ("savings_plan_total_commitment_to_date",),
        ("savings_plan_used_commitment",),
    ),
    "SavingsPlanNegation": ((), ()),
    "SavingsPlanUpfrontFee": ((), ()),
    "DiscountedUsage": (("reservation_effective_cost",), ()),
    "RIFee": (
        (
            "reservation_unused_amortized_upfront_fee_for_billing_period",
            "reservation_unused_recurring_fee",
        ),
        (),
    ),
}


def _cur2_amortized(item_type: str, src: Mapping[str, Any], unblended: float) -> float:
    if item_type == "Fee" and src.get("reservation_reservation_a_r_n"):
        return 0.0  # an RI's upfront payment: amortized into its usage and RIFee rows
    rule = _CUR2_AMORTIZED.get(item_type)
    if rule is None:
        return unblended
    added, subtracted = rule
    return sum(_num(src.get(c)) or 0.0 for c in added) - sum(
        _num(src.get(c)) or 0.0 for c in subtracted
    )


def cur2_rows(src: Mapping[str, Any]) -> Row:
    item_type = str(src.get("line_item_line_item_type") or "Usage")
    code = str(src.get("line_item_product_code") or "")
    product = _map(src.get("product"))
    name, category = _AWS_SERVICES.get(code, (product.get("product_name") or code, "Other"))
    unblended = _num(src.get("line_item_unblended_cost")) or 0.0
    effective = _cur2_amortized(item_type, src, unblended)
    quantity = _num(src.get("line_item_usage_amount"))
    listed = _num(src.get("pricing_public_on_demand_cost"))
    row = _empty_row()
    row.update(
        {
            "AvailabilityZone": src.get("line_item_availability_zone") or None,
            "BilledCost": unblended,
            "BillingAccountId": str(src.get("bill_payer_account_id")),
            "BillingAccountName": src.get("bill_payer_account_name") or None,
            "BillingCurrency": src.get("line_item_currency_code") or "USD",
            "BillingPeriodStart": _iso(src.get("bill_billing_period_start_date")),
            "BillingPeriodEnd": _iso(src.get("bill_billing_period_end_date")),
            "ChargeCategory": _AWS_CHARGE.get(item_type, "Adjustment"),
            "ChargeClass": "Correction" if item_type == "Refund" else None,
            "ChargeDescription": src.get("line_item_line_item_description") or None,
            "ChargeFrequency": "Recurring"
            if item_type in ("RIFee", "SavingsPlanRecurringFee")
            else (
                "One-Time"
                if item_type in ("Fee", "SavingsPlanUpfrontFee", "Tax")
                else "Usage-Based"
            ),
            "ChargePeriodStart": _iso(src.get("line_item_usage_start_date")),
            "ChargePeriodEnd": _iso(src.get("line_item_usage_end_date")),
            "CommitmentDiscountCategory": "Spend"
            if item_type.startswith("SavingsPlan")
            else ("Usage" if item_type == "DiscountedUsage" else None),
            "CommitmentDiscountId": src.get("savings_plan_savings_plan_a_r_n")
            or src.get("reservation_reservation_a_r_n")
            or None,
            "CommitmentDiscountStatus": "Used"
            if item_type in ("SavingsPlanCoveredUsage", "DiscountedUsage")
            else None,
            "ConsumedQuantity": quantity if item_type.endswith("Usage") else None,
            "ConsumedUnit": src.get("pricing_unit") if item_type.endswith("Usage") else None,
            "ContractedCost": unblended,
            "ContractedUnitPrice": _num(src.get("line_item_unblended_rate")),
            "EffectiveCost": effective,
            "InvoiceIssuerName": src.get("bill_invoicing_entity") or "Amazon Web Services, Inc.",
            "ListCost": listed if listed is not None else unblended,
            "ListUnitPrice": _num(src.get("pricing_public_on_demand_rate")),
            "PricingCategory": "Committed"
            if item_type in ("SavingsPlanCoveredUsage", "DiscountedUsage")
            else ("Standard" if item_type == "Usage" else None),
            "PricingQuantity": quantity,
            "PricingUnit": src.get("pricing_unit") or None,
            "ProviderName": "AWS",
            "PublisherName": src.get("bill_billing_entity") or "AWS",
            "RegionId": src.get("product_region_code") or product.get("region") or None,
            "RegionName": src.get("product_location") or product.get("location") or None,
            "ResourceId": src.get("line_item_resource_id") or None,
            "ResourceName": src.get("line_item_resource_id") or None,
            "ResourceType": product.get("product_family") or None,
            "ServiceCategory": category,
            "ServiceName": name,
            "SkuId": src.get("product_sku") or None,
            "SkuPriceId": src.get("product_sku") or None,
            "SubAccountId": str(src.get("line_item_usage_account_id") or "") or None,
            "SubAccountName": src.get("line_item_usage_account_name") or None,
            "Tags": json.dumps(
                {_aws_tag_key(k): v for k, v in _map(src.get("resource_tags")).items()}
            ),
        }
    )
    return row


def from_cur2(path: Path) -> pa.Table:
    return to_table(cur2_rows(r) for b in read_batches(path) for r in b.to_pylist())


# --- Azure cost details ---------------------------------------------------------------------

_AZURE_CATEGORY = {
    "Virtual Machines": "Compute",
    "Storage": "Storage",
    "Bandwidth": "Networking",
    "Virtual Network": "Networking",
    "SQL Database": "Databases",
    "Azure Database for PostgreSQL": "Databases",
}
_AZURE_CHARGE = {"Usage": "Usage", "Purchase": "Purchase", "Refund": "Credit", "Tax": "Tax"}


def _azure_tags(value: Any) -> str:
    text = str(value or "").strip()
    if not text:
        return "{}"
    # Some exports omit the braces: "team": "a","env": "prod"
    parsed = json.loads(text if text.startswith("{") else "{" + text + "}")
    return json.dumps({str(k): str(v) for k, v in parsed.items()})


def azure_row(src: Mapping[str, Any], kind: str) -> Row:
    cost = _num(src.get("CostInBillingCurrency") or src.get("Cost")) or 0.0
    model = str(src.get("PricingModel") or "OnDemand")
    charge_type = str(src.get("ChargeType") or "Usage")
    day = _iso(src.get("Date") or src.get("UsageDate"))
    if day is None:
        raise BillingFileError("Azure row without Date")
    day_end = _iso(datetime.fromisoformat(day.replace("Z", "+00:00")) + timedelta(days=1))
    committed = model in ("Reservation", "SavingsPlan")
    if kind == "amortized":
        # Amortized files spread purchases into usage: effective cost; billed is what the
        # invoice shows, which for commitment-covered usage is nothing.
        effective, billed = cost, (0.0 if committed else cost)
    else:
        effective, billed = (0.0 if charge_type == "Purchase" and committed else cost), cost
    quantity = _num(src.get("Quantity"))
    payg = _num(src.get("PayGPrice"))
    category = str(src.get("MeterCategory") or "")
    row = _empty_row()
    row.update(
        {
            "BilledCost": billed,
            "BillingAccountId": str(src.get("BillingAccountId")),
            "BillingAccountName": src.get("BillingAccountName") or None,
            "BillingCurrency": src.get("BillingCurrencyCode")
            or src.get("BillingCurrency")
            or "USD",
            "BillingPeriodStart": _iso(src.get("BillingPeriodStartDate")),
            "BillingPeriodEnd": _iso(src.get("BillingPeriodEndDate")),
            "ChargeCategory": _AZURE_CHARGE.get(charge_type, "Adjustment"),
            "ChargeClass": "Correction" if charge_type == "Refund" else None,
            "ChargeDescription": src.get("MeterName") or None,
            "ChargeFrequency": {"OneTime": "One-Time", "Recurring": "Recurring"}.get(
                str(src.get("Frequency")), "Usage-Based"
            ),
            "ChargePeriodStart": day,
            "ChargePeriodEnd": day_end,
            "CommitmentDiscountCategory": "Usage"
            if model == "Reservation"
            else ("Spend" if model == "SavingsPlan" else None),
            "CommitmentDiscountId": src.get("ReservationId") or src.get("benefitId") or None,
            "CommitmentDiscountName": src.get("ReservationName") or src.get("benefitName") or None,
            "CommitmentDiscountStatus": "Used" if committed and charge_type == "Usage" else None,
            "ConsumedQuantity": quantity,
            "ConsumedUnit": src.get("UnitOfMeasure") or None,
            "ContractedCost": cost,
            "ContractedUnitPrice": _num(src.get("UnitPrice")),
            "EffectiveCost": effective,
            "InvoiceIssuerName": "Microsoft",
            "ListCost": (payg * quantity) if payg is not None and quantity is not None else cost,
            "ListUnitPrice": payg,
            "PricingCategory": "Committed"
            if committed
            else ("Dynamic" if model == "Spot" else "Standard"),
            "PricingQuantity": quantity,
            "PricingUnit": src.get("UnitOfMeasure") or None,
            "ProviderName": "Microsoft",
            "PublisherName": src.get("PublisherName") or "Microsoft",
            "RegionId": (src.get("ResourceLocation") or "").lower() or None,
            "RegionName": src.get("ResourceLocation") or None,
            "ResourceId": (src.get("ResourceId") or "").lower() or None,
            "ResourceName": src.get("ResourceName") or None,
            "ResourceType": src.get("ConsumedService") or None,
            "ServiceCategory": _AZURE_CATEGORY.get(category, "Other"),
            "ServiceName": category or "Other",
            "SkuId": src.get("ProductId") or src.get("MeterId") or None,
            "SkuPriceId": src.get("MeterId") or None,
            "SubAccountId": src.get("SubscriptionId") or None,
            "SubAccountName": src.get("SubscriptionName") or None,
            "Tags": _azure_tags(src.get("Tags")),
        }
    )
    return row


def from_azure(path: Path, kind: str) -> pa.Table:
    if kind not in ("actual", "amortized"):
        raise BillingFileError(f"Azure cost kind must be actual or amortized, not {kind!r}")
    return to_table(azure_row(r, kind) for b in read_batches(path) for r in b.to_pylist())


# --- GCP BigQuery billing export ------------------------------------------------------------

_GCP_CATEGORY = {"Compute Engine": "Compute", "Cloud Storage": "Storage", "Cloud SQL": "Databases"}
_GCP_CHARGE = {"regular": "Usage", "tax": "Tax", "adjustment": "Adjustment"}


def gcp_row(src: Mapping[str, Any]) -> Row:
    cost = _num(src.get("cost")) or 0.0
    credits = sum(_num(c.get("amount")) or 0.0 for c in src.get("credits") or [])
    month = str((src.get("invoice") or {}).get("month") or "")
    if len(month) != 6:
        raise BillingFileError(f"GCP row without invoice.month (got {month!r})")
    period_start = datetime(int(month[:4]), int(month[4:]), 1, tzinfo=UTC)
    period_end = (period_start + timedelta(days=32)).replace(day=1)
    service = (src.get("service") or {}).get("description") or "Other"
    sku = src.get("sku") or {}
    location = src.get("location") or {}
    usage = src.get("usage") or {}
    project = src.get("project") or {}
    tags = {str(t["key"]): str(t.get("value", "")) for t in src.get("labels") or []}
    resource = src.get("resource") or {}
    list_cost = _num(src.get("cost_at_list"))
    row = _empty_row()
    row.update(
        {
            "AvailabilityZone": location.get("zone") or None,
            "BilledCost": cost + credits,
            "BillingAccountId": str(src.get("billing_account_id")),
            "BillingCurrency": src.get("currency") or "USD",
            "BillingPeriodStart": _iso(period_start),
            "BillingPeriodEnd": _iso(period_end),
            "ChargeCategory": _GCP_CHARGE.get(str(src.get("cost_type")), "Adjustment"),
            "ChargeDescription": sku.get("description") or None,
            "ChargeFrequency": "Usage-Based",
            "ChargePeriodStart": _iso(src.get("usage_start_time")),
            "ChargePeriodEnd": _iso(src.get("usage_end_time")),
            "ConsumedQuantity": _num(usage.get("amount")),
            "ConsumedUnit": usage.get("unit") or None,
            "ContractedCost": cost + credits,
            "EffectiveCost": cost + credits,
            "InvoiceIssuerName": "Google",
            "ListCost": list_cost if list_cost is not None else cost,
            "PricingCategory": "Standard",
            "PricingQuantity": _num(usage.get("amount_in_pricing_units")),
            "PricingUnit": usage.get("pricing_unit") or None,
            "ProviderName": "Google Cloud",
            "PublisherName": "Google Cloud",
            "RegionId": location.get("region") or None,
            "RegionName": location.get("region") or None,
            "ResourceId": resource.get("global_name") or None,
            "ResourceName": resource.get("name") or None,
            "ServiceCategory": _GCP_CATEGORY.get(service, "Other"),
            "ServiceName": service,
            "SkuId": sku.get("id") or None,
            "SkuPriceId": sku.get("id") or None,
            "SubAccountId": project.get("id") or None,
            "SubAccountName": project.get("name") or None,
            "Tags": json.dumps(tags),
        }
    )
    return row


def _json_rows(path: Path) -> Iterator[Mapping[str, Any]]:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise BillingFileError(f"{path}:{n}: not JSON: {exc}") from None


def from_gcp(path: Path) -> pa.Table:
    return to_table(gcp_row(r) for r in _json_rows(path))


ADAPTERS = ("focus", "aws-cur2", "azure-actual", "azure-amortized", "gcp-bigquery")


def adapt(path: Path, fmt: str) -> pa.Table:
    """A native export as a FOCUS table. Raises BillingFileError naming the problem."""
    try:
        if fmt == "aws-cur2":
            return from_cur2(path)
        if fmt in ("azure-actual", "azure-amortized"):
            return from_azure(path, fmt.split("-")[1])
        if fmt == "gcp-bigquery":
            return from_gcp(path)
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,  # a row that is not an object (GCP: `null` instead of a row)
        ArithmeticError,
        pa.ArrowException,
    ) as exc:
        if isinstance(exc, BillingFileError):
            raise BillingFileError(f"{path}: {exc}") from None
        raise BillingFileError(f"{path}: not a valid {fmt} export: {exc}") from None
    raise BillingFileError(f"unknown format {fmt!r}; known: {list(ADAPTERS)}")
