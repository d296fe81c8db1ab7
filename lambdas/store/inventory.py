"""SQL for the collector: resource_inventory, resource_events (0002), ingest_dead_letters and
cost_reconciliation (0100). Set-based statements over COPY-filled staging tables, so a batch
of thousands of events costs a handful of round trips."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import orjson
import psycopg
from psycopg.types.json import set_json_loads

from lambdas.collector.core import Applied, Key, row_from_db
from lambdas.collector.model import Resource

COLUMNS = (
    "provider, resource_id, billing_account_id, sub_account_id, region_id, service_name, "
    "resource_type, sku, size, state, tags, usd_per_hour::float8, last_event_id, last_event_time"
)

PAYLOAD_LIMIT = 64 * 1024


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


# COPY text format, built here rather than by psycopg's per-row write_row: formatting three
# COPY rows per event through write_row was the collector's largest single CPU cost.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# NULL while a batch is built: PostgreSQL text can never hold NUL, so no value is mistaken for it.
NUL = "\x00"


def _escape(value: str) -> str:
    return "\\N" if value == NUL else value.translate(_COPY_ESCAPES)


def copy_text(rows: Sequence[tuple[str, ...]], width: int) -> bytes:
    """COPY text for rows of `width` values (NUL for NULL). Values almost never need escaping,
    so the batch is joined raw and checked once; only a batch that fails the check is escaped
    value by value."""
    text = "\n".join(map("\t".join, rows)) + "\n" if rows else ""
    clean = (
        "\\" not in text
        and "\r" not in text
        and text.count("\t") == len(rows) * (width - 1)
        and text.count("\n") == len(rows)
    )
    if not clean:
        text = "".join("\t".join(map(_escape, row)) + "\n" for row in rows)
    return text.replace(NUL, "\\N").encode()


def _f(value: float | None) -> str:
    return NUL if value is None else repr(value)


class Formatted:
    """Per-batch memo of formatted values: an event's time and tags are written twice (event
    row, inventory row) and a tag set is shared by many rows."""

    def __init__(self) -> None:
        # Keyed by identity (hashing an aware datetime costs as much as formatting it), each
        # entry holding its object so the id cannot be reused within the batch.
        self.times: dict[int, tuple[datetime, str]] = {}
        self.json: dict[int, tuple[object, str]] = {}

    def ts(self, value: datetime) -> str:
        # Only timezone-aware datetimes reach the store; isoformat needs no escaping.
        hit = self.times.get(id(value))
        if hit is None:
            hit = self.times[id(value)] = (value, value.isoformat())
        return hit[1]

    def dumps(self, value: object) -> str:
        hit = self.json.get(id(value))
        if hit is None:
            hit = self.json[id(value)] = (value, _json(value))
        return hit[1]


async def live_resources(conn: psycopg.AsyncConnection) -> list[Resource]:
    cur = await conn.execute(f"select {COLUMNS} from resource_inventory where state <> 'deleted'")
    return [row_from_db(r) for r in await cur.fetchall()]


# Batches move through session-local staging tables filled with COPY: binding thousands of
# values as array parameters costs more client CPU than the whole statement on the server.
STAGING = """
create temp table if not exists stage_keys (
    event_id text, provider text, resource_id text, need_row boolean
) on commit delete rows;
create temp table if not exists stage_inventory (like resource_inventory) on commit delete rows;
"""


async def prepare(conn: psycopg.AsyncConnection) -> None:
    """Create this session's staging tables (once per connection)."""
    # jsonb columns (size, tags) are parsed for every touched row: orjson is several times
    # faster than the standard library here.
    set_json_loads(orjson.loads, conn)
    await conn.execute(STAGING)


async def stage_batch(
    conn: psycopg.AsyncConnection, changes: Sequence[tuple[str, str, str, bool]]
) -> tuple[set[str], dict[Key, Resource]]:
    """Stage (event_id, provider, resource_id, need_row) of a batch; returns the event ids
    already recorded and the current rows of the resources marked need_row (the caller holds
    the others), locked until commit."""
    text = copy_text(
        [(eid, provider, rid, "t" if need else "f") for eid, provider, rid, need in changes],
        4,
    )
    async with conn.cursor() as cur:
        async with cur.copy(
            "copy stage_keys (event_id, provider, resource_id, need_row) from stdin"
        ) as copy:
            await copy.write(text)
        # An index probe per staged id. A join lets the planner (no statistics on the staging
        # table) hash the whole of resource_events, a cost that grows with the table.
        await cur.execute(
            "select event_id from resource_events"
            " where event_id = any(array(select event_id from stage_keys))"
        )
        known = {r[0] for r in await cur.fetchall()}
        if not any(need for _, _, _, need in changes):
            # A warm cache holds every row: save the round trip.
            return known, {}
        await cur.execute(
            f"select {COLUMNS} from resource_inventory"
            " where (provider, resource_id) in"
            " (select distinct provider, resource_id from stage_keys where need_row)"
            " order by provider, resource_id for update"
        )
        rows = [row_from_db(r) for r in await cur.fetchall()]
    return known, {r.key: r for r in rows}


_UPSERT = """
insert into resource_inventory select * from stage_inventory
on conflict (provider, resource_id) do update set
    billing_account_id = excluded.billing_account_id, sub_account_id = excluded.sub_account_id,
    region_id = excluded.region_id, service_name = excluded.service_name,
    resource_type = excluded.resource_type, sku = excluded.sku, size = excluded.size,
    state = excluded.state, tags = excluded.tags, usd_per_hour = excluded.usd_per_hour,
    priced = excluded.priced, last_event_id = excluded.last_event_id,
    last_event_time = excluded.last_event_time, updated_at = excluded.updated_at
"""


async def upsert_resources(
    conn: psycopg.AsyncConnection,
    rows: Iterable[Resource],
    now: datetime,
    fmt: Formatted | None = None,
) -> None:
    fmt = fmt or Formatted()
    updated = now.isoformat()
    text = copy_text(
        [
            (
                r.provider,
                r.resource_id,
                r.billing_account_id,
                r.sub_account_id,
                r.region_id,
                r.service_name,
                r.resource_type,
                NUL if r.sku is None else r.sku,
                fmt.dumps(r.size),
                r.state,
                fmt.dumps(r.tags),
                _f(r.usd_per_hour),
                "f" if r.usd_per_hour is None else "t",
                r.last_event_id,
                fmt.ts(r.last_event_time),
                updated,
            )
            for r in rows
        ],
        16,
    )
    async with conn.cursor() as cur:
        async with cur.copy(
            "copy stage_inventory (provider, resource_id, billing_account_id, sub_account_id,"
            " region_id, service_name, resource_type, sku, size, state, tags, usd_per_hour,"
            " priced, last_event_id, last_event_time, updated_at) from stdin"
        ) as copy:
            await copy.write(text)
        await cur.execute(_UPSERT)


async def insert_events(
    conn: psycopg.AsyncConnection,
    applied: Sequence[Applied],
    rows: dict[Key, Resource],
    now: datetime,
    fmt: Formatted | None = None,
) -> None:
    """One row per accepted event; region and tags come from the merged inventory row, so an
    event that did not state them still carries what CCT knows about the resource.

    Straight COPY, no staging: stage_batch already removed the known event ids, and a resource
    is only ever written by one shard of one process. Should a duplicate slip in anyway (two
    collectors by mistake), the primary key fails the batch, nothing is committed, and the
    retry finds the event known."""
    fmt = fmt or Formatted()
    received = now.isoformat()
    lines = []
    for a in applied:
        c = a.change
        merged = rows[(c.provider, c.resource_id)]
        lines.append(
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
                NUL if c.actor is None else c.actor,
                fmt.ts(c.event_time),
                fmt.dumps(c.tags if c.tags is not None else merged.tags),
                _f(a.usd_before),
                _f(a.usd_after),
                received,
            )
        )
    async with (
        conn.cursor() as cur,
        cur.copy(
            "copy resource_events (event_id, provider, resource_id, billing_account_id,"
            " sub_account_id, region_id, service_name, resource_type, action, actor, event_time,"
            " tags, usd_per_hour_before, usd_per_hour_after, received_at) from stdin"
        ) as copy,
    ):
        await copy.write(copy_text(lines, 15))


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
