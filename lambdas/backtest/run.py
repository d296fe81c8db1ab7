"""Run the live detector over a cost matrix: every interval of the export is one evaluation,
at every aggregation level, with attribution to children and single resources, and the
engine's incidents folded into one report per cause by the live detector's `ReportBook`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from lambdas.backtest.focus import CostMatrix
from lambdas.detector.attribution import Child, Contributor, rank_contributors
from lambdas.detector.config import CHILD_LEVEL, LEVEL_LABELS, DetectionConfig, SeriesKey
from lambdas.detector.core import HOUR_S, Engine, OpenIncident, Transition
from lambdas.detector.reports import DEPTH, Attribution, Hooks, Report, ReportBook

DEFAULT_LEVELS = ("account", "service", "team", "resource")


@dataclass
class Incident:
    """One reported incident (one alert in the live detector): its key is the deepest series
    that explains the increase; `ancestors` are the aggregate incidents it explained, folded
    into it as context. Figures are those at its opening."""

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
    ancestors: list[SeriesKey] = field(default_factory=list)

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
            "ancestors": [{"level": a.level, "labels": a.as_dict()} for a in self.ancestors],
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


class _OpenNow(Mapping[SeriesKey, OpenIncident]):
    """The engine's open incidents by key, read on demand: the report book asks for a few
    of them, and building every open one at every interval would dominate a long backtest.
    Valid until the next evaluation."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getitem__(self, key: SeriesKey) -> OpenIncident:
        inc = self._engine.open_incident(key)
        if inc is None:
            raise KeyError(key)
        return inc

    def __contains__(self, key: object) -> bool:
        return isinstance(key, SeriesKey) and self._engine.open_incident(key) is not None

    def __iter__(self) -> Iterator[SeriesKey]:
        return (inc.key for inc in self._engine.open_incidents())

    def __len__(self) -> int:
        return len(self._engine.open_incidents())


class _Replay:
    """The backtest's side of the report book: attribution and values from the matrix, at
    the interval being evaluated."""

    def __init__(self, engine: Engine, series: Series, idx: npt.NDArray[np.int64]) -> None:
        self.engine, self.series, self.idx = engine, series, idx
        self.row_of = {k: n for n, k in enumerate(series.keys)}
        self.col = 0
        self.found: dict[SeriesKey, Attribution] = {}

    def attribute(self, key: SeriesKey, started: float, now: float) -> Attribution:
        """Children and resources ranked by growth against what the engine expects of them;
        for a service or a team, every resource that grew (to measure shares in siblings)."""
        row = self.row_of[key]
        kids = self._children(self.series.children.get(row, []))
        resources = self._children(self.series.resources_of.get(row, []))
        shown = rank_contributors(kids) + rank_contributors(resources)
        # Only services and teams have siblings to measure shares in.
        found = Attribution(shown, [], resources if DEPTH[key.level] == 1 else [])
        self.found[key] = found
        return found

    def _children(self, rows: list[int]) -> list[Child]:
        if not rows:
            return []
        expected = self.engine.expected_now(self.idx[rows])
        values = self.series.values[rows, self.col]
        keys = self.series.keys
        return [
            Child(keys[r].level, keys[r].as_dict(), float(e), float(v))
            for r, e, v in zip(rows, expected.tolist(), values.tolist(), strict=True)
        ]

    def values(self, wanted: Iterable[SeriesKey]) -> dict[SeriesKey, float]:
        out = {}
        for key in wanted:
            row = self.row_of.get(key)
            if row is not None:
                v = float(self.series.values[row, self.col])
                if math.isfinite(v):
                    out[key] = v
        return out

    def delta(self, key: SeriesKey) -> float:
        row = self.row_of.get(key)
        if row is None:
            return math.nan
        i = self.idx[row : row + 1]
        return float(self.series.values[row, self.col] - self.engine.expected_now(i)[0])


class _Running:
    """The live detector's parts a backtest runs: an engine, the replay of the matrix that
    attributes for it, and the report book that folds its incidents."""

    def __init__(
        self,
        cfg: DetectionConfig,
        series: Series,
        engine: Engine,
        reported: Callable[[Report, str, Sequence[object]], None],
    ) -> None:
        self.engine = engine
        self.idx = engine.index_of(series.keys)
        self.replay = _Replay(engine, series, self.idx)
        self.book = ReportBook(cfg, self.replay.attribute, Hooks(reported=reported))
        self.open_now = _OpenNow(engine)

    def parts(
        self,
    ) -> tuple[Engine, npt.NDArray[np.int64], _Replay, ReportBook, _OpenNow]:
        return self.engine, self.idx, self.replay, self.book, self.open_now


@dataclass
class _Adopted:
    """The incidents open when the detector restarted. As the live detector adopts the
    rows left open in `anomalies` and hands each to an incident its new engine opens on the
    same series (docs/detection.md, "Restarts"), such an incident continues the adopted one
    rather than starting anew, if it opens within `until` (the time an adopted incident
    needs to resolve while its cost is back to normal); the others resolved at the restart."""

    incidents: dict[SeriesKey, Incident] = field(default_factory=dict)
    at: float = math.nan
    until: float = -math.inf

    def take(self, key: SeriesKey, now: float) -> Incident | None:
        if now > self.until:
            self.expire()
        return self.incidents.pop(key, None)

    def expire(self) -> None:
        for inc in self.incidents.values():
            inc.resolved_at = self.at
        self.incidents.clear()


def _restarted(
    cfg: DetectionConfig, series: Series, times: npt.NDArray[np.int64], col: int
) -> Engine:
    """A new engine at interval `col`, loaded with the hourly means of every complete hour
    before it that it keeps, as the live detector's bootstrap loads them."""
    engine = Engine(cfg, capacity=len(series.keys))
    end_hour = int(times[col]) // HOUR_S - 1
    first_hour = max(end_hour - engine.hours + 1, int(times[0]) // HOUR_S)
    if end_hour < first_hour:
        return engine
    hours = times[:col] // HOUR_S
    keep = (hours >= first_hour) & (hours <= end_hour)
    slot = (hours[keep] - first_hour).astype(np.int64)
    width = end_hour - first_hour + 1
    values = series.values[:, :col][:, keep].astype(np.float64)
    known = np.isfinite(values)
    sums = np.zeros((values.shape[0], width))
    counts = np.zeros((values.shape[0], width))
    np.add.at(sums.T, slot, np.where(known, values, 0.0).T)
    np.add.at(counts.T, slot, known.T)
    with np.errstate(invalid="ignore", divide="ignore"):
        hourly = np.where(counts > 0, sums / counts, np.nan)
    engine.seed_history(engine.index_of(series.keys), first_hour, hourly)
    return engine


def backtest(
    matrix: CostMatrix,
    cfg: DetectionConfig,
    levels: Sequence[str] = DEFAULT_LEVELS,
    progress: Callable[[int, int, int], None] | None = None,
    restart_every_s: float = 0.0,
) -> tuple[list[Incident], Series]:
    """The incidents the live detector would report (one per cause, at the deepest series
    that explains it, with the aggregates it explains as ancestors), in opening order, and
    the series they were found in. The same `ReportBook` as the live detector folds them.

    `restart_every_s` > 0 restarts the detector that often (at the first interval at or
    after each multiple of it from the first one), as the live one starts: a new engine
    loaded with the hourly means of the hours it keeps (`Engine.seed_history`, what the
    live bootstrap reads from VictoriaMetrics) and a new report book, which adopts the
    incidents open at the restart (`_Adopted`).
    """
    if restart_every_s < 0 or not math.isfinite(restart_every_s):
        raise ValueError("restart_every_s must be a finite number of seconds >= 0")
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
    incidents: list[Incident] = []
    of_report: dict[int, Incident] = {}
    times = matrix.times
    next_restart = float(times[0]) + restart_every_s if restart_every_s and times.size else math.inf
    adopted = _Adopted()

    def reported(report: Report, how: str, events: Sequence[object]) -> None:
        prior = adopted.take(report.key, report.last_seen)
        if prior is not None:
            prior.resolved_at = None
            of_report[id(report)] = prior
            return
        found = run.replay.found.get(report.key) if how == "own" else None
        inc = Incident(
            report.key,
            report.rule,
            report.severity,
            report.started_at,
            report.expected,
            report.observed,
            report.delta,
            report.deviation,
            report.baseline,
            list(found.contributors) if found else [],
            peak_delta=report.delta,
            peak_at=report.last_seen,  # when it was reported
        )
        of_report[id(report)] = inc
        incidents.append(inc)

    run = _Running(cfg, series, Engine(cfg, capacity=len(series.keys)), reported)
    total = times.size
    series.expected = np.full((series.aggregates, total), np.nan, dtype=np.float32)
    for col, t in enumerate(times.tolist()):
        now = float(t)
        if now >= next_restart:
            while next_restart <= now:
                next_restart += restart_every_s
            adopted.expire()
            window = max(cfg.resolve_after_s, cfg.resolve_after_ticks * matrix.interval_s)
            adopted = _Adopted({i.key: i for i in of_report.values()}, now, now + window)
            of_report.clear()
            run = _Running(cfg, series, _restarted(cfg, series, times, col), reported)
        engine, idx, replay, book, open_now = run.parts()
        replay.col = col
        replay.found.clear()
        transitions: list[Transition] = engine.observe(now, idx, series.values[:, col])
        series.expected[:, col] = engine.expected_now(idx[: series.aggregates])
        if transitions or not book.idle:
            book.step(transitions, open_now, replay.values, now)
            for report in book.close(open_now):
                of_report.pop(id(report)).resolved_at = now
            for report in book.reports.values():
                inc = of_report[id(report)]
                report.severity = book.severity(report, open_now)
                inc.severity = report.severity
                inc.ancestors += [a for a in report.ancestors if a not in inc.ancestors]
                d = replay.delta(report.key)
                if d > inc.peak_delta:
                    inc.peak_delta, inc.peak_at = d, now
        if progress:
            progress(col + 1, total, len(incidents))
    adopted.expire()
    return incidents, series
