"""The pure detection core on hand-made series: each rule, the warm-up fallback, hysteresis,
de-duplication, resolution and severity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdas.detector import core
from lambdas.detector.config import DetectionConfig, SeriesKey
from lambdas.detector.core import (
    HOUR_S,
    MAX_ABS_USD_PER_HOUR,
    SEVERITIES,
    STATIC_MIN_H,
    Engine,
    Transition,
    kth_highest,
    nanmedian_rows,
    severity_codes,
)

T0 = 1_780_000_000 // (7 * 24 * HOUR_S) * (7 * 24 * HOUR_S)  # an hour-of-week boundary
KEY = SeriesKey.of("account", {"provider": "aws", "billing_account_id": "111"})
OTHER = SeriesKey.of("account", {"provider": "aws", "billing_account_id": "222"})


def run(
    engine: Engine, values: Sequence[float], start: float = T0, step: float = 3.0
) -> list[list[Transition]]:
    idx = engine.index_of([KEY])
    return [engine.observe(start + n * step, idx, [v]) for n, v in enumerate(values)]


def hourly(engine: Engine, values: Sequence[float], start: float = T0) -> list[list[Transition]]:
    return run(engine, values, start, HOUR_S)


def opened(out: list[list[Transition]]) -> list[tuple[int, Transition]]:
    return [(n, t) for n, ts in enumerate(out) for t in ts if t.kind == "opened"]


def resolved(out: list[list[Transition]]) -> list[tuple[int, Transition]]:
    return [(n, t) for n, ts in enumerate(out) for t in ts if t.kind == "resolved"]


def daily_pattern(days: int, base: float = 100.0, amp: float = 0.5) -> list[float]:
    hours = np.arange(days * 24)
    rng = np.random.default_rng(1)
    values = (
        base * (1 + amp * np.sin(hours / 24 * 2 * np.pi)) * (1 + rng.normal(0, 0.01, hours.size))
    )
    return [float(v) for v in values]


# --------------------------------------------------------------------------- day-0 step


def test_day0_step_opens_in_the_same_evaluation_without_any_history() -> None:
    out = run(Engine(DetectionConfig()), [100.0] * 5 + [200.0])
    [(n, t)] = opened(out)
    assert n == 5
    assert (t.rule, t.baseline, t.severity) == ("day0_step", "day0_reference", "critical")
    assert t.expected == pytest.approx(100.0)
    assert t.observed == 200.0
    assert t.delta == pytest.approx(100.0)
    assert t.deviation == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("before", "after", "fires"),
    [
        (100.0, 130.0, True),  # +30 $/h: above X (25 $/h) although only +30 %
        (100.0, 120.0, False),  # +20 $/h and +20 %: neither X nor Y
        (5.0, 7.5, True),  # +2.5 $/h but +50 %: Y, and above the 2 $/h materiality floor
        (2.0, 3.5, False),  # +75 % but only +1.5 $/h: below materiality
    ],
)
def test_day0_step_needs_x_dollars_or_y_percent_above_materiality(
    before: float, after: float, fires: bool
) -> None:
    out = run(Engine(DetectionConfig()), [before] * 3 + [after])
    assert bool(opened(out)) is fires


def test_a_series_that_appears_later_is_a_step_from_zero() -> None:
    engine = Engine(DetectionConfig())
    idx = engine.index_of([OTHER])
    engine.observe(T0, idx, [10.0])
    both = engine.index_of([OTHER, KEY])
    [t] = engine.observe(T0 + 3, both, [10.0, 40.0])
    assert (t.key, t.rule, t.expected, t.observed) == (KEY, "day0_step", 0.0, 40.0)


def test_series_present_at_the_first_evaluation_are_not_new() -> None:
    engine = Engine(DetectionConfig())
    idx = engine.index_of([KEY, OTHER])
    assert engine.observe(T0, idx, [500.0, 900.0]) == []


def test_at_a_start_series_that_changed_within_the_window_step_from_their_level_before() -> None:
    # A restart: KEY was created (nothing before) and OTHER resized from 100 $/h while the
    # engine was down, THIRD is an old series that did not change. Before seeding, the first
    # evaluation took all three at their current values and reported nothing.
    third = SeriesKey.of("account", {"provider": "aws", "billing_account_id": "333"})
    engine = Engine(DetectionConfig())
    engine.seed_changes(T0 - 5.0, engine.index_of([KEY, OTHER]), [float("nan"), 100.0])
    out = engine.observe(T0, engine.index_of([KEY, OTHER, third]), [40.0, 180.0, 900.0])
    steps = {t.key: (t.kind, t.rule, t.expected, t.observed) for t in out}
    assert steps == {
        KEY: ("opened", "day0_step", 0.0, 40.0),
        OTHER: ("opened", "day0_step", 100.0, 180.0),
    }
    # ... and the step is followed as if the engine had been running: still open 3 s later.
    assert engine.observe(T0 + 3, engine.index_of([KEY, OTHER, third]), [40.0, 180.0, 900.0]) == []
    assert {i.key for i in engine.open_incidents()} == {KEY, OTHER}


def test_a_seeded_series_not_served_yet_is_kept_and_steps_when_it_appears() -> None:
    engine = Engine(DetectionConfig(evict_after_s=60.0, stale_after_s=60.0))
    engine.seed_changes(T0, engine.index_of([KEY]), [0.0])
    engine.observe(T0 + 3, engine.index_of([OTHER]), [10.0])
    [t] = engine.observe(T0 + 6, engine.index_of([OTHER, KEY]), [10.0, 40.0])
    assert (t.key, t.expected, t.observed) == (KEY, 0.0, 40.0)


def test_changes_are_seeded_only_before_the_first_evaluation() -> None:
    engine = Engine(DetectionConfig())
    run(engine, [100.0])
    with pytest.raises(ValueError, match="start"):
        engine.seed_changes(T0 + 3, engine.index_of([KEY]), [0.0])
    with pytest.raises(ValueError, match="one level per series"):
        Engine(DetectionConfig()).seed_changes(T0, engine.index_of([KEY]), [0.0, 1.0])


def test_a_daily_ramp_is_not_a_step_once_yesterday_is_known() -> None:
    engine = Engine(DetectionConfig(warmup_static_ratio=5.0))
    # Night 20 $/h, day 80 $/h: a +300 % ramp at 08:00 every day.
    day = [20.0] * 8 + [80.0] * 12 + [20.0] * 4
    out = hourly(engine, day * 3)
    assert [n for n, _ in opened(out)] == [8]  # only the first morning, with no yesterday


# --------------------------------------------------------------------------- seasonal


def test_seasonal_baseline_follows_the_daily_pattern_and_catches_a_night_increase() -> None:
    engine = Engine(DetectionConfig())
    history = daily_pattern(21)
    assert opened(hourly(engine, history)) == []
    # The next day: a peak hour at its usual level is normal ...
    peak_hour = 6  # sin peaks at hour 6
    start = T0 + len(history) * HOUR_S
    idx = engine.index_of([KEY])
    for h in range(peak_hour):
        assert engine.observe(start + h * HOUR_S, idx, [history[h]]) == []
    assert engine.observe(start + peak_hour * HOUR_S, idx, [150.0]) == []
    # ... while the trough at the same level is an anomaly against its own hour.
    trough = 18
    for h in range(peak_hour + 1, trough):
        engine.observe(start + h * HOUR_S, idx, [history[h]])
    [t] = engine.observe(start + trough * HOUR_S, idx, [150.0])
    assert (t.rule, t.baseline) == ("seasonal", "weekly")
    assert t.expected == pytest.approx(50.0, rel=0.05)
    assert t.zscore is not None and t.zscore > 6


def test_seasonal_uses_the_daily_baseline_before_two_weeks_of_history() -> None:
    engine = Engine(DetectionConfig())
    history = daily_pattern(4)
    assert opened(hourly(engine, history)) == []
    [t] = engine.observe(T0 + len(history) * HOUR_S, engine.index_of([KEY]), [200.0])
    assert (t.rule, t.baseline) == ("seasonal", "daily")


def test_sensitivity_sets_how_many_robust_sigmas_alert() -> None:
    history = daily_pattern(15, amp=0.0)  # flat 100 $/h with 1 % noise

    def fires(sensitivity: float) -> bool:
        cfg = DetectionConfig(
            sensitivity=sensitivity,
            day0_min_step_usd_per_hour=1e6,
            min_relative_increase=0.0,
            level_noise_ratio=0.0,
        )
        engine = Engine(cfg)
        hourly(engine, history)
        at = T0 + len(history) * HOUR_S
        return bool(engine.observe(at, engine.index_of([KEY]), [110.0]))

    assert fires(3.0)
    assert not fires(20.0)


def test_outliers_in_history_do_not_move_the_robust_baseline() -> None:
    engine = Engine(DetectionConfig())
    history = daily_pattern(21, amp=0.0)
    history[-24 * 7] = 10_000.0  # one huge value a week ago, at the same hour of week
    out = hourly(engine, history)
    assert len(opened(out)) == 1  # the outlier itself
    [t] = engine.observe(T0 + len(history) * HOUR_S, engine.index_of([KEY]), [130.0])
    assert t.expected == pytest.approx(100.0, rel=0.05)


# --------------------------------------------------------------------------- warm-up fallback


def test_warm_up_falls_back_to_a_static_threshold_over_the_highest_value_seen() -> None:
    cfg = DetectionConfig(day0_min_step_usd_per_hour=1e6, day0_min_step_ratio=1e6)
    engine = Engine(cfg)
    # A slow climb (never a step) from 10 to 12.3 $/h over a day, then 30 $/h: 30 is more
    # than 50 % above the highest value seen (12.3), and many times the spread seen so far.
    out = hourly(engine, [10.0 + h * 0.1 for h in range(24)] + [30.0])
    [(n, t)] = opened(out)
    assert n == 24
    assert (t.rule, t.baseline) == ("seasonal", "warmup_static")
    assert t.expected == pytest.approx(12.3)


def test_warm_up_waits_for_a_whole_day_before_the_highest_value_is_a_threshold() -> None:
    """Before a day is known the highest value so far is not the daily peak: the morning of
    a series' first day rises far above its night without being a step."""
    cfg = DetectionConfig(day0_min_step_usd_per_hour=1e6, day0_min_step_ratio=1e6)
    night_then_morning = [10.0] * 12 + [20.0, 30.0, 40.0, 40.0, 40.0]
    assert opened(hourly(Engine(cfg), night_then_morning)) == []
    assert STATIC_MIN_H == 24


def test_warm_up_finds_a_jump_above_a_seasonal_series_first_day_peak() -> None:
    """A young series with a wide daily swing: its spread is the swing, and the full z
    threshold times that spread above its peak let nothing through (a jump to 2.2 x the
    peak on the second day was missed); a fraction of it does not."""
    cfg = DetectionConfig(day0_min_step_usd_per_hour=1e6, day0_min_step_ratio=1e6)
    days = daily_pattern(2, base=100.0, amp=0.8)
    peak = max(days[:30])
    values = [*days[:30], 2.2 * peak]
    out = hourly(Engine(cfg), values)
    [(n, t)] = opened(out)
    assert n == 30
    assert (t.rule, t.baseline) == ("seasonal", "warmup_static")
    # A value within 50 % of the first day's peak is not one.
    assert opened(hourly(Engine(cfg), [*days[:30], 1.3 * peak])) == []


# --------------------------------------------------------------------------- incidents


def test_one_incident_while_the_value_hovers_around_the_threshold() -> None:
    cfg = DetectionConfig(day0_window_s=1e9)  # the reference stays at 100
    values = [100.0] * 3 + [150.0, 120.0, 145.0, 118.0, 150.0, 125.0]
    out = run(Engine(cfg), values)
    assert len(opened(out)) == 1
    assert resolved(out) == []


def test_resolves_after_consecutive_normal_evaluations_then_a_recurrence_is_a_new_incident() -> (
    None
):
    cfg = DetectionConfig(day0_window_s=1e9, resolve_after_ticks=2, cooldown_s=0.0)
    values = [100.0] * 3 + [200.0, 200.0, 100.0, 200.0, 100.0, 100.0, 100.0, 200.0]
    out = run(Engine(cfg), values)
    assert [n for n, _ in opened(out)] == [3, 10]
    [(n, t)] = resolved(out)
    assert n == 8  # the second normal evaluation in a row
    assert t.started_at == T0 + 3 * 3.0
    assert t.at == T0 + 8 * 3.0


def test_a_new_level_becomes_normal_as_the_recent_level_catches_up() -> None:
    cfg = DetectionConfig(day0_window_s=30.0)
    out = run(Engine(cfg), [100.0] * 3 + [200.0] * 60)
    assert len(opened(out)) == 1
    assert len(resolved(out)) == 1


def test_open_incidents_report_current_figures() -> None:
    engine = Engine(DetectionConfig(day0_window_s=1e9))
    run(engine, [100.0, 100.0, 200.0, 260.0])
    [inc] = engine.open_incidents()
    assert (inc.key, inc.rule, inc.observed) == (KEY, "day0_step", 260.0)
    assert inc.expected == pytest.approx(100.0)
    assert inc.started_at == T0 + 6.0


def test_firing_says_whether_the_value_would_open_an_incident_now() -> None:
    # What a report book watching an aggregate asks: a rule at full strength, for
    # min_duration_s; not a value that only holds the incident, nor one that is missing.
    cfg = DetectionConfig(day0_window_s=1e9, min_duration_s=120.0)
    engine = Engine(cfg)
    run(engine, [100.0, 100.0, 200.0, 200.0], step=60.0)
    [inc] = engine.open_incidents()
    assert inc.firing and inc.started_at == T0 + 120.0
    idx = engine.index_of([KEY])
    engine.observe(T0 + 240.0, idx, [115.0])  # holds the incident, would not open one
    assert engine.open_incidents()[0].firing is False
    engine.observe(T0 + 300.0, idx, [200.0])  # full strength again, for one minute only
    assert engine.open_incidents()[0].firing is False
    engine.observe(T0 + 360.0, idx, [200.0])
    assert engine.open_incidents()[0].firing is True
    engine.observe(T0 + 420.0, idx, [math.nan])  # no value now: not firing
    [inc] = engine.open_incidents()
    assert inc.firing is False and inc.normal_ticks == 0


def test_an_incident_whose_series_disappears_resolves_when_stale() -> None:
    engine = Engine(DetectionConfig(day0_window_s=1e9, stale_after_s=60.0))
    run(engine, [100.0, 100.0, 300.0])
    assert len(engine.open_incidents()) == 1
    other = engine.index_of([OTHER])
    assert engine.observe(T0 + 30, other, [1.0]) == []  # KEY silent for 24 s: still open
    [t] = engine.observe(T0 + 70, other, [1.0])  # silent for 64 s
    assert (t.kind, t.key, t.started_at) == ("resolved", KEY, T0 + 6.0)
    assert engine.open_incidents() == []


def test_severity_escalates_with_a_growing_ramp_and_never_drops_within_the_incident() -> None:
    cfg = DetectionConfig(day0_window_s=1e9)  # the reference stays at 100
    out = run(Engine(cfg), [100.0] * 3 + [130.0, 140.0, 170.0, 260.0, 160.0, 270.0])
    transitions = [(n, t.kind, t.severity) for n, ts in enumerate(out) for t in ts]
    # +30 $/h opens a warning; +40 and +70 $/h stay warning (not doubled, under 100 $/h);
    # +160 $/h is critical; falling back to +60 $/h keeps it critical.
    assert transitions == [(3, "opened", "warning"), (6, "escalated", "critical")]
    assert {t.started_at for ts in out for t in ts} == {T0 + 9.0}  # one incident throughout


def test_churn_keeps_the_state_bounded_and_absent_incidents_resolve_before_eviction() -> None:
    cfg = DetectionConfig(stale_after_s=120.0, evict_after_s=600.0)
    engine = Engine(cfg, capacity=16)
    live = 20
    lifetime_ticks = 20  # each resource lives 20 minutes, then a new one replaces it
    step = 60.0
    ticks = 600  # ten hours: 600 resources come and go
    stepped = SeriesKey.of("resource", {"resource_id": "r-0", "provider": "aws"})
    kinds: list[tuple[str, SeriesKey]] = []
    sizes = []
    for tick in range(ticks):
        generation = tick // lifetime_ticks
        keys = [
            SeriesKey.of(
                "resource", {"provider": "aws", "resource_id": f"r-{generation * live + n}"}
            )
            for n in range(live)
        ]
        values = np.full(live, 1.0)  # a new resource below materiality: no incident
        if generation == 0 and tick >= 10:
            values[0] = 80.0  # r-0 steps up and then disappears with its generation
        out = engine.observe(T0 + tick * step, engine.index_of(keys), values)
        kinds += [(t.kind, t.key) for t in out]
        sizes.append(engine.series_count)
        if tick == lifetime_ticks + 3:
            assert stepped in engine  # absent, incident resolved, not yet evicted
    # Live series plus those absent for less than evict_after_s (+ one check interval).
    bound = live + live * math.ceil((cfg.evict_after_s + 60) / (lifetime_ticks * step))
    assert max(sizes[ticks // 2 :]) <= bound < ticks * live / lifetime_ticks
    assert engine.capacity <= 2 * bound
    assert engine.evicted_total >= (ticks // lifetime_ticks - 2) * live
    # r-0's incident opened, then resolved as stale once r-0 was gone, before r-0 was evicted.
    assert [k for k, key in kinds if key == stepped] == ["opened", "resolved"]
    assert stepped not in engine
    assert engine.open_incidents() == []


def test_an_evicted_series_that_returns_is_new() -> None:
    engine = Engine(DetectionConfig(stale_after_s=60.0, evict_after_s=120.0))
    run(engine, [30.0, 30.0])
    other = engine.index_of([OTHER])
    engine.observe(T0 + 200, other, [1.0])
    assert KEY not in engine and engine.series_count == 1
    [t] = engine.observe(T0 + 203, engine.index_of([KEY]), [30.0])
    assert (t.kind, t.expected, t.observed) == ("opened", 0.0, 30.0)  # a step from nothing


def test_seeded_series_keep_their_last_hour_as_last_seen() -> None:
    engine = Engine(DetectionConfig(evict_after_s=2 * HOUR_S))
    first_hour = T0 // HOUR_S
    history = np.array([[1.0] * 5, [1.0, 1.0, np.nan, np.nan, np.nan]])
    engine.seed_history(engine.index_of([KEY, OTHER]), first_hour, history)
    # KEY has a value in hour 4, OTHER only up to hour 1: OTHER is absent for 3 h, evicted.
    engine.observe(T0 + 5 * HOUR_S, engine.index_of([KEY]), [1.0])
    assert KEY in engine and OTHER not in engine


def test_missing_values_are_skipped_not_zero() -> None:
    engine = Engine(DetectionConfig())
    out = run(engine, [100.0, float("nan"), 100.0, float("nan")])
    assert opened(out) == []


def test_time_going_backwards_is_an_error() -> None:
    engine = Engine(DetectionConfig())
    run(engine, [1.0], start=T0 + 2 * HOUR_S)
    with pytest.raises(ValueError, match="backwards"):
        engine.observe(T0, engine.index_of([KEY]), [1.0])


def test_seeded_history_makes_a_restarted_detector_warm() -> None:
    engine = Engine(DetectionConfig())
    history = np.array([daily_pattern(21)])
    first_hour = T0 // HOUR_S
    engine.seed_history(engine.index_of([KEY]), first_hour, history)
    at = T0 + history.shape[1] * HOUR_S + 18 * HOUR_S  # the trough hour
    [t] = engine.observe(at, engine.index_of([KEY]), [150.0])
    assert (t.rule, t.baseline) == ("seasonal", "weekly")


@pytest.mark.parametrize(("start_hour", "gap"), [(16, 0), (0, 0), (1, 0), (1, 3), (20, 30)])
def test_a_restarted_detector_knows_the_records_the_running_one_learnt(
    start_hour: int, gap: int
) -> None:
    """Seeded with hourly history, the daily records (of the value and of the residual) are
    those a detector running over the same hours learnt (hourly data: each value is its
    hour's mean). Left unknown, the residual one is 0, and after a restart every residual
    above the baseline beat it. A start in the first hour of a day (its loaded hours end at
    midnight) once kept the day before as today and, in the ring, the one 21 days before;
    a first evaluation `gap` hours after the loaded ones (across midnight) is the running
    engine's gap of as many hours without a value."""
    days = 26
    values = np.array(daily_pattern(days))
    rng = np.random.default_rng(5)
    for day in range(days):  # a routine burst each day, of varying height and hour
        values[day * 24 + rng.integers(0, 24)] *= rng.uniform(1.3, 1.8)
    # The restarted engine's first evaluation is the last value, at `start_hour` of a day.
    values = values[: (days - 1) * 24 + start_hour + 1]
    loaded = values.size - 1 - gap
    running = Engine(DetectionConfig())
    hourly(running, list(values[:loaded]))
    idx = running.index_of([KEY])
    running.observe(T0 + (values.size - 1) * HOUR_S, idx, [values[-1]])
    restarted = Engine(DetectionConfig())
    restarted.seed_history(restarted.index_of([KEY]), int(T0 // HOUR_S), values[None, :loaded])
    restarted.observe(T0 + (values.size - 1) * HOUR_S, idx, [values[-1]])
    records = ("rec_rday", "day_rmax", "rec_resid", "rec_vday", "day_vmax", "rec_value")
    for name in (*records, "hist", "exp_seasonal"):
        # (The loaded means are float32 in the ring; the live values float64.)
        np.testing.assert_allclose(
            getattr(restarted, name)[idx], getattr(running, name)[idx], atol=1e-4, err_msg=name
        )
    assert running.rec_resid[idx[0]] > 20  # the bursts, not the noise


@pytest.mark.parametrize("step", [HOUR_S, 300.0])
@pytest.mark.parametrize("seeded", [True, False])
def test_after_a_restart_a_routine_burst_is_held_by_the_loaded_record(
    step: float, seeded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst to four times the level every third day for three weeks (at any hour) is
    routine: the detector restarted with that history does not report the next one.
    Without the residual record loaded (the seed disabled) it did, at every restart."""
    if not seeded:
        monkeypatch.setattr(Engine, "_seed_residual_record", lambda *a: None)
    days = 22
    values = np.array(daily_pattern(days))
    rng = np.random.default_rng(3)
    at = 12  # today's
    for day in range(1, days - 1, 3):
        values[day * 24 + rng.integers(0, 24)] *= rng.uniform(3.8, 4.2)
    values[(days - 1) * 24 + at] *= 4.0
    loaded = (days - 1) * 24
    engine = Engine(DetectionConfig())
    engine.seed_history(engine.index_of([KEY]), int(T0 // HOUR_S), values[None, :loaded])
    per_hour = int(HOUR_S // step)
    today = [v for v in values[loaded:] for _ in range(per_hour)]
    out = run(engine, today, start=T0 + loaded * HOUR_S, step=step)
    found = [(n // per_hour, t.rule) for n, t in opened(out)]
    assert found == ([] if seeded else [(at, "seasonal")])


def test_a_first_outlier_does_not_make_a_newly_warm_series_deaf() -> None:
    """For hourly data the running noise starts from the day-over-day noise, not from the
    first residual: an outlier as the first value judged against the seasonal baseline used
    to set the noise for days, and the next anomaly more than a day later went unseen."""
    engine = Engine(DetectionConfig())
    days = daily_pattern(6)
    warm = 3 * 24  # the first hour with a seasonal (daily) baseline
    later = warm + 30  # after the cooldown
    values = [*days[:warm], 5.0 * days[warm], *days[warm + 1 : later], 2.0 * days[later]]
    out = hourly(engine, values)
    assert engine.mode[engine.index_of([KEY])[0]] == core.BASE_DAILY
    assert [(n, t.rule) for n, t in opened(out)] == [(warm, "seasonal"), (later, "seasonal")]


@pytest.mark.parametrize("step", [60.0, HOUR_S])
def test_a_restart_during_an_anomaly_does_not_make_the_series_deaf(step: float) -> None:
    """A restart's first values set the running noise and the mean level: taken during an
    anomaly (three times the level for four hours) they made the series deaf for a week,
    to another anomaly as large two days later. The level is now learnt from the loaded
    history, and the first residual is clipped like every later one."""
    engine = Engine(DetectionConfig())
    days = daily_pattern(17)
    loaded = 14 * 24
    idx = engine.index_of([KEY])
    engine.seed_history(idx, int(T0 // HOUR_S), np.array([days[:loaded]]))
    assert engine.level[idx[0]] == pytest.approx(100.0, rel=0.1)
    per_hour = int(HOUR_S // step)
    values = []
    for n, v in enumerate(days[loaded:]):
        anomaly = n < 4 or 50 <= n < 54
        values += [3.0 * v if anomaly else v] * per_hour
    out = run(engine, values, start=T0 + loaded * HOUR_S, step=step)
    assert [(n // per_hour, t.rule) for n, t in opened(out)] == [(0, "seasonal"), (50, "seasonal")]


def test_capacity_grows_with_the_number_of_series() -> None:
    engine = Engine(DetectionConfig(), capacity=16)
    keys = [SeriesKey.of("team", {"team": f"t{n}"}) for n in range(100)]
    idx = engine.index_of(keys)
    # Present at the first evaluation: two values before a step can be judged.
    assert engine.observe(T0, idx, np.full(100, 5.0)) == []
    assert engine.observe(T0 + 3, idx, np.full(100, 5.0)) == []
    out = engine.observe(T0 + 6, idx, np.r_[np.full(99, 5.0), 50.0])
    assert [t.key for t in out] == [keys[-1]]


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("delta", "deviation", "severity"),
    [
        (150.0, 0.1, "critical"),  # big money
        (20.0, 1.5, "critical"),  # material and more than doubled
        (20.0, 0.2, "warning"),
        (3.0, 0.8, "warning"),  # small money, large relative jump
        (3.0, 0.2, "info"),
    ],
)
def test_severity_from_dollar_impact_and_deviation(
    delta: float, deviation: float, severity: str
) -> None:
    [code] = severity_codes(np.array([delta]), np.array([deviation]), DetectionConfig())
    assert SEVERITIES[code] == severity


def test_nanmedian_rows_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 9))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[0] = np.nan
    med, count = nanmedian_rows(a)
    assert count[0] == 0 and np.isnan(med[0])
    with np.errstate(all="ignore"):
        expected = np.array([np.median(r[~np.isnan(r)]) for r in a[1:]])
    np.testing.assert_allclose(med[1:], expected)


def test_settings_reject_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    from lambdas.common.settings import SettingsError

    with pytest.raises(SettingsError, match="CCT_DETECTOR_SENSITIVITY must be >= 0"):
        DetectionConfig(sensitivity=-1)
    monkeypatch.setenv("CCT_DETECTOR_SENSITIVITY", "lots")
    with pytest.raises(SettingsError, match="CCT_DETECTOR_SENSITIVITY"):
        DetectionConfig.from_env()
    monkeypatch.setenv("CCT_DETECTOR_SENSITIVITY", "4.5")
    assert DetectionConfig.from_env().sensitivity == 4.5


# --------------------------------------------------------------------------- episodes


def test_a_wobble_after_an_incident_is_the_same_episode_a_worse_one_is_new() -> None:
    cfg = DetectionConfig(day0_window_s=1e9, resolve_after_ticks=2)
    values = [100.0] * 3 + [200.0, 100.0, 100.0, 190.0, 100.0, 100.0, 300.0]
    out = run(Engine(cfg), values)
    # Resolved at 5; 190 within the cooldown is not worse than the peak (+100): no incident;
    # 300 is worse: a new one.
    assert [n for n, _ in opened(out)] == [3, 9]
    assert next(n for n, _ in resolved(out)) == 5


def test_minimum_duration_and_resolution_time_in_wall_clock() -> None:
    cfg = DetectionConfig(day0_window_s=1e9, min_duration_s=300.0, resolve_after_s=600.0)
    # One-minute values: a 2-minute blip is no incident; a 10-minute rise is one, starting
    # when it started, and it resolves 10 minutes after its last abnormal minute.
    values = [100.0] * 10 + [200.0] * 2 + [100.0] * 10 + [200.0] * 10 + [100.0] * 15
    out = run(Engine(cfg), values, step=60.0)
    [(n, t)] = opened(out)
    assert n == 22 + 4 and t.started_at == T0 + 22 * 60.0
    [(m, _)] = resolved(out)
    assert m == 31 + 10


def test_decreases_only_when_asked_and_never_paging() -> None:
    history = daily_pattern(10, amp=0.0)
    drop = [20.0] * 3
    quiet = Engine(DetectionConfig())
    assert opened(hourly(quiet, history + drop)) == []
    loud = Engine(DetectionConfig(report_decreases=1))
    [(_, t)] = opened(hourly(loud, history + drop))
    assert (t.rule, t.severity) == ("decrease", "info") and t.delta < 0


def test_a_near_zero_spiky_series_learns_its_spikes_and_still_sees_a_big_one() -> None:
    rng = np.random.default_rng(3)
    # Mostly zero, a few dollars in one hour out of five, like a batch job's egress.
    history = [float(rng.uniform(2, 6)) if rng.random() < 0.2 else 0.0 for _ in range(24 * 21)]
    engine = Engine(DetectionConfig())
    out = hourly(engine, history)
    # Once warm, most of its everyday spikes are normal (the noise never collapses to the
    # zero the median sees); the tail estimate is kept tight (clip 1) so that a slow ramp
    # is not learnt as noise, which leaves some of the larger spikes alerting.
    spikes = sum(1 for v in history[24 * 7 :] if v > 0)
    assert len(opened(out[24 * 7 :])) < spikes / 3
    at = T0 + len(history) * HOUR_S
    assert engine.observe(at, engine.index_of([KEY]), [60.0])


def test_the_record_keeps_everyday_spikes_quiet_and_still_sees_a_higher_one() -> None:
    rng = np.random.default_rng(3)
    history = [float(rng.uniform(2, 6)) if rng.random() < 0.2 else 0.0 for _ in range(24 * 21)]
    spiky = Engine(DetectionConfig(record_rank=1, record_margin=1.0))
    plain = Engine(DetectionConfig())
    with_record = opened(hourly(spiky, history)[24 * 7 :])
    without = opened(hourly(plain, history)[24 * 7 :])
    # Once days of highs are known, a spike no higher than the last three weeks' is normal:
    # only spikes that beat every earlier day (rarer as days accumulate) still open.
    assert len(with_record) <= len(without) / 2
    at = T0 + len(history) * HOUR_S
    [t] = spiky.observe(at, spiky.index_of([KEY]), [60.0])
    assert t.kind == "opened"


def test_finer_than_hourly_a_lasting_rise_beats_the_days_lasting_excursions() -> None:
    # One-minute values with four routine one-minute spikes a day (+150): the highest
    # residual of each day is a spike, and a 30-minute rise of +60 is far below it.
    per_day, days = 1440, 10
    rng = np.random.default_rng(11)
    t = np.arange(per_day * days)
    values = 100 * (1 + 0.3 * np.sin(t / per_day * 2 * np.pi)) + rng.normal(0, 2, t.size)
    for day in range(days):
        values[day * per_day + rng.integers(0, per_day, 4)] += 150
    rise = (days - 1) * per_day + 600
    values[rise : rise + 30] += 60
    engine = Engine(DetectionConfig())
    out = run(engine, [float(x) for x in values], step=60.0)
    idx = engine.index_of([KEY])
    # The value record alone holds the rise back; the days' lasting excursions (the
    # residual's 10-minute running mean: a spike moves it by a tenth of its height) are far
    # lower, and the rise beats those within minutes.
    assert engine.rec_resid[idx][0] > 2 * 60
    assert engine.rec_sres[idx][0] < 60 / 2
    found = [(n, t) for n, t in opened(out) if rise <= n < rise + 30]
    assert [t.rule for _, t in found] == ["seasonal"]
    assert found[0][0] - rise <= 10


def test_finer_than_hourly_a_routine_spike_is_still_held_by_the_record() -> None:
    # Five-minute values with one 5-minute spike (+80) every morning: a spike's running mean
    # is a routine lasting excursion too, so the sustained record does not let it through
    # (dropping the record for the seasonal rule at this cadence opened on 7 of 14 days:
    # docs/detection.md, "Record").
    per_day, days = 288, 14
    t = np.arange(per_day * days)
    counts = {}
    for rank in (2, 0):
        total = 0
        for seed in (5, 6, 7):
            rng = np.random.default_rng(seed)
            noise = 1 + rng.normal(0, 0.02, t.size)
            values = 100 * (1 + 0.3 * np.sin(t / per_day * 2 * np.pi)) * noise
            values[np.arange(days) * per_day + 96] += 80
            out = run(Engine(DetectionConfig(record_rank=rank)), list(values), step=300.0)
            total += len(opened(out))
        counts[rank] = total
    # (Before the sustained record: 15 with the record.)
    assert counts[2] <= 16 and counts[0] >= 25


def test_at_hourly_cadence_there_is_no_sustained_record() -> None:
    engine = Engine(DetectionConfig())
    hourly(engine, daily_pattern(10))
    idx = engine.index_of([KEY])
    assert np.isfinite(engine.rec_resid[idx][0])
    assert np.isnan(engine.rec_sres[idx][0]) and np.isnan(engine.sres[idx][0])


def test_the_record_is_on_by_default_and_its_settings_are_checked() -> None:
    from lambdas.common.settings import SettingsError

    assert DetectionConfig().record_rank == 2
    with pytest.raises(SettingsError, match="CCT_DETECTOR_RECORD_RANK"):
        DetectionConfig(record_rank=22)
    with pytest.raises(SettingsError, match="CCT_DETECTOR_RECORD_RANK"):
        DetectionConfig(record_rank=-1)
    with pytest.raises(SettingsError, match="CCT_DETECTOR_RECORD_MARGIN"):
        DetectionConfig(record_margin=0.0)


def test_nanmedian_rows_full_and_gappy_rows_agree_with_numpy() -> None:
    rng = np.random.default_rng(4)
    for width in (1, 2, 7, 24, 168):
        a = rng.normal(size=(40, width)).astype(np.float32)
        a[20:][rng.random((20, width)) < 0.3] = np.nan
        med, _ = nanmedian_rows(a)
        with np.errstate(all="ignore"):
            expected = [np.median(r[~np.isnan(r)]) if (~np.isnan(r)).any() else np.nan for r in a]
        np.testing.assert_allclose(med, np.array(expected, dtype=np.float64), rtol=1e-6)


def test_five_minute_data_with_a_daily_pattern_is_quiet_until_it_changes() -> None:
    steps = 14 * 288
    t = np.arange(steps)
    rng = np.random.default_rng(5)
    values = 100 * (1 + 0.5 * np.sin(t / 288 * 2 * np.pi)) * (1 + rng.normal(0, 0.03, steps))
    engine = Engine(DetectionConfig())
    out = run(engine, [float(v) for v in values], step=300.0)
    assert opened(out[288 * 3 :]) == []
    at = T0 + steps * 300.0
    assert engine.observe(at, engine.index_of([KEY]), [float(values[-288]) + 80.0])


def _five_minute_days(days: int, step: float) -> list[float]:
    """A smooth daily pattern (50-150 $/h, peak at 06:00) with 0.3 % jitter."""
    t = np.arange(int(days * 86400 / step)) * step
    rng = np.random.default_rng(8)
    values = 100 * (1 + 0.5 * np.sin(t / 86400 * 2 * np.pi)) * (1 + rng.normal(0, 0.003, t.size))
    return [float(v) for v in values]


def _jump(
    step: float, at_s: float, to: float, cfg: DetectionConfig, gap_s: float = 0.0
) -> tuple[int, list[list[Transition]]]:
    """Four days of the pattern, then `to` $/h for 10 minutes starting `at_s` into day 5
    (after `gap_s` without values); returns the index of the jump and every evaluation."""
    values = _five_minute_days(4, step)
    n = int(at_s / step)
    values += _five_minute_days(5, step)[len(values) : len(values) + n]
    values[len(values) - int(gap_s / step) :] = [math.nan] * int(gap_s / step)
    at = len(values)
    values += [to] * max(1, int(600 / step))
    return at, run(Engine(cfg), values, step=step)


def test_local_step_sees_a_five_minute_jump_that_hourly_means_hide() -> None:
    # At the day's peak (about 150 $/h) a jump to 187: 25 % and far above the jitter, but
    # inside the noise around the hourly baseline (the pattern moves 13 $/h within an hour).
    at, out = _jump(300.0, 6 * HOUR_S, 187.0, DetectionConfig())
    [(n, t)] = opened(out)
    assert n == at  # nothing in the four days before
    assert (t.rule, t.baseline) == ("local_step", "recent_level")
    assert 140 < t.expected < 155 and t.observed == 187.0
    assert opened(_jump(300.0, 6 * HOUR_S, 187.0, DetectionConfig(local_step=0))[1]) == []


def test_local_step_needs_a_new_high_for_its_hour_and_five_minute_data() -> None:
    # At the quiet hour (about 50 $/h) a jump to 75: +50 %, below the day's peak hours
    # (150) but far above what this hour reached on the past days: a step.
    at, out = _jump(300.0, 18 * HOUR_S, 75.0, DetectionConfig())
    assert [(n, t.rule) for n, t in opened(out)] == [(at, "local_step")]
    # A jump to what this hour reached on two past days is not (rank 2: one past jump does
    # not make it routine). No cooldown here, so only the record can hold it back.
    values = _five_minute_days(6, 300.0)
    jumps = [day * 288 + 216 for day in (2, 3, 4)]
    for n in jumps:
        values[n : n + 2] = [75.0, 75.0]
    out = run(Engine(DetectionConfig(cooldown_s=0.0)), values, step=300.0)
    assert [n for n, _ in opened(out)] == jumps[:2]
    out = run(Engine(DetectionConfig(cooldown_s=0.0, record_rank=0)), values, step=300.0)
    assert [n for n, _ in opened(out)] == jumps
    # 1-minute data: the change from one value to the next is noise at a finer scale than
    # the rule's, so it does not run there (the seasonal rule still does).
    assert opened(_jump(60.0, 6 * HOUR_S, 187.0, DetectionConfig())[1]) == []
    # After two hours without values the recent level is the one before the gap (as for
    # the day-0 step): a value back at a new high, 25 % above it, is a step.
    at, out = _jump(300.0, 6 * HOUR_S, 187.0, DetectionConfig(), gap_s=7200.0)
    assert [(n, t.rule) for n, t in opened(out)] == [(at, "local_step")]
    # A loop every 300 s measures 299.99 s now and then: the rule still runs.
    at, out = _jump(299.99, 6 * HOUR_S, 187.0, DetectionConfig())
    assert [(n, t.rule) for n, t in opened(out)] == [(at, "local_step")]
    from lambdas.common.settings import SettingsError

    with pytest.raises(SettingsError, match="CCT_DETECTOR_LOCAL_STEP must be 0 or 1"):
        DetectionConfig(local_step=2)


def test_a_short_nightly_batch_in_five_minute_data_is_one_incident_not_one_a_night() -> None:
    # Ten minutes at +60 % every evening at 18:00, the day's quiet hour (about 80 $/h
    # against highs of 150): the first one is a step, the rest are routine. The hour of
    # day's record holds them back: without a record, or with "above the same hour
    # yesterday" (hourly means dilute a 10-minute batch), it opened on 11 of 14 nights.
    per_day = 288
    values = _five_minute_days(14, 300.0)
    for day in range(14):
        for n in (216, 217):
            values[day * per_day + n] *= 1.6
    out = run(Engine(DetectionConfig()), values, step=300.0)
    assert [(n // per_day, t.rule) for n, t in opened(out)] == [(1, "local_step")]
    assert len(opened(run(Engine(DetectionConfig(record_rank=0)), values, step=300.0))) >= 10


def test_a_restart_leaves_the_hour_record_to_be_learnt_so_a_nightly_batch_stays_quiet() -> None:
    # The nightly batch of the test above, and a restart on day 10 that loads the hourly
    # means (what Detector.bootstrap reads). Seeded from those means, the record said 18:00
    # reaches about 88 $/h while the 10-minute batch reaches about 128: it opened again on
    # day 11. Unseeded, the daily highs stand in until the record is learnt again.
    per_day, restart = 288, 10
    values = _five_minute_days(21, 300.0)
    for day in range(21):
        for n in (216, 217):
            values[day * per_day + n] *= 1.6
    engine = Engine(DetectionConfig())
    idx = engine.index_of([KEY])
    cut = restart * per_day
    means = np.array(values[:cut]).reshape(-1, 12).mean(axis=1)[None, :]
    engine.seed_history(idx, int(T0 // HOUR_S), means)
    assert math.isnan(engine.rec_hour[idx[0]])
    out = run(engine, values[cut:], start=T0 + cut * 300.0, step=300.0)
    assert opened(out) == []


def _at_times(times: Sequence[float], values: Sequence[float]) -> list[list[Transition]]:
    engine = Engine(DetectionConfig())
    idx = engine.index_of([KEY])
    return [engine.observe(t, idx, [v]) for t, v in zip(times, values, strict=True)]


def test_one_short_interval_or_an_hour_of_finer_data_leaves_the_local_step_on() -> None:
    # The 5-minute jump of test_local_step_sees_a_five_minute_jump_that_hourly_means_hide,
    # after one retry 20 s after a tick, or after an hour of 1-minute data, on day 1. The
    # cadence was the smallest interval ever seen: either turned the rule off for good.
    step, days = 300.0, 4
    base = [T0 + n * step for n in range(days * 288 + 72)]
    jump = [T0 + days * 86400 + 6 * HOUR_S + n * step for n in range(2)]
    retry = sorted([*base, T0 + 86400 + 20.0])
    minute = T0 + 30 * HOUR_S
    finer = sorted(
        [t for t in base if not minute <= t < minute + HOUR_S]
        + [minute + n * 60.0 for n in range(60)]
    )
    for times in (base, retry, finer):
        values = _five_minute_days(5, 1.0)  # one value per second of the pattern
        pattern = [values[int(t - T0)] for t in times]
        out = _at_times([*times, *jump], [*pattern, 187.0, 187.0])
        assert [t.rule for _, t in opened(out)] == ["local_step"]
        assert opened(out)[0][0] == len(times)


def test_the_cadence_follows_data_that_becomes_hourly() -> None:
    engine = Engine(DetectionConfig())
    idx = engine.index_of([KEY])
    times = [T0 + n * 300.0 for n in range(288)]
    times += [times[-1] + n * HOUR_S for n in range(1, 30)]
    for n, t in enumerate(times):
        engine.observe(t, idx, [100.0])
        if n == 287:
            assert engine.interval_s == 300.0 and engine._export_cadence()
    assert engine.interval_s == HOUR_S and not engine._export_cadence()


def test_an_exact_repeat_of_the_daily_peak_is_not_above_the_daily_highs() -> None:
    # A constant billed rate repeats the day's peak to the last bit. The daily highs are kept
    # as float32: compared in float64, a peak just above its float32 rounding beat them.
    # After 6.5 silent days the hour record is unknown, so the daily highs decide.
    engine = Engine(DetectionConfig())
    idx = engine.index_of([KEY, OTHER])
    resume = T0 + 13 * 86400 + 6 * HOUR_S
    ours = []
    for n in range(14 * 288):
        t = T0 + n * 300.0
        v = float(100 * (1 + 0.5 * np.sin(t / 86400 * 2 * np.pi)) * (1 + 0.003 * 0.9))
        silent = resume - 6.5 * 86400 <= t < resume
        ours += engine.observe(t, idx, [math.nan if silent else v, v])
    assert [tr for tr in ours if tr.kind == "opened" and tr.key == KEY] == []


def test_kth_highest_counts_only_values_and_needs_k_of_them() -> None:
    rows = np.array([[3.0, np.nan, 5.0, 1.0], [np.nan, np.nan, 2.0, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(kth_highest(rows, 1), [5.0, 2.0])
    np.testing.assert_array_equal(kth_highest(rows, 2), [3.0, np.nan])
    assert np.isnan(kth_highest(rows, 5)).all() and np.isnan(kth_highest(rows, 0)).all()


def test_a_record_rank_above_the_hour_record_s_days_leaves_it_unknown() -> None:
    engine = Engine(DetectionConfig(record_rank=10))
    idx = engine.index_of([KEY])
    engine.seed_history(idx, int(T0 // HOUR_S), np.full((1, 24 * 8), 50.0))
    for n in range(25):
        engine.observe(T0 + 24 * 8 * HOUR_S + n * 300.0, idx, [50.0])
    assert math.isnan(engine.rec_hour[idx[0]])


def test_the_absolute_floor_is_set_per_level() -> None:
    cfg = DetectionConfig(min_impact_resource_usd_per_hour=0.1)
    assert cfg.min_impact("resource") == 0.1 and cfg.min_impact("account") == 2.0
    small = SeriesKey.of("resource", {"resource_id": "i-1"})
    engine = Engine(cfg)
    idx = engine.index_of([small])
    out = [engine.observe(T0 + n * 3.0, idx, [v]) for n, v in enumerate([0.5] * 3 + [1.5])]
    assert opened(out)  # +1 $/h: under the account floor, over the resource one


def test_the_knob_maps_false_incidents_per_month_to_a_z_threshold() -> None:
    from lambdas.detector.core import FALSE_A, FALSE_ALPHA, z_threshold

    k = z_threshold(1.0, 3600)
    assert FALSE_A * k**-FALSE_ALPHA == pytest.approx(1.0)  # the measured rate it stands for
    # Finer data is not more chances (evaluations an hour apart are not independent) ...
    assert z_threshold(1.0, 60) == z_threshold(1.0, 3600)
    # ... coarser data is fewer, and fewer false incidents wanted means a higher bar.
    assert z_threshold(0.1, 86400) < z_threshold(1.0, 3600) < z_threshold(0.8, 3600)
    assert Engine(DetectionConfig(sensitivity=7.0)).z == 7.0


def _reference_baselines(engine: Engine, hour: int) -> dict[str, np.ndarray]:
    """The baselines as first written (one gather and one sort per window), kept as the
    oracle the faster `_refresh_baselines` must match value for value."""
    cfg = engine.cfg
    n = engine.size
    hist = engine.hist[:n]

    def cols(lags: range) -> list[int]:
        return [(hour - lag) % engine.hours for lag in lags]

    weekly, wcount = nanmedian_rows(hist[:, cols(range(168, 168 * cfg.history_weeks + 1, 168))])
    daily, dcount = nanmedian_rows(hist[:, cols(range(24, 7 * 24 + 1, 24))])
    last_day, _ = nanmedian_rows(hist[:, cols(range(1, 25))])
    per_week = np.column_stack(
        [
            nanmedian_rows(hist[:, cols(range(w * 168 + 1, w * 168 + 25))])[0]
            for w in range(1, cfg.history_weeks + 1)
        ]
    )
    past_days, _ = nanmedian_rows(per_week)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.clip(last_day / past_days, 1.0, 1.1)
    weekly = weekly * np.where(np.isfinite(level), level, 1.0)
    use_weekly = wcount >= cfg.weekly_min_weeks
    use_daily = ~use_weekly & (dcount >= cfg.daily_min_days)
    static = np.full(n, np.nan)
    cold = np.flatnonzero(~(use_weekly | use_daily))
    recent = hist[cold][:, cols(range(1, 73))]
    ok = np.count_nonzero(~np.isnan(recent), axis=1) >= max(cfg.warmup_min_hours, 24)
    static[cold[ok]] = np.nanmax(np.where(ok[:, None], recent, 0.0), axis=1)[ok]
    age_h = hour - engine.first_hour[:n]
    last = hist[:, cols(range(1, 25))]
    known = np.count_nonzero(~np.isnan(last), axis=1) >= cfg.warmup_min_hours
    day_max = np.full(n, np.nan)
    day_max[known] = np.nanmax(last[known], axis=1)
    diffs = np.abs(hist[:, cols(range(1, 169))] - hist[:, cols(range(25, 193))])
    mad, dn = nanmedian_rows(diffs)
    return {
        "exp_seasonal": np.where(use_weekly, weekly, np.where(use_daily, daily, np.nan)),
        "exp_static": static,
        "yesterday": np.where(age_h >= 24, hist[:, (hour - 24) % engine.hours], np.nan),
        "day_max": day_max,
        "scale": np.where(dn >= 24, 1.4826 * mad / math.sqrt(2), np.nan),
        "mode": np.where(
            use_weekly, 3, np.where(use_daily, 2, np.where(np.isfinite(static), 1, 0))
        ),
    }


@pytest.mark.parametrize("seed", range(8))
def test_refreshed_baselines_match_the_reference_value_for_value(seed: int) -> None:
    """Random histories (heavy tails, ties, zeros, gaps of every size, young series) give
    bit-identical baselines, noise and modes through the fast path and the reference."""
    rng = np.random.default_rng(seed)
    weeks = int(rng.integers(2, 5))
    engine = Engine(DetectionConfig(history_weeks=weeks), capacity=64)
    n = int(rng.integers(1, 300))
    engine.index_of(
        [
            SeriesKey.of("account", {"provider": "aws", "billing_account_id": str(i)})
            for i in range(n)
        ]
    )
    hist = rng.lognormal(rng.normal(size=(n, 1)), 1.0, size=(n, engine.hours))
    ties = rng.random(hist.shape) < 0.3
    hist[ties] = np.round(hist[ties])
    hist[rng.random(hist.shape) < 0.05] = 0.0
    # Per-row missing fractions from none to all, so every count threshold is crossed.
    hist[rng.random(hist.shape) < rng.random((n, 1)) ** 2] = np.nan
    engine.hist[:n] = hist.astype(np.float32)
    for hour in rng.integers(0, 10_000, size=5).tolist():
        engine.first_hour[:n] = hour - rng.integers(0, 2 * engine.hours, size=n)
        engine._refresh_baselines(hour)
        want = _reference_baselines(engine, hour)
        for name, values in want.items():
            np.testing.assert_array_equal(getattr(engine, name)[:n], values, err_msg=name)


def test_spans_of_the_ring_are_the_hours_before_in_order_at_every_wrap() -> None:
    """`_span` (slices, joined where the ring wraps) holds the same hours as a gather of the
    lagged columns, oldest first, for every position of the hour in the ring."""
    engine = Engine(DetectionConfig(), capacity=4)
    engine.index_of(
        [
            SeriesKey.of("account", {"provider": "aws", "billing_account_id": str(i)})
            for i in range(3)
        ]
    )
    engine.hist[:3] = np.arange(3 * engine.hours, dtype=np.float32).reshape(3, -1)
    for hour in range(10 * engine.hours, 11 * engine.hours + 1):
        for lag, width in ((1, 24), (1, 192), (3 * 168 + 1, 24), (1, engine.hours)):
            want = engine.hist[:3, [(hour - lag - k) % engine.hours for k in range(width)][::-1]]
            np.testing.assert_array_equal(
                engine._span(engine.hist[: engine.size], hour, lag, width), want
            )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(0, 1e6),
            st.sampled_from([0.0, 1e308, -1e308, 5e-324, 1e12, 9.9999e11, 1e11]),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([3.0, 60.0, 300.0, 3600.0]),
)
def test_hostile_values_at_any_cadence_never_break_the_engine(
    burst: list[float], step: float
) -> None:
    """Huge, tiny, negative and non-finite values between runs of normal ones (a day of them
    at 5 minutes and hourly, so the local step's jitter, the noise and the record all see
    them): no error, values beyond any cost rate are skipped and counted, every incident's
    figures are numbers, the jitter is a number or not yet known, and the engine goes on
    evaluating."""
    engine = Engine(DetectionConfig(sensitivity=5.0))
    calm = [100.0] * min(int(86400 / step), 300)
    values = calm + burst + calm
    out = run(engine, values, step=step)
    for ts in out:
        for t in ts:
            figures = (t.observed, t.started_at, t.expected, t.delta)
            assert all(math.isfinite(x) for x in figures)
            # What the anomalies row's numeric(18, 6) columns hold.
            assert all(abs(x) < 1e12 for x in (t.observed, t.expected, t.delta))
    assert not np.isinf(engine.jitter[: engine.size]).any()
    assert engine.jitter_s[0] > 0  # the jitter was learnt, not left unknown
    wild = [x for x in burst if math.isfinite(x) and abs(x) > MAX_ABS_USD_PER_HOUR]
    assert engine.out_of_range_total == len(wild)
    at = T0 + len(values) * step
    assert isinstance(engine.observe(at, engine.index_of([KEY]), [100.0]), list)
    for inc in engine.open_incidents():
        assert math.isfinite(inc.observed)


RETAG_LABELS = {"provider": "aws", "billing_account_id": "111", "resource_id": "i-1", "team": "web"}


def _retag() -> tuple[Engine, SeriesKey, SeriesKey]:
    """An engine that has followed a resource at 40 $/h, its key, and the key of the same
    resource re-tagged to another team."""
    before = SeriesKey.of("resource", RETAG_LABELS)
    retagged = SeriesKey.of("resource", {**RETAG_LABELS, "team": "platform"})
    engine = Engine(DetectionConfig(day0_window_s=1e9))
    for n in range(5):
        engine.observe(T0 + 3 * n, engine.index_of([before]), [40.0])
    return engine, before, retagged


def _team(name: str) -> SeriesKey:
    return SeriesKey.of("team", {"team": name})


@pytest.mark.parametrize("joined", ["data", "ops"])  # a team with cost of its own, a new one
@pytest.mark.parametrize("reassign", [True, False])
def test_a_re_tag_moves_the_resource_s_history_between_its_teams(
    joined: str, reassign: bool
) -> None:
    """Review finding: the collector moves a re-tagged resource's cost from one team's total
    to the other's in one write; the resource was followed (`rename`) but the team it joined
    stepped up by its whole cost and paged `day0_step` (from nothing for a new team) with no
    cost changed. `Engine.reassign` moves the resource's history with it (without it, the
    control case, the rise opens); a real step afterwards still opens."""
    rng = np.random.default_rng(7)
    old, new = (SeriesKey.of("resource", {**RETAG_LABELS, "team": t}) for t in ("web", joined))
    web, data = _team("web"), _team("data")
    engine = Engine(DetectionConfig())
    days = 16

    def at(hour: int) -> tuple[float, float, float]:
        wave = 1 + 0.3 * math.sin(hour / 24 * 2 * math.pi)
        resource = 40.0 * (1 + rng.normal(0, 0.01))
        return resource, 100.0 * wave + resource, 60.0 * wave

    for h in range(days * 24):
        resource, w, d = at(h)
        out = engine.observe(T0 + h * HOUR_S, engine.index_of([old, web, data]), [resource, w, d])
        assert out == []
    assert engine.rename(old, new)
    if reassign:
        assert engine.reassign(T0 + days * 24 * HOUR_S, [(new, web, _team(joined))]) == 2

    def after(h: int, step: float = 0.0) -> list[Transition]:
        """Hour `h` after the re-tag: the resource's cost in the team it joined."""
        resource, w, d = at(h)
        values = {new: resource, web: w - resource, data: d}
        values[_team(joined)] = values.get(_team(joined), 0.0) + resource + step
        return engine.observe(T0 + h * HOUR_S, engine.index_of(values), list(values.values()))

    hours = range(days * 24, (days + 2) * 24)
    opened_keys = {t.key for h in hours for t in after(h) if t.kind == "opened"}
    if not reassign:
        assert opened_keys == {_team(joined)}
        return
    assert opened_keys == set()
    # The team it joined is watched as before: a real step there opens.
    out = after((days + 2) * 24, step=80.0)
    assert [(t.kind, t.key) for t in out] == [("opened", _team(joined))]


@pytest.mark.parametrize("settle", [True, False])
def test_a_re_tag_read_before_the_teams_totals_move_opens_nothing(
    monkeypatch: pytest.MonkeyPatch, settle: bool
) -> None:
    """Review finding: the detector learns of a re-tag from the inventory (the fast path),
    which the collector commits before it writes the teams' totals, so for a cycle or two
    the team left still reads the resource's cost against its moved baseline: a false step.
    The teams a re-tag changed may not open for REGROUP_SETTLE_S (the control, without it,
    opens). Afterwards the team left is watched at its new level: its value highs moved down
    with it (kept, they hid the step below, under the day-0 record, for RECORD_DAYS)."""
    if not settle:
        monkeypatch.setattr(core, "REGROUP_SETTLE_S", 0.0)
    old, new = (SeriesKey.of("resource", {**RETAG_LABELS, "team": t}) for t in ("web", "data"))
    web, data = _team("web"), _team("data")
    # Four days of history: young teams, judged by the day-0 rule and its record.
    engine = Engine(DetectionConfig(daily_min_days=7))
    rng = np.random.default_rng(3)
    hours = 4 * 24
    history = np.vstack([lv * (1 + rng.normal(0, 0.01, hours)) for lv in (40.0, 140.0, 60.0)])
    engine.seed_history(engine.index_of([old, web, data]), int(T0 // HOUR_S), history)
    t = float(T0 + hours * HOUR_S)

    def cycles(keys: list[SeriesKey], values: list[float], n: int = 1) -> list[Transition]:
        nonlocal t
        out = []
        for _ in range(n):
            out += [
                x for x in engine.observe(t, engine.index_of(keys), values) if x.kind == "opened"
            ]
            t += 3.0
        return out

    assert cycles([old, web, data], [40.0, 140.0, 60.0], 20) == []
    assert engine.rename(old, new)
    engine.reassign(t, [(new, web, data)])
    # Two cycles with the teams' totals not moved yet, then moved.
    raced = cycles([new, web, data], [40.0, 140.0, 60.0], 2)
    raced += cycles([new, web, data], [40.0, 100.0, 100.0], 30)
    if not settle:
        assert [x.key for x in raced] == [web]
        return
    assert raced == []
    [step] = cycles([new, web, data], [40.0, 130.0, 100.0])
    assert (step.key, step.rule) == (web, "day0_step")
    assert step.expected == pytest.approx(100.0, rel=0.05)


def test_only_the_team_left_is_held_after_a_re_tag() -> None:
    """Review finding: holding every team a re-tag touched kept a team that gains a resource
    every minute from ever alerting (an EC2 instance's tags arrive with a late CloudTrail
    event, so each new instance joins its team from none, and a runaway scale-out is that
    case). The team joined reads less than its new baseline until the collector's write
    lands, so it needs no hold: a real step there opens at once."""
    untagged = SeriesKey.of("resource", {**RETAG_LABELS, "team": ""})
    tagged = SeriesKey.of("resource", RETAG_LABELS)
    web = _team("web")
    engine = Engine(DetectionConfig(day0_window_s=1e9))
    for n in range(5):
        engine.observe(T0 + 3 * n, engine.index_of([untagged, web]), [40.0, 100.0])
    assert engine.rename(untagged, tagged)
    # Left: the unassigned group, which is not a series; joined: web.
    assert engine.reassign(T0 + 15, [(tagged, _team(""), web)]) == 1
    out = engine.observe(T0 + 18, engine.index_of([tagged, web]), [40.0, 300.0])
    assert [(t.kind, t.key) for t in out] == [("opened", web)]


def test_a_re_tagged_resource_s_routine_spikes_do_not_page_the_team_it_joined() -> None:
    """Review finding: the team joined took on the resource's value highs but not its
    residual ones, which gate the seasonal rule: the resource's daily batch (20 minutes at
    three times its cost) opened seasonal incidents on that team (here on the day of the
    move; in the review's run at 1-minute data, four in a week). Nothing opens there now."""
    old, new = (SeriesKey.of("resource", {**RETAG_LABELS, "team": t}) for t in ("web", "data"))
    web, data = _team("web"), _team("data")
    engine = Engine(DetectionConfig())
    rng = np.random.default_rng(5)
    day, step = 86400, 300
    opened = []
    for t in range(T0, T0 + 14 * day, step):
        batch = 9 * 3600 <= t % day < 9 * 3600 + 20 * 60
        resource = 20.0 * (3.0 if batch else 1.0) * (1 + rng.normal(0, 0.02))
        w, d = (lv * (1 + rng.normal(0, 0.01)) for lv in (100.0, 60.0))
        if t == T0 + 10 * day:
            assert engine.rename(old, new)
            engine.reassign(t, [(new, web, data)])
        if t < T0 + 10 * day:
            keys, values = [old, web, data], [resource, w + resource, d]
        else:
            keys, values = [new, web, data], [resource, w, d + resource]
        out = engine.observe(t, engine.index_of(keys), values)
        opened += [(x.key, (x.at - T0) // day) for x in out if x.kind == "opened"]
    assert [day_ for key, day_ in opened if key == data] == []


def test_rename_carries_a_series_state_to_its_new_labels_unless_an_incident_is_open() -> None:
    """A re-tagged resource (tests/detector/test_live.py follows one through VictoriaMetrics):
    under its new labels it is the series it was, not a new one stepping up from nothing."""
    engine, before, retagged = _retag()
    labels = RETAG_LABELS
    assert engine.rename(before, retagged)
    assert before not in engine and retagged in engine
    idx = engine.index_of([retagged])
    assert engine.observe(T0 + 15, idx, [40.0]) == []  # no step from nothing
    assert [t.kind for t in engine.observe(T0 + 18, idx, [100.0])] == ["opened"]
    assert engine.open_incident(retagged) is not None
    # Refused: an open incident keeps its labels (its alert carries them); unknown or taken.
    other = SeriesKey.of("resource", {**labels, "team": "data"})
    assert not engine.rename(retagged, other)
    assert not engine.rename(other, retagged)
    engine.index_of([other])
    assert not engine.rename(retagged, other)


def test_fork_copies_a_series_state_and_leaves_its_open_incident_behind() -> None:
    """A resource re-tagged during its incident: the new labels get the learnt state, the
    old labels keep the incident (tests/detector/test_live.py)."""
    engine, before, retagged = _retag()
    labels = RETAG_LABELS
    assert [t.kind for t in engine.observe(T0 + 15, engine.index_of([before]), [100.0])] == [
        "opened"
    ]
    assert not engine.rename(before, retagged)
    assert engine.fork(before, retagged)
    assert engine.open_incident(before) is not None and engine.open_incident(retagged) is None
    assert engine.seen_at(retagged) == engine.seen_at(before) == T0 + 15
    # Still high: an incident under the new labels, measured from the level before it.
    [again] = engine.observe(T0 + 18, engine.index_of([retagged]), [100.0])
    assert (again.kind, again.key) == ("opened", retagged)
    assert again.expected == pytest.approx(40.0)
    # Refused: an unknown source, or a target already known.
    other = SeriesKey.of("resource", {**labels, "team": "data"})
    assert not engine.fork(other, SeriesKey.of("resource", {**labels, "team": "x"}))
    assert not engine.fork(before, retagged)
