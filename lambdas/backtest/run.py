"""Run the live detector's core over a cost matrix: every interval of the export is one
evaluation, at every aggregation level, with attribution to children and single resources."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from lambdas.backtest.focus import CostMatrix
from lambdas.detector.attribution import Child, Contributor, rank_contributors
from lambdas.detector.config import CHILD_LEVEL, LEVEL_LABELS, DetectionConfig, SeriesKey
from lambdas.detector.core import Engine, Transition

DEFAULT_LEVELS = ("account", "service", "team", "resource")


@dataclass
class Incident:
    key: SeriesKey
    rule: str
    severity: str
    started_at: float
    expected: float
    observed: float
    delta: float
    deviation: float
    baseline: str
    contributors: list[Contributor]
    resolved_at: float | None = None
    peak_delta: float = 0.0
    peak_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "level": self.key.level,
            "labels": self.key.as_dict(),
            "rule": self.rule,
            "severity": self.severity,
            "started_at": self.started_at,
            "resolved_at": self.resolved_at,
            "expected_usd_per_hour": round(self.expected, 4),
            "observed_usd_per_hour": round(self.observed, 4),
            "delta_usd_per_hour": round(self.delta, 4),
            "peak_delta_usd_per_hour": round(self.peak_delta, 4),
            "peak_at": self.peak_at,
            "deviation": round(self.deviation, 4),
            "baseline": self.baseline,
            "contributors": [c.as_json() for c in self.contributors],
        }


@dataclass
class Series:
    """Every detected series of a backtest: keys, values (rows) and the child structure.
    Aggregates come first (`aggregates` rows); `expected` holds what the detector expected of
    each aggregate at each interval, for the report (resources are too many to keep)."""

    keys: list[SeriesKey]
    values: npt.NDArray[np.float64]
    aggregates: int
    children: dict[int, list[int]] = field(default_factory=dict)
    resources_of: dict[int, list[int]] = field(default_factory=dict)
    expected: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float32)
    )


def build_series(matrix: CostMatrix, levels: Sequence[str] = DEFAULT_LEVELS) -> Series:
    unknown = [lv for lv in levels if lv not in LEVEL_LABELS]
    if unknown:
        raise ValueError(f"unknown level(s) {unknown}; known: {sorted(LEVEL_LABELS)}")
    res_keys = [SeriesKey.of("resource", r) for r in matrix.resources]
    keys: list[SeriesKey] = []
    blocks: list[npt.NDArray[np.float64]] = []
    members: dict[SeriesKey, list[int]] = {}
    for level in LEVEL_LABELS:
        if level == "resource":
            continue
        group: dict[SeriesKey, list[int]] = {}
        for n, r in enumerate(matrix.resources):
            group.setdefault(SeriesKey.of(level, r), []).append(n)
        members.update(group)
        if level in levels:
            for key, rows in group.items():
                if key.unassigned:
                    continue
                keys.append(key)
                blocks.append(matrix.rates[rows].sum(axis=0))
    aggregates = len(keys)
    if "resource" in levels:
        keys.extend(res_keys)
        blocks.extend(matrix.rates)
    values = np.vstack(blocks) if blocks else np.zeros((0, matrix.rates.shape[1]))
    position = {k: n for n, k in enumerate(keys)}
    res_pos = {k: n for n, k in enumerate(keys) if k.level == "resource"}
    series = Series(keys, values, aggregates)
    for n, key in enumerate(keys):
        if key.level == "resource":
            continue
        rows = members[key]
        series.resources_of[n] = [res_pos[res_keys[r]] for r in rows if res_keys[r] in res_pos]
        child_level = CHILD_LEVEL.get(key.level)
        if child_level and child_level != "resource" and child_level in levels:
            kids = {SeriesKey.of(child_level, matrix.resources[r]) for r in rows}
            series.children[n] = sorted(position[k] for k in kids if k in position)
    return series


def _contributors(
    engine: Engine, series: Series, row: int, col: int, idx: npt.NDArray[np.int64]
) -> list[Contributor]:
    out: list[Contributor] = []
    for rows in (series.children.get(row, []), series.resources_of.get(row, [])):
        if not rows:
            continue
        expected = engine.expected_now(idx[rows])
        out += rank_contributors(
            Child(
                series.keys[r].level,
                series.keys[r].as_dict(),
                float(e),
                float(series.values[r, col]),
            )
            for r, e in zip(rows, expected, strict=True)
        )
    return out


def backtest(
    matrix: CostMatrix,
    cfg: DetectionConfig,
    levels: Sequence[str] = DEFAULT_LEVELS,
    progress: Callable[[int, int, int], None] | None = None,
) -> tuple[list[Incident], Series]:
    """All incidents, in opening order, and the series they were found in."""
    series = build_series(matrix, levels)
    # An interval the export does not cover (NaN) is unknown, not a vanished series: an open
    # incident survives a few missing intervals and no series is evicted during the run, so
    # `idx` stays valid throughout.
    span = float(matrix.interval_s * max(matrix.rates.shape[1], 1))
    cfg = replace(
        cfg,
        stale_after_s=max(cfg.stale_after_s, 3.0 * matrix.interval_s),
        evict_after_s=max(cfg.evict_after_s, 2.0 * span),
    )
    engine = Engine(cfg, capacity=len(series.keys))
    idx = engine.index_of(series.keys)
    row_of = {k: n for n, k in enumerate(series.keys)}
    open_by_key: dict[SeriesKey, Incident] = {}
    incidents: list[Incident] = []
    times = matrix.times
    total = times.size
    series.expected = np.full((series.aggregates, total), np.nan, dtype=np.float32)
    for col, t in enumerate(times.tolist()):
        transitions: list[Transition] = engine.observe(float(t), idx, series.values[:, col])
        series.expected[:, col] = engine.expected_now(idx[: series.aggregates])
        for tr in transitions:
            if tr.kind == "escalated":
                open_by_key[tr.key].severity = tr.severity
            elif tr.kind == "opened":
                inc = Incident(
                    tr.key,
                    tr.rule,
                    tr.severity,
                    tr.at,
                    tr.expected,
                    tr.observed,
                    tr.delta,
                    tr.deviation,
                    tr.baseline,
                    _contributors(engine, series, row_of[tr.key], col, idx),
                    peak_delta=tr.delta,
                    peak_at=tr.at,
                )
                open_by_key[tr.key] = inc
                incidents.append(inc)
            else:
                open_by_key.pop(tr.key).resolved_at = tr.at
        for inc in open_by_key.values():
            row = row_of[inc.key]
            d = float(series.values[row, col] - engine.expected_now(idx[row : row + 1])[0])
            if d > inc.peak_delta:
                inc.peak_delta, inc.peak_at = d, float(t)
        if progress:
            progress(col + 1, total, len(incidents))
    return incidents, series
