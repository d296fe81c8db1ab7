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
_NULL = "\\N"


def _t(value: str | None) -> str:
    """A text value (or NULL) in COPY text format."""
    if value is None:
        return _NULL
    # Almost no value needs escaping, and these scans cost a fraction of translate().
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _f(value: float | None) -> str:
    return _NULL if value is None else repr(value)


def _ts(value: datetime) -> str:
    # Only timezone-aware datetimes reach the store; isoformat needs no escaping.
    return value.isoformat()


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
    text = "".join(
        f"{_t(event_id)}\t{_t(provider)}\t{_t(resource_id)}\t{'t' if need else 'f'}\n"
        for event_id, provider, resource_id, need in changes
    )
    async with conn.cursor() as cur:
        async with cur.copy(
            "copy stage_keys (event_id, provider, resource_id, need_row) from stdin"
        ) as copy:
            await copy.write(text.encode())
        await cur.execute(
            "select e.event_id from resource_events e join stage_keys s using (event_id)"
        )
        known = {r[0] for r in await cur.fetchall()}
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
    conn: psycopg.AsyncConnection, rows: Iterable[Resource], now: datetime
) -> None:
    text = "".join(
        "\t".join(
            (
                _t(r.provider),
                _t(r.resource_id),
                _t(r.billing_account_id),
                _t(r.sub_account_id),
                _t(r.region_id),
                _t(r.service_name),
                _t(r.resource_type),
                _t(r.sku),
                _t(_json(r.size)),
                _t(r.state),
                _t(_json(r.tags)),
                _f(r.usd_per_hour),
                "f" if r.usd_per_hour is None else "t",
                _t(r.last_event_id),
                _ts(r.last_event_time),
                _ts(now),
            )
        )
        + "\n"
        for r in rows
    )
    async with conn.cursor() as cur:
        async with cur.copy(
            "copy stage_inventory (provider, resource_id, billing_account_id, sub_account_id,"
            " region_id, service_name, resource_type, sku, size, state, tags, usd_per_hour,"
            " priced, last_event_id, last_event_time, updated_at) from stdin"
        ) as copy:
            await copy.write(text.encode())
        await cur.execute(_UPSERT)


async def insert_events(
    conn: psycopg.AsyncConnection,
    applied: Sequence[Applied],
    rows: dict[Key, Resource],
    now: datetime,
) -> None:
    """One row per accepted event; region and tags come from the merged inventory row, so an
    event that did not state them still carries what CCT knows about the resource.

    Straight COPY, no staging: stage_batch already removed the known event ids, and a resource
    is only ever written by one shard of one process. Should a duplicate slip in anyway (two
    collectors by mistake), the primary key fails the batch, nothing is committed, and the
    retry finds the event known."""
    received = _ts(now)
    lines = []
    for a in applied:
        c = a.change
        merged = rows[(c.provider, c.resource_id)]
        lines.append(
            "\t".join(
                (
                    _t(c.event_id),
                    _t(c.provider),
                    _t(c.resource_id),
                    _t(c.billing_account_id),
                    _t(c.sub_account_id),
                    _t(merged.region_id),
                    _t(c.service_name),
                    _t(c.resource_type),
                    _t(c.action),
                    _t(c.actor),
                    _ts(c.event_time),
                    _t(_json(c.tags if c.tags is not None else merged.tags)),
                    _f(a.usd_before),
                    _f(a.usd_after),
                    received,
                )
            )
            + "\n"
        )
    async with (
        conn.cursor() as cur,
        cur.copy(
            "copy resource_events (event_id, provider, resource_id, billing_account_id,"
            " sub_account_id, region_id, service_name, resource_type, action, actor, event_time,"
            " tags, usd_per_hour_before, usd_per_hour_after, received_at) from stdin"
        ) as copy,
    ):
        await copy.write("".join(lines).encode())


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
