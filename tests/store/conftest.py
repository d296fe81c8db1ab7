from __future__ import annotations

from collections.abc import Iterator

import pytest

from lambdas.store.migrate import migrate
from tests.support.databases import own_database


@pytest.fixture
def private_db(pg_admin_dsn: str) -> Iterator[str]:
    """A freshly migrated database of this test's own, for tests that delete across tables
    (retention) or need an empty schema."""
    with own_database(pg_admin_dsn, "cct_store", migrated=False) as dsn:
        yield dsn


@pytest.fixture
def migrated_db(private_db: str) -> str:
    migrate(private_db)
    return private_db
