"""SQL of the detector: one `anomalies` row per incident, and the change events it links."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lambdas.contract import resource_labels
from lambdas.detector.attribution import ChangeEvent
from lambdas.store.db import translate_errors

# Alert dimension labels -> resource_events columns (team is a tag there).
EVENT_FILTERS = {
    "provider": "provider",
    "billing_account_id": "billing_account_id",
    "region_id": "region_id",
    "service_name": "service_name",
    "resource_id": "resource_id",
    "team": "tag_value(tags, 'team')",  # any key case, as the collector (0703)
}


@dataclass(frozen=True)
class AnomalyRow:
    fingerprint: str
    started_at: datetime
    rule: str
    level: str
    severity: str
    dimensions: Mapping[str, str]
    expected_usd_per_hour: float
    observed_usd_per_hour: float
    deviation: float
    contributors: Sequence[Mapping[str, Any]]
    change_events: Sequence[Mapping[str, Any]]
    # The aggregates this incident explains (lambdas.contract.A_ANCESTORS).
    ancestors: Sequence[Mapping[str, Any]] = ()


def upsert(conn: psycopg.Connection[Any], row: AnomalyRow) -> None:
    """Insert the incident or refresh its figures; its rule never changes, its severity and
    fingerprint only through `escalate`. No row is inserted when the incident's row is
    already under another fingerprint (the same start, level, rule and dimensions at another
    severity: escalated since), so a write replayed from the detector's spool after a crash
    cannot add a second row of the old severity; a row of its own is refreshed regardless."""
    with translate_errors("upsert anomaly"):
        conn.execute(
            """
            insert into anomalies (fingerprint, started_at, rule, level, severity, dimensions,
                expected_usd_per_hour, observed_usd_per_hour, deviation, contributors,
                change_events, ancestors)
            select %(fp)s::text, %(started)s::timestamptz, %(rule)s::text, %(level)s::text,
                %(severity)s::text, %(dims)s::jsonb, %(expected)s, %(observed)s,
                %(deviation)s, %(contributors)s::jsonb, %(events)s::jsonb,
                %(ancestors)s::jsonb
            where not exists (
                select 1 from anomalies moved
                where moved.started_at = %(started)s::timestamptz
                  and moved.level = %(level)s::text and moved.rule = %(rule)s::text
                  and moved.dimensions = %(dims)s::jsonb and moved.fingerprint <> %(fp)s::text
                  and moved.severity <> %(severity)s::text
            ) or exists (
                -- Its own row is refreshed whatever else there is.
                select 1 from anomalies own
                where own.fingerprint = %(fp)s::text
                  and own.started_at = %(started)s::timestamptz
            )
            on conflict (fingerprint, started_at) do update set
                expected_usd_per_hour = excluded.expected_usd_per_hour,
                observed_usd_per_hour = excluded.observed_usd_per_hour,
                deviation = excluded.deviation,
                contributors = excluded.contributors,
                change_events = excluded.change_events,
                ancestors = excluded.ancestors,
                updated_at = now()
            -- A resolved incident keeps its last figures (a replayed write is older).
            where anomalies.resolved_at is null
            """,
            {
                "fp": row.fingerprint,
                "started": row.started_at,
                "rule": row.rule,
                "level": row.level,
                "severity": row.severity,
                "dims": Jsonb(dict(row.dimensions)),
                "expected": row.expected_usd_per_hour,
                "observed": row.observed_usd_per_hour,
                "deviation": row.deviation,
                "contributors": Jsonb(list(row.contributors)),
                "events": Jsonb(list(row.change_events)),
                "ancestors": Jsonb(list(row.ancestors)),
            },
        )


def escalate(conn: psycopg.Connection[Any], old_fingerprint: str, row: AnomalyRow) -> None:
    """The incident's alert changed severity, hence fingerprint: move its row to the new
    fingerprint and severity (still one row per incident), then refresh its figures."""
    with translate_errors("escalate anomaly"):
        conn.execute(
            "update anomalies set fingerprint = %s, severity = %s, updated_at = now() "
            "where fingerprint = %s and started_at = %s",
            (row.fingerprint, row.severity, old_fingerprint, row.started_at),
        )
    upsert(conn, row)


def resolve(
    conn: psycopg.Connection[Any], fingerprint: str, started_at: datetime, resolved_at: datetime
) -> None:
    with translate_errors("resolve anomaly"):
        conn.execute(
            "update anomalies set resolved_at = %s, updated_at = now() "
            "where fingerprint = %s and started_at = %s and resolved_at is null",
            (resolved_at, fingerprint, started_at),
        )


def get(conn: psycopg.Connection[Any], fingerprint: str) -> list[dict[str, Any]]:
    """Every incident of one alert fingerprint, newest first."""
    with translate_errors("read anomalies"), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "select * from anomalies where fingerprint = %s order by started_at desc",
            (fingerprint,),
        )
        return list(cur.fetchall())


def change_events(
    conn: psycopg.Connection[Any],
    dimensions: Mapping[str, str],
    *,
    since: datetime,
    until: datetime,
    resource_ids: Sequence[str] = (),
    limit: int = 50,
) -> list[ChangeEvent]:
    """Change events between `since` and `until` on the given resources, or on any resource
    inside the alert's dimensions whose run-rate went up (so a resource too new to be in the
    metrics store yet is still found). Biggest run-rate increase first."""
    where = []
    params: list[Any] = [since, until]
    for label, value in dimensions.items():
        column = EVENT_FILTERS.get(label)
        if column and value:
            where.append(f"{column} = %s")
            params.append(value)
    inside = " and ".join(where) if where else "true"
    params.append(list(resource_ids))
    params.append(limit)
    with translate_errors("read change events"):
        rows = conn.execute(
            f"""
            select event_id, provider, resource_id, action, actor, event_time, tags,
                   usd_per_hour_before, usd_per_hour_after
            from resource_events
            where event_time between %s and %s
              and (({inside}
                    and coalesce(usd_per_hour_after, 0) > coalesce(usd_per_hour_before, 0))
                   or resource_id = any(%s))
            order by coalesce(usd_per_hour_after, 0) - coalesce(usd_per_hour_before, 0) desc,
                     event_time desc
            limit %s
            """,
            params,
        ).fetchall()
    return [
        ChangeEvent(
            event_id=r[0],
            provider=r[1],
            resource_id=r[2],
            action=r[3],
            actor=r[4],
            event_time=r[5].astimezone(UTC),
            tags={str(k): str(v) for k, v in (r[6] or {}).items()},
            usd_per_hour_before=None if r[7] is None else float(r[7]),
            usd_per_hour_after=None if r[8] is None else float(r[8]),
        )
        for r in rows
    ]


def open_rows(conn: psycopg.Connection[Any], levels: Sequence[str]) -> list[AnomalyRow]:
    """The detector's incidents still open (a restarted detector adopts them), oldest first."""
    with translate_errors("read open anomalies"):
        rows = conn.execute(
            """
            select fingerprint, started_at, rule, level, severity, dimensions,
                   expected_usd_per_hour, observed_usd_per_hour, deviation, contributors,
                   change_events, ancestors
            from anomalies
            where resolved_at is null and rule <> 'budget' and level = any(%s)
            order by started_at
            """,
            (list(levels),),
        ).fetchall()
    return [
        AnomalyRow(
            fingerprint=r[0],
            started_at=r[1].astimezone(UTC),
            rule=r[2],
            level=r[3],
            severity=r[4],
            dimensions={str(k): str(v) for k, v in (r[5] or {}).items()},
            expected_usd_per_hour=float(r[6]),
            observed_usd_per_hour=float(r[7]),
            deviation=float(r[8]),
            contributors=list(r[9] or []),
            change_events=list(r[10] or []),
            ancestors=list(r[11] or []),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class InventoryResource:
    """A resource's contract labels and current list run-rate, from the inventory."""

    labels: Mapping[str, str]
    usd_per_hour: float | None


_INVENTORY_LABEL_COLUMNS = """i.provider, i.resource_id, i.billing_account_id, i.sub_account_id,
    i.region_id, i.service_name, i.resource_type, i.tags, i.usd_per_hour, i.state"""


def _inventory_resource(r: Sequence[Any]) -> InventoryResource:
    return InventoryResource(
        labels=resource_labels(
            provider=r[0],
            resource_id=r[1],
            billing_account_id=r[2],
            sub_account_id=r[3],
            region_id=r[4],
            service_name=r[5],
            resource_type=r[6],
            tags=r[7],
        ),
        # A deleted resource costs nothing from now on (the collector writes 0 as well).
        usd_per_hour=0.0 if r[9] == "deleted" else None if r[8] is None else float(r[8]),
    )


def changed_resources(
    conn: psycopg.Connection[Any], received_since: datetime, lookback_s: float
) -> tuple[list[InventoryResource], datetime]:
    """Resources whose change events arrived after `received_since` (events of the last
    `lookback_s` by event time, which bounds the scan), with their current inventory state;
    and the database's clock, the next call's `received_since`."""
    with translate_errors("read changed resources"):
        rows = conn.execute(
            f"""
            with recent as (
                select distinct provider, resource_id
                from resource_events
                where event_time > clock_timestamp() - %s * interval '1 second'
                  and received_at > %s
            )
            select {_INVENTORY_LABEL_COLUMNS}
            from recent r join resource_inventory i using (provider, resource_id)
            """,
            (lookback_s, received_since),
        ).fetchall()
        clock = conn.execute("select clock_timestamp()").fetchone()
    assert clock is not None
    return [_inventory_resource(r) for r in rows], clock[0]


def changes_within(
    conn: psycopg.Connection[Any], window_s: float, lookback_s: float
) -> list[tuple[InventoryResource, float | None]]:
    """Resources with change events received in the last `window_s` (of events of the last
    `lookback_s` by event time, which bounds the scan), each with its current inventory
    state and its run-rate before the first of those changes (None: it had none, a new or
    unpriced resource). Receipt time, not event time: the collector writes a resource's
    series when it receives the event, so that is when the series changed."""
    with translate_errors("read recent changes"):
        rows = conn.execute(
            f"""
            select distinct on (e.provider, e.resource_id)
                {_INVENTORY_LABEL_COLUMNS}, e.usd_per_hour_before
            from resource_events e join resource_inventory i using (provider, resource_id)
            where e.event_time > clock_timestamp() - %s * interval '1 second'
              and e.received_at > clock_timestamp() - %s * interval '1 second'
            order by e.provider, e.resource_id, e.event_time, e.received_at
            """,
            (max(lookback_s, window_s), window_s),
        ).fetchall()
    return [(_inventory_resource(r), None if r[10] is None else float(r[10])) for r in rows]


def inventory_labels(
    conn: psycopg.Connection[Any], keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Mapping[str, str]]:
    """The contract labels of (provider, resource_id) pairs that the inventory knows."""
    if not keys:
        return {}
    with translate_errors("read inventory labels"):
        rows = conn.execute(
            f"""
            select {_INVENTORY_LABEL_COLUMNS}
            from resource_inventory i
            join unnest(%s::text[], %s::text[]) as k(provider, resource_id)
              using (provider, resource_id)
            """,
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
    return {(r[0], r[1]): _inventory_resource(r).labels for r in rows}
