"""SQL for the collector: resource_inventory, resource_events (0002), ingest_dead_letters and
cost_reconciliation (0100), container_deletions (0706).

A batch travels as JSON parameters (one array per table) expanded by set-based statements:
thousands of events cost one or a few round trips, orjson renders the rows in C, and the
statements need no staging tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_loads

from lambdas.collector.core import Applied, Key, Tombstone, Tombstones, row_from_db
from lambdas.collector.model import Resource, ResourceChange

COLUMNS = (
    "provider, resource_id, billing_account_id, sub_account_id, region_id, service_name, "
    "resource_type, sku, size, state, tags, usd_per_hour::float8, last_event_id, last_event_time"
)

PAYLOAD_LIMIT = 64 * 1024

# The one unique constraint a batch's write can hit: an event id already recorded.
EVENTS_KEY = "resource_events_pkey"


def _plain(value: Any) -> Any:
    """orjson's fallback: a read-only mapping (an event without attributes) as a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_plain)


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=_dumps)


async def live_resources(conn: psycopg.AsyncConnection) -> list[Resource]:
    cur = await conn.execute(f"select {COLUMNS} from resource_inventory where state <> 'deleted'")
    return [row_from_db(r) for r in await cur.fetchall()]


async def prepare(conn: psycopg.AsyncConnection) -> None:
    """Per connection: jsonb columns (size, tags) are parsed for every row read back; orjson
    is several times faster than the standard library here."""
    set_json_loads(orjson.loads, conn)


_KNOWN = (
    "select event_id from resource_events"
    " where event_id = any(array(select jsonb_array_elements_text(%(ids)s::jsonb)))"
)
_ROWS = f"""
select {COLUMNS} from resource_inventory
where (provider, resource_id) in
    (select k ->> 0, k ->> 1 from jsonb_array_elements(%(keys)s::jsonb) k)
order by provider, resource_id
"""
# Sorted, so two transactions locking overlapping rows (two collectors by mistake) wait for
# each other instead of deadlocking.
_LOCK = _ROWS + "for update"


async def read_rows(conn: psycopg.AsyncConnection, keys: Sequence[Key]) -> dict[Key, Resource]:
    """The current rows of `keys` (those that exist), unlocked."""
    cur = await conn.execute(_ROWS, {"keys": _jsonb(keys)}, prepare=True)
    return {r.key: r for r in map(row_from_db, await cur.fetchall())}


async def read_batch(
    conn: psycopg.AsyncConnection, event_ids: Sequence[str], keys: Sequence[Key]
) -> tuple[set[str], dict[Key, Resource]]:
    """In the caller's transaction: which of `event_ids` are already recorded, and the current
    rows of `keys` (the resources the caller does not hold), locked until commit."""
    cur = await conn.execute(_KNOWN, {"ids": _jsonb(event_ids)}, prepare=True)
    known = {r[0] for r in await cur.fetchall()}
    if not keys:
        return known, {}
    cur = await conn.execute(_LOCK, {"keys": _jsonb(keys)}, prepare=True)
    rows = [row_from_db(r) for r in await cur.fetchall()]
    return known, {r.key: r for r in rows}


# One statement, so one round trip and atomic on its own: the inventory upsert and the event
# rows. Array positions follow _inventory_rows and _event_rows.
_WRITE = """
with inventory as (
    insert into resource_inventory (provider, resource_id, billing_account_id, sub_account_id,
        region_id, service_name, resource_type, sku, size, state, tags, usd_per_hour, priced,
        last_event_id, last_event_time, updated_at)
    select r ->> 0, r ->> 1, r ->> 2, r ->> 3, r ->> 4, r ->> 5, r ->> 6, r ->> 7, r -> 8,
        r ->> 9, r -> 10, (r ->> 11)::numeric, r -> 11 <> 'null'::jsonb, r ->> 12,
        (r ->> 13)::timestamptz, %(now)s
    from jsonb_array_elements(%(rows)s::jsonb) r
    on conflict (provider, resource_id) do update set
        billing_account_id = excluded.billing_account_id,
        sub_account_id = excluded.sub_account_id, region_id = excluded.region_id,
        service_name = excluded.service_name, resource_type = excluded.resource_type,
        sku = excluded.sku, size = excluded.size, state = excluded.state, tags = excluded.tags,
        usd_per_hour = excluded.usd_per_hour, priced = excluded.priced,
        last_event_id = excluded.last_event_id, last_event_time = excluded.last_event_time,
        updated_at = excluded.updated_at
)
insert into resource_events (event_id, provider, resource_id, billing_account_id,
    sub_account_id, region_id, service_name, resource_type, action, actor, event_time, tags,
    usd_per_hour_before, usd_per_hour_after, received_at)
select e ->> 0, e ->> 1, e ->> 2, e ->> 3, e ->> 4, e ->> 5, e ->> 6, e ->> 7, e ->> 8, e ->> 9,
    (e ->> 10)::timestamptz, e -> 11, (e ->> 12)::numeric, (e ->> 13)::numeric, %(now)s
from jsonb_array_elements(%(events)s::jsonb) e
"""


def _event_rows(applied: Sequence[Applied], rows: Mapping[Key, Resource]) -> list[tuple[Any, ...]]:
    """One row per accepted event; region and tags come from the merged inventory row, so an
    event that did not state them still carries what CCT knows about the resource."""
    out = []
    for a in applied:
        c = a.change
        merged = rows[(c.provider, c.resource_id)]
        out.append(
            (
                c.event_id,
                c.provider,
                c.resource_id,
                c.billing_account_id,
                c.sub_account_id,
                merged.region_id,
                c.service_name,
                c.resource_type,
                c.action,
                c.actor,
                c.event_time,
                # A refused tag edit (`tags_refused`) records the tags the resource kept.
                merged.tags if c.tags is None or a.tags_refused else c.tags,
                a.usd_before,
                a.usd_after,
            )
        )
    return out


async def write_batch(
    conn: psycopg.AsyncConnection,
    rows: Mapping[Key, Resource],
    applied: Sequence[Applied],
    now: datetime,
) -> None:
    """Upsert the changed inventory rows and insert one resource_events row per applied event.

    Raises psycopg.errors.UniqueViolation on EVENTS_KEY when an event id is already recorded
    (nothing is written then): the collector writes without looking first and looks only after
    such a failure. Only aware datetimes reach here; orjson renders them as RFC 3339."""
    # Resource is a NamedTuple; orjson renders plain tuples natively as arrays.
    params = {
        "rows": _jsonb([tuple(r) for r in rows.values()]),
        "events": _jsonb(_event_rows(applied, rows)),
        "now": now,
    }
    await conn.execute(_WRITE, params, prepare=True)


async def insert_dead_letters(
    conn: psycopg.AsyncConnection, source: str, items: Sequence[tuple[str, str, str]]
) -> None:
    """(reason, detail, payload) per rejected item."""
    if not items:
        return
    await conn.execute(
        "insert into ingest_dead_letters (source, reason, detail, payload)"
        " select %s, * from unnest(%s::text[], %s::text[], %s::text[])",
        (
            source,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2][:PAYLOAD_LIMIT] for i in items],
        ),
    )


async def reconciliation_factors(
    conn: psycopg.AsyncConnection,
) -> dict[tuple[str, str, str], float]:
    cur = await conn.execute(
        "select provider, billing_account_id, service_name, factor from cost_reconciliation"
    )
    return {(r[0], r[1], r[2]): float(r[3]) for r in await cur.fetchall()}


async def insert_container_deletions(
    conn: psycopg.AsyncConnection, containers: Sequence[ResourceChange]
) -> None:
    """Record containers' deletions, keeping each container's newest (a redelivery or an older
    deletion changes nothing)."""
    # One row per container in the statement: `on conflict do update` may not touch a row twice.
    newest: dict[Key, ResourceChange] = {}
    for c in containers:
        key = (c.provider, c.resource_id)
        if key not in newest or c.event_time > newest[key].event_time:
            newest[key] = c
    if not newest:
        return
    rows = list(newest.values())
    await conn.execute(
        """insert into container_deletions as d
               (provider, container_id, deleted_at, event_id, action)
           select * from unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[])
           on conflict (provider, container_id) do update
              set deleted_at = excluded.deleted_at, event_id = excluded.event_id,
                  action = excluded.action, received_at = now()
            where excluded.deleted_at > d.deleted_at""",
        (
            [c.provider for c in rows],
            [c.resource_id for c in rows],
            [c.event_time for c in rows],
            [c.event_id for c in rows],
            [c.action for c in rows],
        ),
    )


async def container_deletions(conn: psycopg.AsyncConnection) -> Tombstones:
    """Every recorded container deletion (retention keeps the table to a month)."""
    cur = await conn.execute(
        "select provider, container_id, deleted_at, event_id, action from container_deletions"
    )
    tombstones = Tombstones()
    for provider, container_id, *tombstone in await cur.fetchall():
        tombstones.add(provider, container_id, Tombstone(*tombstone))
    return tombstones
