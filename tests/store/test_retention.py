"""Retention deletes only finished rows older than the setting, and the setting is data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner

from lambdas.cli import cli
from lambdas.store.db import connect
from lambdas.store.migrate import migrate
from lambdas.store.results import RULES, RetentionError, apply_retention, load_policy, set_policy
from tests.store import seed

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=1200)  # beyond every default setting
RECENT = NOW - timedelta(days=5)  # within every default setting

# Tables kept whole, with the reason; every other table must have a retention rule, so a new
# table cannot grow forever unnoticed.
KEPT_WHOLE = {
    "schema_migrations": "the migration record",
    "retention_policy": "the setting itself",
    "optimization_actions": "deleted together with its run (optimization_runs rule)",
    "price_catalog": "one row per SKU, replaced in place",
    "cost_reconciliation": "one row per (provider, account, service), replaced in place",
    "billing_loads": "one row per delivered billing partition: small, and the audit of loads",
}


def _seed_old_and_recent(dsn: str, s: seed.Scope) -> dict[str, str]:
    """Returns the run ids by name (the trigger names its runs)."""
    runs: dict[str, str] = {}
    with connect(dsn) as conn:
        _seed_rows(conn, s, runs)
    for age in (OLD, RECENT):
        seed.dead_letter(dsn, age)
    return runs


def _seed_rows(conn: psycopg.Connection, s: seed.Scope, runs: dict[str, str]) -> None:
    for age, tag in ((OLD, "old"), (RECENT, "new")):
        seed.anomaly(conn, s, f"resolved-{tag}", age, resolved_at=age + timedelta(hours=1))
        seed.resource_event(conn, s, f"evt-{tag}", age, before=None, after=1.0)
        seed.inventory(conn, s, f"i-deleted-{tag}", "deleted", age)
        seed.inventory(conn, s, f"i-running-{tag}", "running", age)
        seed.container_deletion(conn, s, f"rg-{tag}", age)
        seed.decision(conn, s, f"dec-{tag}", "allow", age)
        runs[f"run-{tag}"] = seed.run(conn, s, f"run-{tag}", "succeeded", age, finished_at=age)
        runs[f"stuck-{tag}"] = seed.run(conn, s, f"stuck-{tag}", "running", age)
    # Open, however old: never deleted.
    seed.anomaly(conn, s, "open-old", OLD)


def _count(conn: psycopg.Connection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_retention_deletes_only_old_finished_rows(migrated_db: str) -> None:
    s = seed.Scope("ret")
    runs = _seed_old_and_recent(migrated_db, s)
    with connect(migrated_db, autocommit=True) as conn:
        dry = {r.relation: r.deleted for r in apply_retention(conn, NOW, dry_run=True)}
        real = {r.relation: r.deleted for r in apply_retention(conn, NOW, batch=1)}
        again = {r.relation: r.deleted for r in apply_retention(conn, NOW)}
        left = {
            "anomalies": conn.execute("select fingerprint from anomalies order by 1").fetchall(),
            "events": conn.execute("select event_id from resource_events").fetchall(),
            "inventory": conn.execute(
                "select resource_id from resource_inventory order by 1"
            ).fetchall(),
            "decisions": conn.execute("select decision_id from policy_decisions").fetchall(),
            "runs": conn.execute("select run_id from optimization_runs order by 1").fetchall(),
            "actions": conn.execute("select run_id from optimization_actions").fetchall(),
            "dead letters": _count(conn, "select count(*) from ingest_dead_letters"),
            "containers": conn.execute("select event_id from container_deletions").fetchall(),
        }
    expected = {
        "anomalies": 1,
        "billing_hourly": 0,
        "container_deletions": 1,
        "ingest_dead_letters": 1,
        "optimization_runs": 1,
        "policy_decisions": 1,
        "resource_events": 1,
        "resource_inventory": 1,
    }
    assert dry == expected
    assert real == expected  # batch=1 exercises the batch loop
    assert set(again.values()) == {0}
    assert left == {
        "anomalies": [("open-old",), ("resolved-new",)],
        "events": [("evt-new",)],
        "inventory": [("i-deleted-new",), ("i-running-new",), ("i-running-old",)],
        "decisions": [("dec-new",)],
        "runs": sorted((runs[name],) for name in ("run-new", "stuck-new", "stuck-old")),
        "actions": [(runs["run-new"],)],
        "dead letters": 1,
        "containers": [("azure:rg-new",)],
    }


def test_setting_is_an_idempotent_upsert_and_refuses_nonsense(migrated_db: str) -> None:
    with connect(migrated_db) as conn:
        set_policy(conn, {"resource_events": 14})
        set_policy(conn, {"resource_events": 14})
        assert load_policy(conn)["resource_events"] == 14
        assert _count(conn, "select count(*) from retention_policy") == len(RULES)
        with pytest.raises(RetentionError, match="no retention rule for 'nope'"):
            set_policy(conn, {"nope": 3})
        with pytest.raises(RetentionError, match="at least 1"):
            set_policy(conn, {"anomalies": 0})


def test_apply_needs_autocommit(migrated_db: str) -> None:
    with connect(migrated_db) as conn, pytest.raises(RetentionError, match="autocommit"):
        apply_retention(conn, NOW)


def test_every_table_has_a_retention_rule_or_a_reason(pg_dsn: str) -> None:
    with connect(pg_dsn) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "select tablename from pg_tables where schemaname = 'public'"
            ).fetchall()
        }
    assert tables - set(RULES) - set(KEPT_WHOLE) == set()
    assert set(RULES) <= tables


def test_default_setting_covers_every_rule(migrated_db: str) -> None:
    with connect(migrated_db) as conn:
        assert set(load_policy(conn)) == set(RULES)


def test_cli_show_set_and_dry_run(migrated_db: str) -> None:
    runner = CliRunner()
    shown = runner.invoke(
        cli, ["db", "retention", "--dsn", migrated_db, "--set", "anomalies=400", "--show"]
    )
    assert shown.exit_code == 0, shown.output
    assert "anomalies\t400 days" in shown.output
    dry = runner.invoke(cli, ["db", "retention", "--dsn", migrated_db, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "resource_events: would delete 0 rows older than" in dry.output
    bad = runner.invoke(cli, ["db", "retention", "--dsn", migrated_db, "--set", "anomalies"])
    assert bad.exit_code == 2 and "is not RELATION=DAYS" in bad.output
    unknown = runner.invoke(cli, ["db", "retention", "--dsn", migrated_db, "--set", "x=3"])
    assert unknown.exit_code == 1 and "no retention rule for 'x'" in unknown.output


def test_migrations_apply_cleanly_to_an_empty_database(private_db: str) -> None:
    first = [m.name for m in migrate(private_db)]
    assert "reporting" in first
    assert migrate(private_db) == []
    with connect(private_db) as conn:
        views = {
            r[0]
            for r in conn.execute(
                "select viewname from pg_views where schemaname = 'reporting'"
            ).fetchall()
        }
    assert views == {
        "anomalies",
        "anomaly_contributors",
        "anomaly_ancestors",
        "anomaly_change_events",
        "change_events",
        "optimization_runs",
        "policy_decisions",
        "pending_approvals",
        "optimization_actions",
        "savings_by_team_month",
        "ingest_dead_letters",
        "billing_loads",
    }
