"""Vault's database engine, played with real PostgreSQL roles, for the rotation tests.

The database gets the handlers' grants first, as `cct db migrate` applies them
(`lambdas.store.grants.apply_grants`, run as the owner). `FakeVault.issue()` then runs the
creation statements the bundle gives Vault for the handler's database role
(`components.vault.database_role_statements` with the handler's group role, which
`infra.stack.database_roles` names; tests/infra checks that) and writes the new user's DSN
the way Vault Agent renders it: a new file renamed into place. `revoke()` does what Vault
does when a lease ends: the user's sessions are terminated and the revocation statements run.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from components.vault import database_role_statements
from lambdas.store.grants import apply_grants, group_role
from lambdas.store.migrate import migrate


class FakeVault:
    def __init__(self, handler: str, database_dsn: str, path: Path, prefix: str) -> None:
        self.handler = handler
        self.owner_dsn = database_dsn
        self.path = path
        self.prefix = prefix
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        with psycopg.connect(database_dsn) as conn:
            apply_grants(conn)

    def issue(self) -> str:
        """A new user of the role, its DSN in the file; returns the user name."""
        name = f"{self.prefix}_{len(self.issued)}"
        password = secrets.token_urlsafe(18)
        expiration = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        creation, _ = database_role_statements(group_role(self.handler))
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            for statement in creation:
                text = (
                    statement.replace("{{name}}", name)
                    .replace("{{password}}", password)
                    .replace("{{expiration}}", expiration)
                )
                conn.execute(sql.SQL(text))
        self.issued.append(name)
        base = conninfo_to_dict(self.owner_dsn)
        dsn = f"postgresql://{name}:{password}@{base['host']}:{base['port']}/{base['dbname']}"
        self.render(dsn)
        return name

    def render(self, text: str) -> None:
        """Replace the file atomically, as Vault Agent does."""
        fresh = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:6]}")
        fresh.write_text(text)
        os.replace(fresh, self.path)

    def sessions(self, name: str) -> int:
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            row = conn.execute(
                "select count(*) from pg_stat_activity where usename = %s", (name,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    def revoke(self, name: str) -> None:
        """End the user's sessions, then drop it (retried while its backends exit)."""
        _, revocation = database_role_statements(group_role(self.handler))
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                (name,),
            )
            deadline = time.monotonic() + 10
            while True:
                try:
                    for statement in revocation:
                        conn.execute(sql.SQL(statement.replace("{{name}}", name)))
                    break
                except psycopg.errors.DependentObjectsStillExist:
                    # A terminated backend drops its temporary tables as it exits.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        self.revoked.add(name)

    def close(self) -> None:
        for name in self.issued:
            if name not in self.revoked:
                self.revoke(name)


@pytest.fixture
def private_db(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh migrated database: the collector rebuilds its state from the whole inventory."""
    name = f"cct_rotation_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    migrate(dsn)
    yield dsn
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


Vaults = Callable[[str], FakeVault]


def _vaults(db: str, tmp_path: Path, uid: str) -> Iterator[Vaults]:
    made: list[FakeVault] = []

    def make(handler: str) -> FakeVault:
        name = f"{handler.replace('-', '_')}_{len(made)}"
        made.append(FakeVault(handler, db, tmp_path / f"{name}.dsn", f"v_{uid}_{name}"))
        return made[-1]

    try:
        yield make
    finally:
        for vault in made:
            vault.close()


@pytest.fixture
def vaults(pg_dsn: str, tmp_path: Path, uid: str) -> Iterator[Vaults]:
    """Vaults for users of the session database; `pg_dsn` is the owner (a superuser here)."""
    yield from _vaults(pg_dsn, tmp_path, uid)


@pytest.fixture
def private_vaults(private_db: str, tmp_path: Path, uid: str) -> Iterator[Vaults]:
    yield from _vaults(private_db, tmp_path, uid)
