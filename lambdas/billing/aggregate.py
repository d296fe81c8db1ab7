"""Hourly totals of FOCUS rows per label set, computed batch by batch (bounded memory).

A row whose charge period spans several hours (Azure bills by day, purchases by month) is
spread evenly over those hours, so `cct_billed_cost_usd` is always the cost of one hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lambdas.billing.focus import (
    BATCH_ROWS,
    MAX_ABS_COST,
    REQUIRED,
    BillingFileError,
    FocusBatch,
    RowErrors,
    normalize_batch,
    read_focus,
)

HOUR_S = 3600
# FOCUS ProviderName (1.0) / ServiceProviderName (1.2) -> CCT's provider label.
PROVIDER_NAMES = {
    "aws": "aws",
    "amazon web services": "aws",
    "microsoft": "azure",
    "azure": "azure",
    "microsoft azure": "azure",
    "google cloud": "gcp",
    "google": "gcp",
    "gcp": "gcp",
}
KEY_COLUMNS = (
    "provider",
    "billing_account_id",
    "billing_period",
    "sub_account_id",
    "region_id",
    "service_name",
    "team",
    "env",
)
# Columns that must hold a value on every row the loader places; ServiceName may be null.
VALUE_REQUIRED = [c for c in REQUIRED if c != "ServiceName"]
PRESENT = ["ServiceName"]
COLUMNS = [
    *REQUIRED,
    "ProviderName",
    "ServiceProviderName",
    "SubAccountId",
    "RegionId",
    "ListCost",
    "Tags",
    "BillingCurrency",
]

Key = tuple[str, ...]


@dataclass(frozen=True)
class BillingLimits:
    """What the loader accepts of one row, checked where the FOCUS reader hands rows over
    (limits in BillingSettings). A row beyond them is rejected, counted and its hour marked
    incomplete; the rest of the file loads.

    max_abs_cost: any cost column's magnitude (1e308 overflowed the sums and the store),
        checked by the reader (`focus.normalize_batch`).
    max_charge_period_h: a charge spanning more hours is not spread (2000-2099 expanded to
        1.7M hourly samples; 1900-2200 ran out of memory).
    max_value_chars: any text value (ids, names, tags).
    currency: the currency the cost series are in (`cct_billed_cost_usd`: USD).
    rates: units of `currency` per unit of another BillingCurrency. Rows in a currency that
        is neither `currency` nor in `rates` are rejected: never summed as if the same.
    """

    max_abs_cost: float = MAX_ABS_COST
    max_charge_period_h: int = 24 * 400
    max_value_chars: int = 1024
    currency: str = "USD"
    rates: Mapping[str, float] = field(default_factory=dict)


# Partial aggregates are merged again once they hold this many rows: memory stays bounded by
# the number of distinct (labels, hour) cells plus this, whatever the file size.
COMPACT_ROWS = 200_000
GROUP_KEYS = [*KEY_COLUMNS, "start", "end"]
SUMS = [("billed", "sum"), ("effective", "sum"), ("list", "sum")]


@dataclass
class HourlyTotals:
    """Hourly sums per label set, aggregated in Arrow batch by batch; `finish()` gives
    (label key, hour epoch seconds) -> [billed, effective, list]."""

    limits: BillingLimits = field(default_factory=BillingLimits)
    rows_used: int = 0  # rows added (rejected ones are counted in `errors`)
    errors: RowErrors = field(default_factory=RowErrors)
    # Hours (epoch s) holding a row that could not be used: their totals are incomplete.
    incomplete_hours: set[int] = field(default_factory=set)
    partial: list[pa.Table] = field(default_factory=list)
    partial_rows: int = 0
    compacted_rows: int = 0  # rows right after the last compaction (distinct cells so far)
    result: pa.Table | None = None

    def add(self, grouped: pa.Table) -> None:
        self.partial.append(grouped)
        self.partial_rows += grouped.num_rows
        # Compacting again before COMPACT_ROWS new rows arrived would re-sort the same cells
        # over and over when a file has many distinct ones.
        if self.partial_rows > self.compacted_rows + COMPACT_ROWS:
            self._compact()

    def _compact(self) -> None:
        if len(self.partial) > 1:
            merged = pa.concat_tables(self.partial).group_by(GROUP_KEYS).aggregate(SUMS)
            merged = merged.rename_columns([*GROUP_KEYS, "billed", "effective", "list"])
            self.partial = [merged]
        self.partial_rows = self.compacted_rows = sum(t.num_rows for t in self.partial)

    def finish(self) -> None:
        """Fold the partial aggregates into hourly rows, spreading multi-hour charges (Azure
        bills by day, purchases by month) evenly over their hours."""
        self._compact()
        if not self.partial:
            self.result = pa.table({c: pa.array([], pa.string()) for c in KEY_COLUMNS})
            self.result = self.result.append_column("hour", pa.array([], pa.int64()))
            for c in ("billed", "effective", "list"):
                self.result = self.result.append_column(c, pa.array([], pa.float64()))
            return
        table = self.partial[0]
        start = table.column("start")
        # Integer division truncates: the start of the charge's first hour.
        hour = pc.multiply(pc.divide(start, HOUR_S), HOUR_S)
        multi = pc.greater(pc.subtract(table.column("end"), hour), HOUR_S)
        single = table.filter(pc.invert(multi))
        parts = [
            single.drop_columns(["start", "end"]).append_column(
                "hour", hour.filter(pc.invert(multi))
            )
        ]
        spread = table.filter(multi)
        if spread.num_rows:
            rows = spread.to_pylist()
            expanded = []
            for r in rows:
                first = r["start"] - r["start"] % HOUR_S
                hours = range(first, r["end"], HOUR_S)
                share = 1.0 / len(hours)
                for h in hours:
                    expanded.append(
                        {
                            **{k: r[k] for k in KEY_COLUMNS},
                            "billed": r["billed"] * share,
                            "effective": r["effective"] * share,
                            "list": r["list"] * share,
                            "hour": h,
                        }
                    )
            parts.append(pa.Table.from_pylist(expanded, schema=parts[0].schema))
        merged = pa.concat_tables(parts).group_by([*KEY_COLUMNS, "hour"]).aggregate(SUMS)
        self.result = merged.rename_columns([*KEY_COLUMNS, "hour", "billed", "effective", "list"])
        self.partial, self.partial_rows = [], 0

    def partitions(self) -> list[tuple[str, str, str]]:
        """(provider, billing account, billing period) present, providers normalised."""
        table = self._result()
        keys = table.group_by(["provider", "billing_account_id", "billing_period"]).aggregate([])
        return sorted(
            {
                (PROVIDER_NAMES.get(p, p), a, b)
                for p, a, b in zip(
                    keys.column("provider").to_pylist(),
                    keys.column("billing_account_id").to_pylist(),
                    keys.column("billing_period").to_pylist(),
                    strict=True,
                )
            }
        )

    def partition_table(self, part: tuple[str, str, str]) -> pa.Table:
        """The hourly rows of one partition: sub_account_id, region_id, service_name, team,
        env, hour (epoch seconds), billed, effective, list."""
        table = self._result()
        names = [name for name, norm in PROVIDER_NAMES.items() if norm == part[0]]
        mask = pc.and_(
            pc.is_in(table.column("provider"), pa.array([*names, part[0]])),
            pc.and_(
                pc.equal(table.column("billing_account_id"), part[1]),
                pc.equal(table.column("billing_period"), part[2]),
            ),
        )
        return table.filter(mask).select([*KEY_COLUMNS[3:], "hour", "billed", "effective", "list"])

    def _result(self) -> pa.Table:
        if self.result is None:
            raise RuntimeError("HourlyTotals used before finish()")
        return self.result


def _tag(tags: pa.Array, name: str) -> pa.Array:
    if pa.types.is_map(tags.type):
        return pc.fill_null(pc.map_lookup(tags, name, "first"), "")
    if pa.types.is_null(tags.type):
        return pa.array([""] * len(tags), pa.string())
    if not pa.types.is_string(tags.type):
        # FOCUS Tags is a JSON object (text) or a map; a number holds no tag.
        tags = pc.cast(tags, pa.string())
    # Few distinct tag sets repeat over many rows: extract once per distinct value.
    encoded = pc.dictionary_encode(tags)
    found = pc.extract_regex(encoded.dictionary, rf'"{name}"\s*:\s*"(?P<v>[^"]*)"')
    values = pc.fill_null(pc.struct_field(found, 0), "")
    return pc.fill_null(pc.take(values, encoded.indices), "")


def _str(table: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    if name not in table.column_names:
        return pa.array([""] * table.num_rows, pa.string())
    col = table.column(name)
    return pc.fill_null(col if pa.types.is_string(col.type) else pc.cast(col, pa.string()), "")


def add_batch(totals: HourlyTotals, batch: FocusBatch) -> None:
    """Add the usable rows of one batch read by `focus.read_focus` / `focus.normalize_batch`
    (rows it rejected are already counted in `totals.errors`)."""
    table = _within_limits(batch.table, totals)
    totals.rows_used += table.num_rows
    hours = pc.multiply(pc.divide(batch.incomplete_starts, HOUR_S), HOUR_S)
    totals.incomplete_hours.update(pc.unique(hours).to_pylist())
    provider_col = "ProviderName" if "ProviderName" in table.column_names else "ServiceProviderName"
    if provider_col not in table.column_names:
        raise BillingFileError("missing column ProviderName")
    rate = _rates(table, totals.limits)
    billed = pc.multiply(table.column("BilledCost"), rate)
    effective = pc.multiply(table.column("EffectiveCost"), rate)
    listed = (
        pc.multiply(table.column("ListCost"), rate)
        if "ListCost" in table.column_names
        else effective
    )
    tags = (
        table.column("Tags").combine_chunks()
        if "Tags" in table.column_names
        else pa.nulls(table.num_rows)
    )
    period = pc.cast(table.column("BillingPeriodStart"), pa.timestamp("s", tz="UTC"))
    grouped = (
        pa.table(
            {
                "provider": pc.utf8_lower(_str(table, provider_col)),
                "billing_account_id": _str(table, "BillingAccountId"),
                "billing_period": pc.strftime(period, "%Y-%m"),
                "sub_account_id": _str(table, "SubAccountId"),
                "region_id": _str(table, "RegionId"),
                "service_name": _str(table, "ServiceName"),
                "team": _tag(tags, "team"),
                "env": _tag(tags, "env"),
                "start": table.column("ChargePeriodStart"),
                "end": table.column("ChargePeriodEnd"),
                "billed": billed,
                "effective": effective,
                "list": pc.fill_null(listed, effective),
            }
        )
        .group_by(GROUP_KEYS)
        .aggregate(SUMS)
    )
    totals.add(grouped.rename_columns([*GROUP_KEYS, "billed", "effective", "list"]))


def add_file(totals: HourlyTotals, path: Path, source: str) -> None:
    """Add every usable row of one FOCUS file (call `totals.finish()` after the last file)."""
    for batch in read_focus(
        path,
        COLUMNS,
        VALUE_REQUIRED,
        totals.errors,
        must_exist=PRESENT,
        source=source,
        max_abs_cost=totals.limits.max_abs_cost,
    ):
        add_batch(totals, batch)


def add_table(totals: HourlyTotals, table: pa.Table, source: str) -> None:
    """Add a FOCUS table made by a native adapter, through the same checks as a file."""
    missing = [c for c in PRESENT if c not in table.column_names]
    if missing:
        raise BillingFileError(f"{source}: not a FOCUS table, missing columns {missing}")
    offset = 0
    for batch in table.to_batches(BATCH_ROWS):
        add_batch(
            totals,
            normalize_batch(
                batch,
                VALUE_REQUIRED,
                totals.errors,
                offset=offset,
                source=source,
                max_abs_cost=totals.limits.max_abs_cost,
            ),
        )
        offset += batch.num_rows


def _rates(table: pa.Table, limits: BillingLimits) -> pa.Array:
    """Per row, units of `limits.currency` per unit of its BillingCurrency (1.0 without the
    column: FOCUS files made by CCT's adapters are all in the billing currency). Rows in a
    currency without a rate were rejected by `_within_limits`."""
    if "BillingCurrency" not in table.column_names:
        return pa.array([1.0] * table.num_rows, pa.float64())
    rates = {limits.currency: 1.0, **limits.rates}
    codes = _currency_codes(table)
    names = pa.array(list(rates), pa.string())
    index = pc.index_in(codes, value_set=names)
    return pc.take(pa.array(list(rates.values()), pa.float64()), index)


def _currency_codes(table: pa.Table) -> pa.Array:
    """BillingCurrency as upper-case text (a column of another type, or all null, is read as
    text and so fails the currency check rather than the cast)."""
    col = table.column("BillingCurrency").combine_chunks()
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    return pc.utf8_upper(pc.utf8_trim_whitespace(col))


def _within_limits(table: pa.Table, totals: HourlyTotals) -> pa.Table:
    """The rows of a batch within `totals.limits`; the others are counted in `totals.errors`
    (first reason that applies) and their hours marked incomplete. A nested column (a list or
    struct where FOCUS has a scalar) is a BillingFileError: the whole file is not FOCUS."""
    limits = totals.limits
    n = table.num_rows
    checks: list[tuple[str, pa.Array, pa.Array]] = []
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        kind = col.type
        if pa.types.is_nested(kind) and not (name == "Tags" and pa.types.is_map(kind)):
            raise BillingFileError(f"column {name} is nested ({kind}); FOCUS columns are flat")
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            nul = pc.match_substring(col, "\x00")
            checks.append((f"{name}: holds a NUL character", nul, col))
            long = pc.greater(pc.utf8_length(col), limits.max_value_chars)
            checks.append((f"{name}: longer than {limits.max_value_chars} characters", long, col))
    if "ChargePeriodStart" in table.column_names and "ChargePeriodEnd" in table.column_names:
        start, end = table.column("ChargePeriodStart"), table.column("ChargePeriodEnd")
        span = pc.subtract(end, start)
        too_long = pc.greater(span, limits.max_charge_period_h * HOUR_S)
        checks.append(
            (
                f"ChargePeriod: longer than {limits.max_charge_period_h} hours",
                too_long,
                pc.cast(span, pa.string()),
            )
        )
    if "BillingCurrency" in table.column_names:
        codes = _currency_codes(table)
        known = pa.array([limits.currency, *limits.rates], pa.string())
        unknown = pc.invert(pc.fill_null(pc.is_in(codes, value_set=known), False))
        checks.append(
            (
                f"BillingCurrency: not {limits.currency} and no rate in CCT_BILLING_CURRENCY_RATES",
                unknown,
                table.column("BillingCurrency"),
            )
        )
    bad = pa.array([False] * n, pa.bool_())
    for reason, mask, values in checks:
        # An all-null column has the null type; so has its mask.
        new = pc.and_not(pc.fill_null(pc.cast(mask, pa.bool_()), False), bad)
        count = pc.sum(new).as_py() or 0
        if count:
            rows = pc.indices_nonzero(new).to_pylist()[:3]
            examples = [f"row value {str(values[r].as_py())[:80]!r}" for r in rows]
            totals.errors.add(reason, count, examples)
            bad = pc.or_(bad, new)
    if not (pc.sum(bad).as_py() or 0):
        return table
    starts = pc.drop_null(table.filter(bad).column("ChargePeriodStart")).combine_chunks()
    hours = pc.multiply(pc.divide(starts, HOUR_S), HOUR_S)
    totals.incomplete_hours.update(pc.unique(hours).to_pylist())
    return table.filter(pc.invert(bad))
