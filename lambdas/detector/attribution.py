"""Attribution: which children explain an aggregate's increase, and which change events caused
it. Pure functions; the live detector and the backtest feed them their own data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Child:
    level: str
    labels: Mapping[str, str]
    expected: float
    observed: float


@dataclass(frozen=True)
class Contributor(Child):
    """A child that grew, with its share of the increase of all growing children."""

    delta: float
    share: float

    def as_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "labels": dict(self.labels),
            "expected_usd_per_hour": round(self.expected, 4),
            "observed_usd_per_hour": round(self.observed, 4),
            "delta_usd_per_hour": round(self.delta, 4),
            "share": round(self.share, 4),
        }


def rank_contributors(
    children: Iterable[Child], limit: int | None = 10, min_share: float = 0.01
) -> list[Contributor]:
    """Children that grew, ranked by their share of the total increase.

    The share is of the sum of the children's increases (not of the parent's net delta): when
    one child grows and another shrinks, the grower explains the whole increase. Children
    below `min_share` are noise and left out.
    """
    rows = [(c, c.observed - c.expected) for c in children]
    grown = [(c, d) for c, d in rows if d > 0]
    total = sum(d for _, d in grown)
    if total <= 0:
        return []
    ranked = sorted(grown, key=lambda cd: (-cd[1], sorted(cd[0].labels.items())))
    out = [
        Contributor(c.level, dict(c.labels), c.expected, c.observed, d, d / total)
        for c, d in ranked
        if d / total >= min_share
    ]
    return out[:limit]


def share_besides(
    contributors: Sequence[Contributor],
    picked: Sequence[Contributor],
    dropped: Sequence[Contributor],
) -> float:
    """The share of the resources' whole increase (as `rank_contributors` measured it, not
    only of the contributors shown) that `picked` carry once `dropped` is left out of it."""
    whole = next(
        (c.delta / c.share for c in contributors if c.level == "resource" and c.share > 0), 0.0
    )
    left = whole - sum(c.delta for c in dropped)
    return min(1.0, sum(c.delta for c in picked) / left) if left > 0 else 0.0


def shares_by(children: Iterable[Child], names: Sequence[str]) -> dict[tuple[str, ...], float]:
    """The share of an aggregate's increase carried by its resources, grouped by the values of
    `names` (another aggregate level's identifying labels: how much of a team's increase lies
    in each service). Over every resource that grew, not just the largest few, and, like
    `rank_contributors`, of the sum of the growers' increases."""
    sums: dict[tuple[str, ...], float] = {}
    total = 0.0
    for c in children:
        d = c.observed - c.expected
        if d > 0 and c.level == "resource":
            group = tuple(c.labels.get(n, "") for n in names)
            sums[group] = sums.get(group, 0.0) + d
            total += d
    return {g: v / total for g, v in sums.items()} if total > 0 else {}


@dataclass(frozen=True)
class ChangeEvent:
    event_id: str
    provider: str
    resource_id: str
    action: str
    actor: str | None
    event_time: datetime
    tags: Mapping[str, str]
    usd_per_hour_before: float | None
    usd_per_hour_after: float | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "resource_id": self.resource_id,
            "action": self.action,
            "actor": self.actor,
            "event_time": self.event_time.isoformat(),
            "usd_per_hour_before": self.usd_per_hour_before,
            "usd_per_hour_after": self.usd_per_hour_after,
        }
        for tag, name in (("pulumi:project", "pulumi_project"), ("pulumi:stack", "pulumi_stack")):
            if tag in self.tags:
                out[name] = self.tags[tag]
        return out

    @property
    def rate_change(self) -> float:
        return (self.usd_per_hour_after or 0.0) - (self.usd_per_hour_before or 0.0)


def link_change_events(
    contributors: Sequence[Contributor], events: Iterable[ChangeEvent], limit: int = 10
) -> list[ChangeEvent]:
    """The change events on the contributing resources, most important first: events of the
    biggest contributor first, and within one resource the biggest run-rate increase first.

    The caller selects events near the step (a time window); this only orders and trims.
    """
    rank = {
        c.labels.get("resource_id"): n
        for n, c in enumerate(contributors)
        if "resource_id" in c.labels
    }
    mine = [e for e in events if e.resource_id in rank]
    mine.sort(key=lambda e: (rank[e.resource_id], -e.rate_change, e.event_time, e.event_id))
    return mine[:limit]


# A resource with less of an aggregate's increase than this is not a cause of its own.
ROOT_MIN_SHARE = 0.1


def root_causes(
    contributors: Sequence[Contributor], explain_share: float, min_delta: float
) -> list[Contributor]:
    """The resources that explain an aggregate's increase: the deepest level it is reported
    at (one incident per cause). Each has at least ROOT_MIN_SHARE of the increase and a
    material delta, and together they have at least `explain_share` of it; otherwise the
    increase is diffuse (many small growers) and the aggregate is the cause: empty list."""
    roots = [
        c
        for c in contributors
        if c.level == "resource" and c.share >= ROOT_MIN_SHARE and c.delta >= min_delta
    ]
    return roots if sum(c.share for c in roots) >= explain_share else []
