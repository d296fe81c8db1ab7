"""Ordered plain-SQL migrations.

Files are `lambdas/store/migrations/NNNN_name.sql`, applied in numeric order, each in its own
transaction, under a PostgreSQL advisory lock so concurrent starters do not race. The checksum
of every applied file is recorded: editing a file that was already applied is an error, because
a database that ran the old text would silently differ from a fresh one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger("cct.store.migrate")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed 64-bit number works; it only has to be the same for every CCT process.
_LOCK_ID = 0x43435400_00000001


class MigrationError(RuntimeError):
    """The migration set or the database's record of it is inconsistent. Not retryable."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_lower_snake.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(
                f"{path.name}: version {version:04d} is also used by {found[version].path.name}"
            )
        found[version] = Migration(version, m.group(2), path)
    return [found[v] for v in sorted(found)]


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every pending migration; return the ones applied by this call."""
    migrations = discover(directory)
    applied_now: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                """create table if not exists schema_migrations (
                       version integer primary key,
                       name text not null,
                       checksum text not null,
                       applied_at timestamptz not null default now())"""
            )
            rows = conn.execute("select version, name, checksum from schema_migrations").fetchall()
            done = {int(v): (n, c) for v, n, c in rows}
            known = {m.version for m in migrations}
            missing = sorted(set(done) - known)
            if missing:
                raise MigrationError(
                    f"database has migrations {missing} that this code does not know; "
                    "refusing to run an older release against a newer schema"
                )
            for m in migrations:
                if m.version in done:
                    if done[m.version][1] != m.checksum:
                        raise MigrationError(
                            f"{m.path.name} was edited after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "insert into schema_migrations (version, name, checksum)"
                        " values (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                log.info("applied migration %s", m.path.name)
                applied_now.append(m)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now
