"""Read FOCUS exports (CSV or Parquet) into a dense resource x interval run-rate matrix.

Only the columns detection needs are read. Rows that cannot be used (unparseable time or cost)
are counted by reason and reported; they never stop the good rows from being used.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REQUIRED = ("ChargePeriodStart", "ProviderName", "BillingAccountId", "ServiceName")
OPTIONAL = ("ChargePeriodEnd", "EffectiveCost", "BilledCost", "RegionId", "ResourceId", "Tags")
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
TIME_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")


class FocusError(ValueError):
    """The input cannot be used at all (missing file or column). Fix the input; do not retry."""


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

    @property
    def times(self) -> npt.NDArray[np.int64]:
        return self.start_s + self.interval_s * np.arange(self.rates.shape[1], dtype=np.int64)


def _read(path: Path) -> pa.Table:
    if not path.exists():
        raise FocusError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        names = set(pq.read_schema(path).names)
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise FocusError(f"{path}: missing FOCUS column(s) {', '.join(missing)}")
        return pq.read_table(path, columns=[c for c in REQUIRED + OPTIONAL if c in names])
    if path.suffix.lower() in {".csv", ".gz"}:
        header = pacsv.open_csv(path).schema.names
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise FocusError(f"{path}: missing FOCUS column(s) {', '.join(missing)}")
        wanted = [c for c in REQUIRED + OPTIONAL if c in header]
        # Everything as text: a single bad value must reject one row, not the whole file.
        opts = pacsv.ConvertOptions(
            include_columns=wanted, column_types={c: pa.string() for c in wanted}
        )
        return pacsv.read_csv(path, convert_options=opts)
    raise FocusError(f"{path}: unknown format (use .csv, .csv.gz or .parquet)")


def _timestamps(col: pa.ChunkedArray) -> npt.NDArray[np.float64]:
    """Epoch seconds; NaN where the value is missing or not a timestamp."""
    if pa.types.is_timestamp(col.type):
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[col.type.unit]
        ticks = pc.cast(pc.cast(col, pa.int64()), pa.float64()).to_numpy(zero_copy_only=False)
        return np.asarray(ticks, dtype=np.float64) / per_second
    text = pc.cast(col, pa.string())
    out = np.full(len(text), np.nan)
    for fmt in TIME_FORMATS:
        parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
        secs = pc.cast(pc.cast(parsed, pa.int64()), pa.float64())
        out = np.where(np.isnan(out), secs.to_numpy(zero_copy_only=False), out)
    return out


def _numbers(col: pa.ChunkedArray) -> npt.NDArray[np.float64]:
    """Floats; NaN where missing or not a number."""
    if (
        pa.types.is_floating(col.type)
        or pa.types.is_integer(col.type)
        or pa.types.is_decimal(col.type)
    ):
        return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
    text = col.to_pylist()
    out = np.empty(len(text))
    for n, value in enumerate(text):
        try:
            out[n] = float(value) if value not in (None, "") else np.nan
        except ValueError:
            out[n] = np.nan
    return out


def _strings(table: pa.Table, name: str, default: str) -> list[str]:
    if name not in table.column_names:
        return [default] * table.num_rows
    return [default if v in (None, "") else str(v) for v in table.column(name).to_pylist()]


def _teams(table: pa.Table) -> list[str]:
    if "Tags" not in table.column_names:
        return [""] * table.num_rows
    col = table.column("Tags")
    if pa.types.is_map(col.type):
        return [dict(v or []).get("team", "") for v in col.to_pylist()]
    encoded = pc.dictionary_encode(pc.cast(col, pa.string())).combine_chunks()
    teams = []
    for raw in encoded.dictionary.to_pylist():
        try:
            tags = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            tags = {}
        teams.append(str(tags.get("team", "")) if isinstance(tags, dict) else "")
    idx = encoded.indices.to_numpy(zero_copy_only=False)
    return [teams[i] if i is not None else "" for i in idx.tolist()]


@dataclass
class _Rows:
    starts: npt.NDArray[np.float64]
    periods: npt.NDArray[np.float64]
    rates: npt.NDArray[np.float64]
    keys: list[tuple[str, ...]]
    read: int
    rejected: Counter[str]


def _rows(path: Path) -> _Rows:
    """The usable rows of one file: start, period, $/h and resource key."""
    table = _read(path)
    start = _timestamps(table.column("ChargePeriodStart"))
    if "ChargePeriodEnd" in table.column_names:
        end = _timestamps(table.column("ChargePeriodEnd"))
        end = np.where(np.isnan(end), start + 3600, end)
    else:
        end = start + 3600
    cost_col = "EffectiveCost" if "EffectiveCost" in table.column_names else "BilledCost"
    if cost_col not in table.column_names:
        raise FocusError(f"{path}: needs EffectiveCost or BilledCost")
    cost = _numbers(table.column(cost_col))
    period = end - start
    bad_time = np.isnan(start) | ~(period > 0)
    bad_cost = ~bad_time & ~np.isfinite(cost)
    rejected: Counter[str] = Counter()
    rejected[f"{path.name}: unparseable or empty charge period"] += int(bad_time.sum())
    rejected[f"{path.name}: unparseable {cost_col}"] += int(bad_cost.sum())
    good = ~(bad_time | bad_cost)
    provider = [
        PROVIDER_LABELS.get(p.lower(), p.lower()) for p in _strings(table, "ProviderName", "")
    ]
    account = _strings(table, "BillingAccountId", "")
    region = _strings(table, "RegionId", "global")
    service = _strings(table, "ServiceName", "")
    resource = _strings(table, "ResourceId", "")
    team = _teams(table)
    keys: list[tuple[str, ...]] = [
        (
            provider[n],
            account[n],
            region[n],
            service[n],
            team[n],
            # Rows without a resource (support, tax, fees) form one pseudo-resource per service.
            resource[n] or f"{service[n]}/unattributed",
        )
        for n in np.flatnonzero(good).tolist()
    ]
    return _Rows(
        starts=start[good],
        periods=period[good],
        rates=cost[good] / (period[good] / 3600.0),
        keys=keys,
        read=table.num_rows,
        rejected=Counter({k: v for k, v in rejected.items() if v}),
    )


def load(paths: Sequence[Path], progress: Callable[[str], None] | None = None) -> CostMatrix:
    """Read every file and build one matrix over the union of their time ranges.

    The interval is the most common charge period (hourly or daily exports). A row longer
    than the interval is counted at its start interval; shorter rows are averaged into it.
    """
    parts = []
    for path in paths:
        if progress:
            progress(f"reading {path}")
        parts.append(_rows(path))
    rejected: Counter[str] = Counter()
    for part in parts:
        rejected.update(part.rejected)
    starts = np.concatenate([p.starts for p in parts]) if parts else np.empty(0)
    if starts.size == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in rejected.items()) or "empty input"
        raise FocusError(f"no usable rows in the input ({reasons})")
    periods = np.concatenate([p.periods for p in parts])
    rates = np.concatenate([p.rates for p in parts])
    values, counts = np.unique(periods, return_counts=True)
    interval = int(values[np.argmax(counts)])
    t0 = int(np.min(starts)) // interval * interval
    col = ((starts - t0) // interval).astype(np.int64)
    index: dict[tuple[str, ...], int] = {}
    rows = np.fromiter(
        (index.setdefault(key, len(index)) for p in parts for key in p.keys),
        dtype=np.int64,
        count=starts.size,
    )
    # Several rows of one resource and interval (e.g. usage plus a fee) add up.
    matrix = np.zeros((len(index), int(col.max()) + 1))
    np.add.at(matrix, (rows, col), rates * np.minimum(periods / interval, 1.0))
    names = ("provider", "billing_account_id", "region_id", "service_name", "team", "resource_id")
    return CostMatrix(
        start_s=t0,
        interval_s=interval,
        resources=[dict(zip(names, key, strict=True)) for key in index],
        rates=matrix,
        rows_read=sum(p.read for p in parts),
        rows_used=int(starts.size),
        rejected=rejected,
    )
