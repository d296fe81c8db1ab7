"""Read FOCUS exports (CSV or Parquet) into a dense resource x interval run-rate matrix.

The files are read by the billing loader's reader (`lambdas.billing.focus.read_focus`), so
both accept the same inputs and reject the same rows (a cost beyond ±1e9 among them). Only
the columns detection needs are read. Rows that cannot be used are counted by reason and
reported; they never stop the good rows from being used, and the interval of a rejected row
reads as unknown (NaN) for its resource, never as $0.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from lambdas.billing.aggregate import BillingLimits
from lambdas.billing.focus import BillingFileError, RowErrors, missing_columns, read_focus

MUST_EXIST = ("ChargePeriodStart", "ProviderName", "BillingAccountId", "ServiceName")
OPTIONAL = ("ChargePeriodEnd", "RegionId", "ResourceId", "Tags")
PROVIDER_LABELS = {
    "aws": "aws",
    "amazon web services": "aws",
    "microsoft": "azure",
    "azure": "azure",
    "microsoft azure": "azure",
    "google cloud": "gcp",
    "gcp": "gcp",
    "google": "gcp",
}
# A row without ChargePeriodEnd is taken to last until the next row of its resource, at most
# this long (irregular exports); the last row of a resource gets the file's usual period.
MAX_INFERRED_PERIOD_S = 86400

# A charge spanning more is rejected, as `cct billing load` rejects it: one row with a typo in
# its end year would otherwise widen the matrix to a century of intervals.
MAX_CHARGE_PERIOD_S = BillingLimits().max_charge_period_h * 3600
# The largest matrix (resources x intervals) a backtest builds; past it the export's time span
# is refused with what it covers (a stray row years away would need tens of gigabytes).
MAX_MATRIX_CELLS = 200_000_000

# The billing reader's error: the input cannot be used at all. Fix it; do not retry.
FocusError = BillingFileError


@dataclass
class CostMatrix:
    """Run-rate in $/h per resource (rows) and interval (columns)."""

    start_s: int
    interval_s: int
    resources: list[dict[str, str]]  # labels of each row (see LEVEL_LABELS["resource"])
    rates: npt.NDArray[np.float64]
    rows_read: int = 0
    rows_used: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def times(self) -> npt.NDArray[np.int64]:
        return self.start_s + self.interval_s * np.arange(self.rates.shape[1], dtype=np.int64)


I64 = npt.NDArray[np.int64]


def _encoded(table: pa.Table, name: str, label: Callable[[object], str]) -> tuple[list[str], I64]:
    """A column as distinct labels and each row's index into them. The label function runs
    once per distinct raw value (None included), not once per row: most of a big export's
    values repeat."""
    if name not in table.column_names:
        return [label(None)], np.zeros(table.num_rows, dtype=np.int64)
    encoded = pc.dictionary_encode(table.column(name)).combine_chunks()
    labels: dict[str, int] = {}
    # Raw values whose labels are equal (None and "", "AWS" and "aws") share one index.
    code = [labels.setdefault(label(v), len(labels)) for v in encoded.dictionary.to_pylist()]
    code.append(labels.setdefault(label(None), len(labels)))  # the last: a null
    # Null rows (no index) point at that last entry.
    at = pc.fill_null(encoded.indices, len(code) - 1).to_numpy(zero_copy_only=False)
    rows = np.asarray(code, dtype=np.int64)[at.astype(np.int64)]
    return list(labels), rows


def _text(default: str) -> Callable[[object], str]:
    return lambda v: default if v in (None, "") else str(v)


def _provider(v: object) -> str:
    p = _text("")(v).lower()
    return PROVIDER_LABELS.get(p, p)


def _team(v: object) -> str:
    if v is None or isinstance(v, list):  # a map column: a list of (key, value) pairs
        return str(dict(v or []).get("team", ""))
    try:
        tags = json.loads(str(v)) if v else {}
    except json.JSONDecodeError:
        tags = {}
    return str(tags.get("team", "")) if isinstance(tags, dict) else ""


def _team_column(table: pa.Table) -> tuple[list[str], I64]:
    if "Tags" in table.column_names and pa.types.is_map(table.column("Tags").type):
        # Maps cannot be dictionary-encoded: one label per row.
        labels: dict[str, int] = {}
        rows = [labels.setdefault(_team(v), len(labels)) for v in table.column("Tags").to_pylist()]
        return list(labels), np.asarray(rows, dtype=np.int64)
    if "Tags" in table.column_names and not pa.types.is_dictionary(table.column("Tags").type):
        table = table.set_column(
            table.column_names.index("Tags"), "Tags", pc.cast(table.column("Tags"), pa.string())
        )
    return _encoded(table, "Tags", _team)


@dataclass
class _Rows:
    starts: npt.NDArray[np.float64]
    periods: npt.NDArray[np.float64]  # NaN: no ChargePeriodEnd
    costs: npt.NDArray[np.float64]  # NaN: the row was rejected (its interval is unknown)
    keys: list[tuple[str, ...]]  # distinct resource keys, in order of first appearance
    codes: I64  # each row's index into keys


def _first_seen(codes: I64) -> tuple[I64, I64]:
    """Distinct values of `codes` in order of first appearance, and each row's index
    into them."""
    uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[order] = np.arange(uniq.size)
    return first[order], rank[inverse.ravel()]


def _keys(table: pa.Table) -> tuple[list[tuple[str, ...]], I64]:
    """Each row's resource key (provider, account, region, service, team, resource), as
    distinct keys in order of first appearance and each row's index into them."""
    columns = [
        _encoded(table, "ProviderName", _provider),
        _encoded(table, "BillingAccountId", _text("")),
        _encoded(table, "RegionId", _text("global")),
        _encoded(table, "ServiceName", _text("")),
        _team_column(table),
        _encoded(table, "ResourceId", _text("")),
    ]
    # One integer per distinct combination (mixed radix: one sort for all columns, not one
    # per column), renumbered only when it could overflow.
    combo = np.zeros(table.num_rows, dtype=np.int64)
    size = 1
    for labels, rows in columns:
        if size * len(labels) >= 1 << 62:
            combo = np.unique(combo, return_inverse=True)[1].ravel()
            size = int(combo.max()) + 1
        combo = combo * len(labels) + rows
        size *= len(labels)
    firsts, rank = _first_seen(combo)
    index: dict[tuple[str, ...], int] = {}
    local = []
    for row in firsts.tolist():
        p, a, r, s, t, res = (labels[rows[row]] for labels, rows in columns)
        # Rows without a resource (support, tax, fees) form one pseudo-resource per service.
        local.append(index.setdefault((p, a, r, s, t, res or f"{s}/unattributed"), len(index)))
    return list(index), np.asarray(local, dtype=np.int64)[rank]


def _merge(parts: Sequence[_Rows], index: dict[tuple[str, ...], int]) -> I64:
    """Every part's rows as indexes into `index`, extended in order of first appearance."""
    out = []
    for part in parts:
        ids = [index.setdefault(key, len(index)) for key in part.keys]
        out.append(np.asarray(ids, dtype=np.int64)[part.codes])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _floats(table: pa.Table, name: str) -> npt.NDArray[np.float64]:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    col = pc.cast(table.column(name), pa.float64())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def _rows(path: Path, errors: RowErrors) -> _Rows:
    """The rows of one file: start, period, cost and resource key (rejected rows with a
    readable start keep cost NaN, so their interval is unknown, not free)."""
    missing = missing_columns(path, MUST_EXIST)
    if missing:
        raise FocusError(f"{path}: missing FOCUS column(s) {', '.join(missing)}")
    costs = [c for c in ("EffectiveCost", "BilledCost") if not missing_columns(path, [c])]
    if not costs:
        raise FocusError(f"{path}: needs EffectiveCost or BilledCost")
    cost_col = costs[0]
    parts: list[_Rows] = []
    for batch in read_focus(
        path,
        [*MUST_EXIST, *OPTIONAL, cost_col],
        ["ChargePeriodStart", cost_col],
        errors,
        must_exist=MUST_EXIST,
        # Dictionary-encoded as a Parquet file stores them: the keys are encoded anyway.
        dictionary=[*MUST_EXIST, *OPTIONAL],
    ):
        rejected = batch.rejected.filter(pc.is_valid(batch.rejected.column("ChargePeriodStart")))
        for table, good in ((batch.table, True), (rejected, False)):
            if not table.num_rows:
                continue
            start = _floats(table, "ChargePeriodStart")
            end = _floats(table, "ChargePeriodEnd")
            cost = _floats(table, cost_col) if good else np.full(table.num_rows, np.nan)
            period = end - start
            too_long = period > MAX_CHARGE_PERIOD_S
            if good and too_long.any():
                # Rejected like the loader's: its interval is incomplete, not spread or free.
                hours = MAX_CHARGE_PERIOD_S // 3600
                long_ones = np.flatnonzero(too_long)
                errors.add(
                    f"ChargePeriod: longer than {hours} hours",
                    long_ones.size,
                    [f"{path.name}: {period[i] / 3600:,.0f} hours" for i in long_ones[:3]],
                )
                cost = np.where(too_long, np.nan, cost)
            period = np.where(too_long, np.nan, period)
            parts.append(_Rows(start, period, cost, *_keys(table)))
    index: dict[tuple[str, ...], int] = {}
    codes = _merge(parts, index)
    return _Rows(
        np.concatenate([p.starts for p in parts]) if parts else np.empty(0),
        np.concatenate([p.periods for p in parts]) if parts else np.empty(0),
        np.concatenate([p.costs for p in parts]) if parts else np.empty(0),
        list(index),
        codes,
    )


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M")


def _fill_periods(
    starts: npt.NDArray[np.float64],
    periods: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    default: float,
) -> npt.NDArray[np.float64]:
    """Rows without an end last until the next row of their resource (capped), the last one
    of each resource the file's usual period: irregular samples become a rate over the time
    they cover instead of adding up."""
    missing = ~np.isfinite(periods)
    if not missing.any():
        return periods
    order = np.lexsort((starts, rows))
    nxt = np.full(starts.size, np.nan)
    same = rows[order][1:] == rows[order][:-1]
    gaps = starts[order][1:] - starts[order][:-1]
    nxt[order[:-1][same & (gaps > 0)]] = gaps[same & (gaps > 0)]
    inferred = np.where(np.isfinite(nxt), np.minimum(nxt, MAX_INFERRED_PERIOD_S), default)
    return np.where(missing, inferred, periods)


def load(paths: Sequence[Path], progress: Callable[[str], None] | None = None) -> CostMatrix:
    """Read every file and build one matrix over the union of their time ranges.

    The interval is the most common charge period (5 minutes, hourly or daily exports). A
    row's cost is spread over the intervals its charge period covers, so each cell is the
    resource's average rate in $/h over that interval. A cell holding a rejected row is NaN
    (unknown), and so is every cell of an interval without any row at all (a gap in the
    export), so neither reads as $0.
    """
    errors = RowErrors()
    parts = []
    for path in paths:
        if progress:
            progress(f"reading {path}")
        parts.append(_rows(path, errors))
    starts = np.concatenate([p.starts for p in parts]) if parts else np.empty(0)
    costs = np.concatenate([p.costs for p in parts]) if parts else np.empty(0)
    if not np.isfinite(costs).any():
        reasons = "; ".join(errors.lines()) or "empty input"
        raise FocusError(f"no usable rows in the input ({reasons})")
    periods = np.concatenate([p.periods for p in parts])
    index: dict[tuple[str, ...], int] = {}
    rows = _merge(parts, index)
    known = periods[np.isfinite(periods) & (periods > 0)]
    if known.size:
        values, counts = np.unique(known, return_counts=True)
        interval = int(values[np.argmax(counts)])
    else:
        gaps = np.diff(np.unique(starts))
        interval = int(np.median(gaps)) if gaps.size else 3600
    periods = _fill_periods(starts, periods, rows, float(interval))
    t0 = int(np.min(starts)) // interval * interval
    n_cols = int((np.max(starts + periods) - t0 - 1) // interval) + 1
    if n_cols * max(len(index), 1) > MAX_MATRIX_CELLS:
        first_s, last_s = int(np.min(starts)), int(np.max(starts + periods))
        raise FocusError(
            f"the rows span {_iso(first_s)} to {_iso(last_s)}: {n_cols:,} intervals of "
            f"{interval} s for {len(index):,} resources is more than a backtest holds "
            f"({MAX_MATRIX_CELLS:,} cells); select the period to backtest first"
        )
    first = ((starts - t0) // interval).astype(np.int64)
    # A charge longer than one interval is spread evenly over the intervals it covers.
    span = np.maximum(np.ceil((starts + periods - t0) / interval).astype(np.int64) - first, 1)
    rep = np.repeat(np.arange(starts.size), span)
    col = first[rep] + (np.arange(rep.size) - np.repeat(np.cumsum(span) - span, span))
    col = np.minimum(col, n_cols - 1)
    # $/h averaged over the interval: cost per interval-hour of the row's share.
    share = costs[rep] / span[rep] / (interval / 3600.0)
    matrix = np.zeros((len(index), n_cols))
    good = np.isfinite(share)
    # Several rows of one resource and interval (e.g. usage plus a fee) add up.
    np.add.at(matrix, (rows[rep][good], col[good]), share[good])
    matrix[rows[rep][~good], col[~good]] = np.nan
    covered = np.zeros(n_cols, dtype=bool)
    covered[col] = True
    matrix[:, ~covered] = np.nan
    names = ("provider", "billing_account_id", "region_id", "service_name", "team", "resource_id")
    rejected = errors.counts.copy()
    return CostMatrix(
        start_s=t0,
        interval_s=interval,
        resources=[dict(zip(names, key, strict=True)) for key in index],
        rates=matrix,
        rows_read=int(np.isfinite(costs).sum()) + errors.total,
        rows_used=int(np.isfinite(costs).sum()),
        rejected=rejected,
        examples=dict(errors.examples),
    )
