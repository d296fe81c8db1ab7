"""SQL for the billing loader: billing_loads, billing_hourly, cost_reconciliation (0100)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import psycopg

Partition = tuple[str, str, str]  # provider, billing_account_id, billing_period
# Column order of the CSV chunks replace_partition copies into billing_hourly.
HOURLY_CSV_COLUMNS = (
    "provider",
    "billing_account_id",
    "billing_period",
    "load_id",
    "sub_account_id",
    "region_id",
    "service_name",
    "team",
    "env",
    "hour",
    "billed_cost",
    "effective_cost",
    "list_cost",
)


def lock_partition(conn: psycopg.Connection, part: Partition) -> str | None:
    """Serialise loaders of one partition for this transaction; returns its current load id."""
    conn.execute("select pg_advisory_xact_lock(hashtext(%s))", ("billing:" + "/".join(part),))
    row = conn.execute(
        "select load_id from billing_loads where provider = %s and billing_account_id = %s"
        " and billing_period = %s and status = 'current'",
        part,
    ).fetchone()
    return str(row[0]) if row else None


def forget_partition(conn: psycopg.Connection, part: Partition) -> None:
    """No delivery of the partition counts as current: the next load writes it again."""
    conn.execute(
        "update billing_loads set status = 'superseded' where provider = %s"
        " and billing_account_id = %s and billing_period = %s and status = 'current'",
        part,
    )


def replace_partition(
    conn: psycopg.Connection,
    part: Partition,
    *,
    load_id: str,
    sources: Sequence[str],
    rows_read: int,
    csv_chunks: Iterable[bytes],
) -> None:
    """Make `load_id` the partition's current delivery; earlier deliveries are superseded and
    their hours removed, so totals never include two deliveries. `csv_chunks` are CSV rows
    (no header) in HOURLY_CSV_COLUMNS order, written by Arrow: far cheaper than binding rows
    one by one."""
    conn.execute(
        "update billing_loads set status = 'superseded' where provider = %s"
        " and billing_account_id = %s and billing_period = %s and status = 'current'",
        part,
    )
    conn.execute(
        "delete from billing_hourly where provider = %s and billing_account_id = %s"
        " and billing_period = %s",
        part,
    )
    columns = ", ".join(HOURLY_CSV_COLUMNS)
    with conn.cursor().copy(f"copy billing_hourly ({columns}) from stdin (format csv)") as copy:
        for chunk in csv_chunks:
            copy.write(chunk)
    conn.execute(
        "insert into billing_loads (load_id, provider, billing_account_id, billing_period,"
        " sources, rows_read, status) values (%s, %s, %s, %s, %s, %s, 'current')"
        " on conflict (provider, billing_account_id, billing_period, load_id)"
        " do update set status = 'current', loaded_at = now()",
        (load_id, *part, list(sources), rows_read),
    )


def billed_by_service(
    conn: psycopg.Connection, provider: str, account: str, window_h: int
) -> tuple[datetime | None, dict[str, float]]:
    """EffectiveCost per service over the last `window_h` billed hours of the account, and the
    end of that window: one hour after the newest billed hour, at most the current hour (a
    month-to-date delivery spreads its monthly fees, tax and support, to the month's end: a
    window there would hold fees only, and no estimate to compare them with). Such a delivery
    lags usage by hours, which the window's last hours then miss: its factor reads low by about
    lag / window (a day in the default week: 14 %), corrected by the month's final delivery."""
    row = conn.execute(
        "select case when max(hour) is not null then"
        " least(max(hour) + interval '1 hour', date_trunc('hour', now(), 'UTC')) end"
        " from billing_hourly where provider = %s and billing_account_id = %s",
        (provider, account),
    ).fetchone()
    end = row[0] if row else None
    if end is None:
        return None, {}
    rows = conn.execute(
        "select service_name, sum(effective_cost) from billing_hourly"
        " where provider = %s and billing_account_id = %s"
        " and hour >= %s - make_interval(hours => %s) and hour < %s group by service_name",
        (provider, account, end, window_h, end),
    ).fetchall()
    return end, {str(r[0]): float(r[1]) for r in rows}


def save_reconciliation(
    conn: psycopg.Connection,
    *,
    provider: str,
    account: str,
    service: str,
    window: tuple[datetime, datetime],
    billed: float,
    estimated: float,
    factor: float,
) -> None:
    conn.execute(
        "insert into cost_reconciliation (provider, billing_account_id, service_name,"
        " window_start, window_end, billed_usd, estimated_usd, factor)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s)"
        " on conflict (provider, billing_account_id, service_name) do update set"
        " window_start = excluded.window_start, window_end = excluded.window_end,"
        " billed_usd = excluded.billed_usd, estimated_usd = excluded.estimated_usd,"
        " factor = excluded.factor, computed_at = now()",
        (provider, account, service, *window, billed, estimated, factor),
    )


def dead_letter(conn: psycopg.Connection, reason: str, detail: str, payload: str) -> None:
    conn.execute(
        "insert into ingest_dead_letters (source, reason, detail, payload)"
        " values ('billing', %s, %s, %s)",
        (reason, detail, payload[: 64 * 1024]),
    )
