"""The collector's pure core: merge changes into the inventory, price them, keep the rollups.

No I/O here: the current inventory rows, the price book, the reconciliation factors and the
clock are inputs, so ordering, duplicates and pricing are tested with plain tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from lambdas.collector.model import Resource, ResourceChange
from lambdas.ingest.exposition import line, render_labels
from lambdas.pricing.catalog import PriceBook, Shape, usd_per_hour

# The largest run-rate one resource can have and be priced: far above any real one (the largest
# instances cost a few hundred $/h), far below what the inventory's columns hold (1e12).
MAX_USD_PER_HOUR = 1e7
RATE = "cct_cost_rate_usd_per_hour"
ROLLUP = "cct_cost_rate_rollup_usd_per_hour"
UNPRICED = "cct_cost_rate_unpriced_resources"

Key = tuple[str, str]
# (provider, billing_account_id, service_name, region_id, team, env) with the configured tags
Group = tuple[str, ...]
Factors = Mapping[tuple[str, str, str], float]


def group_factor(factors: Factors, group: Group) -> float | None:
    """The reconciliation factor of a group's (provider, billing account, service), if any."""
    return factors.get((group[0], group[1], group[2]))


class Applied(NamedTuple):
    """What one accepted event did. `stale` events are older than what the inventory knows:
    they are recorded for attribution but move no run-rate (event time wins).
    `tags_refused`: its tag edits were not applied, the resource would have held more tags
    than allowed (the rest of the change was)."""

    change: ResourceChange
    usd_before: float | None
    usd_after: float | None
    stale: bool
    tags_refused: bool = False


# (provider, service, resource type, region, sku, state, size items) -> run-rate
RateMemo = dict[tuple[Any, ...], float | None]


def _rate(
    book: PriceBook,
    memo: RateMemo,
    fields: tuple[str, str, str, str, str | None, str],
    size: Mapping[str, Any],
) -> float | None:
    """The run-rate of a resource (provider, service, type, region, sku, state; size), rounded
    as resource_inventory stores it (numeric(18, 6)) so the in-memory rollups equal a rebuild
    from PostgreSQL. A batch prices the same few shapes over and over: memoised per batch."""
    provider, service_name, resource_type, region_id, sku, state = fields
    if state == "unknown":
        return None
    key = (*fields, *size.items())
    try:
        return memo[key]
    except KeyError:
        cacheable = True
    except TypeError:  # an unhashable size attribute: price it without the memo
        cacheable = False
    shape = Shape(provider, service_name, resource_type, region_id, sku, size, state)
    rate = usd_per_hour(book, shape)
    # A non-finite price (a corrupt catalog row) is no price: unpriced, never a NaN that would
    # poison the rollup totals. Nor is a rate no resource has (a machine type naming trillions
    # of vCPUs): it would overflow the inventory's numeric(18, 6) and fail every batch it is in.
    ok = rate is not None and math.isfinite(rate) and abs(rate) < MAX_USD_PER_HOUR
    rounded = round(rate, 6) if ok and rate is not None else None
    if cacheable:
        memo[key] = rounded
    return rounded


def _retagged(tags: dict[str, str], ch: ResourceChange) -> dict[str, str]:
    """`tags` with a re-tag's changes applied: a value sets a tag, None removes it; a
    removal naming values removes the tag where it has one of them; a DeleteTags naming no
    tag removes all but AWS's own (`aws:`)."""
    if ch.drop_user_tags:
        tags = {k: v for k, v in tags.items() if k.startswith("aws:")}
    for key, value in ch.tag_changes.items():
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value
    for key, values in ch.tag_removals_if.items():
        if tags.get(key) in values:
            del tags[key]
    return tags


def _filled(tags: Mapping[str, str], older: Mapping[str, str]) -> Mapping[str, str]:
    """`tags` with the tags of `older` it lacks (the same object when it lacks none, so the
    rollups keep its rendered labels)."""
    if older.keys() <= tags.keys():
        return tags
    return {**older, **tags}


def _starts_afresh(current: Resource | None, ch: ResourceChange) -> bool:
    """Whether `ch` makes a resource of its own: none is known, or a new one under a deleted
    one's name (Azure and GCP ids are names), which starts from what its own event says, not
    with the old one's licence, size or tags."""
    return current is None or (
        current.state == "deleted"
        and ch.event_time >= current.last_event_time
        and ch.state not in (None, "deleted")
    )


def merge(
    current: Resource | None, ch: ResourceChange, book: PriceBook, memo: RateMemo | None = None
) -> tuple[Resource, Applied]:
    """Apply one change. A newer event overwrites what it states; an older one only fills in
    what is still unknown (e.g. the instance type from a RunInstances that arrived after the
    state-change notification) and changes the state only while it is unknown."""
    before: float | None
    size: Mapping[str, Any]
    tags: Mapping[str, str]
    if _starts_afresh(current, ch):
        current = None
    if current is None:
        billing, sub = ch.billing_account_id, ch.sub_account_id
        service, rtype = ch.service_name, ch.resource_type
        region = ch.region_id or "unknown"
        sku = ch.sku
        size = dict(ch.attributes)
        state = ch.state or "unknown"
        tags = _retagged(dict(ch.tags or {}), ch)
        last_id, last_time = ch.event_id, ch.event_time
        before, stale = 0.0, False
    else:
        service, rtype = current.service_name, current.resource_type
        before = current.usd_per_hour
        stale = ch.event_time < current.last_event_time
        if not stale:
            billing, sub = ch.billing_account_id, ch.sub_account_id
            region = ch.region_id or current.region_id
            sku = ch.sku or current.sku
            size = {**current.size, **ch.attributes} if ch.attributes else current.size
            state = ch.state or current.state
            if ch.tags is None:
                tags = current.tags
            elif ch.event_time > current.last_event_time:
                tags = dict(ch.tags)
            else:
                # The same second as the last change (CloudTrail's times are whole seconds:
                # a launch and its CreateTags often share one): it fills in, replaces nothing.
                tags = _filled(current.tags, ch.tags)
            if ch.tag_changes or ch.tag_removals_if or ch.drop_user_tags:
                tags = _retagged(dict(tags), ch)
            last_id, last_time = ch.event_id, ch.event_time
        else:
            billing, sub = current.billing_account_id, current.sub_account_id
            region = current.region_id
            if region == "unknown" and ch.region_id:
                region = ch.region_id
            sku = current.sku or ch.sku
            size = {**ch.attributes, **current.size}
            # Unknown until now (the first event was a re-tag): the older state is all there is.
            state = ch.state if current.state == "unknown" and ch.state else current.state
            # A late full set or re-tag adds only the tags the resource does not have (a
            # creation overtaken by its CreateTags keeps both). Nothing records a removal, so
            # a tag removed by a newer event comes back with an older one that set it.
            late = {k: v for k, v in ch.tag_changes.items() if v is not None}
            tags = _filled(_filled(current.tags, ch.tags or {}), late)
            last_id, last_time = current.last_event_id, current.last_event_time
    fields = (ch.provider, service, rtype, region, sku, state)
    rate = _rate(book, {} if memo is None else memo, fields, size)
    r = Resource(
        ch.provider,
        ch.resource_id,
        billing,
        sub,
        region,
        service,
        rtype,
        sku,
        size,
        state,
        tags,
        rate,
        last_id,
        last_time,
    )
    return r, Applied(ch, before, rate, stale)


class Tombstone(NamedTuple):
    """A container's deletion: when, the event that said so and its action."""

    deleted_at: datetime
    event_id: str
    action: str


class Tombstones:
    """Deleted containers (Azure resource groups, SQL logical servers) by (provider, id).

    A container's deletion event names only the container, and Event Grid delivers events in
    no order: a resource's write can reach the collector after its group's deletion, or be
    still queued or in flight while that deletion is expanded over the live resources. Any
    change of a resource under a container, dated no later than the container's deletion, is
    therefore the change of a resource that is gone with it. A change dated after it is a
    new life under the same names (the group created again)."""

    def __init__(self) -> None:
        self._by_key: dict[Key, Tombstone] = {}
        # provider -> the depths (segments) of its deleted containers' ids: an Azure resource
        # group's id has 4, a SQL logical server's 8. Only prefixes of those depths can match.
        self._depths: dict[str, set[int]] = {}
        # Increased by every add: a writer that saw it unchanged across a batch knows no
        # tombstone arrived that the batch's changes were not checked against.
        self.added = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def add(self, provider: str, container_id: str, tombstone: Tombstone) -> None:
        """Keep the newest deletion of each container (a group deleted, created, deleted)."""
        known = self._by_key.get((provider, container_id))
        if known is None or tombstone.deleted_at > known.deleted_at:
            self._by_key[(provider, container_id)] = tombstone
            self._depths.setdefault(provider, set()).add(container_id.count("/"))
            self.added += 1

    def covering(self, provider: str, resource_id: str, at: datetime) -> Tombstone | None:
        """The deletion of a container holding `resource_id`, dated at or after `at`."""
        depths = self._depths.get(provider)
        if not depths:
            return None
        # A container's id is a prefix of its resources' ids ending at a segment boundary.
        parts = resource_id.split("/")
        for depth in depths:
            if depth < len(parts) - 1:
                found = self._by_key.get((provider, "/".join(parts[: depth + 1])))
                if found is not None and at <= found.deleted_at:
                    return found
        return None

    def forget_before(self, cutoff: datetime) -> None:
        """Drop deletions older than `cutoff`."""
        self._by_key = {k: t for k, t in self._by_key.items() if t.deleted_at >= cutoff}
        self._depths = {}
        for provider, container_id in self._by_key:
            self._depths.setdefault(provider, set()).add(container_id.count("/"))


def held_event_id(container_event_id: str, resource_id: str) -> str:
    """The event id of a resource's deletion with its container: one id whichever path
    deletes it (the expansion, or a write met later), so a second one is a duplicate."""
    return f"{container_event_id}/{resource_id}"


def _buried(ch: ResourceChange, tombstones: Tombstones | None) -> ResourceChange:
    """`ch` as a deletion when a container holding its resource was deleted after it."""
    if tombstones is None or ch.state == "deleted" or ch.contains:
        return ch
    if tombstones.covering(ch.provider, ch.resource_id, ch.event_time) is None:
        return ch
    return ch._replace(state="deleted")


def apply_changes(
    current: Mapping[Key, Resource],
    changes: Iterable[ResourceChange],
    book: PriceBook,
    tombstones: Tombstones | None = None,
    max_tags: int = 0,
) -> tuple[dict[Key, Resource], list[Applied]]:
    """Apply a batch in event-time order per resource; returns the changed rows and one
    Applied per change, in the same order as the changes were given. A change under a
    container deleted after it (`tombstones`) is applied as the resource's deletion; a
    resource holds at most `max_tags` tags (0: no limit), a change that would take it past
    them keeps the tags it had (`Applied.tags_refused`)."""
    rows: dict[Key, Resource] = {}
    applied: dict[str, Applied] = {}
    memo: RateMemo = {}
    ordered = sorted(changes, key=lambda c: (c.event_time, c.event_id))
    for given in ordered:
        ch = _buried(given, tombstones)
        key = (ch.provider, ch.resource_id)
        prev = rows.get(key) or current.get(key)
        row, outcome = merge(prev, ch, book, memo)
        if max_tags and len(row.tags) > max_tags:
            # Each event's tags are bounded at the edge (check_change), but merged ones add
            # up: events each setting other tags would grow a row without end (no provider
            # allows it: AWS and Azure hold 50 tags, GCP 64 labels). The rest of the change
            # stands; the tags are those the resource had (a change that leaves it no more
            # tags than it had is applied).
            had = (ch.tags or {}) if prev is None or _starts_afresh(prev, ch) else prev.tags
            if len(row.tags) > len(had):
                row = row._replace(tags=had)
                outcome = outcome._replace(tags_refused=True)
        rows[key] = row
        applied[ch.event_id] = outcome
    return rows, [applied[c.event_id] for c in ordered]


# The label value a tag gets once its label name has reached its cap of distinct values.
OVERFLOW = "__overflow__"


@dataclass(slots=True)
class Labels:
    """Which labels a resource and its group get; `tag_labels` are matched case-insensitively.

    Tags are set by whoever creates a resource, so their values are unbounded: each tag label
    keeps at most `max_values` distinct values (0 = no cap); a resource with a value beyond
    that is labelled OVERFLOW (its cost still counts, under one shared series) and
    `overflowed[label]` counts how often that happened."""

    tag_labels: tuple[str, ...]
    max_values: int = 0
    seen: dict[str, set[str]] = field(default_factory=dict)
    overflowed: dict[str, int] = field(default_factory=dict)

    def tags(self, r: Resource) -> tuple[str, ...]:
        lowered = {k.lower(): str(v) for k, v in r.tags.items()}
        values = tuple(lowered.get(n, "") for n in self.tag_labels)
        if not self.max_values:
            return values
        return tuple(self._capped(n, v) for n, v in zip(self.tag_labels, values, strict=True))

    def _capped(self, name: str, value: str) -> str:
        if not value:
            return value
        seen = self.seen.setdefault(name, set())
        if value in seen:
            return value
        if len(seen) < self.max_values:
            seen.add(value)
            return value
        self.overflowed[name] = self.overflowed.get(name, 0) + 1
        return OVERFLOW

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


class Live(NamedTuple):
    group: Group
    rate: float | None
    labels: str
    # What the labels were rendered from. Most events leave a resource's tags untouched (the
    # merged row keeps the same tags object), so identity plus placement decides reuse.
    tags: Mapping[str, str]
    placement: tuple[str, str, str]


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
        # Newest timestamp given to rollup samples: see `stamp`.
        self.last_ms = 0

    def update(self, r: Resource) -> tuple[Group, str]:
        """Account for the new state of `r`; returns its group and rendered labels."""
        key = (r.provider, r.resource_id)
        totals = self.totals
        old = self.live.get(key)
        placement = (r.billing_account_id, r.sub_account_id, r.region_id)
        if old is not None:
            total = totals[old.group] - (old.rate or 0.0)
            # float drift: nothing priced is exactly 0
            totals[old.group] = 0.0 if abs(total) < 1e-9 else total
            if old.rate is None:
                self.unpriced[old.group] -= 1
        if old is not None and old.tags is r.tags and old.placement == placement:
            group, text = old.group, old.labels
        else:
            group, text = self.labels.of(r, self.labels.tags(r))
            if group not in totals:
                totals[group] = 0.0
                self.unpriced[group] = 0
                self._group_text[group] = render_labels(self.labels.group_labels(group))
        rate = r.usd_per_hour
        if r.state == "deleted":
            if old is not None:
                del self.live[key]
            return group, text
        self.live[key] = Live(group, rate, text, r.tags, placement)
        if rate is None:
            self.unpriced[group] += 1
        else:
            totals[group] += rate
        return group, text

    def apply(self, rows: Iterable[Resource]) -> tuple[dict[Key, tuple[Group, str]], set[Group]]:
        """Account for the new state of every row; returns each row's group and rendered
        labels, and every group whose total changed. That includes the group a re-tagged
        resource left: written only with the one it joined, the old total kept counting it
        until the next heartbeat, so its account and service read it twice, a step up
        (a false `day0_step`) that resolved by itself seconds later."""
        rows = list(rows)
        left = {self.live[r.key].group for r in rows if r.key in self.live}
        placed = {r.key: self.update(r) for r in rows}
        return placed, left | {group for group, _ in placed.values()}

    def stamp(self, now_ms: int) -> int:
        """A timestamp for rollup samples after every earlier one. Writer shards and the
        heartbeat each write totals; two writes in the same millisecond would give
        VictoriaMetrics two values of one series at one timestamp, and it may keep the
        earlier, partial sum. Totals are computed in order, so the later total gets the
        later timestamp and is the one queries read."""
        self.last_ms = max(now_ms, self.last_ms + 1)
        return self.last_ms

    def rollup_lines(self, groups: Iterable[Group], factors: Factors, ts_ms: int) -> list[str]:
        """The groups' totals and unpriced counts, stamped `stamp(ts_ms)`."""
        ts_ms = self.stamp(ts_ms)
        out = []
        for g in groups:
            text = self._group_text[g]
            # Rates are stored to 6 decimals, so their sum is exact at 6 decimals too.
            total = round(self.totals[g], 6)
            out.append(line(ROLLUP, text, "list", total, ts_ms))
            factor = group_factor(factors, g)
            if factor is not None:
                out.append(line(ROLLUP, text, "reconciled", total * factor, ts_ms))
            out.append(line(UNPRICED, text, None, float(self.unpriced[g]), ts_ms))
        return out

    def heartbeat_lines(self, factors: Factors, ts_ms: int) -> list[str]:
        """Current value of every live priced resource and every group, at `ts_ms`."""
        out = []
        for live in self.live.values():
            if live.rate is not None:
                factor = group_factor(factors, live.group)
                out += resource_lines(live.labels, live.rate, factor, ts_ms)
        out += self.rollup_lines(self.totals, factors, ts_ms)
        return out


def resource_lines(labels: str, rate: float, factor: float | None, ts_ms: int) -> list[str]:
    """A resource's run-rate at `ts_ms`: list price, and reconciled when its group has a
    factor."""
    if factor is None:
        return [line(RATE, labels, "list", rate, ts_ms)]
    return [
        line(RATE, labels, "list", rate, ts_ms),
        line(RATE, labels, "reconciled", rate * factor, ts_ms),
    ]


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
