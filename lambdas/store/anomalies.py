"""SQL of the detector: one `anomalies` row per incident, and the change events it links."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lambdas.detector.attribution import ChangeEvent
from lambdas.store.db import translate_errors

# Alert dimension labels -> resource_events columns (team is a tag there).
EVENT_FILTERS = {
    "provider": "provider",
    "billing_account_id": "billing_account_id",
    "region_id": "region_id",
    "service_name": "service_name",
    "resource_id": "resource_id",
    "team": "tags->>'team'",
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


def upsert(conn: psycopg.Connection[Any], row: AnomalyRow) -> None:
    """Insert the incident or refresh its figures; its rule never changes, its severity and
    fingerprint only through `escalate`."""
    with translate_errors("upsert anomaly"):
        conn.execute(
            """
            insert into anomalies (fingerprint, started_at, rule, level, severity, dimensions,
                expected_usd_per_hour, observed_usd_per_hour, deviation, contributors,
                change_events)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            on conflict (fingerprint, started_at) do update set
                expected_usd_per_hour = excluded.expected_usd_per_hour,
                observed_usd_per_hour = excluded.observed_usd_per_hour,
                deviation = excluded.deviation,
                contributors = excluded.contributors,
                change_events = excluded.change_events,
                updated_at = now()
            """,
            (
                row.fingerprint,
                row.started_at,
                row.rule,
                row.level,
                row.severity,
                Jsonb(dict(row.dimensions)),
                row.expected_usd_per_hour,
                row.observed_usd_per_hour,
                row.deviation,
                Jsonb(list(row.contributors)),
                Jsonb(list(row.change_events)),
            ),
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
