"""The one way CCT code reaches PostgreSQL.

Every handler and store module opens connections through `connect` (one-shot commands, steps,
CronJobs), `aconnect` (asyncio handlers) or `open_pool` (long-running handlers), and runs
statements inside `translate_errors` so callers see one error type that says whether retrying
can help. Each accepts a DSN or a `DsnSource` (`lambdas.common.pg`): a source is read on every
connect, so a rotated Vault lease is used by the next connection. Settings that every
connection needs (an application name that shows up in `pg_stat_activity`, a connect timeout,
a statement timeout so a stuck query never blocks a handler forever) are set here once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from lambdas.common.pg import DsnError, DsnSource

DEFAULT_CONNECT_TIMEOUT_S = 5
# A database that stops answering at the network level (a partition, a paused host) is seen
# by nothing else: statement_timeout runs on the server, which never gets the query, and TCP
# retransmits for about 15 minutes. The detector's loop, the admission writer and every
# consumer would hang that long. tcp_user_timeout ends a connection whose sent data stays
# unacknowledged for 15 s; keepalives end an idle one whose peer is gone within about a
# minute. Both surface as a retryable StoreError (connection lost).
CONNECTION_LIVENESS: dict[str, Any] = {
    "tcp_user_timeout": 15_000,  # ms
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# Handlers write single rows by key; anything slower than this is a lock or a bug, and failing
# (retryably) is better than holding a consumer partition or an admission request hostage.
DEFAULT_STATEMENT_TIMEOUT_MS = 30_000


class StoreError(RuntimeError):
    """A database call failed. `retryable` is True for transient causes (connection lost,
    timeouts, serialization failures, deadlocks) and False for bad input or schema problems,
    which retrying cannot fix."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class BadRecordError(StoreError):
    """The database refused one record's values (out of range, a NUL byte, a value too large to
    index, a violated check): the same record fails the same way on every try, while the next
    record may well be fine. Consumers dead-letter the record and go on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


# SQLSTATE classes that say "this row's data", not "this database": 22 data exception
# (numeric overflow, untranslatable character), 23 integrity constraint violation,
# 54 program limit exceeded (an index row or a string too large).
_BAD_RECORD_CLASSES = ("22", "23", "54")


def _options(statement_timeout_ms: int) -> str:
    return f"-c statement_timeout={int(statement_timeout_ms)}"


def _conninfo(dsn: str | DsnSource) -> str:
    """The DSN to connect with now. A DSN file that is missing or bad at this point is a
    retryable failure: Vault Agent may be rewriting it, and startup already refused a bad one."""
    try:
        return DsnSource.of(dsn).read()
    except DsnError as exc:
        raise StoreError(f"connect: {exc}", retryable=True) from exc


def connect(
    dsn: str | DsnSource,
    *,
    application_name: str = "cct",
    autocommit: bool = False,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
) -> psycopg.Connection[tuple[Any, ...]]:
    """Open one connection. Use it as a context manager: it commits on success and rolls back
    on an exception (unless `autocommit`)."""
    conninfo = _conninfo(dsn)
    with translate_errors("connect"):
        return psycopg.connect(
            conninfo,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=DEFAULT_CONNECT_TIMEOUT_S,
            options=_options(statement_timeout_ms),
            **CONNECTION_LIVENESS,
        )


async def aconnect(
    dsn: str | DsnSource,
    *,
    application_name: str = "cct",
    autocommit: bool = False,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """`connect` for asyncio handlers."""
    conninfo = _conninfo(dsn)
    with translate_errors("connect"):
        return await psycopg.AsyncConnection.connect(
            conninfo,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=DEFAULT_CONNECT_TIMEOUT_S,
            options=_options(statement_timeout_ms),
            **CONNECTION_LIVENESS,
        )


def open_pool(
    dsn: str | DsnSource,
    *,
    application_name: str,
    min_size: int = 1,
    max_size: int = 4,
    timeout_s: float = 5.0,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
) -> ConnectionPool:
    """A connection pool for a long-running handler; close it on shutdown.

    `timeout_s` bounds how long `pool.connection()` waits for a free connection; when it runs
    out the wait surfaces (through `translate_errors`) as a retryable StoreError. A source is
    read for every new connection; `PoolConnections` switches the pool when it rotates.
    """
    pool = ConnectionPool(
        DsnSource.of(dsn).read,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_s,
        kwargs={
            "application_name": application_name,
            "connect_timeout": DEFAULT_CONNECT_TIMEOUT_S,
            "options": _options(statement_timeout_ms),
            **CONNECTION_LIVENESS,
        },
        name=application_name,
        open=False,
    )
    with translate_errors("open pool"):
        pool.open(wait=True, timeout=timeout_s)
    return pool


class PoolConnections:
    """`pool.connection` for a handler whose DSN may rotate: at each checkout (a unit-of-work
    boundary) a rotated source drains the pool, so every later unit runs as the new user;
    connections still checked out are closed when returned. Errors, including a checkout that
    timed out and a failed commit at the end of the block, surface as StoreError."""

    def __init__(self, pool: ConnectionPool, source: str | DsnSource) -> None:
        self.pool = pool
        self._source = DsnSource.of(source)
        self._generation = self._source.generation

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        if self._source.rotated(self._generation):
            self._generation = self._source.generation
            self.pool.drain()
        with translate_errors("pooled connection"), self.pool.connection() as conn:
            yield conn


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise database errors as StoreError, naming the operation and saying whether a retry
    can help."""
    try:
        yield
    except psycopg.Error as exc:
        # Checked first: "program limit exceeded" (an index row too large) is an
        # OperationalError to psycopg, yet retrying the same row fails forever. A client-side
        # DataError (a NUL in a text parameter) has no SQLSTATE.
        if isinstance(exc, psycopg.DataError | psycopg.IntegrityError) or (
            (exc.sqlstate or "")[:2] in _BAD_RECORD_CLASSES
        ):
            raise BadRecordError(f"{what}: {exc}") from exc
        if isinstance(exc, psycopg.OperationalError):
            # Connection refused or lost, server shutdown, statement timeout, serialization
            # failure, deadlock, lock timeout, pool exhausted: all pass if tried again later.
            raise StoreError(f"{what}: {exc}", retryable=True) from exc
        raise StoreError(f"{what}: {exc}", retryable=False) from exc
    except UnicodeEncodeError as exc:
        # A lone surrogate (JSON's "\ud800") in a text parameter fails before it reaches the
        # server: the same value fails on every retry.
        raise BadRecordError(f"{what}: a text value is not valid Unicode: {exc.reason}") from exc
