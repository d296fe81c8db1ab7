from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from lambdas.store.migrate import migrate


@pytest.fixture
def private_db(pg_admin_dsn: str) -> Iterator[str]:
    """A freshly migrated database of this test's own, for tests that delete across tables
    (retention) or need an empty schema."""
    name = f"cct_store_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    yield dsn
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'drop database "{name}" with (force)')


@pytest.fixture
def migrated_db(private_db: str) -> str:
    migrate(private_db)
    return private_db
