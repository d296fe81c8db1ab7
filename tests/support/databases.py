"""Databases of a test's own on the shared local PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from lambdas.store.migrate import migrate


@contextmanager
def own_database(
    admin_dsn: str, prefix: str = "cct_test", *, migrated: bool = True
) -> Iterator[str]:
    """A new database (migrated unless told otherwise); yields its DSN and drops it after,
    whoever is still connected."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        if migrated:
            migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
