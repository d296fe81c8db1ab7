"""Detection parameters and aggregation levels: the knobs of the pure core.

Shared by the live detector and the backtest so that a backtest run predicts exactly what the
live detector would have alerted on with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import NamedTuple

from lambdas.common.settings import SettingsError, env_float, env_int
from lambdas.contract import LEVEL_LABELS, SEVERITIES

__all__ = ["CHILD_LEVEL", "LEVEL_LABELS", "SEVERITIES", "DetectionConfig", "SeriesKey"]

# Aggregation levels and their identifying labels are the anomaly contract's (lambdas.contract).
# Attribution walks these edges: an anomaly at the key level is explained by its children.
CHILD_LEVEL: dict[str, str] = {"account": "service", "service": "resource", "team": "resource"}


class SeriesKey(NamedTuple):
    """One detected series: its level and its identifying labels (sorted by name)."""

    level: str
    labels: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, level: str, labels: Mapping[str, str]) -> SeriesKey:
        if level not in LEVEL_LABELS:
            raise ValueError(f"unknown level {level!r}; known: {sorted(LEVEL_LABELS)}")
        return cls(level, tuple(sorted((n, labels.get(n, "")) for n in LEVEL_LABELS[level])))

    @property
    def unassigned(self) -> bool:
        """True for the group of series without any of the level's labels (e.g. resources
        without a team tag): not a team, so not detected at that level; the account and
        service levels still cover its cost."""
        return not any(v for _, v in self.labels)

    def as_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def contains(self, resource: SeriesKey) -> bool:
        """True when the resource series belongs to this aggregate."""
        own = self.as_dict()
        other = resource.as_dict()
        return all(other.get(name) == value for name, value in own.items())

    def describe(self, short: bool = False) -> str:
        """The series as a person names it: the service, resource or team first, then where
        (left out when `short`, for a child whose parent is named on the same line)."""
        lb = self.as_dict()
        if short and self.level in ("service", "resource"):
            return lb["service_name" if self.level == "service" else "resource_id"]
        where = " ".join(v for v in (lb.get("provider"), lb.get("billing_account_id")) if v)
        if self.level == "account":
            return f"account {where}"
        if self.level == "team":
            return f"team {lb['team']}"
        if self.level == "service":
            return f"{lb['service_name']} in {lb['region_id']} ({where})"
        # A resource known only from its change event has no service, region or team yet.
        team = f"team {lb['team']}" if lb["team"] else ""
        context = ", ".join(v for v in (lb["service_name"], lb["region_id"], team) if v)
        return f"{lb['resource_id']} ({context})" if context else lb["resource_id"]


def _var(field_name: str) -> str:
    """The variable that sets a field (`DetectionConfig.from_env`'s default prefix)."""
    return f"CCT_DETECTOR_{field_name.upper()}"


@dataclass(frozen=True)
class DetectionConfig:
    """Parameters of the three rules and of incident handling. Units in the names.

    Defaults were chosen on the labeled sample (`benchmarks/detector_quality.py`).
    """

    # The sensitivity knob: how many false incidents per series and month (30 days) you are
    # prepared to see. It sets the robust z threshold of the rules (`core.z_threshold`,
    # calibrated on real data): 0.8 -> 10.8 robust sigmas for data at an hour or finer,
    # 1.0 -> 8.8, 3.0 -> 3.2, 0.7 or less -> 12 (the cap). Lower = quieter. See
    # docs/detection.md for the worked example and what was measured.
    false_incidents_per_month: float = 0.8
    # Seasonal rule threshold in robust standard deviations, overriding the knob above when
    # > 0 (0 = derived from false_incidents_per_month).
    sensitivity: float = 0.0
    # Hysteresis: an open incident stays open while its rule holds at this fraction of the
    # opening thresholds, so a value hovering at the threshold is one incident, not many.
    hold_fraction: float = 0.5
    # Consecutive normal evaluations before an incident resolves, and at least this long
    # (wall clock) since its last abnormal evaluation.
    resolve_after_ticks: int = 2
    resolve_after_s: float = 0.0
    # A rule must hold this long (wall clock, counting the interval of each value) before an
    # incident opens; the incident then starts when the rule first held. 0 = at once.
    min_duration_s: float = 0.0
    # After an incident of a series resolves, a new one opens within this time only when it
    # is worse than the last one's peak: a wobble after an episode is the same episode.
    cooldown_s: float = 24 * 3600.0
    # An open incident whose series has had no value for this long resolves: the series is
    # gone (a deleted group, a stopped exporter) and nobody can act on its last value.
    stale_after_s: float = 300.0
    # A series without a value for this long is forgotten (its history and slot are freed),
    # so resource churn does not grow the detector's memory; if it comes back it is new (a
    # step from nothing). A week keeps a series that pauses every weekend, with its weekly
    # pattern. Memory is about 3.2 KB per series known within this window. Must be at least
    # stale_after_s, so an absent series' incident resolves before it is forgotten.
    evict_after_s: float = 7 * 86400.0
    # Materiality: increases smaller than this never alert, whatever the statistics say (an
    # absolute floor; per level below) ...
    min_impact_usd_per_hour: float = 2.0
    # ... overridden per level (0 = use min_impact_usd_per_hour).
    min_impact_account_usd_per_hour: float = 0.0
    min_impact_service_usd_per_hour: float = 0.0
    min_impact_team_usd_per_hour: float = 0.0
    min_impact_resource_usd_per_hour: float = 0.0
    # ... and relative: an increase must also be this fraction of the series' own level
    # (the larger of its expected value and its one-week mean), so a large noisy series
    # does not alert on a wobble that is a rounding error of its bill.
    min_relative_increase: float = 0.2
    # The noise estimate never goes below this fraction of the series' one-week mean: a
    # series that is mostly zero with a few cents has noise, not a noise of zero.
    level_noise_ratio: float = 0.02
    # The record: an incident opens only on a value above record_margin x the
    # record_rank-th highest daily high of the last 21 days (of the value for day-0 steps, of
    # the residual above the seasonal baseline for the seasonal rule); 0 = no record. Rank 2
    # so one past anomaly does not raise the bar; chosen on the tuning part of the real-data
    # corpus (docs/detection.md, "Record").
    record_rank: int = 2
    record_margin: float = 1.0
    # The local step rule (1 = on, 0 = off), used only for data every 5 to 59 minutes: a
    # value above the recent level (day0_window_s) by z x the series' jitter (its typical
    # change from one value to the next), which hourly means cannot see. docs/detection.md.
    local_step: int = 1
    # Cost decreases are reported only when this is 1 (as info incidents, never paging).
    report_decreases: int = 0
    # One incident per cause (lambdas.detector.reports): an aggregate's increase is reported
    # at its resources when resources with at least this share of it (each at least 10 % and
    # material) explain it, else at a reported child or sibling holding this share of it;
    # otherwise, a diffuse increase, at the aggregate. The live detector and the backtest.
    root_cause_share: float = 0.5
    # Day-0 step rule (needs no history): a rise of at least X $/h or Y (fraction) within the
    # window, above both the recent level and the same hour yesterday (once a day is known).
    day0_window_s: float = 900.0
    day0_min_step_usd_per_hour: float = 25.0
    day0_min_step_ratio: float = 0.4
    # Warm-up fallback while there is not enough history for a seasonal baseline: alert when
    # the value is this fraction above the highest hourly mean of the last 72 hours (used
    # once 24 of them have a value: before that the highest is not yet the daily peak) ...
    warmup_static_ratio: float = 0.5
    # ... and the hours of history before a young series' spread (its noise) and the last
    # day's highest hourly mean (the day-0 step's reference) are used.
    warmup_min_hours: int = 6
    # How much history makes a seasonal baseline: same hour of day over the last 7 days
    # (daily), then the same hour of week over the last `history_weeks` weeks (weekly).
    daily_min_days: int = 3
    weekly_min_weeks: int = 2
    history_weeks: int = 3
    # The noise estimate never goes below this fraction of the expected value: a perfectly
    # flat series would otherwise alert on a cent.
    scale_floor_ratio: float = 0.02
    # Severity from dollar impact and relative deviation.
    warning_usd_per_hour: float = 10.0
    critical_usd_per_hour: float = 100.0
    warning_deviation: float = 0.5
    critical_deviation: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            # Settings built in code (the backtest's flags) do not pass env_float's check.
            if not math.isfinite(getattr(self, f.name)):
                raise SettingsError(f"{_var(f.name)} must be a finite number")
        self._check_signs()
        self._check_ranges()

    def _check_signs(self) -> None:
        positive = [
            "false_incidents_per_month",
            "day0_window_s",
            "day0_min_step_usd_per_hour",
            "day0_min_step_ratio",
            "warmup_static_ratio",
            "stale_after_s",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_var(name)} must be > 0")
        non_negative = [
            "sensitivity",
            "resolve_after_s",
            "min_duration_s",
            "cooldown_s",
            "min_relative_increase",
            "level_noise_ratio",
            *(f"min_impact_{lv}_usd_per_hour" for lv in LEVEL_LABELS),
        ]
        for name in non_negative:
            if getattr(self, name) < 0:
                raise SettingsError(f"{_var(name)} must be >= 0")

    def _check_ranges(self) -> None:
        if not 0 <= self.record_rank <= 21:
            raise SettingsError(f"{_var('record_rank')} must be in [0, 21]")
        if not self.record_margin > 0:
            raise SettingsError(f"{_var('record_margin')} must be > 0")
        for name in ("report_decreases", "local_step"):
            if getattr(self, name) not in (0, 1):
                raise SettingsError(f"{_var(name)} must be 0 or 1")
        for name in ("hold_fraction", "root_cause_share"):
            if not 0 < getattr(self, name) <= 1:
                raise SettingsError(f"{_var(name)} must be in (0, 1]")
        if self.evict_after_s < self.stale_after_s:
            raise SettingsError(f"{_var('evict_after_s')} must be >= {_var('stale_after_s')}")
        if self.resolve_after_ticks < 1:
            raise SettingsError(f"{_var('resolve_after_ticks')} must be >= 1")
        if self.history_weeks < self.weekly_min_weeks:
            raise SettingsError(f"{_var('history_weeks')} must be >= {_var('weekly_min_weeks')}")

    def min_impact(self, level: str) -> float:
        """The absolute materiality floor of a level in $/h."""
        own = float(getattr(self, f"min_impact_{level}_usd_per_hour", 0.0))
        return own if own > 0 else self.min_impact_usd_per_hour

    @classmethod
    def from_env(cls, prefix: str = "CCT_DETECTOR_") -> DetectionConfig:
        """Each field can be set as CCT_DETECTOR_<FIELD NAME IN CAPITALS>."""
        values: dict[str, float | int] = {}
        for f in fields(cls):
            name = prefix + f.name.upper()
            default = f.default
            if isinstance(default, bool) or not isinstance(default, int | float):
                raise TypeError(f"unsupported field type for {f.name}")
            if isinstance(default, int):
                values[f.name] = env_int(name, default)
            else:
                values[f.name] = env_float(name, float(default))
        return cls(**values)  # type: ignore[arg-type]
