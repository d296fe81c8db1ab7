"""The pure detection core: many run-rate series in, incident transitions out.

No I/O and no clock: every call gets the evaluation time. The live detector calls `observe`
every few seconds with the newest values; the backtest calls it once per hour of a billing
export. State is kept in numpy arrays indexed by series, so one evaluation of 100,000 series is
a handful of vector operations.

Three rules, one incident per series:
- day-0 step: a rise of at least X $/h or Y % above a reference that needs no history (an
  exponentially weighted recent level; once a few hours are known, also the highest hourly
  mean of the last day; once a day of history exists, also the same hour yesterday, so a
  daily ramp is not a step).
- seasonal: a robust baseline per hour of week (median of the same hour over past weeks, or of
  the same hour over the past days while fewer weeks are known) with a MAD-based noise
  estimate; during warm-up (from a day of hours on) a static threshold above the highest
  hourly value of the last three days.
- budgets are not here: they are rendered as vmalert rules (`lambdas.detector.rules`).

The record (`record_rank` > 0, 2 by default): an incident opens only on a value above the
series' record, `record_margin` x the `record_rank`-th highest daily high of the last
RECORD_DAYS days (of the value for day-0, of the residual above the seasonal baseline for the
seasonal rule; every value counts, so false alarms teach it the routine spikes), so a series
that spikes every few days does not report its everyday spikes (docs/detection.md, "Record").
Finer than hourly, the seasonal rule may also open on a residual whose running mean over
SUSTAIN_WINDOW_S beats the days' highest running means (the sustained record): an excursion
that lasts is judged against the lasting ones, not against a day's highest single value.
The local step (data every 5 to 59 minutes) measures its step above the higher of the recent
level and the hour-of-day record instead, the `record_rank`-th highest value this hour of day
reached on the last HOUR_RECORD_DAYS days: a daily batch at this hour is routine, a jump at a
quiet hour is not.

Every rule needs an increase that is material twice over: at least the level's absolute
floor in $/h and at least `min_relative_increase` of the series' own level. The noise a
z-score divides by is the largest of three robust estimates, so it cannot collapse to zero:
day-over-day differences of hourly means, the running mean absolute residual of each
evaluation (right for any cadence: 1-minute values are noisier than hourly means) and a
fraction of the series' one-week mean (a near-zero series still has noise). The z threshold
comes from one knob, the false incidents per series and month one accepts (`z_threshold`).

An incident opens when a rule has fired for `min_duration_s` (it starts when the rule first
fired), stays open while any rule still holds at the hysteresis fraction of its thresholds,
and resolves after `resolve_after_ticks` normal evaluations and `resolve_after_s` (or when
its series has had no value for `stale_after_s`). Within `cooldown_s` of a resolution a new
incident opens only when it is worse than the last one's peak, so one episode is one
incident. Its rule is fixed when it opens; its severity follows its impact, upwards only
(`escalated` transitions). Decreases are detected only when `report_decreases` is set, as
`decrease` incidents of severity info that never escalate.
Series without a value for `evict_after_s` are forgotten, so churn does not grow the state.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lambdas import contract
from lambdas.detector.config import SEVERITIES, DetectionConfig, SeriesKey

HOUR_S = 3600
DAY_H = 24
WEEK_H = 168
SCALE_WINDOW_H = WEEK_H
MIN_SCALE_POINTS = 24
STATIC_WINDOW_H = 72
# The warm-up rule waits for this many hours with a value: before a whole day is known, the
# highest value so far is not yet the daily peak, and a daily rise would read as a step.
STATIC_MIN_H = DAY_H
# The warm-up rule's value must also be this fraction of the z threshold times the noise
# above that highest value: the highest of a day already stands a few sigmas above the
# typical value, so the full threshold on top of it (and of a young series' spread, which
# for a seasonal one is its daily swing) let no warm-up anomaly through. Chosen on the
# tuning part of the real-data corpus (docs/detection.md, "Warm-up").
STATIC_Z_RATIO = 0.25
EVICT_CHECK_S = 60.0
MAD_TO_SIGMA = 1.4826
# Mean absolute deviation -> standard deviation for normal noise (sqrt(pi / 2)).
MEAN_ABS_TO_SIGMA = 1.2533
# Time constants (wall clock) of the series' mean level and of its residual noise.
LEVEL_WINDOW_S = 7 * 86400.0
RESID_WINDOW_S = 86400.0
# A residual counts in the mean at most this many times the tail estimate: a slow ramp's
# growing residuals must not teach the detector that the ramp is noise before it alerts.
RESID_CLIP = 1.0
# A residual counts in the tail estimate at most this many times the current tail.
TAIL_CLIP = 1.0
# ... and at least a quarter of the series' mean level, so a series that starts quiet learns
# its spikes within days.
LEVEL_CLIP_RATIO = 0.25
# The tail of the absolute residuals: their running 0.9-expectile (an asymmetric running
# mean that weighs residuals above it 9 times more), read as 1.3932 sigmas (its value for
# normal noise). Spiky series have a heavy tail: this is what keeps their everyday spikes
# from alerting, and unlike a clipped mean it learns them within days.
RESID_EXPECTILE = 0.9
EXPECTILE_TO_SIGMA = 1.0 / 1.3932
MONTH_S = 30 * 86400.0
# Evaluations closer than this are not independent chances of a false alarm (the live
# detector evaluates every few seconds the same run-rate).
DECORRELATION_S = 3600.0
Z_MIN, Z_MAX = 3.0, 12.0
# Measured false incidents per series-month at hourly data = FALSE_A * k ** -FALSE_ALPHA
# (docs/detection.md, "Sensitivity").
FALSE_A = 10.8
FALSE_ALPHA = 1.094
MAX_LEVEL_ADJUST = 1.1
EXPECTED_FLOOR_USD = 0.01
# The record: per wall-clock day (UTC), the highest value and the highest residual above the
# seasonal baseline, for the last RECORD_DAYS completed days.
RECORD_DAYS = 21
# The hour-of-day record (data every 5 to 59 minutes): the highest value of each hour over
# the last HOUR_RECORD_DAYS days.
HOUR_RECORD_DAYS = 7
HOUR_RECORD_H = HOUR_RECORD_DAYS * DAY_H
# The sustained record (data finer than hourly): the residual's running mean over this time
# constant, and per day its highest, so an excursion that lasts is judged against the days'
# lasting ones, not against their highest single value (docs/detection.md, "Record").
SUSTAIN_WINDOW_S = 600.0
# When the residual records are seeded from loaded history: series per block (each block's
# copy of three weeks is a few MB) and 24-hour windows sorted together (4,096 x 48 windows of
# 24 float32 hours: 19 MB).
SEED_CHUNK_ROWS = 4096
SEED_BLOCK_H = 48
# The local step rule runs on data at least this far apart (and finer than an hour): its
# jitter is the change from one value to the next, which for finer data (1 minute, the live
# detector's seconds) measures noise at a shorter scale than the rule's five minutes (on the
# tuning part's 1-minute series it doubled the false incidents: docs/detection.md).
LOCAL_MIN_INTERVAL_S = 300.0
# How much shorter than LOCAL_MIN_INTERVAL_S the cadence may be: a live loop every 300 s
# measures 299.99 s now and then.
INTERVAL_TOLERANCE = 0.1
# The cadence is the median of this many latest intervals between evaluations: one retry or
# one early tick does not change it, and a cadence that changes is followed within as many
# evaluations (the smallest interval ever seen turned the local step off for good after one
# retry 20 s after a tick).
CADENCE_INTERVALS = 25
# The jitter must have been learnt for this long before the rule uses it.
LOCAL_WARMUP_S = 86400.0
# A change counts in the running jitter at most this many times the current jitter: one
# spike moves it a little, a series that has become noisier learns it within hours.
JITTER_CLIP = 5.0
# A value of larger magnitude is not a cost rate (no bill is $100 billion an hour): it is
# skipped like a missing one and counted (Engine.out_of_range_total). Beyond float32 it
# would overflow the ring of hourly means, and products with z beyond float64; from 1e12 the
# anomalies row (numeric(18, 6)) refused it and the incident was not stored.
MAX_ABS_USD_PER_HOUR = 1e11
# How long the team a re-tagged resource left may not open an incident (`Engine.reassign`):
# the detector learns of a re-tag from the inventory, which the collector commits before it
# writes the teams' totals to VictoriaMetrics (read a second later; a failed write is retried
# with the next heartbeat, 15 s).
REGROUP_SETTLE_S = 60.0
# Values a series present at the first evaluation (no history loaded) must have shown before
# the day-0 rule judges it: a live detector has them in seconds, an export in hours.
UNKNOWN_PAST_VALUES = 2

RULE_DAY0 = 1
RULE_SEASONAL = 2
RULE_DECREASE = 3
RULE_LOCAL = 4
RULE_NAMES = {
    RULE_DAY0: contract.RULE_DAY0_STEP,
    RULE_SEASONAL: contract.RULE_SEASONAL,
    RULE_DECREASE: contract.RULE_DECREASE,
    RULE_LOCAL: contract.RULE_LOCAL_STEP,
}
# Which baseline a series uses (Engine.mode), named as in the alerts' `baseline` annotation;
# BASE_RECENT is the local step's (never a mode).
BASE_DAY0, BASE_STATIC, BASE_DAILY, BASE_WEEKLY, BASE_RECENT = 0, 1, 2, 3, 4
BASELINE_NAMES = {
    BASE_DAY0: "day0_reference",
    BASE_STATIC: "warmup_static",
    BASE_DAILY: "daily",
    BASE_WEEKLY: "weekly",
    BASE_RECENT: "recent_level",
}

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Verdicts:
    """One evaluation of the rules, aligned with the evaluated series."""

    ref: F64  # day-0 reference
    expected: F64  # the baseline of the rule in force (seasonal, warm-up, else day-0)
    recent: F64  # the local step's reference: the recent level
    z: F64  # robust z-score against the seasonal baseline (NaN while warming up)
    # The rule an opening increase gets (RULE_*): seasonal when it fires on a warm baseline,
    # or when it is the only rule firing (warm-up static threshold); local when only the
    # local step fires; else day-0.
    opens_as: npt.NDArray[np.int8]
    fire: npt.NDArray[np.bool_]
    hold: npt.NDArray[np.bool_]
    # Decreases (always False unless report_decreases): fire and hold like the above.
    fire_down: npt.NDArray[np.bool_]
    hold_down: npt.NDArray[np.bool_]


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
    # Consecutive evaluations its rule has not held (0 while it holds): above 0, it is on its
    # way to resolving.
    normal_ticks: int
    # Whether the series' value at the last evaluation would open an incident now: an
    # increase rule fires at full strength, record included, and has fired for
    # min_duration_s (False when the series had no value then). A report book watching an
    # aggregate whose cause was fixed asks this.
    firing: bool


@dataclass(frozen=True)
class Transition(OpenIncident):
    """An incident opened, escalated (severity raised) or resolved at `at` (epoch seconds),
    with its figures at that moment."""

    kind: str  # "opened" | "escalated" | "resolved"
    at: float


def severity_codes(delta: F64, deviation: F64, cfg: DetectionConfig) -> npt.NDArray[np.int8]:
    """Severity (index into SEVERITIES) from the dollar impact and the relative deviation."""
    warning = delta >= cfg.warning_usd_per_hour
    critical = (delta >= cfg.critical_usd_per_hour) | (
        warning & (deviation >= cfg.critical_deviation)
    )
    code = np.where(warning | (deviation >= cfg.warning_deviation), 1, 0)
    return np.where(critical, 2, code).astype(np.int8)


def z_threshold(false_incidents_per_month: float, interval_s: float) -> float:
    """Robust z threshold for an expected number of false incidents per series and month.

    Real cost-like series have heavy tails: a normal or Laplace model promises far fewer
    false incidents than happen. The rate was measured instead, on the tuning part of the
    real-data corpus (`benchmarks/detector_real.py --part tune`, every rule and brake in
    force): false incidents per series-month fall as a power of the threshold,
    FALSE_A * k ** -FALSE_ALPHA at hourly data. Data coarser than DECORRELATION_S gives
    fewer chances per month (daily data: 30 instead of 720), so the rate scales with them.
    Inverted and clamped to [Z_MIN, Z_MAX].
    """
    chances = MONTH_S / max(interval_s, DECORRELATION_S)
    hourly = MONTH_S / DECORRELATION_S
    k = (FALSE_A * (chances / hourly) / false_incidents_per_month) ** (1.0 / FALSE_ALPHA)
    return float(np.clip(k, Z_MIN, Z_MAX))


_F64_MAX = float(np.finfo(np.float64).max)


def kth_highest(rows: npt.NDArray[np.floating], k: int) -> F64:
    """The k-th highest value of each row (NaN cells hold no value); NaN where a row holds
    fewer than k values, k exceeding the row's width included."""
    width = rows.shape[1]
    if not 1 <= k <= width:
        return np.full(rows.shape[0], np.nan)
    filled = np.nan_to_num(rows, nan=-np.inf)
    top = np.partition(filled, width - k, axis=1)[:, width - k]
    return np.where(np.isfinite(top), top, np.nan).astype(np.float64)


def nan_to(a: F64, fill: float) -> F64:
    """np.nan_to_num(a, nan=fill) (infinities to the largest finite values) in three array
    operations: it runs several times per evaluation on every series."""
    return np.where(np.isnan(a), fill, np.clip(a, -_F64_MAX, _F64_MAX))


def running_mean(mean: F64, v: F64, dt: float, window_s: float) -> F64:
    """An exponentially weighted mean (time constant `window_s`) after a value `dt` seconds
    after the last: it starts at the first value, and a missing value (NaN) leaves it."""
    a = 1.0 - math.exp(-dt / window_s)
    return np.where(np.isnan(mean), v, mean + a * nan_to(v - mean, 0.0))


def nanmedian_rows(a: npt.NDArray[np.floating]) -> tuple[F64, npt.NDArray[np.int64]]:
    """Medians along the last axis ignoring NaN, and the count of values (NaN where none).

    numpy's nanmedian warns on empty rows and is several times slower on short rows. One sort
    of the whole array (NaN sorts last) and the middle values picked per row: np.partition
    needs one position for every row, and rows hold different counts (with two positions it
    is also slower than numpy's vectorised sort on rows this short).
    """
    if a.shape[-1] == 0:
        return np.full(a.shape[:-1], np.nan), np.zeros(a.shape[:-1], dtype=np.int64)
    return sorted_medians(np.sort(a, axis=-1))


def sorted_medians(ordered: npt.NDArray[np.floating]) -> tuple[F64, npt.NDArray[np.int64]]:
    """`nanmedian_rows` of rows already sorted (NaN last)."""
    width = ordered.shape[-1]
    flat = ordered.reshape(-1, width)
    # Full rows (most of a warm detector's) have their middle at fixed columns; only rows
    # ending in NaN hold fewer values, and only those are counted and picked one by one.
    count = np.full(flat.shape[0], width, dtype=np.int64)
    med = (flat[:, (width - 1) // 2].astype(np.float64) + flat[:, width // 2]) / 2.0
    gappy = np.flatnonzero(np.isnan(flat[:, -1]))
    if gappy.size:
        c = np.count_nonzero(~np.isnan(flat[gappy]), axis=1)
        count[gappy] = c
        # Plain integer indexing is cheaper than take_along_axis on small arrays. An empty
        # row's middles are NaN (index -1 and 0 of a row of NaN), so its median is NaN.
        lo = flat[gappy, (c - 1) // 2].astype(np.float64)
        med[gappy] = (lo + flat[gappy, c // 2]) / 2.0
    return med.reshape(ordered.shape[:-1]), count.reshape(ordered.shape[:-1])


class Engine:
    """Incremental detector over a growing set of series."""

    def __init__(self, cfg: DetectionConfig, capacity: int = 1024) -> None:
        self.cfg = cfg
        # One extra day so the oldest week's day before the same hour is still in the ring.
        self.hours = cfg.history_weeks * WEEK_H + DAY_H
        self.keys: list[SeriesKey] = []
        self._index: dict[SeriesKey, int] = {}
        self.hour: int | None = None
        # The hour after the last one `seed_history` loaded, until the first evaluation.
        self._loaded_until: int | None = None
        self.last_time: float | None = None
        # Slots of evicted series, reused before the arrays grow.
        self._free: list[int] = []
        self.evicted_total = 0
        self.out_of_range_total = 0
        self._next_eviction = -math.inf
        # Typical seconds between evaluations (the median of the latest CADENCE_INTERVALS):
        # sets the z threshold and whether the local step runs.
        self.interval_s = math.inf
        self._intervals: deque[float] = deque(maxlen=CADENCE_INTERVALS)
        self.capacity = 0
        self._alloc(max(16, capacity))
        # The seasonal baselines' lags (hours): the same hour on each of the past 7 days and
        # in each of the past history_weeks weeks.
        self._day_lags = np.arange(1, 8) * DAY_H
        self._week_lags = np.arange(1, cfg.history_weeks + 1) * WEEK_H

    # ------------------------------------------------------------------ state
    def _alloc(self, cap: int) -> None:
        old = self.capacity
        for name, (dtype, fill) in self._ARRAYS.items():
            cols = {
                "hist": self.hours,
                "hour_highs": HOUR_RECORD_H,
                **{ring: RECORD_DAYS for _, ring, _ in self._DAY_RECORDS},
            }
            shape = (cap, cols[name]) if name in cols else (cap,)
            new: npt.NDArray[Any] = np.full(shape, fill, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)
        self.capacity = cap

    def _reset(self, rows: npt.NDArray[np.int64]) -> None:
        for name, (_, fill) in self._ARRAYS.items():
            getattr(self, name)[rows] = fill

    # Per-series state: dtype and the value of an empty slot. `hist` has one column per hour.
    _ARRAYS: dict[str, tuple[type, float | bool | int]] = {
        "hist": (np.float32, np.nan),
        "bucket_sum": (np.float64, 0.0),
        "bucket_cnt": (np.int32, 0),
        "recent": (np.float64, 0.0),
        # The local step's jitter: the last value, the running mean absolute change from one
        # value to the next, and for how long it has been learnt (seconds).
        "prev": (np.float64, np.nan),
        "jitter": (np.float64, np.nan),
        "jitter_s": (np.float64, 0.0),
        "seen": (np.bool_, False),
        "first_hour": (np.int64, 0),
        "exp_seasonal": (np.float64, np.nan),
        "exp_static": (np.float64, np.nan),
        "young": (np.float64, np.nan),
        "unknown_past": (np.bool_, False),
        "seen_min": (np.float64, np.nan),
        "seen_max": (np.float64, np.nan),
        "seen_n": (np.int32, 0),
        "yesterday": (np.float64, np.nan),
        "day_max": (np.float64, np.nan),
        "scale": (np.float64, np.nan),
        "mode": (np.int8, 0),
        "is_open": (np.bool_, False),
        "rule": (np.int8, 0),
        "sev": (np.int8, 0),
        "started": (np.float64, np.nan),
        "normal_ticks": (np.int32, 0),
        "firing": (np.bool_, False),
        "cur_expected": (np.float64, np.nan),
        "cur_observed": (np.float64, np.nan),
        "cur_z": (np.float64, np.nan),
        "cur_base": (np.int8, 0),
        "last_expected": (np.float64, np.nan),
        "last_seen": (np.float64, -np.inf),
        "level": (np.float64, np.nan),
        "resid": (np.float64, np.nan),
        "resid_q": (np.float64, np.nan),
        "floor": (np.float64, np.nan),
        "pending": (np.float64, np.nan),
        "last_abnormal": (np.float64, -np.inf),
        "peak": (np.float64, 0.0),
        "closed_at": (np.float64, -np.inf),
        # The record: today's highest value and residual so far (outside incidents), the
        # ring of past days' ones, and the rank-th highest of that ring (NaN = unknown).
        "day_vmax": (np.float64, np.nan),
        "day_rmax": (np.float64, np.nan),
        "rec_vday": (np.float32, np.nan),
        "rec_rday": (np.float32, np.nan),
        "rec_value": (np.float64, np.nan),
        "rec_resid": (np.float64, np.nan),
        # The sustained record (data finer than hourly): the residual's running mean over
        # SUSTAIN_WINDOW_S, today's highest of it, the ring of past days' and its rank-th.
        "sres": (np.float64, np.nan),
        "day_smax": (np.float64, np.nan),
        "rec_sday": (np.float32, np.nan),
        "rec_sres": (np.float64, np.nan),
        # The hour-of-day record: this hour's highest value so far, the ring of the past
        # hours' highest values, and the rank-th highest of this hour of day's (NaN = unknown).
        "hour_vmax": (np.float64, np.nan),
        "hour_highs": (np.float32, np.nan),
        "rec_hour": (np.float64, np.nan),
        # Until when the team a re-tagged resource left may not open an incident (`reassign`).
        "settle_until": (np.float64, -np.inf),
    }

    # The daily records: today's highest so far, the ring of past days' highest, and the
    # `record_rank`-th highest of the ring (of the value, the residual, its running mean).
    _DAY_RECORDS = (
        ("day_vmax", "rec_vday", "rec_value"),
        ("day_rmax", "rec_rday", "rec_resid"),
        ("day_smax", "rec_sday", "rec_sres"),
    )

    # The arrays above, declared for the type checker.
    hist: npt.NDArray[np.float32]
    bucket_sum: F64
    bucket_cnt: npt.NDArray[np.int32]
    recent: F64
    prev: F64
    jitter: F64
    jitter_s: F64
    seen: npt.NDArray[np.bool_]
    first_hour: npt.NDArray[np.int64]
    exp_seasonal: F64
    exp_static: F64
    young: F64
    unknown_past: npt.NDArray[np.bool_]
    seen_min: F64
    seen_max: F64
    seen_n: npt.NDArray[np.int32]
    yesterday: F64
    day_max: F64
    scale: F64
    mode: npt.NDArray[np.int8]
    is_open: npt.NDArray[np.bool_]
    rule: npt.NDArray[np.int8]
    sev: npt.NDArray[np.int8]
    started: F64
    normal_ticks: npt.NDArray[np.int32]
    firing: npt.NDArray[np.bool_]
    cur_expected: F64
    cur_observed: F64
    cur_z: F64
    cur_base: npt.NDArray[np.int8]
    last_expected: F64
    last_seen: F64
    level: F64
    resid: F64
    resid_q: F64
    floor: F64
    pending: F64
    last_abnormal: F64
    peak: F64
    closed_at: F64
    day_vmax: F64
    day_rmax: F64
    rec_vday: npt.NDArray[np.float32]
    rec_rday: npt.NDArray[np.float32]
    rec_value: F64
    rec_resid: F64
    sres: F64
    day_smax: F64
    rec_sday: npt.NDArray[np.float32]
    rec_sres: F64
    hour_vmax: F64
    hour_highs: npt.NDArray[np.float32]
    rec_hour: F64
    settle_until: F64

    @property
    def z(self) -> float:
        """The z threshold in force: the explicit sensitivity, else the one the knob gives
        at the cadence seen so far."""
        if self.cfg.sensitivity > 0:
            return self.cfg.sensitivity
        interval = self.interval_s if math.isfinite(self.interval_s) else HOUR_S
        return z_threshold(self.cfg.false_incidents_per_month, interval)

    def index_of(self, keys: Iterable[SeriesKey]) -> npt.NDArray[np.int64]:
        """Indices of the keys, registering unknown ones. An index stays valid while its
        series is known: take fresh ones after `evicted_total` changed."""
        out = []
        for key in keys:
            i = self._index.get(key)
            if i is None:
                if self._free:
                    i = self._free.pop()
                    self.keys[i] = key
                else:
                    i = len(self.keys)
                    if i >= self.capacity:
                        self._alloc(self.capacity * 2)
                    self.keys.append(key)
                # Registering starts the absence clock, so a key that never gets a value is
                # evicted too.
                self.last_seen[i] = -np.inf if self.last_time is None else self.last_time
                self.floor[i] = self.cfg.min_impact(key.level)
                self._index[key] = i
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def rename(self, old: SeriesKey, new: SeriesKey) -> bool:
        """Carry `old`'s state (history, noise, records) over to `new`: the same series
        under new labels (a resource re-tagged). Refused (False) when `old` is unknown or has
        an open incident (its alert is labelled with the old key), or `new` is known."""
        row = self._index.get(old)
        if row is None or new in self._index or self.is_open[row]:
            return False
        del self._index[old]
        self.keys[row] = new
        self._index[new] = row
        return True

    def seen_at(self, key: SeriesKey) -> float:
        """When `key` last had a value, or was registered when it never had one (-inf:
        unknown)."""
        row = self._index.get(key)
        return -math.inf if row is None else float(self.last_seen[row])

    def fork(self, old: SeriesKey, new: SeriesKey) -> bool:
        """Start `new` with `old`'s learnt state (history, noise, records) while `old` keeps
        its open incident: a resource re-tagged during an incident (`rename` refuses it, the
        alert being labelled with the old key). Under the new labels the episode is judged
        against that history, so a cost still high opens an incident there measured from the
        level before it (its new owner is told), not a step from nothing; the old incident
        resolves once its label set is no longer read. Not in a cooldown: that would hide an
        ongoing episode for a day once the old incident resolved. Refused (False) when `old`
        is unknown or `new` is known."""
        src = self._index.get(old)
        if src is None or new in self._index:
            return False
        [dst] = self.index_of([new])
        self._copy_state(src, dst)
        return True

    def _copy_state(self, src: int, dst: int) -> None:
        """`dst` takes `src`'s learnt state, without its incident or its level's floor."""
        floor = self.floor[dst]
        for name in self._ARRAYS:
            array = getattr(self, name)
            array[dst] = array[src]
        self.floor[dst] = floor
        self.is_open[dst] = self.firing[dst] = False
        self.rule[dst] = self.sev[dst] = self.normal_ticks[dst] = 0
        self.started[dst] = self.pending[dst] = np.nan
        self.last_abnormal[dst] = self.closed_at[dst] = -np.inf
        self.peak[dst] = 0.0

    def reassign(
        self, now: float, moves: Iterable[tuple[SeriesKey, SeriesKey, SeriesKey | None]]
    ) -> int:
        """Move re-tagged resources' costs between aggregates: per move, the resource (under
        its new key, after `rename` or `fork`), the aggregate it left and the one it joined
        (a team; None: none, its tag removed). The collector moves the cost in one write, so
        without this the aggregate joined stepped up by the resource's whole cost and paged
        (`day0_step`; from nothing for a new team) with no cost changed.

        The one joined takes on the resource's history: hourly means, levels, last value,
        highs (of values and of residuals) and noise, a new one as the resource's copy. The
        one left gives up its hourly means, levels and value highs (the day's highs less
        the resource's: a bound below the true ones, exact for a steady resource; kept, they
        hid a real step of the team left for the RECORD_DAYS the highs last) and keeps its
        noise. The baselines of both are recomputed at once. The team left may not open an
        incident for REGROUP_SETTLE_S: the detector learns of the re-tag from the inventory,
        which the collector commits before it writes the teams' totals, so for a cycle or
        two it still reads the resource's cost (the team joined reads less than its new
        baseline meanwhile, and is not held: a new instance whose tags come with a late
        event joins its team from none, and a team launching instances every minute would
        never alert). Returns the aggregates changed."""
        changed: set[int] = set()
        settle: set[int] = set()
        for part, left, joined in moves:
            r = self._index.get(part)
            if r is None:
                continue
            if joined is not None:
                to = self._index.get(joined)
                if to is None:
                    [to] = self.index_of([joined])
                    self._copy_state(r, to)
                else:
                    self._shift(r, to, 1.0)
                changed.add(to)
            src = self._index.get(left)
            if src is not None:
                self._shift(r, src, -1.0)
                changed.add(src)
                settle.add(src)
        if settle:
            rows = np.fromiter(settle, dtype=np.int64)
            self.settle_until[rows] = now + REGROUP_SETTLE_S
            self.pending[rows] = np.nan
        if changed and self.hour is not None:
            self._refresh_record()
            self._refresh_baselines(self.hour)
        return len(changed)

    def _shift(self, r: int, row: int, sign: float) -> None:
        """Add (`sign` 1) or remove (-1) resource row `r`'s share of aggregate `row`. What is
        unknown on the aggregate stays unknown, what is unknown of the resource counts as 0;
        nothing goes below 0."""

        def add(name: str, part: Any) -> None:
            array = getattr(self, name)
            array[row] = np.maximum(array[row] + sign * nan_to(np.asarray(part, np.float64), 0), 0)

        add("hist", self.hist[r])
        if self.bucket_cnt[r] > 0:
            add("bucket_sum", self.bucket_sum[r] / self.bucket_cnt[r] * self.bucket_cnt[row])
        for name in ("recent", "prev", "level"):
            add(name, getattr(self, name)[r])
        # The range seen moves by the resource's current level.
        for name in ("seen_min", "seen_max"):
            add(name, self.recent[r])
        for name in ("day_vmax", "hour_vmax", "rec_vday", "hour_highs"):
            add(name, getattr(self, name)[r])
        if sign > 0:
            # The sum of two series' residual highs or noises bounds those of their sum: the
            # team joined is not made more sensitive by the resource's routine spikes. The
            # team left keeps its own (they age out).
            residual = ("day_rmax", "rec_rday", "day_smax", "rec_sday", "sres")
            for name in (*residual, "resid", "resid_q", "jitter"):
                add(name, getattr(self, name)[r])

    @property
    def size(self) -> int:
        """Slots in use or free: the length of every per-series array that is evaluated."""
        return len(self.keys)

    @property
    def series_count(self) -> int:
        """Series currently known (evicted ones excluded)."""
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def _evict(self, now: float) -> None:
        """Forget series without a value for `evict_after_s`, so churn (resources that come
        and go) does not grow the state forever. An open incident is never evicted: it
        resolves as stale first (`stale_after_s` is shorter). Runs at most once a minute."""
        if now < self._next_eviction:
            return
        self._next_eviction = now + min(EVICT_CHECK_S, self.cfg.evict_after_s)
        n = self.size
        gone = np.flatnonzero(
            ~self.is_open[:n] & (now - self.last_seen[:n] > self.cfg.evict_after_s)
        )
        if not gone.size:
            return
        for row in gone.tolist():
            del self._index[self.keys[row]]
        self._reset(gone)
        self.last_seen[gone] = np.inf  # a free slot is never absent, so never evicted again
        self._free.extend(gone.tolist())
        self.evicted_total += int(gone.size)

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
        loaded = hourly[known]  # one copy: three weeks of a whole level's series
        self.seen[rows] = True
        valid = ~np.isnan(loaded)
        first_col = np.argmax(valid, axis=1)
        last_col = span - 1 - np.argmax(valid[:, ::-1], axis=1)
        self.first_hour[rows] = first_hour + first_col
        self.recent[rows] = loaded[np.arange(rows.size), last_col]
        self.last_seen[rows] = (first_hour + last_col + 1) * HOUR_S
        # The mean level as if it had been learnt live over the loaded hours: left to start
        # at the first value after a restart, it is that hour's value (a daily peak, or an
        # anomaly under way) for the week it takes to forget it, and the materiality, the
        # noise floors and the tail's clip all scale with it.
        level = np.full(rows.size, np.nan)
        for col in loaded.T:
            level = running_mean(level, col, HOUR_S, LEVEL_WINDOW_S)
        self.level[rows] = level
        # Not the hour-of-day record: it holds each hour's highest value, and an hour's mean
        # dilutes a 10-minute batch six times, so a record seeded from means let the routine
        # batch open again after every restart. Until it is learnt live the local step
        # needs a value above the daily highs, as it did before that record existed.
        # The value record from the hourly means: each day's highest. The loaded hours end
        # before the hour of the first evaluation (the detector loads up to the hour before
        # its start), whose day is today: the days before it go to the ring, a day the
        # loaded hours end at midnight included (taken as today, it stayed in the ring's
        # slot of 21 days before and today's highs for a day).
        today = (first_hour + span) // DAY_H
        last_day = (first_hour + span - 1) // DAY_H
        for day in range(max(first_hour // DAY_H, today - RECORD_DAYS), last_day + 1):
            lo = max(day * DAY_H - first_hour, 0)
            block = hourly[:, lo : (day + 1) * DAY_H - first_hour]
            top = np.full(idx.size, np.nan)
            has = ~np.all(np.isnan(block), axis=1)
            top[has] = np.nanmax(block[has], axis=1)
            if day == today:
                self.day_vmax[idx] = np.fmax(self.day_vmax[idx], top)
            else:
                self.rec_vday[idx, day % RECORD_DAYS] = top
        self._seed_residual_record(rows, first_hour, loaded)
        self._refresh_record()
        if self.hour is not None:
            self._refresh_baselines(self.hour)
        else:
            self._loaded_until = max(self._loaded_until or first_hour + span, first_hour + span)

    def _seed_residual_record(
        self, rows: npt.NDArray[np.int64], first_hour: int, loaded: F64
    ) -> None:
        """The residual records of `rows` from their loaded hourly means (columns from
        `first_hour`): each day's highest residual above the seasonal baseline as it stood
        at that hour, for the days the ring keeps; today is the day of the hour after the
        last loaded one, as for the value record (`seed_history`).

        Left unknown, the record is 0 after a start and every residual above the baseline
        beats it: on the tuning half's hourly sources a detector restarted every 3 days
        opened 2 to 10 times the false incidents of one left running. Finer than hourly, the
        live records (of every value's residual, of its running mean) run above these means,
        so until `record_rank` live days have replaced them the seeded ones are the lower."""
        if self.cfg.record_rank <= 0 or not rows.size:
            return
        span = loaded.shape[1]
        last = first_hour + span - 1
        today = (last + 1) // DAY_H
        start = max(first_hour, (today - RECORD_DAYS) * DAY_H)
        weeks = self.cfg.history_weeks
        # A linear copy, with the ring's depth of unknown hours before the first: the
        # engine's ring would read hours after the one judged where it wraps.
        width = self.hours + last - start + 1
        lo = start - self.hours - first_hour
        week_lags = np.arange(weeks + 1) * WEEK_H
        for chunk in range(0, rows.size, SEED_CHUNK_ROWS):
            part = loaded[chunk : chunk + SEED_CHUNK_ROWS]
            dest = rows[chunk : chunk + SEED_CHUNK_ROWS]
            lin = np.full((part.shape[0], width), np.nan, dtype=np.float32)
            lin[:, max(-lo, 0) :] = part[:, max(lo, 0) :]
            # The median of the 24 hours before each column, each computed once (the live
            # engine sorts each day again for every hour of the weeks after it).
            day_med = np.full((part.shape[0], width + 1), np.nan)
            windows = np.lib.stride_tricks.sliding_window_view(lin, DAY_H, axis=1)
            # (Windows before the first loaded hour hold nothing: their medians stay NaN.)
            for w0 in range(max(-lo - DAY_H + 1, 0), windows.shape[1], SEED_BLOCK_H):
                block = np.sort(windows[:, w0 : w0 + SEED_BLOCK_H], axis=-1)
                day_med[:, w0 + DAY_H : w0 + DAY_H + block.shape[1]] = sorted_medians(block)[0]
            # Judged a day at a time, for its highest residual.
            for day in range(start // DAY_H, last // DAY_H + 1):
                hours = np.arange(max(day * DAY_H, start), min((day + 1) * DAY_H, last + 1))
                cols = hours - start + self.hours
                med = day_med[:, cols[:, None] - week_lags]
                expected, _, _ = self._seasonal(lin, cols, med)
                with np.errstate(invalid="ignore"):
                    resid = lin[:, cols] - expected
                top = np.full(part.shape[0], np.nan)
                has = ~np.all(np.isnan(resid), axis=1)
                top[has] = np.nanmax(resid[has], axis=1)
                for high, ring in (("day_rmax", "rec_rday"), ("day_smax", "rec_sday")):
                    if day == today:
                        getattr(self, high)[dest] = np.fmax(getattr(self, high)[dest], top)
                    else:
                        getattr(self, ring)[dest, day % RECORD_DAYS] = top

    def seed_changes(self, now: float, idx: npt.NDArray[np.int64], before: npt.ArrayLike) -> None:
        """At a start, before the first evaluation: the series of `idx` changed within
        `day0_window_s` before `now`, from the levels `before` (0 or NaN: the series did not
        exist, e.g. a new resource). Their recent level is set to it, so the change is a
        step as it would have been had the engine been running; the first evaluation takes
        every other series at its current value, so a restart does not report every series.
        """
        if self.hour is not None:
            raise ValueError("seed_changes is for a start: values were evaluated already")
        b = np.asarray(before, dtype=np.float64)
        if b.shape != idx.shape:
            raise ValueError("seed_changes needs one level per series index")
        self.first_hour[idx] = np.where(self.seen[idx], self.first_hour[idx], int(now // HOUR_S))
        self.seen[idx] = True
        self.recent[idx] = nan_to(b, 0.0)
        # Absent from now on, not since ever: one not served yet is kept, not evicted.
        self.last_seen[idx] = np.fmax(self.last_seen[idx], now)
        # The first evaluation then counts from `now`, not as a whole hour, so the level
        # does not jump to the current value before the step is seen.
        self.last_time = now

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
        self.hour_highs[:n, self.hour % HOUR_RECORD_H] = self.hour_vmax[:n]
        for h in range(self.hour + 1, min(new_hour, self.hour + HOUR_RECORD_H + 1)):
            self.hour_highs[:n, h % HOUR_RECORD_H] = np.nan
        self.hour_vmax[:n] = np.nan
        day, new_day = self.hour // DAY_H, new_hour // DAY_H
        if new_day > day:
            for today, ring, _ in self._DAY_RECORDS:
                days = getattr(self, ring)
                days[:n, day % RECORD_DAYS] = getattr(self, today)[:n]
                for d in range(day + 1, min(new_day, day + RECORD_DAYS + 1)):
                    days[:n, d % RECORD_DAYS] = np.nan
                getattr(self, today)[:n] = np.nan
            self._refresh_record()
        self.hour = new_hour
        self._refresh_baselines(new_hour)

    def _refresh_record(self) -> None:
        """The record of each series: the `record_rank`-th highest daily maximum of the past
        RECORD_DAYS days, of its values, of its residuals and of the residual's running mean
        (NaN with fewer known days)."""
        rank = self.cfg.record_rank
        n = self.size
        if rank <= 0 or not n:
            return
        for _, ring, record in self._DAY_RECORDS:
            getattr(self, record)[:n] = kth_highest(getattr(self, ring)[:n], rank)

    def _refresh_hour_record(self, hour: int) -> None:
        """The hour-of-day record for `hour`: the `record_rank`-th highest of the highest
        values of the same hour on the past HOUR_RECORD_DAYS days (NaN with fewer known)."""
        rank = self.cfg.record_rank
        n = self.size
        # Only the local step reads it, and only data every 5 to 59 minutes runs that rule.
        if rank <= 0 or not n or not self._export_cadence():
            return
        cols = [(hour - d * DAY_H) % HOUR_RECORD_H for d in range(1, HOUR_RECORD_DAYS + 1)]
        # A rank above the days kept is never known: the daily highs stand in for it.
        self.rec_hour[:n] = kth_highest(self.hour_highs[:n, cols], rank)

    def _cols(self, hour: int, lags: Iterable[int]) -> list[int]:
        return [(hour - lag) % self.hours for lag in lags]

    @staticmethod
    def _span(
        hist: npt.NDArray[np.float32], hour: int, lag: int, width: int
    ) -> npt.NDArray[np.float32]:
        """The hourly means of the `width` hours up to `lag` hours before `hour` (oldest
        first) of every row of the ring `hist` (column = hour modulo its width): a view, or
        two slices joined where it wraps. Read only. Slices, unlike a gather of columns
        (`hist[:, cols]`, laid out column by column), keep each series' hours contiguous,
        which the sorts along them need to be fast."""
        size = hist.shape[1]
        start = (hour - lag - width + 1) % size
        if start + width <= size:
            return hist[:, start : start + width]
        return np.concatenate((hist[:, start:], hist[:, : start + width - size]), axis=1)

    def _seasonal(
        self, hist: npt.NDArray[np.float32], hours: npt.NDArray[np.int64], day_med: F64
    ) -> tuple[F64, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """The seasonal baseline of every row of the ring `hist` (rows) at each of `hours`
        (columns), from the closed hours before it (NaN where too little is known), and
        whether it is the weekly one or else the daily one. `day_med[..., w]` is the median
        of the 24 hours before the hour `w` weeks earlier (w = 0 .. history_weeks)."""
        cfg = self.cfg
        # The same hour over the past days and over the past weeks.
        size = hist.shape[1]
        daily, dcount = nanmedian_rows(
            np.take(hist, (hours[:, None] - self._day_lags) % size, axis=1)
        )
        weekly, wcount = nanmedian_rows(
            np.take(hist, (hours[:, None] - self._week_lags) % size, axis=1)
        )
        last_day = day_med[..., 0]
        # Per past week first, then across weeks: one anomalous week must not move it.
        past_days, _ = nanmedian_rows(day_med[..., 1:])
        # The weekly median lags steady growth by weeks: scale it up by how the last day
        # compares with the same hours in past weeks. Only up, and at most by
        # MAX_LEVEL_ADJUST, so an anomaly can neither explain itself away nor make a past
        # anomaly lower today's baseline (a lower baseline only adds alerts).
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.clip(last_day / past_days, 1.0, MAX_LEVEL_ADJUST)
        weekly = weekly * np.where(np.isfinite(level), level, 1.0)
        use_weekly = wcount >= cfg.weekly_min_weeks
        use_daily = ~use_weekly & (dcount >= cfg.daily_min_days)
        expected = np.where(use_weekly, weekly, np.where(use_daily, daily, np.nan))
        return expected, use_weekly, use_daily

    def _refresh_baselines(self, hour: int) -> None:
        """Every series' baselines and noise for `hour`, from the closed hours before it.

        Runs once an hour over every series, so it is most of the detector's time: the
        history is read as contiguous spans of the ring (`_span`), the windows of one width
        are sorted together, and the highest value of the last day comes from its sort."""
        cfg = self.cfg
        n = self.size
        hist = self.hist[:n]
        age_h = hour - self.first_hour[:n]
        weeks = cfg.history_weeks
        # The last day and the day before the same hour in each past week.
        days = np.empty((n, weeks + 1, DAY_H), dtype=np.float32)
        for w in range(weeks + 1):
            days[:, w] = self._span(hist, hour, w * WEEK_H + 1, DAY_H)
        days.sort(axis=-1)
        med, count = sorted_medians(days)
        expected, weekly, daily = self._seasonal(hist, np.array([hour]), med[:, None, :])
        self.exp_seasonal[:n] = expected[:, 0]
        use_weekly, use_daily = weekly[:, 0], daily[:, 0]
        self.mode[:n] = np.where(
            use_weekly, BASE_WEEKLY, np.where(use_daily, BASE_DAILY, BASE_DAY0)
        )

        cold = np.flatnonzero(~(use_weekly | use_daily))
        self.exp_static[:n] = np.nan
        self.young[:n] = np.nan
        if cold.size:
            # The highest value seen so far, not the median: a new series' daily peak is not
            # an anomaly, a value far above anything seen is.
            window = self._span(hist, hour, 1, STATIC_WINDOW_H)[cold]
            cnt = np.count_nonzero(~np.isnan(window), axis=1)
            ok = cnt >= cfg.warmup_min_hours
            day = cnt >= max(cfg.warmup_min_hours, STATIC_MIN_H)
            top = np.nanmax(np.where(day[:, None], window, 0.0), axis=1)
            self.exp_static[cold[day]] = top[day]
            self.mode[cold[day]] = BASE_STATIC
            # The spread seen so far is the only noise a young series has: its mean absolute
            # deviation from its median (unlike the MAD it does not collapse for a series
            # that is mostly zero with spikes, which are exactly what it must not page on).
            med, _ = nanmedian_rows(window[ok])
            with np.errstate(invalid="ignore"):
                self.young[cold[ok]] = np.nanmean(np.abs(window[ok] - med[:, None]), axis=1)

        self.yesterday[:n] = np.where(age_h >= DAY_H, hist[:, (hour - DAY_H) % self.hours], np.nan)
        # The highest hourly mean of the last day, once a few hours are known: a step must
        # rise above what was normal today, not just above the previous value (a series
        # that spikes every few hours is not stepping up each time).
        # (The last value of the sorted last day.)
        known = np.flatnonzero((count[:, 0] >= cfg.warmup_min_hours) & (count[:, 0] > 0))
        self.day_max[:n] = np.nan
        self.day_max[known] = days[known, 0, count[known, 0] - 1]

        # Noise: day-over-day differences of the last week. Differences remove the daily
        # pattern; the median ignores the few that straddle a weekend or an anomaly.
        recent = self._span(hist, hour, 1, SCALE_WINDOW_H + DAY_H)
        diffs = np.subtract(recent[:, DAY_H:], recent[:, :SCALE_WINDOW_H])
        mad, dn = nanmedian_rows(np.abs(diffs, out=diffs))
        self.scale[:n] = np.where(dn >= MIN_SCALE_POINTS, MAD_TO_SIGMA * mad / math.sqrt(2), np.nan)
        self._refresh_hour_record(hour)

    # ------------------------------------------------------------------ evaluation
    def _advance_clock(self, now: float) -> tuple[bool, float]:
        """Move to `now`'s hour; returns (first evaluation ever, seconds since the last)."""
        hour = int(now // HOUR_S)
        first_tick = self.hour is None
        if self.hour is None and self._loaded_until is not None and self._loaded_until < hour:
            # The first evaluation comes hours after the loaded ones (a long load, a start
            # across an hour or a day): those hours close as a running engine's gap would,
            # unknown, and a day the load ended in goes to the records' rings. Otherwise the
            # ring's columns for them kept the hours three weeks before, read as recent.
            self.hour = self._loaded_until
            self._close_hours(hour)
        elif self.hour is None:
            self.hour = hour
            self._refresh_baselines(hour)
        elif hour > self.hour:
            self._close_hours(hour)
        elif hour < self.hour:
            raise ValueError(f"time went backwards: {now} is before hour {self.hour}")
        dt = HOUR_S if self.last_time is None else max(now - self.last_time, 0.0)
        self.last_time = now
        return first_tick, dt

    def _noise(self, i: npt.NDArray[np.int64], level: F64) -> F64:
        """The noise: the largest of the robust estimates, never zero for a series with a
        level."""
        noise = np.fmax(
            nan_to(self.scale[i], 0.0),
            MEAN_ABS_TO_SIGMA * nan_to(self.resid[i], 0.0),
        )
        noise = np.fmax(noise, EXPECTILE_TO_SIGMA * nan_to(self.resid_q[i], 0.0))
        noise = np.fmax(noise, self.cfg.level_noise_ratio * np.abs(level))
        young = self.young[i]
        noise = np.fmax(noise, MEAN_ABS_TO_SIGMA * nan_to(young, 0.0))
        # Before its first hours close, a series' only noise is the range of the values seen
        # so far (0 for a flat one, so a real step still opens at once).
        seen_range = nan_to(self.seen_max[i] - self.seen_min[i], 0.0)
        fresh = np.isnan(young) & np.isnan(self.exp_seasonal[i]) & np.isnan(self.exp_static[i])
        return np.where(fresh, np.fmax(noise, 0.5 * seen_range), noise)

    def _export_cadence(self) -> bool:
        """Data every 5 to 59 minutes (an export's averages, a live loop every 5 minutes):
        the local step runs and the record is the hour of day's (`_evaluate`)."""
        # A live loop's interval wobbles: a 300 s loop may once measure 299.99 s.
        low = LOCAL_MIN_INTERVAL_S * (1.0 - INTERVAL_TOLERANCE)
        return low <= self.interval_s < HOUR_S

    def _jitter_noise(self, i: npt.NDArray[np.int64], level: F64) -> F64:
        """The local step's noise: the jitter as a standard deviation of one value (a change
        between two values has sqrt 2 times it), at least the level's noise floor; infinite
        (the rule never fires) when the rule is off, the data's cadence is outside
        [LOCAL_MIN_INTERVAL_S, 1 h), or the jitter has been learnt for less than a day."""
        if not (self.cfg.local_step == 1 and self._export_cadence()):
            return np.full(i.size, np.inf)
        jitter = MEAN_ABS_TO_SIGMA / math.sqrt(2) * nan_to(self.jitter[i], 0.0)
        jitter = np.fmax(jitter, self.cfg.level_noise_ratio * np.abs(level))
        jitter = np.fmax(jitter, EXPECTED_FLOOR_USD)
        return np.where(self.jitter_s[i] >= LOCAL_WARMUP_S, jitter, np.inf)

    def _beats_hour_record(
        self,
        i: npt.NDArray[np.int64],
        v: F64,
        recent: F64,
        threshold: F64,
        material: Callable[[F64, F64, float], npt.NDArray[np.bool_]],
    ) -> npt.NDArray[np.bool_]:
        """Whether the local step also rises by its `threshold` (and the materiality) above
        this hour of day's record, not only above the recent level: a batch that runs at this
        hour every day is routine, a jump at a quiet hour is not, however high the day's peak
        hours go. Until that record is known the value must beat the daily highs instead
        (docs/detection.md, "Record")."""
        rec_h = self.rec_hour[i]
        top = np.fmax(recent, nan_to(rec_h, -np.inf))
        above = v - top
        ok = (above >= threshold) & material(above, top, 1.0)
        # The daily highs are kept as float32: a repeat of the day's peak must not beat them
        # by its rounding.
        with np.errstate(invalid="ignore"):
            daily = v.astype(np.float32) <= self.cfg.record_margin * self.rec_value[i]
        return ok & ~(np.isnan(rec_h) & daily)

    def _evaluate(self, i: npt.NDArray[np.int64], v: F64) -> _Verdicts:
        cfg = self.cfg
        k = self.z
        hf = cfg.hold_fraction
        floor = self.floor[i]
        level = nan_to(self.level[i], 0.0)
        noise0 = self._noise(i, level)

        def material(d: F64, base: F64, f: float) -> npt.NDArray[np.bool_]:
            own = cfg.min_relative_increase * f * np.fmax(np.abs(base), np.abs(level))
            return (d >= floor * f) & (d >= own)

        # Day-0 step, against the highest of what is normal: the recent level, the same hour
        # yesterday and, once known, the seasonal baseline (Monday morning is no step).
        ref = np.fmax(self.recent[i], nan_to(self.yesterday[i], -np.inf))
        ref = np.fmax(ref, nan_to(self.exp_seasonal[i], -np.inf))
        ref = np.fmax(ref, nan_to(self.day_max[i], -np.inf))
        d0 = v - ref
        # A series already there at the first evaluation, without loaded history, has an
        # unknown past: its first few values say nothing about its range. Series that appear
        # later are steps from nothing and are judged at once.
        blind = self.unknown_past[i] & (self.seen_n[i] < UNKNOWN_PAST_VALUES)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.where(ref > 0, d0 / ref, np.where(d0 > 0, np.inf, 0.0))

        def day0(f: float) -> npt.NDArray[np.bool_]:
            big = (d0 >= cfg.day0_min_step_usd_per_hour * f) | (
                ratio >= cfg.day0_min_step_ratio * f
            )
            return material(d0, ref, f) & big & (d0 >= k * f * noise0) & ~blind

        # The record (when on): opening needs a value above the series' recent daily highs (a
        # series that spikes every few days has spikes that are not anomalies, whatever its
        # noise).
        rec_v = self.rec_value[i]
        m = cfg.record_margin

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
            by_static = (
                static
                & (v >= exp_st * (1 + cfg.warmup_static_ratio * f))
                & (v - exp_st >= STATIC_Z_RATIO * k * f * noise)
            )
            return (by_z | by_static) & material(ds, expected, f)

        def decrease(f: float) -> npt.NDArray[np.bool_]:
            return warm & (-z >= k * f) & material(-ds, expected, f)

        # Local step (data every 5 to 59 minutes): above the recent level by z x the jitter.
        # Hourly means hide what happens within the hour; the change from one value to the
        # next does not, and it is far smaller than the residuals around an hourly baseline.
        no = np.zeros(i.size, dtype=bool)
        recent = self.recent[i]
        dl = v - recent
        jitter = self._jitter_noise(i, level)

        def local(f: float) -> npt.NDArray[np.bool_]:
            return (dl >= k * f * jitter) & material(dl, recent, f) & ~blind

        day0_fire = day0(1.0)
        seas_fire = seasonal(1.0)
        local_fire = local(1.0)
        if cfg.record_rank > 0:
            with np.errstate(invalid="ignore"):
                # NaN (no record yet) lets the rule through. The day-0 step needs a value
                # above the recent daily highs: a series whose values jump every day (a daily
                # batch, a night-time spike) is not stepping up.
                # (The records are float32: compared at that precision, a repeat of a
                # day's peak is not above it.)
                day0_fire &= ~(v.astype(np.float32) <= m * rec_v)
            seas_fire &= self._beats_resid_record(i, ds, warm)
            if self._export_cadence():
                local_fire &= self._beats_hour_record(i, v, recent, k * jitter, material)
        down = cfg.report_decreases == 1
        prefer_seasonal = seas_fire & (warm | ~day0_fire)
        only_local = local_fire & ~day0_fire
        opens_as = np.where(
            prefer_seasonal, RULE_SEASONAL, np.where(only_local, RULE_LOCAL, RULE_DAY0)
        ).astype(np.int8)
        return _Verdicts(
            ref=np.maximum(ref, 0.0),
            expected=np.maximum(expected, 0.0),
            recent=np.maximum(recent, 0.0),
            z=np.where(warm, z, np.nan),
            opens_as=opens_as,
            fire=day0_fire | seas_fire | local_fire,
            hold=day0_fire | seas_fire | local_fire | day0(hf) | seasonal(hf) | local(hf),
            fire_down=decrease(1.0) if down else no,
            hold_down=decrease(hf) if down else no,
        )

    def _usable(self, vals: F64) -> npt.NDArray[np.bool_]:
        """The values the rules see: finite and within MAX_ABS_USD_PER_HOUR (the others are
        missing values; the out-of-range ones are counted)."""
        ok = np.isfinite(vals)
        wild = ok & (np.abs(vals) > MAX_ABS_USD_PER_HOUR)
        if wild.any():
            self.out_of_range_total += int(np.count_nonzero(wild))
        return ok & ~wild

    def observe(
        self, now: float, idx: npt.NDArray[np.int64], values: npt.ArrayLike
    ) -> list[Transition]:
        """Evaluate the newest values (aligned with `idx`; NaN = no value this time)."""
        first_tick, dt = self._advance_clock(now)
        assert self.hour is not None
        if not first_tick and dt > 0:
            self._intervals.append(dt)
            self.interval_s = statistics.median(self._intervals)
        vals = np.asarray(values, dtype=np.float64)
        ok = self._usable(vals)
        i = idx[ok]
        v = vals[ok]

        # A series seen for the first time after the first evaluation did not exist before:
        # its recent level is 0, so a new resource is a step from nothing. On the very first
        # evaluation (or after a restart without history) the current value is the level.
        new = ~self.seen[i]
        if new.any():
            self.recent[i[new]] = v[new] if first_tick else 0.0
            self.unknown_past[i[new]] = first_tick
            self.seen[i[new]] = True
            self.first_hour[i[new]] = self.hour
            self.mode[i[new]] = BASE_DAY0
        self.bucket_sum[i] += v
        self.bucket_cnt[i] += 1

        if self._sustained_record():
            self._follow_residual(i, v, dt)
        verdicts = self._evaluate(i, v)
        self.last_expected[i] = verdicts.expected
        was_open = self.is_open[i]
        rows, opening = self._open(now, i, v, verdicts)
        escalating = self._follow(i, v, verdicts, rows, opening)
        out = [self._transition("opened", int(r), now) for r in rows]
        out += [self._transition("escalated", int(r), now) for r in escalating]
        for row in self._resolving(now, i, verdicts, was_open):
            out.append(self._transition("resolved", row, now))
            self.is_open[row] = False
            self.closed_at[row] = now

        # The range leaves out values the rules find abnormal (and those inside incidents): a
        # step, or a wobble the cooldown let pass, must not widen it for the next one.
        quiet = ~(verdicts.fire | self.is_open[i])
        calm = i[quiet]
        calm_v = v[quiet]
        self.seen_min[calm] = np.fmin(self.seen_min[calm], calm_v)
        self.seen_max[calm] = np.fmax(self.seen_max[calm], calm_v)
        self.seen_n[i] = np.minimum(self.seen_n[i] + 1, UNKNOWN_PAST_VALUES)
        # The jitter learns after the evaluation, like the residual noise: a jump is judged
        # against the jitter before it.
        if not first_tick and dt > 0:
            self._learn_jitter(i, v, dt)
        else:
            self.prev[i] = v
        # The recent level follows the value with time constant day0_window_s.
        alpha = 1.0 - math.exp(-dt / self.cfg.day0_window_s)
        self.recent[i] += alpha * (v - self.recent[i])
        self.level[i] = running_mean(self.level[i], v, dt, LEVEL_WINDOW_S)
        warm = np.isfinite(self.exp_seasonal[i])
        self._learn_noise(i[warm], v[warm], verdicts.expected[warm], dt)
        # Today's highs for the record, incidents included: at rank 2 one reported anomaly
        # does not raise the bar, and a routine spike that alerted once teaches it.
        if self.cfg.record_rank > 0:
            self._learn_highs(i, v, warm)
        self._evict(now)
        return out

    def _learn_highs(self, i: npt.NDArray[np.int64], v: F64, warm: npt.NDArray[np.bool_]) -> None:
        """This hour's and today's highest value, and today's highest residual."""
        if self._export_cadence():
            self.hour_vmax[i] = np.fmax(self.hour_vmax[i], v)
        self.day_vmax[i] = np.fmax(self.day_vmax[i], v)
        resid = np.where(warm, v - self.exp_seasonal[i], np.nan)
        self.day_rmax[i] = np.fmax(self.day_rmax[i], resid)
        if self._sustained_record():
            self.day_smax[i] = np.fmax(self.day_smax[i], self.sres[i])

    def _beats_resid_record(
        self, i: npt.NDArray[np.int64], ds: F64, warm: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bool_]:
        """Whether the residual `ds` is above the series' residual record, or (data finer
        than hourly) the residual's running mean above the sustained record."""
        m = self.cfg.record_margin
        with np.errstate(invalid="ignore"):
            beats = ~(ds.astype(np.float32) <= m * np.fmax(self.rec_resid[i], 0.0))
            # Finer than hourly, a day's highest residual is the far tail of hundreds of
            # values; an excursion that lasts may instead beat the days' lasting ones.
            if self._sustained_record():
                sres = self.sres[i].astype(np.float32)
                beats |= warm & ~(sres <= m * np.fmax(self.rec_sres[i], 0.0))
        return beats

    def _sustained_record(self) -> bool:
        """Whether the sustained record runs: the record is on and the data is finer than
        hourly (at hourly cadence each value already is an hour's mean)."""
        return self.cfg.record_rank > 0 and self.interval_s < HOUR_S

    def _follow_residual(self, i: npt.NDArray[np.int64], v: F64, dt: float) -> None:
        """The running mean of the residual above the seasonal baseline over
        SUSTAIN_WINDOW_S, including this evaluation's value (NaN without a baseline)."""
        resid = v - self.exp_seasonal[i]
        sres = running_mean(self.sres[i], resid, dt, SUSTAIN_WINDOW_S)
        # Without a baseline there is no residual: the mean starts again with the next one.
        self.sres[i] = np.where(np.isnan(resid), np.nan, sres)

    def _open(
        self, now: float, i: npt.NDArray[np.int64], v: F64, verdicts: _Verdicts
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Open the incidents whose rule has fired long enough and that the cooldown lets
        through; returns their rows and the mask (aligned with `i`)."""
        cfg = self.cfg
        # Right after a re-tag the team left may still read the resource's cost.
        settled = now >= self.settle_until[i]
        firing = (verdicts.fire | verdicts.fire_down) & settled
        # Minimum duration: a rule must have fired since `pending` for min_duration_s,
        # counting the interval the current value stands for.
        pend = self.pending[i]
        pend = np.where(firing, np.where(np.isnan(pend), now, pend), np.nan)
        self.pending[i] = pend
        step = self.interval_s if math.isfinite(self.interval_s) else 0.0
        lasted = nan_to(now + step - pend, -np.inf) >= cfg.min_duration_s
        # Cooldown: right after an incident, only worse than its peak is a new one.
        delta_now = v - self._baseline_of(verdicts.opens_as, verdicts)
        cooled = (now - self.closed_at[i] >= cfg.cooldown_s) | (np.abs(delta_now) > self.peak[i])
        # Would open now (OpenIncident.firing); a series without a value now does not.
        self.firing[: self.size] = False
        self.firing[i] = verdicts.fire & lasted & settled
        opening = firing & lasted & cooled & ~self.is_open[i]
        rows = i[opening]
        self.is_open[rows] = True
        is_down = opening & ~verdicts.fire
        self.rule[rows] = np.where(is_down[opening], RULE_DECREASE, verdicts.opens_as[opening])
        self.started[rows] = pend[opening]
        self.normal_ticks[rows] = 0
        self.peak[rows] = 0.0
        return rows, opening

    def _follow(
        self,
        i: npt.NDArray[np.int64],
        v: F64,
        verdicts: _Verdicts,
        rows: npt.NDArray[np.int64],
        opening: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.int64]:
        """Current figures, peak and severity of the open incidents; returns the rows whose
        severity rose."""
        # Current figures of open incidents, for re-posting and storage. An incident keeps
        # the baseline of the rule that opened it.
        open_now = self.is_open[i]
        oi = i[open_now]
        rule = self.rule[oi]
        self.cur_expected[oi] = self._baseline_of(self.rule[i], verdicts)[open_now]
        self.cur_observed[oi] = v[open_now]
        self.cur_z[oi] = verdicts.z[open_now]
        self.cur_base[oi] = np.where(
            rule == RULE_DAY0,
            BASE_DAY0,
            np.where(rule == RULE_LOCAL, BASE_RECENT, self.mode[oi]),
        )

        # Severity follows the incident's current impact but only upwards: a growing ramp
        # escalates, a receding one keeps its severity (no flapping between labels). A
        # decrease is information, never a page.
        delta = self.cur_observed[oi] - self.cur_expected[oi]
        self.peak[oi] = np.fmax(self.peak[oi], np.abs(delta))
        deviation = delta / np.maximum(self.cur_expected[oi], EXPECTED_FLOOR_USD)
        down_inc = self.rule[oi] == RULE_DECREASE
        sev = np.where(down_inc, 0, severity_codes(delta, deviation, self.cfg)).astype(np.int8)
        self.sev[rows] = sev[opening[open_now]]
        up = (sev > self.sev[oi]) & verdicts.hold[open_now]
        escalating = oi[up]
        self.sev[escalating] = sev[up]
        return escalating

    def _resolving(
        self,
        now: float,
        i: npt.NDArray[np.int64],
        verdicts: _Verdicts,
        was_open: npt.NDArray[np.bool_],
    ) -> list[int]:
        """Rows whose incident resolves: after enough consecutive normal evaluations and
        time, or when the series has had no value for stale_after_s (it is gone: a deleted
        group, a stopped exporter). An incident holds on its own direction only."""
        cfg = self.cfg
        self.last_seen[i] = now
        own_hold = np.where(self.rule[i] == RULE_DECREASE, verdicts.hold_down, verdicts.hold)
        own_hold = np.where(was_open, own_hold, verdicts.hold | verdicts.hold_down)
        self.normal_ticks[i] = np.where(own_hold, 0, self.normal_ticks[i] + 1)
        self.last_abnormal[i] = np.where(own_hold, now, self.last_abnormal[i])
        closing = i[
            was_open
            & ~own_hold
            & (self.normal_ticks[i] >= cfg.resolve_after_ticks)
            & (now - self.last_abnormal[i] >= cfg.resolve_after_s)
        ]
        n = self.size
        stale = np.flatnonzero(self.is_open[:n] & (now - self.last_seen[:n] > cfg.stale_after_s))
        return [int(r) for r in np.concatenate([closing, stale]).tolist()]

    @staticmethod
    def _baseline_of(rule: npt.NDArray[np.int8], verdicts: _Verdicts) -> F64:
        """The value a rule compares against, per evaluated series (`rule` aligned with
        them): the day-0 reference, the recent level, else the seasonal or warm-up baseline
        (which decreases use too)."""
        return np.where(
            rule == RULE_DAY0,
            verdicts.ref,
            np.where(rule == RULE_LOCAL, verdicts.recent, verdicts.expected),
        )

    def _learn_jitter(self, i: npt.NDArray[np.int64], v: F64, dt: float) -> None:
        """The running mean absolute change from one value to the next (time constant one
        day, each change clipped to JITTER_CLIP times it), for the local step rule."""
        change = np.abs(v - self.prev[i])
        known = np.isfinite(change)
        cur = self.jitter[i]
        change = np.minimum(change, JITTER_CLIP * np.fmax(nan_to(cur, np.inf), EXPECTED_FLOOR_USD))
        a = 1.0 - math.exp(-dt / RESID_WINDOW_S)
        learnt = np.where(np.isnan(cur), change, cur + a * (change - cur))
        self.jitter[i] = np.where(known, learnt, cur)
        self.jitter_s[i] += np.where(known, dt, 0.0)
        self.prev[i] = v

    def _learn_noise(
        self,
        i: npt.NDArray[np.int64],
        v: F64,
        expected: F64,
        dt: float,
    ) -> None:
        """Update the residual noise (mean absolute residual, clipped to RESID_CLIP times the
        tail estimate, and the tail estimate itself) of the series with a seasonal baseline:
        warm-up baselines are too rough to learn from."""
        a_res = 1.0 - math.exp(-dt / RESID_WINDOW_S)
        q = self.resid_q[i]
        cur = self.resid[i]
        # For hourly or coarser data both start from the day-over-day noise when it is
        # known, each in its own units, not from the first residual: one value of a series
        # that has just got its seasonal baseline would set them for days (an outlier: deaf
        # to the next anomalies; a value on the baseline: a tail near zero and its everyday
        # spikes alerting). Finer values (the local step's cadences, a live loop) also move
        # within the hour around an hourly baseline, which only their residuals measure, and
        # a first evaluation has no cadence yet. docs/detection.md, "Noise start".
        cadence = self.interval_s if math.isfinite(self.interval_s) else 0.0
        sigma = self.scale[i]
        start = np.isnan(q) & np.isfinite(sigma)
        tail = np.where(start, sigma / EXPECTILE_TO_SIGMA, q)
        if cadence >= HOUR_S:
            q = tail
            cur = np.where(start, sigma / MEAN_ABS_TO_SIGMA, cur)
        # Clipped to TAIL_CLIP times the current tail: one outlier moves it a little, a
        # series that spikes every day grows it by about a fifth per spike. A first residual
        # is clipped too, with the day-over-day noise standing in for the tail: after a
        # restart during an anomaly it would otherwise be the whole anomaly.
        floor = np.fmax(EXPECTED_FLOOR_USD, LEVEL_CLIP_RATIO * np.abs(self.level[i]))
        cap = TAIL_CLIP * np.fmax(nan_to(tail, np.inf), floor)
        raw = np.minimum(np.abs(v - expected), cap)
        w = np.where(raw > q, RESID_EXPECTILE, 1.0 - RESID_EXPECTILE)
        q = np.where(np.isnan(q), raw, q + np.minimum(a_res * w * 2.0, 1.0) * (raw - q))
        self.resid_q[i] = q
        res = np.minimum(raw, RESID_CLIP * np.fmax(q, EXPECTED_FLOOR_USD))
        self.resid[i] = running_mean(cur, res, dt, RESID_WINDOW_S)

    # ------------------------------------------------------------------ queries
    def _transition(self, kind: str, row: int, at: float) -> Transition:
        return Transition(kind=kind, at=at, **vars(self._incident(row)))

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
            normal_ticks=int(self.normal_ticks[row]),
            firing=bool(self.firing[row]),
        )

    def open_incidents(self) -> list[OpenIncident]:
        return [self._incident(int(r)) for r in np.flatnonzero(self.is_open[: self.size])]

    def open_incident(self, key: SeriesKey) -> OpenIncident | None:
        """The open incident of `key` at the last evaluation, if it has one."""
        row = self._index.get(key)
        return None if row is None or not self.is_open[row] else self._incident(row)

    def expected_now(self, idx: npt.NDArray[np.int64]) -> F64:
        """The value each series was expected to have at its last evaluation: its seasonal
        baseline when warm, the warm-up base (the highest hourly mean of the last 72 hours,
        once 24 of them have a value), else its day-0 reference (0 for a new series).
        Attribution compares children against this; NaN for a series never evaluated."""
        return self.last_expected[idx].copy()
