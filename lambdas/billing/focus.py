"""FOCUS 1.0 columns and the one reader of FOCUS files (CSV or Parquet, compressed or not),
shared by `cct billing load` and `cct backtest`.

Files are read in record batches so memory stays bounded by the batch size, not the file.
`read_focus` accepts what real exports contain: column names in any case, `NULL` or empty
for null, timestamps in ISO 8601 with or without `T`, with `Z`, an offset, fractional seconds,
BigQuery's ` UTC` suffix or no zone at all (FOCUS says UTC). A value that cannot be read
rejects its row, never the file: each rejected row is counted under one reason, with the
first examples kept for the message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
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
            # Strings stay strings, in every column (a native export's `bill_payer_account_id`
            # as much as FOCUS's BillingAccountId): ids like 012345678901 keep their leading
            # zero. The adapters parse numbers and times from text themselves.
            with pacsv.open_csv(pa.input_stream(path, compression="detect")) as probe:
                header = probe.schema.names
            reader = pacsv.open_csv(
                pa.input_stream(path, compression="detect"),
                read_options=pacsv.ReadOptions(block_size=16 << 20),
                convert_options=pacsv.ConvertOptions(
                    strings_can_be_null=True,
                    column_types=dict.fromkeys(header, pa.string())
                    | {c: pa.float64() for c in DECIMAL_COLUMNS if c in header},
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


# ---------------------------------------------------------------- the shared FOCUS reader

TIME_COLUMNS = frozenset(
    {"BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"}
)
NUMBER_COLUMNS = frozenset(DECIMAL_COLUMNS)
# The money columns, and the default bound on their magnitude: 1e308 overflowed the loader's
# sums and the store, 1e40 the detector's float32 history. A row beyond it is rejected by the
# reader, so the billing loader and `cct backtest` refuse the same rows for the same reason.
COST_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost")
MAX_ABS_COST = 1e9
# Column names the reader knows, matched case-insensitively (1.2 renamed ProviderName).
KNOWN_COLUMNS = (*FOCUS_COLUMNS, "ServiceProviderName")
NULL_LITERALS = ["", "NULL", "null", "Null"]
EXAMPLES_PER_REASON = 3

# Timestamps are rewritten to one shape, `YYYY-MM-DDTHH:MM:SS+HHMM`, then parsed once.
# Seconds are all a charge period needs, so fractions are dropped.
_TS_REWRITES = (
    (r"^(\d{4}-\d{2}-\d{2})[Tt ]+", r"\1T"),
    (r"^(\d{4}-\d{2}-\d{2})$", r"\1T00:00:00"),
    (r"(T\d{2}:\d{2})([^:\d]|$)", r"\1:00\2"),
    (r"(T\d{2}:\d{2}:\d{2})[.,]\d+", r"\1"),
    (r"\s*(UTC|GMT|Z|z)$", "+0000"),
    (r"\s+([+-]\d{2}:?\d{2})$", r"\1"),
    (r"(T\d{2}:\d{2}:\d{2})$", r"\1+0000"),
)
_NUMBER_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


@dataclass
class RowErrors:
    """Rows rejected by the reader or its callers: a count per reason and the first examples
    (row number in its file and the offending value)."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, count: int, examples: Sequence[str] = ()) -> None:
        if count <= 0:
            return
        self.counts[reason] += count
        kept = self.examples.setdefault(reason, [])
        kept.extend(examples[: max(0, EXAMPLES_PER_REASON - len(kept))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """One human line per reason, largest first: `12 rows: <reason> (e.g. ...)`."""
        out = []
        for reason, n in self.counts.most_common():
            eg = self.examples.get(reason)
            out.append(f"{n:,} rows: {reason}" + (f" (e.g. {'; '.join(eg)})" if eg else ""))
        return out


@dataclass
class FocusBatch:
    """The usable rows of one batch (canonical column names; times as epoch seconds int64,
    numbers as float64, the rest as read) and, typed the same way, the rejected ones: a
    rejected row whose ChargePeriodStart could be read makes its interval incomplete, not
    free."""

    table: pa.Table
    rejected: pa.Table

    @property
    def incomplete_starts(self) -> pa.Array:
        if "ChargePeriodStart" not in self.rejected.column_names:
            return pa.array([], pa.int64())
        return pc.drop_null(self.rejected.column("ChargePeriodStart")).combine_chunks()


def parse_timestamps(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Epoch seconds (int64) of timestamps of any accepted shape; null where missing or not a
    timestamp. Naive values are UTC."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        return pc.take(parse_timestamps(arr.dictionary), arr.indices)
    if pa.types.is_timestamp(arr.type):
        if arr.type.tz is None:
            arr = pc.assume_timezone(arr, "UTC")
        return pc.cast(pc.cast(arr, pa.timestamp("s", tz="UTC"), safe=False), pa.int64())
    if pa.types.is_date(arr.type):
        return pc.cast(pc.cast(arr, pa.timestamp("s")), pa.int64())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pa.nulls(len(arr), pa.int64())
    # Exports repeat the same few hundred timestamps over millions of rows: parse each
    # distinct text once.
    encoded = pc.dictionary_encode(pc.cast(arr, pa.string()))
    text = pc.utf8_trim_whitespace(encoded.dictionary)
    for pattern, replacement in _TS_REWRITES:
        text = pc.replace_substring_regex(text, pattern, replacement)
    parsed = pc.strptime(text, format="%Y-%m-%dT%H:%M:%S%z", unit="s", error_is_null=True)
    # strptime rolls 2024-02-30 over to March; a date that does not exist is not a timestamp.
    naive = pc.strptime(pc.utf8_slice_codeunits(text, 0, 19), "%Y-%m-%dT%H:%M:%S", "s", True)
    same_day = pc.equal(pc.strftime(naive, "%Y-%m-%d"), pc.utf8_slice_codeunits(text, 0, 10))
    parsed = pc.if_else(pc.fill_null(same_day, False), parsed, None)
    return pc.take(pc.cast(parsed, pa.int64()), encoded.indices)


def parse_numbers(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """float64; null where missing or not a decimal number (text such as `n/a`, `inf`)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        return pc.take(parse_numbers(arr.dictionary), arr.indices)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        # Integers beyond 2**53 lose their last digits as floats: a cost, not an id.
        out = pc.cast(arr, pa.float64(), safe=False)
        return pc.if_else(pc.is_finite(out), out, None)
    if pa.types.is_decimal(arr.type):
        return pc.cast(arr, pa.float64(), safe=False)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pa.nulls(len(arr), pa.float64())
    text = pc.cast(arr, pa.string())
    ok = pc.match_substring_regex(text, _NUMBER_RE)
    out = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, text, None)), pa.float64())
    return pc.if_else(pc.is_finite(out), out, None)


def canonical_names(names: Sequence[str]) -> dict[str, str]:
    """file column name -> FOCUS name, for the columns whose name matches one in any case."""
    known = {c.lower(): c for c in KNOWN_COLUMNS}
    out: dict[str, str] = {}
    for name in names:
        canon = known.get(name.strip().lower())
        if canon and canon not in out.values():
            out[name] = canon
    return out


def _rebatched(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Batches of exactly BATCH_ROWS rows (the last one shorter). Dictionary-encoded reads
    end a batch at every row group (each has its own dictionary); the plain read does not,
    and where batches end decides which rows are read together (the backtest orders its
    resources by first appearance per batch), so both must cut alike."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= BATCH_ROWS:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, BATCH_ROWS)
            pending = table.slice(BATCH_ROWS).to_batches()
            rows -= BATCH_ROWS
    if rows:
        yield pa.Table.from_batches(pending)


def _raw_batches(
    path: Path, columns: Sequence[str], dictionary: Sequence[str] = ()
) -> Iterator[pa.RecordBatch | pa.Table]:
    """Batches of the wanted columns (canonical names), CSV values all as text. The text
    columns of a Parquet file named in `dictionary` come dictionary-encoded, as stored: no
    string per row is made (the caller must accept dictionary arrays)."""
    if not path.is_file():
        raise BillingFileError(f"{path}: no such file")
    fmt = file_format(path.name)
    wanted = set(columns)
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            names = canonical_names(pf.schema_arrow.names)
            present = {f: c for f, c in names.items() if c in wanted}
            types = {f: pf.schema_arrow.field(f).type for f in present}
            text = (pa.string(), pa.large_string())
            encoded = [f for f, c in present.items() if c in dictionary and types[f] in text]
            if encoded:
                pf = pq.ParquetFile(path, read_dictionary=encoded)
            batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=list(present))
            # (Columns written as dictionaries are read as dictionaries anyway.)
            dictionaries = encoded or any(pa.types.is_dictionary(t) for t in types.values())
            for batch in _rebatched(batches) if dictionaries else batches:
                yield batch.rename_columns([present[n] for n in batch.schema.names])
        elif fmt == "csv":
            with pacsv.open_csv(pa.input_stream(path, compression="detect")) as probe:
                header = probe.schema.names
            names = canonical_names(header)
            present = {f: c for f, c in names.items() if c in wanted}
            # Every value as text: one bad value rejects its row, not the file, and ids like
            # 012345678901 keep their leading zero.
            reader = pacsv.open_csv(
                pa.input_stream(path, compression="detect"),
                read_options=pacsv.ReadOptions(block_size=16 << 20),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(present),
                    column_types=dict.fromkeys(present, pa.string()),
                    null_values=NULL_LITERALS,
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
            for batch in reader:
                yield batch.rename_columns([present[n] for n in batch.schema.names])
        else:
            raise BillingFileError(f"{path}: JSON rows are read by the GCP adapter, not as FOCUS")
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise BillingFileError(f"{path}: cannot read {fmt}: {exc}") from exc


def missing_columns(path: Path, required: Sequence[str]) -> list[str]:
    """The required FOCUS columns the file lacks (names compared in any case)."""
    if not path.is_file():
        raise BillingFileError(f"{path}: no such file")
    fmt = file_format(path.name)
    try:
        if fmt == "parquet":
            names = pq.read_schema(path).names
        else:
            with pacsv.open_csv(pa.input_stream(path, compression="detect")) as probe:
                names = probe.schema.names
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise BillingFileError(f"{path}: cannot read {fmt}: {exc}") from exc
    present = set(canonical_names(names).values())
    return [c for c in required if c not in present]


def _examples(raw: pa.Array, bad: pa.Array, offset: int, source: str) -> list[str]:
    """`<file> row <n>: <value>`; n counts data rows from 1 (a CSV's line is n + 1)."""
    rows = pc.indices_nonzero(bad).to_pylist()[:EXAMPLES_PER_REASON]
    where = f"{source} " if source else ""
    return [f"{where}row {offset + r + 1}: {str(raw[r].as_py())[:80]!r}" for r in rows]


def read_focus(
    path: Path,
    columns: Sequence[str],
    required: Sequence[str],
    errors: RowErrors,
    *,
    must_exist: Sequence[str] = (),
    source: str = "",
    dictionary: Sequence[str] = (),
    max_abs_cost: float = MAX_ABS_COST,
) -> Iterator[FocusBatch]:
    """The usable rows of a FOCUS file, batch by batch.

    `columns`: the FOCUS columns wanted (absent ones are left out); `required`: columns that
    must exist and hold a value on every usable row; `must_exist`: columns that must exist but
    may be null; `dictionary`: text columns a Parquet file may hand over dictionary-encoded
    (timestamps and numbers are parsed once per distinct value either way); `max_abs_cost`:
    the largest magnitude a cost column may hold (COST_COLUMNS). Raises
    BillingFileError when a required
    column is missing or the file cannot be read; bad rows go to `errors` (one reason per
    row, the first that applies) and never stop the others.
    """
    missing = missing_columns(path, [*required, *must_exist])
    if missing:
        raise BillingFileError(f"{path}: not a FOCUS file, missing columns {missing}")
    offset = 0
    wanted = [*dict.fromkeys([*required, *must_exist, *columns])]
    for batch in _raw_batches(path, wanted, dictionary):
        yield normalize_batch(
            batch,
            required,
            errors,
            offset=offset,
            source=source or path.name,
            max_abs_cost=max_abs_cost,
        )
        offset += batch.num_rows


def normalize_batch(
    batch: pa.RecordBatch | pa.Table,
    required: Sequence[str],
    errors: RowErrors,
    *,
    offset: int = 0,
    source: str = "",
    max_abs_cost: float = MAX_ABS_COST,
) -> FocusBatch:
    """Type the FOCUS columns of one batch (canonical names) and drop the rows that cannot be
    used, counting them in `errors`. `offset`: the batch's first row number in its file;
    `max_abs_cost`: a cost column's largest usable magnitude."""
    missing = [c for c in required if c not in batch.schema.names]
    if missing:
        raise BillingFileError(f"not a FOCUS file, missing columns {missing}")
    n = batch.num_rows
    cols: dict[str, pa.Array] = {}
    bad = pa.array([False] * n)
    for name in batch.schema.names:
        raw = batch.column(name)
        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks()
        if name in TIME_COLUMNS:
            value = parse_timestamps(raw)
            kind = "not a timestamp"
        elif name in NUMBER_COLUMNS:
            value = parse_numbers(raw)
            kind = "not a finite number"
        else:
            value = raw
            kind = ""
        cols[name] = value
        unread = pc.and_(pc.is_valid(raw), pc.is_null(value))
        checks = [(f"{name}: {kind}", unread)] if kind else []
        if name in COST_COLUMNS:
            checks.append(
                (f"{name}: beyond ±{max_abs_cost:g}", pc.greater(pc.abs(value), max_abs_cost))
            )
        if name in required:
            checks.append((f"{name}: missing", pc.is_null(raw)))
        for reason, mask in checks:
            new = pc.and_not(pc.fill_null(mask, False), bad)
            count = pc.sum(new).as_py() or 0
            if count:
                errors.add(reason, count, _examples(raw, new, offset, source))
                bad = pc.or_(bad, new)
    if "ChargePeriodStart" in cols and "ChargePeriodEnd" in cols:
        # A charge that ends before it starts cannot be placed in time.
        ends_first = pc.less_equal(cols["ChargePeriodEnd"], cols["ChargePeriodStart"])
        backwards = pc.and_not(pc.fill_null(ends_first, False), bad)
        count = pc.sum(backwards).as_py() or 0
        if count:
            errors.add(
                "ChargePeriodEnd: not after ChargePeriodStart",
                count,
                _examples(batch.column("ChargePeriodEnd"), backwards, offset, source),
            )
            bad = pc.or_(bad, backwards)
    table = pa.table(cols) if cols else pa.table({"_": pa.nulls(n)}).drop_columns(["_"])
    return FocusBatch(table.filter(pc.invert(bad)), table.filter(bad))
