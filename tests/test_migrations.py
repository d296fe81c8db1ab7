from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from lambdas.cli import cli
from lambdas.store.migrate import MigrationError, discover, migrate


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
