"""Each handler's Vault user holds exactly its table privileges (lambdas.store.grants), on a
real PostgreSQL: what the store calls of that handler need, nothing more, and never the
application owner. The rotation tests run the long-running handlers as these users; the
billing loader and the read paths those tests do not reach run here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from lambdas.billing.focus import BillingFileError
from lambdas.billing.loader import BillingSettings, load
from lambdas.cli import cli
from lambdas.common.pg import DsnSource
from lambdas.common.settings import pg_dsn as current_pg_dsn
from lambdas.store import grants
from lambdas.store.db import connect
from lambdas.store.decisions import admitted_since, record_decision
from lambdas.store.grants import HANDLER_PRIVILEGES, SEQUENCES, GrantError, apply_grants
from tests.admission.test_decisions_store import record
from tests.ingest.test_billing import focus_rows, write
from tests.pg_credentials.conftest import Vaults

PRIVILEGES = ("select", "insert", "update", "delete", "truncate", "references", "trigger")


def effective(owner_dsn: str, user: str) -> dict[str, set[str]]:
    """table or sequence -> the privileges `user` holds on it, directly or through roles."""
    held: dict[str, set[str]] = {}
    with psycopg.connect(owner_dsn) as conn:
        tables = conn.execute(
            "select c.oid::regclass::text, c.relkind from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname in ('public', 'reporting') and c.relkind in ('r', 'v', 'S')"
        ).fetchall()
        for name, kind in tables:
            privileges = ("usage", "select", "update") if kind == "S" else PRIVILEGES
            for privilege in privileges:
                function = "has_sequence_privilege" if kind == "S" else "has_table_privilege"
                row = conn.execute(
                    f"select {function}(%s, %s, %s)",
                    (user, name, privilege),
                ).fetchone()
                if row and row[0]:
                    held.setdefault(name, set()).add(privilege)
    return held


@pytest.mark.parametrize("handler", sorted(HANDLER_PRIVILEGES))
def test_a_handler_user_holds_exactly_its_privileges(
    vaults: Vaults, pg_dsn: str, handler: str
) -> None:
    user = vaults(handler).issue()
    expected = {table: set(privileges) for table, privileges in HANDLER_PRIVILEGES[handler].items()}
    for table, sequence in SEQUENCES.items():
        if "insert" in expected.get(table, set()):
            expected[sequence] = {"usage"}
    assert effective(pg_dsn, user) == expected
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "select pg_has_role(%s, 'cct', 'member'),"
            " has_schema_privilege(%s, 'public', 'create'),"
            " has_schema_privilege(%s, 'reporting', 'usage')",
            (user, user, user),
        ).fetchone()
    assert row == (False, False, False)


def test_grants_follow_the_table_when_it_shrinks(vaults: Vaults, pg_dsn: str) -> None:
    """A privilege removed from the table is revoked by the next `cct db migrate`."""
    vault = vaults("admission")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("grant delete on policy_decisions to cct_admission")
    apply_grants_as_owner(pg_dsn)
    user = vault.issue()
    assert effective(pg_dsn, user)["policy_decisions"] == {"select", "insert"}


def apply_grants_as_owner(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        apply_grants(conn)


def test_a_missing_group_role_is_named_when_it_cannot_be_created(
    vaults: Vaults, pg_dsn: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = vaults("admission")
    vault.issue()
    monkeypatch.setattr(grants, "group_role", lambda handler: f"cct_missing_{uid}")
    with (
        pytest.raises(GrantError, match=rf"group role cct_missing_{uid} does not exist"),
        connect(DsnSource(path=vault.path)) as conn,
    ):
        apply_grants(conn)


def test_admission_reads_back_admitted_decisions_as_its_user(vaults: Vaults, uid: str) -> None:
    vault = vaults("admission")
    vault.issue()
    now = datetime.now(UTC)
    with connect(DsnSource(path=vault.path)) as conn:
        record_decision(conn, record(f"{uid}-admitted", account_id=f"acct-{uid}"))
    with connect(DsnSource(path=vault.path)) as conn:
        rows = admitted_since(conn, now - timedelta(minutes=1))
    assert [r[1] for r in rows if r[0] == f"{uid}-admitted"] == [f"acct-{uid}"]


def test_the_billing_loader_loads_and_reconciles_as_its_user(
    vaults: Vaults, vm_url: str, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = vaults("billing-loader")
    vault.issue()
    monkeypatch.setenv("CCT_PG_DSN_FILE", str(vault.path))
    settings = BillingSettings(pg_dsn=current_pg_dsn(), vm_url=vm_url, reconcile_window_h=4)
    account = f"acct-{uid}"
    delivery = write(focus_rows(account), tmp_path / "part-1.csv")
    report = load(settings, [str(delivery)], reconcile_after=True)
    assert report.loaded == [f"aws/{account}/2024-09"]
    # A redelivery replaces the partition (delete + insert) under the same user.
    load(settings, [str(write(focus_rows(account, cost=2.0), tmp_path / "part-2.csv"))])
    broken = tmp_path / "broken.csv"
    broken.write_text("not,a,focus\nfile,at,all\n")
    with pytest.raises(BillingFileError):
        load(settings, [str(broken)])
    with psycopg.connect(vault.owner_dsn) as conn:
        row = conn.execute(
            "select sum(billed_cost)::float8 from billing_hourly where billing_account_id = %s",
            (account,),
        ).fetchone()
        dead = conn.execute(
            "select count(*) from ingest_dead_letters where source = 'billing' and payload like %s",
            (f"%{broken.name}%",),
        ).fetchone()
    assert row == (16.0,)
    assert dead == (1,)


def test_cct_db_migrate_applies_the_grants(pg_admin_dsn: str) -> None:
    """The migration Job's command: the schema, then every handler's grants."""
    name = f"cct_grants_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        result = CliRunner().invoke(cli, ["db", "migrate", "--dsn", dsn])
        assert result.exit_code == 0, result.output
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "select has_table_privilege('cct_collector', 'resource_events', 'insert'),"
                " has_table_privilege('cct_collector', 'resource_events', 'delete'),"
                " has_table_privilege('cct_trigger', 'optimization_runs', 'update')"
            ).fetchone()
        assert row == (True, False, True)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def test_grafana_reads_the_reporting_views_and_no_table(pg_dsn: str, uid: str) -> None:
    """Review finding: Grafana's login was a member of pg_read_all_data, so the
    internet-facing Grafana could read policy decisions, actors and dead-lettered payloads;
    docs/results-store.md promised the reporting views only."""
    with psycopg.connect(pg_dsn) as conn:
        apply_grants(conn)
    user, password = f"grafana_{uid}", uuid.uuid4().hex
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login password {} in role {}").format(
                sql.Identifier(user), sql.Literal(password), sql.Identifier("cct_grafana")
            )
        )
    try:
        held = effective(pg_dsn, user)
        assert held and all(name.startswith("reporting.") for name in held), held
        assert all(privileges == {"select"} for privileges in held.values()), held
        dsn = psycopg.conninfo.make_conninfo(pg_dsn, user=user, password=password)
        with psycopg.connect(dsn) as conn:
            conn.execute("select count(*) from reporting.anomalies").fetchone()
        for table in ("policy_decisions", "resource_events", "ingest_dead_letters"):
            with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select 1 from public.{table} limit 1")
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(user)))
