"""Score incidents against the labels of the sample dataset.

An incident matches a labeled anomaly when it opened between the anomaly's start and its end
plus a grace period, on a series that contains at least one of the anomaly's resources (the
resource itself, or an aggregate it belongs to). A label is detected when at least one
incident matches it; an incident that matches no label is a false alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median

from lambdas.backtest.sample import KINDS, Label
from lambdas.detector.config import SeriesKey


@dataclass(frozen=True)
class Detection:
    """What the scorer needs from an incident of any detector."""

    key: SeriesKey
    started_at: float


@dataclass(frozen=True)
class KindScore:
    kind: str
    labels: int
    detected: int
    matched_alerts: int
    false_alerts: int
    delays_h: tuple[float, ...]

    @property
    def recall(self) -> float:
        return self.detected / self.labels if self.labels else float("nan")

    @property
    def precision(self) -> float:
        n = self.matched_alerts + self.false_alerts
        return self.matched_alerts / n if n else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def median_delay_h(self) -> float:
        return median(self.delays_h) if self.delays_h else float("nan")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def score(
    detections: Sequence[Detection],
    labels: Sequence[Label],
    resources_of: dict[str, SeriesKey],
    grace_s: float = 6 * 3600,
) -> dict[str, KindScore]:
    """Scores per kind, and overall under `all` (false alerts have no kind, so only the
    `all` row counts them)."""
    label_res = {
        lb.id: [resources_of[r] for r in lb.resource_ids if r in resources_of] for lb in labels
    }
    first_hit: dict[str, float] = {}
    matched_by_kind = dict.fromkeys(KINDS, 0)
    false_alerts = 0
    for d in detections:
        hit = None
        for lb in labels:
            if not _ts(lb.start) <= d.started_at <= _ts(lb.end) + grace_s:
                continue
            if any(_covers(d.key, r) for r in label_res[lb.id]):
                hit = lb
                break
        if hit is None:
            false_alerts += 1
            continue
        matched_by_kind[hit.kind] += 1
        delay = d.started_at - _ts(hit.start)
        first_hit[hit.id] = min(first_hit.get(hit.id, delay), delay)
    out: dict[str, KindScore] = {}
    for kind in KINDS:
        mine = [lb for lb in labels if lb.kind == kind]
        if not mine:
            continue
        delays = tuple(first_hit[lb.id] / 3600 for lb in mine if lb.id in first_hit)
        out[kind] = KindScore(kind, len(mine), len(delays), matched_by_kind[kind], 0, delays)
    all_delays = tuple(d for s in out.values() for d in s.delays_h)
    out["all"] = KindScore(
        "all",
        len(labels),
        sum(s.detected for s in out.values()),
        sum(matched_by_kind.values()),
        false_alerts,
        all_delays,
    )
    return out


def _covers(key: SeriesKey, resource: SeriesKey) -> bool:
    if key.level == "resource":
        return key == resource
    return key.contains(resource)
