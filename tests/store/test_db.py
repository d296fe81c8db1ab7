from __future__ import annotations

import psycopg
import pytest

from lambdas.store.db import StoreError, connect, open_pool, translate_errors


def test_connect_sets_application_name_and_statement_timeout(pg_dsn: str) -> None:
    with connect(pg_dsn, application_name="cct-test", statement_timeout_ms=1234) as conn:
        name, timeout = conn.execute(
            "select current_setting('application_name'), current_setting('statement_timeout')"
        ).fetchone() or (None, None)
    assert (name, timeout) == ("cct-test", "1234ms")


def test_statement_timeout_is_retryable(pg_dsn: str) -> None:
    with (
        connect(pg_dsn, statement_timeout_ms=50) as conn,
        pytest.raises(StoreError, match="slow query") as info,
        translate_errors("slow query"),
    ):
        conn.execute("select pg_sleep(1)")
    assert info.value.retryable


def test_constraint_violation_is_permanent(pg_dsn: str) -> None:
    with (
        connect(pg_dsn) as conn,
        pytest.raises(StoreError) as info,
        translate_errors("bad row"),
    ):
        conn.execute("insert into retention_policy (relation, keep_days) values ('x', 0)")
    assert not info.value.retryable
    assert isinstance(info.value.__cause__, psycopg.errors.CheckViolation)


def test_unreachable_database_is_retryable(pg_dsn: str) -> None:
    dead = pg_dsn.replace(":55432/", ":1/")
    with pytest.raises(StoreError) as info:
        connect(dead)
    assert info.value.retryable


def test_pool_hands_out_configured_connections(pg_dsn: str) -> None:
    pool = open_pool(pg_dsn, application_name="cct-pool-test", max_size=2)
    try:
        with pool.connection() as conn:
            row = conn.execute("select current_setting('application_name')").fetchone()
        assert row == ("cct-pool-test",)
    finally:
        pool.close()
