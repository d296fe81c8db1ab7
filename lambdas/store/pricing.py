"""SQL for the price catalog (table price_catalog, migration 0002)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg

from lambdas.pricing.catalog import PriceKey
from lambdas.pricing.sources import PriceRow

_UPSERT = """
insert into price_catalog
    (provider, service_name, region_id, sku, unit, usd_per_unit, source, effective_from)
select * from unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::numeric[], %s::text[], %s::timestamptz[])
on conflict (provider, service_name, region_id, sku, unit) do update
    set usd_per_unit = excluded.usd_per_unit, source = excluded.source,
        effective_from = excluded.effective_from, loaded_at = now()
"""


def upsert_prices(conn: psycopg.Connection, rows: Sequence[PriceRow], effective: datetime) -> int:
    if not rows:
        return 0
    conn.execute(
        _UPSERT,
        (
            [r.key.provider for r in rows],
            [r.key.service_name for r in rows],
            [r.key.region_id for r in rows],
            [r.key.sku for r in rows],
            [r.key.unit for r in rows],
            [r.usd_per_unit for r in rows],
            [r.source for r in rows],
            [effective] * len(rows),
        ),
    )
    return len(rows)


_SELECT = (
    "select provider, service_name, region_id, sku, unit, usd_per_unit::float8 from price_catalog"
)


def load_price_book(conn: psycopg.Connection) -> dict[PriceKey, float]:
    return {PriceKey(*row[:5]): float(row[5]) for row in conn.execute(_SELECT)}


async def aload_price_book(conn: psycopg.AsyncConnection) -> dict[PriceKey, float]:
    cur = await conn.execute(_SELECT)
    return {PriceKey(*row[:5]): float(row[5]) for row in await cur.fetchall()}
