"""The detector's row writes replayed from its spool after a crash (lambdas.detector.outbox):
a replay of writes already applied changes nothing, even across an escalation that moved the
row to another fingerprint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from lambdas.detector.alerts import alert_labels, fingerprint
from lambdas.detector.config import SeriesKey
from lambdas.detector.outbox import Escalate, Resolve, RowOp, Upsert, apply_ops
from lambdas.store import anomalies as store

KEY = SeriesKey("team", (("team", "replay"),))
START = datetime(2026, 12, 6, 12, tzinfo=UTC)


def row(severity: str, observed: float) -> store.AnomalyRow:
    return store.AnomalyRow(
        fingerprint=fingerprint(alert_labels(KEY, "seasonal", severity)),
        started_at=START,
        rule="seasonal",
        level="team",
        severity=severity,
        dimensions=KEY.as_dict(),
        expected_usd_per_hour=100.0,
        observed_usd_per_hour=observed,
        deviation=observed / 100.0 - 1,
        contributors=[],
        change_events=[],
    )


def apply(conn: psycopg.Connection[Any], ops: list[RowOp]) -> None:
    """What the detector does with its queue (`Detector._apply`)."""
    apply_ops(conn, ops)
    conn.commit()


def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select severity, observed_usd_per_hour::float, resolved_at is not null"
        " from anomalies where dimensions = %s::jsonb order by fingerprint",
        (psycopg.types.json.Jsonb(KEY.as_dict()),),
    ).fetchall()


def test_a_replayed_spool_adds_no_row_of_an_old_severity(migrated_db: str) -> None:
    warning, critical = row("warning", 130.0), row("critical", 260.0)
    spooled: list[RowOp] = [Upsert(warning), Escalate(critical, warning.fingerprint)]
    with psycopg.connect(migrated_db) as conn:
        apply(conn, spooled)
        assert rows(conn) == [("critical", 260.0, False)]
        apply(conn, spooled)  # the crash came after the commit, before the spool was saved
        assert rows(conn) == [("critical", 260.0, False)]
        resolved: list[RowOp] = [Resolve(critical, START.timestamp() + 600)]
        apply(conn, resolved)
        apply(conn, [*spooled, *resolved])
        assert rows(conn) == [("critical", 260.0, True)]


def test_a_row_is_refreshed_even_beside_a_sibling_of_another_severity(migrated_db: str) -> None:
    """Rows an older detector duplicated (the replay of an escalation before the guard) do
    not freeze the real one: only the insert is guarded."""
    warning, critical = row("warning", 130.0), row("critical", 260.0)
    with psycopg.connect(migrated_db) as conn:
        apply(conn, [Upsert(critical)])
        conn.execute(
            "insert into anomalies (fingerprint, started_at, rule, level, severity, dimensions,"
            " expected_usd_per_hour, observed_usd_per_hour, deviation)"
            " values (%s, %s, 'seasonal', 'team', 'warning', %s, 100, 130, 0.3)",
            (warning.fingerprint, START, psycopg.types.json.Jsonb(KEY.as_dict())),
        )
        apply(conn, [Upsert(row("critical", 300.0))])
        assert rows(conn) == [("critical", 300.0, False), ("warning", 130.0, False)]
