"""The collector's pure core: merge changes into the inventory, price them, keep the rollups.

No I/O here: the current inventory rows, the price book, the reconciliation factors and the
clock are inputs, so ordering, duplicates and pricing are tested with plain tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lambdas.collector.model import Resource, ResourceChange
from lambdas.ingest.exposition import line, render_labels
from lambdas.pricing.catalog import PriceBook, Shape, usd_per_hour

RATE = "cct_cost_rate_usd_per_hour"
ROLLUP = "cct_cost_rate_rollup_usd_per_hour"
UNPRICED = "cct_cost_rate_unpriced_resources"

Key = tuple[str, str]
# (provider, billing_account_id, service_name, region_id, team, env) with the configured tags
Group = tuple[str, ...]
Factors = Mapping[tuple[str, str, str], float]


@dataclass(frozen=True, slots=True)
class Applied:
    """What one accepted event did. `stale` events are older than what the inventory knows:
    they are recorded for attribution but move no run-rate (event time wins)."""

    change: ResourceChange
    usd_before: float | None
    usd_after: float | None
    stale: bool


def _rate(book: PriceBook, f: Mapping[str, Any]) -> float | None:
    """The run-rate of a resource's fields, rounded as resource_inventory stores it
    (numeric(18, 6)) so the in-memory rollups equal a rebuild from PostgreSQL."""
    if f["state"] == "unknown":
        return None
    shape = Shape(
        f["provider"],
        f["service_name"],
        f["resource_type"],
        f["region_id"],
        f["sku"],
        f["size"],
        f["state"],
    )
    rate = usd_per_hour(book, shape)
    return round(rate, 6) if rate is not None else None


def merge(
    current: Resource | None, ch: ResourceChange, book: PriceBook
) -> tuple[Resource, Applied]:
    """Apply one change. A newer event overwrites what it states; an older one only fills in
    what is still unknown (e.g. the instance type from a RunInstances that arrived after the
    state-change notification) and never changes the state."""
    before: float | None
    if current is None:
        f: dict[str, Any] = {
            "provider": ch.provider,
            "resource_id": ch.resource_id,
            "billing_account_id": ch.billing_account_id,
            "sub_account_id": ch.sub_account_id,
            "region_id": ch.region_id or "unknown",
            "service_name": ch.service_name,
            "resource_type": ch.resource_type,
            "sku": ch.sku,
            "size": dict(ch.attributes),
            "state": ch.state or "unknown",
            "tags": dict(ch.tags or {}),
            "last_event_id": ch.event_id,
            "last_event_time": ch.event_time,
        }
        before, stale = 0.0, False
    else:
        f = {
            "provider": current.provider,
            "resource_id": current.resource_id,
            "billing_account_id": current.billing_account_id,
            "sub_account_id": current.sub_account_id,
            "region_id": current.region_id,
            "service_name": current.service_name,
            "resource_type": current.resource_type,
            "sku": current.sku,
            "size": current.size,
            "state": current.state,
            "tags": current.tags,
            "last_event_id": current.last_event_id,
            "last_event_time": current.last_event_time,
        }
        before = current.usd_per_hour
        stale = ch.event_time < current.last_event_time
        if not stale:
            f["billing_account_id"] = ch.billing_account_id
            f["sub_account_id"] = ch.sub_account_id
            f["region_id"] = ch.region_id or current.region_id
            f["sku"] = ch.sku or current.sku
            if ch.attributes:
                f["size"] = {**current.size, **ch.attributes}
            f["state"] = ch.state or current.state
            if ch.tags is not None:
                f["tags"] = dict(ch.tags)
            f["last_event_id"] = ch.event_id
            f["last_event_time"] = ch.event_time
        else:
            if current.region_id == "unknown" and ch.region_id:
                f["region_id"] = ch.region_id
            f["sku"] = current.sku or ch.sku
            f["size"] = {**ch.attributes, **current.size}
            f["tags"] = current.tags or dict(ch.tags or {})
    r = Resource(usd_per_hour=_rate(book, f), **f)
    return r, Applied(ch, before, r.usd_per_hour, stale=stale)


def apply_changes(
    current: Mapping[Key, Resource], changes: Iterable[ResourceChange], book: PriceBook
) -> tuple[dict[Key, Resource], list[Applied]]:
    """Apply a batch in event-time order per resource; returns the changed rows and one
    Applied per change, in the same order as the changes were given."""
    rows: dict[Key, Resource] = {}
    applied: dict[str, Applied] = {}
    ordered = sorted(changes, key=lambda c: (c.event_time, c.event_id))
    for ch in ordered:
        key = (ch.provider, ch.resource_id)
        row, outcome = merge(rows.get(key) or current.get(key), ch, book)
        rows[key] = row
        applied[ch.event_id] = outcome
    return rows, [applied[c.event_id] for c in ordered]


@dataclass(frozen=True, slots=True)
class Labels:
    """Which labels a resource and its group get; `tag_labels` are matched case-insensitively."""

    tag_labels: tuple[str, ...]

    def tags(self, r: Resource) -> tuple[str, ...]:
        lowered = {k.lower(): str(v) for k, v in r.tags.items()}
        return tuple(lowered.get(n, "") for n in self.tag_labels)

    def of(self, r: Resource, tags: tuple[str, ...]) -> tuple[Group, str]:
        """The resource's rollup group and its rendered per-resource labels."""
        group = (r.provider, r.billing_account_id, r.service_name, r.region_id, *tags)
        labels = {
            "provider": r.provider,
            "billing_account_id": r.billing_account_id,
            "sub_account_id": r.sub_account_id,
            "region_id": r.region_id,
            "service_name": r.service_name,
            "resource_id": r.resource_id,
            "resource_type": r.resource_type,
            **dict(zip(self.tag_labels, tags, strict=True)),
        }
        return group, render_labels(labels)

    def group_labels(self, g: Group) -> dict[str, str]:
        names = ("provider", "billing_account_id", "service_name", "region_id", *self.tag_labels)
        return dict(zip(names, g, strict=True))


@dataclass(frozen=True, slots=True)
class Live:
    group: Group
    rate: float | None
    labels: str
    # what the labels were rendered from; unchanged identity means the text can be reused
    source: tuple[str, ...]


class Rollups:
    """Per-group run-rate totals and unpriced counts, kept in memory and updated by delta.

    The collector is the only writer of these series (one replica), so the totals equal the
    sum over the inventory; they are rebuilt from PostgreSQL at start.
    """

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.live: dict[Key, Live] = {}
        self.totals: dict[Group, float] = {}
        self.unpriced: dict[Group, int] = {}
        self._group_text: dict[Group, str] = {}

    def update(self, r: Resource) -> tuple[Group, str]:
        """Account for the new state of `r`; returns its group and rendered labels."""
        old = self.live.pop(r.key, None)
        if old is not None:
            self.totals[old.group] -= old.rate or 0.0
            if old.rate is None:
                self.unpriced[old.group] -= 1
            if abs(self.totals[old.group]) < 1e-9:  # float drift: nothing priced is exactly 0
                self.totals[old.group] = 0.0
        tags = self.labels.tags(r)
        source = (r.billing_account_id, r.sub_account_id, r.region_id, *tags)
        if old is not None and old.source == source:
            group, text = old.group, old.labels
        else:
            group, text = self.labels.of(r, tags)
        if group not in self.totals:
            self.totals[group] = 0.0
            self.unpriced[group] = 0
            self._group_text[group] = render_labels(self.labels.group_labels(group))
        if r.state != "deleted":
            self.live[r.key] = Live(group, r.usd_per_hour, text, source)
            self.totals[group] += r.usd_per_hour or 0.0
            if r.usd_per_hour is None:
                self.unpriced[group] += 1
        return group, text

    def rollup_lines(self, groups: Iterable[Group], factors: Factors, ts_ms: int) -> list[str]:
        out = []
        for g in groups:
            text = self._group_text[g]
            # Rates are stored to 6 decimals, so their sum is exact at 6 decimals too.
            total = round(self.totals[g], 6)
            out.append(line(ROLLUP, text, "list", total, ts_ms))
            factor = factors.get((g[0], g[1], g[2]))
            if factor is not None:
                out.append(line(ROLLUP, text, "reconciled", total * factor, ts_ms))
            out.append(line(UNPRICED, text, None, float(self.unpriced[g]), ts_ms))
        return out

    def heartbeat_lines(self, factors: Factors, ts_ms: int) -> list[str]:
        """Current value of every live priced resource and every group, at `ts_ms`."""
        out = []
        for live in self.live.values():
            if live.rate is not None:
                out += resource_lines(live.labels, live.group, live.rate, factors, ts_ms)
        out += self.rollup_lines(self.totals, factors, ts_ms)
        return out


def resource_lines(
    labels: str, group: Group, rate: float, factors: Factors, ts_ms: int
) -> list[str]:
    out = [line(RATE, labels, "list", rate, ts_ms)]
    factor = factors.get((group[0], group[1], group[2]))
    if factor is not None:
        out.append(line(RATE, labels, "reconciled", rate * factor, ts_ms))
    return out


def row_from_db(row: Sequence[Any]) -> Resource:
    """A resource_inventory row in the column order of lambdas.store.inventory.COLUMNS."""
    rate = row[11]
    return Resource(
        provider=row[0],
        resource_id=row[1],
        billing_account_id=row[2],
        sub_account_id=row[3],
        region_id=row[4],
        service_name=row[5],
        resource_type=row[6],
        sku=row[7],
        size=row[8] or {},
        state=row[9],
        tags=row[10] or {},
        usd_per_hour=float(rate) if rate is not None else None,
        last_event_id=row[12],
        last_event_time=row[13],
    )
