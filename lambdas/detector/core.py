"""The pure detection core: many run-rate series in, incident transitions out.

No I/O and no clock: every call gets the evaluation time. The live detector calls `observe`
every few seconds with the newest values; the backtest calls it once per hour of a billing
export. State is kept in numpy arrays indexed by series, so one evaluation of 100,000 series is
a handful of vector operations.

Three rules, one incident per series:
- day-0 step: a rise of at least X $/h or Y % above a reference that needs no history (an
  exponentially weighted recent level; once a day of history exists, also the same hour
  yesterday, so a daily ramp is not a step).
- seasonal: a robust baseline per hour of week (median of the same hour over past weeks, or of
  the same hour over the past days while fewer weeks are known) with a MAD-based noise
  estimate; during warm-up a static threshold above the highest value seen so far.
- budgets are not here: they are rendered as vmalert rules (`lambdas.detector.rules`).

An incident opens when any rule fires, stays open while any rule still holds at the hysteresis
fraction of its thresholds, and resolves after `resolve_after_ticks` normal evaluations (or
when its series has had no value for `stale_after_s`). Its rule and severity are fixed when
it opens (they are alert labels, so changing them would make a second alert).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lambdas.detector.config import DetectionConfig, SeriesKey

HOUR_S = 3600
DAY_H = 24
WEEK_H = 168
SCALE_WINDOW_H = WEEK_H
MIN_SCALE_POINTS = 24
STATIC_WINDOW_H = 72
MAD_TO_SIGMA = 1.4826
MAX_LEVEL_ADJUST = 1.1
EXPECTED_FLOOR_USD = 0.01

RULE_DAY0 = 1
RULE_SEASONAL = 2
RULE_NAMES = {RULE_DAY0: "day0_step", RULE_SEASONAL: "seasonal"}
# Which baseline a series uses (Engine.mode), named as in the alerts' `baseline` annotation.
BASE_DAY0, BASE_STATIC, BASE_DAILY, BASE_WEEKLY = 0, 1, 2, 3
BASELINE_NAMES = {
    BASE_DAY0: "day0_reference",
    BASE_STATIC: "warmup_static",
    BASE_DAILY: "daily",
    BASE_WEEKLY: "weekly",
}
SEVERITIES = ("info", "warning", "critical")

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Transition:
    """An incident opened or resolved at `at` (epoch seconds)."""

    kind: str  # "opened" | "resolved"
    key: SeriesKey
    rule: str
    severity: str
    started_at: float
    at: float
    expected: float
    observed: float
    delta: float
    deviation: float
    zscore: float | None
    baseline: str


@dataclass(frozen=True)
class _Verdicts:
    """One evaluation of the rules, aligned with the evaluated series."""

    ref: F64  # day-0 reference
    expected: F64  # the baseline of the rule in force (seasonal, warm-up, else day-0)
    z: F64  # robust z-score against the seasonal baseline (NaN while warming up)
    # The rule an opening incident gets: seasonal when it fires on a warm baseline, or when
    # it is the only rule firing (warm-up static threshold); day-0 otherwise.
    prefer_seasonal: npt.NDArray[np.bool_]
    fire: npt.NDArray[np.bool_]
    hold: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class OpenIncident:
    key: SeriesKey
    rule: str
    severity: str
    started_at: float
    expected: float
    observed: float
    delta: float
    deviation: float
    zscore: float | None
    baseline: str


def severity_for(delta: float, deviation: float, cfg: DetectionConfig) -> str:
    """Severity from the dollar impact and the relative deviation of an incident."""
    if delta >= cfg.critical_usd_per_hour or (
        delta >= cfg.warning_usd_per_hour and deviation >= cfg.critical_deviation
    ):
        return "critical"
    if delta >= cfg.warning_usd_per_hour or deviation >= cfg.warning_deviation:
        return "warning"
    return "info"


def nanmedian_rows(a: npt.NDArray[np.floating]) -> tuple[F64, npt.NDArray[np.int64]]:
    """Row medians ignoring NaN, and the count of values per row (NaN where a row is empty).

    numpy's nanmedian warns on empty rows and is several times slower on short rows.
    """
    count = np.count_nonzero(~np.isnan(a), axis=1)
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan), count
    ordered = np.sort(a, axis=1)  # NaN sorts last
    lo = np.clip((count - 1) // 2, 0, a.shape[1] - 1)
    hi = np.clip(count // 2, 0, a.shape[1] - 1)
    rows = np.arange(a.shape[0])
    med = (ordered[rows, lo].astype(np.float64) + ordered[rows, hi]) / 2.0
    med[count == 0] = np.nan
    return med, count


class Engine:
    """Incremental detector over a growing set of series."""

    def __init__(self, cfg: DetectionConfig, capacity: int = 1024) -> None:
        self.cfg = cfg
        # One extra day so the oldest week's day before the same hour is still in the ring.
        self.hours = cfg.history_weeks * WEEK_H + DAY_H
        self.keys: list[SeriesKey] = []
        self._index: dict[SeriesKey, int] = {}
        self.hour: int | None = None
        self.last_time: float | None = None
        self._alloc(max(16, capacity))

    # ------------------------------------------------------------------ state
    def _alloc(self, cap: int) -> None:
        old_n = len(self.keys)

        def grow(name: str, shape: tuple[int, ...], fill: float | bool | int, dtype: type) -> None:
            new: npt.NDArray[Any] = np.full(shape, fill, dtype=dtype)
            if old_n and hasattr(self, name):
                new[:old_n] = getattr(self, name)[:old_n]
            setattr(self, name, new)

        grow("hist", (cap, self.hours), np.nan, np.float32)
        grow("bucket_sum", (cap,), 0.0, np.float64)
        grow("bucket_cnt", (cap,), 0, np.int32)
        grow("recent", (cap,), 0.0, np.float64)
        grow("seen", (cap,), False, np.bool_)
        grow("first_hour", (cap,), 0, np.int64)
        grow("exp_seasonal", (cap,), np.nan, np.float64)
        grow("exp_static", (cap,), np.nan, np.float64)
        grow("yesterday", (cap,), np.nan, np.float64)
        grow("scale", (cap,), np.nan, np.float64)
        grow("mode", (cap,), 0, np.int8)
        grow("is_open", (cap,), False, np.bool_)
        grow("rule", (cap,), 0, np.int8)
        grow("sev", (cap,), 0, np.int8)
        grow("started", (cap,), np.nan, np.float64)
        grow("normal_ticks", (cap,), 0, np.int32)
        grow("cur_expected", (cap,), np.nan, np.float64)
        grow("cur_observed", (cap,), np.nan, np.float64)
        grow("cur_z", (cap,), np.nan, np.float64)
        grow("cur_base", (cap,), 0, np.int8)
        grow("last_expected", (cap,), np.nan, np.float64)
        grow("last_seen", (cap,), -np.inf, np.float64)
        self.capacity = cap

    # The arrays above, declared for the type checker.
    hist: npt.NDArray[np.float32]
    bucket_sum: F64
    bucket_cnt: npt.NDArray[np.int32]
    recent: F64
    seen: npt.NDArray[np.bool_]
    first_hour: npt.NDArray[np.int64]
    exp_seasonal: F64
    exp_static: F64
    yesterday: F64
    scale: F64
    mode: npt.NDArray[np.int8]
    is_open: npt.NDArray[np.bool_]
    rule: npt.NDArray[np.int8]
    sev: npt.NDArray[np.int8]
    started: F64
    normal_ticks: npt.NDArray[np.int32]
    cur_expected: F64
    cur_observed: F64
    cur_z: F64
    cur_base: npt.NDArray[np.int8]
    last_expected: F64
    last_seen: F64

    def index_of(self, keys: Iterable[SeriesKey]) -> npt.NDArray[np.int64]:
        """Indices of the keys, registering unknown ones."""
        out = []
        for key in keys:
            i = self._index.get(key)
            if i is None:
                i = len(self.keys)
                if i >= self.capacity:
                    self._alloc(self.capacity * 2)
                self.keys.append(key)
                self._index[key] = i
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.keys)

    # ------------------------------------------------------------------ history
    def seed_history(self, idx: npt.NDArray[np.int64], first_hour: int, hourly: F64) -> None:
        """Load hourly means (rows = series of `idx`, columns = consecutive hours starting at
        `first_hour`; NaN = no data) so a restarted detector is warm at once."""
        if hourly.shape[0] != idx.shape[0]:
            raise ValueError("hourly history must have one row per series index")
        span = hourly.shape[1]
        keep = min(span, self.hours)
        for col in range(span - keep, span):
            self.hist[idx, (first_hour + col) % self.hours] = hourly[:, col]
        known = ~np.all(np.isnan(hourly), axis=1)
        rows = idx[known]
        self.seen[rows] = True
        valid = ~np.isnan(hourly[known])
        first_col = np.argmax(valid, axis=1)
        last_col = span - 1 - np.argmax(valid[:, ::-1], axis=1)
        self.first_hour[rows] = first_hour + first_col
        self.recent[rows] = hourly[known][np.arange(rows.size), last_col]
        if self.hour is not None:
            self._refresh_baselines(self.hour)

    def _close_hours(self, new_hour: int) -> None:
        assert self.hour is not None
        n = self.size
        cnt = self.bucket_cnt[:n]
        means = np.where(cnt > 0, self.bucket_sum[:n] / np.maximum(cnt, 1), np.nan)
        self.hist[:n, self.hour % self.hours] = means
        # Hours without any evaluation (detector down, gaps in an export) are unknown, not 0.
        for h in range(self.hour + 1, min(new_hour, self.hour + self.hours + 1)):
            self.hist[:n, h % self.hours] = np.nan
        self.bucket_sum[:n] = 0.0
        self.bucket_cnt[:n] = 0
        self.hour = new_hour
        self._refresh_baselines(new_hour)

    def _cols(self, hour: int, lags: Iterable[int]) -> list[int]:
        return [(hour - lag) % self.hours for lag in lags]

    def _refresh_baselines(self, hour: int) -> None:
        cfg = self.cfg
        n = self.size
        hist = self.hist[:n]
        age_h = hour - self.first_hour[:n]

        weekly, wcount = nanmedian_rows(
            hist[:, self._cols(hour, range(WEEK_H, WEEK_H * cfg.history_weeks + 1, WEEK_H))]
        )
        daily, dcount = nanmedian_rows(
            hist[:, self._cols(hour, range(DAY_H, 7 * DAY_H + 1, DAY_H))]
        )
        # The weekly median lags steady growth by weeks: scale it up by how the last day
        # compares with the same hours in past weeks. Only up, and at most by
        # MAX_LEVEL_ADJUST, so an anomaly can neither explain itself away nor make a past
        # anomaly lower today's baseline (a lower baseline only adds alerts).
        last_day, _ = nanmedian_rows(hist[:, self._cols(hour, range(1, DAY_H + 1))])
        # Per past week first, then across weeks: one anomalous week must not move it.
        per_week = np.column_stack(
            [
                nanmedian_rows(hist[:, self._cols(hour, range(w * WEEK_H + 1, w * WEEK_H + 25))])[0]
                for w in range(1, cfg.history_weeks + 1)
            ]
        )
        past_days, _ = nanmedian_rows(per_week)
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.clip(last_day / past_days, 1.0, MAX_LEVEL_ADJUST)
        weekly = weekly * np.where(np.isfinite(level), level, 1.0)
        use_weekly = wcount >= cfg.weekly_min_weeks
        use_daily = ~use_weekly & (dcount >= cfg.daily_min_days)
        self.exp_seasonal[:n] = np.where(use_weekly, weekly, np.where(use_daily, daily, np.nan))
        self.mode[:n] = np.where(
            use_weekly, BASE_WEEKLY, np.where(use_daily, BASE_DAILY, BASE_DAY0)
        )

        cold = np.flatnonzero(~(use_weekly | use_daily))
        self.exp_static[:n] = np.nan
        if cold.size:
            # The highest value seen so far, not the median: a new series' daily peak is not
            # an anomaly, a value far above anything seen is.
            recent = hist[cold][:, self._cols(hour, range(1, STATIC_WINDOW_H + 1))]
            cnt = np.count_nonzero(~np.isnan(recent), axis=1)
            ok = cnt >= cfg.warmup_min_hours
            top = np.nanmax(np.where(ok[:, None], recent, 0.0), axis=1)
            self.exp_static[cold[ok]] = top[ok]
            self.mode[cold[ok]] = BASE_STATIC

        self.yesterday[:n] = np.where(age_h >= DAY_H, hist[:, (hour - DAY_H) % self.hours], np.nan)

        # Noise: day-over-day differences of the last week. Differences remove the daily
        # pattern; the median ignores the few that straddle a weekend or an anomaly.
        now_cols = self._cols(hour, range(1, SCALE_WINDOW_H + 1))
        prev_cols = self._cols(hour, range(1 + DAY_H, SCALE_WINDOW_H + DAY_H + 1))
        diffs = np.abs(hist[:, now_cols] - hist[:, prev_cols])
        mad, dn = nanmedian_rows(diffs)
        self.scale[:n] = np.where(dn >= MIN_SCALE_POINTS, MAD_TO_SIGMA * mad / math.sqrt(2), np.nan)

    # ------------------------------------------------------------------ evaluation
    def _advance_clock(self, now: float) -> tuple[bool, float]:
        """Move to `now`'s hour; returns (first evaluation ever, seconds since the last)."""
        hour = int(now // HOUR_S)
        first_tick = self.hour is None
        if self.hour is None:
            self.hour = hour
            self._refresh_baselines(hour)
        elif hour > self.hour:
            self._close_hours(hour)
        elif hour < self.hour:
            raise ValueError(f"time went backwards: {now} is before hour {self.hour}")
        dt = HOUR_S if self.last_time is None else max(now - self.last_time, 0.0)
        self.last_time = now
        return first_tick, dt

    def _evaluate(self, i: npt.NDArray[np.int64], v: F64) -> _Verdicts:
        cfg = self.cfg
        k = cfg.sensitivity
        hf = cfg.hold_fraction
        floor = cfg.min_impact_usd_per_hour
        scale = self.scale[i]
        noise0 = np.where(np.isfinite(scale), scale, 0.0)

        # Day-0 step, against the highest of what is normal: the recent level, the same hour
        # yesterday and, once known, the seasonal baseline (Monday morning is no step).
        ref = np.fmax(self.recent[i], np.nan_to_num(self.yesterday[i], nan=-np.inf))
        ref = np.fmax(ref, np.nan_to_num(self.exp_seasonal[i], nan=-np.inf))
        d0 = v - ref
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref > 0, d0 / ref, np.where(d0 > 0, np.inf, 0.0))

        def day0(f: float) -> npt.NDArray[np.bool_]:
            big = (d0 >= cfg.day0_min_step_usd_per_hour * f) | (
                ratio >= cfg.day0_min_step_ratio * f
            )
            return (d0 >= floor * f) & big & (d0 >= k * f * noise0)

        # Seasonal, or the static warm-up fallback.
        exp_s = self.exp_seasonal[i]
        warm = np.isfinite(exp_s)
        exp_st = self.exp_static[i]
        static = ~warm & np.isfinite(exp_st)
        expected = np.where(warm, exp_s, np.where(static, exp_st, ref))
        noise = np.fmax(noise0, cfg.scale_floor_ratio * np.abs(expected))
        noise = np.fmax(noise, EXPECTED_FLOOR_USD)
        ds = v - expected
        z = ds / noise

        def seasonal(f: float) -> npt.NDArray[np.bool_]:
            by_z = warm & (z >= k * f)
            by_static = static & (v >= exp_st * (1 + cfg.warmup_static_ratio * f))
            return (by_z | by_static) & (ds >= floor * f)

        day0_fire = day0(1.0)
        seas_fire = seasonal(1.0)
        return _Verdicts(
            ref=np.maximum(ref, 0.0),
            expected=np.maximum(expected, 0.0),
            z=np.where(warm, z, np.nan),
            prefer_seasonal=seas_fire & (warm | ~day0_fire),
            fire=day0_fire | seas_fire,
            hold=day0_fire | seas_fire | day0(hf) | seasonal(hf),
        )

    def observe(
        self, now: float, idx: npt.NDArray[np.int64], values: npt.ArrayLike
    ) -> list[Transition]:
        """Evaluate the newest values (aligned with `idx`; NaN = no value this time)."""
        first_tick, dt = self._advance_clock(now)
        assert self.hour is not None
        vals = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(vals)
        i = idx[ok]
        v = vals[ok]

        # A series seen for the first time after the first evaluation did not exist before:
        # its recent level is 0, so a new resource is a step from nothing. On the very first
        # evaluation (or after a restart without history) the current value is the level.
        new = ~self.seen[i]
        if new.any():
            self.recent[i[new]] = v[new] if first_tick else 0.0
            self.seen[i[new]] = True
            self.first_hour[i[new]] = self.hour
            self.mode[i[new]] = BASE_DAY0
        self.bucket_sum[i] += v
        self.bucket_cnt[i] += 1

        verdicts = self._evaluate(i, v)
        self.last_expected[i] = verdicts.expected
        was_open = self.is_open[i]
        out = self._open(now, i, v, verdicts, verdicts.fire & ~was_open)

        # Current figures of open incidents, for re-posting and storage. An incident keeps
        # the baseline of the rule that opened it.
        open_now = self.is_open[i]
        oi = i[open_now]
        is_seas = self.rule[oi] == RULE_SEASONAL
        self.cur_expected[oi] = np.where(
            is_seas, verdicts.expected[open_now], verdicts.ref[open_now]
        )
        self.cur_observed[oi] = v[open_now]
        self.cur_z[oi] = verdicts.z[open_now]
        self.cur_base[oi] = np.where(is_seas, self.mode[oi], BASE_DAY0)

        # Resolve after enough consecutive normal evaluations, or when the series has had no
        # value for stale_after_s (it is gone: a deleted group, a stopped exporter).
        self.last_seen[i] = now
        self.normal_ticks[i] = np.where(verdicts.hold, 0, self.normal_ticks[i] + 1)
        closing = i[
            was_open & ~verdicts.hold & (self.normal_ticks[i] >= self.cfg.resolve_after_ticks)
        ]
        n = self.size
        stale = np.flatnonzero(
            self.is_open[:n] & (now - self.last_seen[:n] > self.cfg.stale_after_s)
        )
        for row in np.concatenate([closing, stale]):
            inc = self._incident(int(row))
            out.append(
                Transition(
                    "resolved",
                    inc.key,
                    inc.rule,
                    inc.severity,
                    inc.started_at,
                    now,
                    inc.expected,
                    inc.observed,
                    inc.delta,
                    inc.deviation,
                    inc.zscore,
                    inc.baseline,
                )
            )
            self.is_open[row] = False

        # The recent level follows the value with time constant day0_window_s.
        alpha = 1.0 - math.exp(-dt / self.cfg.day0_window_s)
        self.recent[i] += alpha * (v - self.recent[i])
        return out

    def _open(
        self,
        now: float,
        i: npt.NDArray[np.int64],
        v: F64,
        verdicts: _Verdicts,
        opening: npt.NDArray[np.bool_],
    ) -> list[Transition]:
        """Open incidents, with the rule `_Verdicts.prefer_seasonal` chooses."""
        out: list[Transition] = []
        for j in np.flatnonzero(opening):
            row = int(i[j])
            seasonal = bool(verdicts.prefer_seasonal[j])
            e = float(verdicts.expected[j] if seasonal else verdicts.ref[j])
            obs = float(v[j])
            delta = obs - e
            dev = delta / max(e, EXPECTED_FLOOR_USD)
            sev = severity_for(delta, dev, self.cfg)
            z = float(verdicts.z[j])
            self.is_open[row] = True
            self.rule[row] = RULE_SEASONAL if seasonal else RULE_DAY0
            self.sev[row] = SEVERITIES.index(sev)
            self.started[row] = now
            self.normal_ticks[row] = 0
            out.append(
                Transition(
                    "opened",
                    self.keys[row],
                    RULE_NAMES[int(self.rule[row])],
                    sev,
                    now,
                    now,
                    e,
                    obs,
                    delta,
                    dev,
                    z if math.isfinite(z) else None,
                    BASELINE_NAMES[int(self.mode[row]) if seasonal else BASE_DAY0],
                )
            )
        return out

    # ------------------------------------------------------------------ queries
    def _incident(self, row: int) -> OpenIncident:
        e = float(self.cur_expected[row])
        obs = float(self.cur_observed[row])
        z = float(self.cur_z[row])
        return OpenIncident(
            key=self.keys[row],
            rule=RULE_NAMES[int(self.rule[row])],
            severity=SEVERITIES[int(self.sev[row])],
            started_at=float(self.started[row]),
            expected=e,
            observed=obs,
            delta=obs - e,
            deviation=(obs - e) / max(e, EXPECTED_FLOOR_USD),
            zscore=z if math.isfinite(z) else None,
            baseline=BASELINE_NAMES[int(self.cur_base[row])],
        )

    def open_incidents(self) -> list[OpenIncident]:
        return [self._incident(int(r)) for r in np.flatnonzero(self.is_open[: self.size])]

    def expected_now(self, idx: npt.NDArray[np.int64]) -> F64:
        """The value each series was expected to have at its last evaluation: its seasonal
        baseline when warm, the warm-up median, else its day-0 reference (0 for a new series).
        Attribution compares children against this; NaN for a series never evaluated."""
        return self.last_expected[idx].copy()
