from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from lambdas.cli import cli
from lambdas.store.migrate import MigrationError, discover, migrate
from lambdas.store.runs import recent_actions
from tests.store import seed


@pytest.fixture
def empty_db(pg_admin_dsn: str) -> Iterator[str]:
    name = f"cct_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    yield pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'drop database "{name}" with (force)')


def test_shipped_migrations_are_numbered_uniquely() -> None:
    versions = [m.version for m in discover()]
    assert versions == sorted(set(versions)) and versions


def test_cli_migrate_is_idempotent(empty_db: str) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["db", "migrate", "--dsn", empty_db])
    assert first.exit_code == 0, first.output
    assert "applied 0001_core" in first.output
    second = runner.invoke(cli, ["db", "migrate", "--dsn", empty_db])
    assert second.exit_code == 0 and "schema is up to date" in second.output


def test_edited_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("create table t (x int);")
    migrate(empty_db, tmp_path)
    (tmp_path / "0001_a.sql").write_text("create table t (x bigint);")
    with pytest.raises(MigrationError, match=r"0001_a\.sql was edited after it was applied"):
        migrate(empty_db, tmp_path)


def test_failed_migration_rolls_back_and_is_not_recorded(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("create table ok (x int);")
    (tmp_path / "0002_bad.sql").write_text("create table half (x int); select no_such_fn();")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(empty_db, tmp_path)
    with psycopg.connect(empty_db) as conn:
        versions = [r[0] for r in conn.execute("select version from schema_migrations")]
        half = conn.execute("select to_regclass('half')").fetchone()
    assert versions == [1]
    assert half == (None,)


def test_bad_file_name_is_named(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("")
    with pytest.raises(MigrationError, match=r"1_x\.sql: migration files must be named"):
        discover(tmp_path)


def test_0705_keeps_old_runs_counted_where_they_act_and_finds_their_billing_account(
    empty_db: str, tmp_path: Path
) -> None:
    """Runs written before 0705 held the acted-in (linked) account in billing_account_id.
    After it, account_id holds it (the pre-check still counts them there), and the billing
    account is the inventory's for the resource when it has one."""
    before = tmp_path / "before"
    before.mkdir()
    for m in discover():
        if m.version < 705:
            shutil.copy(m.path, before / m.path.name)
    migrate(empty_db, before)
    s = seed.Scope("mig0705")
    linked = f"{s.account}-sub"
    since = datetime.now(UTC) - timedelta(hours=1)
    with psycopg.connect(empty_db) as conn:
        seed.inventory(conn, s, "i-known", "running", datetime.now(UTC))
        # As the previous release's trigger wrote them (no producer of this shape is left).
        for run_id, resource in (("old-known", "i-known"), ("old-gone", "i-gone")):
            conn.execute(
                """insert into optimization_runs (run_id, event_id, playbook, backend, state,
                       provider, billing_account_id, resource_id, parameters)
                   values (%s, %s, 'rightsize-compute', 'argo', 'submitted', 'aws', %s, %s,
                           '{"dry-run": "false"}')""",
                (run_id, f"evt-{run_id}", linked, resource),
            )
    migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute(
            "select run_id, billing_account_id, account_id from optimization_runs order by 1"
        ).fetchall()
        assert rows == [("old-gone", linked, linked), ("old-known", s.account, linked)]
        assert recent_actions(conn, linked, since) == 2
        # A previous-release pod inserting during the upgrade (no account_id) still counts.
        conn.execute(
            """insert into optimization_runs (run_id, event_id, playbook, backend, state,
                   provider, billing_account_id, resource_id, parameters)
               values ('upgrading', 'evt-up', 'rightsize-compute', 'argo', 'submitted', 'aws',
                       %s, 'i-other', '{"dry-run": "false"}')""",
            (linked,),
        )
        assert recent_actions(conn, linked, since) == 3
