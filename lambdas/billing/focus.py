"""FOCUS 1.0 columns and the reading of FOCUS files (CSV or Parquet, compressed or not).

Files are read in record batches so memory stays bounded by the batch size, not the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# Every FOCUS 1.0 column the adapters emit (the validator checks presence and types).
FOCUS_COLUMNS = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
DECIMAL_COLUMNS = {
    "BilledCost",
    "ConsumedQuantity",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "ListCost",
    "ListUnitPrice",
    "PricingQuantity",
}
# What the loader needs from any FOCUS file (1.0 or 1.2 naming for the provider).
REQUIRED = (
    "BilledCost",
    "EffectiveCost",
    "BillingAccountId",
    "BillingPeriodStart",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ServiceName",
)

BATCH_ROWS = 65_536


class BillingFileError(ValueError):
    """A billing file cannot be read or is not FOCUS. Fix the file; retrying will not help."""


def focus_schema() -> pa.Schema:
    return pa.schema(
        [(c, pa.float64() if c in DECIMAL_COLUMNS else pa.string()) for c in FOCUS_COLUMNS]
    )


def file_format(path: str) -> str:
    """parquet | csv | jsonl from the name; compression (.gz, .bz2, .zst) is detected by pyarrow
    for CSV and is internal to Parquet."""
    name = path.lower()
    for suffix in (".gz", ".bz2", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".json", ".jsonl", ".ndjson")):
        return "jsonl"
    raise BillingFileError(f"{path}: unknown file type (expected .csv, .parquet or .jsonl)")


def read_batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of a CSV (optionally compressed) or Parquet file."""
    fmt = file_format(path.name)
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            present = [c for c in columns if c in pf.schema_arrow.names] if columns else None
            yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=present)
        elif fmt == "csv":
            # Strings stay strings: ids like 012345678901 must keep their leading zero.
            reader = pacsv.open_csv(
                pa.input_stream(path, compression="detect"),
                read_options=pacsv.ReadOptions(block_size=16 << 20),
                convert_options=pacsv.ConvertOptions(
                    strings_can_be_null=True,
                    column_types={c: pa.string() for c in FOCUS_COLUMNS if c not in DECIMAL_COLUMNS}
                    | {c: pa.float64() for c in DECIMAL_COLUMNS},
                ),
            )
            for batch in reader:
                yield (
                    batch.select([c for c in columns if c in batch.schema.names])
                    if columns
                    else batch
                )
        else:
            raise BillingFileError(f"{path}: JSON rows are read by the GCP adapter, not as FOCUS")
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise BillingFileError(f"{path}: cannot read {fmt}: {exc}") from exc
