"""Where a handler's PostgreSQL credentials come from, and when to reconnect.

In the cluster the long-running handlers log in with short-lived users from Vault's database
engine: a Vault Agent sidecar renders `database/creds/<role>` as a DSN into a memory-backed
file (`CCT_PG_DSN_FILE`) and renders it again when it takes a new lease, after which Vault
revokes the old user. Locally and in tests the DSN is a plain string (`CCT_PG_DSN`).

The rotation policy, used by every handler:
- every (re)connect reads the file again, so a new connection always uses the newest user;
- at a unit-of-work boundary (a batch, a cycle, an event) a handler asks `rotated()`, which
  looks at the file at most once per second, and reconnects when the file now holds a
  different DSN, so the new lease is in use before the old user is revoked;
- a call that fails because the connection or the login is gone (`needs_reconnect`) drops
  the connection; the handler's own retry of that unit of work reconnects with the fresh DSN.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from lambdas.common.settings import SettingsError

# SQLSTATE classes that mean the session or the login is gone: 08 connection exception,
# 28 invalid authorization (e.g. the lease's user expired or was dropped).
RECONNECT_CLASSES = ("08", "28")
# admin_shutdown: the server ended the session (pg_terminate_backend, as when Vault revokes
# a lease's user, or a server shutdown).
ADMIN_SHUTDOWN = "57P01"
CHECK_INTERVAL_S = 1.0


class DsnError(SettingsError):
    """The DSN file is missing, empty or does not hold a DSN. The message names the variable
    and the file, never the content (it holds a password)."""


def needs_reconnect(exc: BaseException) -> bool:
    """True when `exc` (or the psycopg error behind a StoreError) says the connection or its
    login is unusable, so the handler must drop it and connect again with the current DSN.
    Errors with no SQLSTATE are the client's own: connecting failed or the server went away
    without an answer. Statement timeouts, deadlocks and bad data keep the connection."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    if not isinstance(cause, psycopg.OperationalError):
        return False
    state = cause.sqlstate
    return state is None or state[:2] in RECONNECT_CLASSES or state == ADMIN_SHUTDOWN


class DsnSource:
    """A fixed DSN (`dsn`) or one read from `path`. Safe to share between threads.

    `generation` counts the different DSNs seen so far; a holder of a connection remembers
    the generation it connected with and asks `rotated(generation)` when it may switch.
    """

    def __init__(
        self,
        *,
        dsn: str | None = None,
        path: Path | None = None,
        variable: str = "CCT_PG_DSN_FILE",
        check_interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (dsn is None) == (path is None):
            raise ValueError("a DsnSource needs exactly one of dsn and path")
        self.path = path
        self.variable = variable
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._dsn = dsn
        self._stamp: tuple[int, int, int] | None = None
        self._generation = 0
        self._checked = -float("inf")

    @classmethod
    def of(cls, value: str | DsnSource) -> DsnSource:
        """Accept a plain DSN wherever a source is expected (local use, tests)."""
        return value if isinstance(value, DsnSource) else cls(dsn=value)

    def __repr__(self) -> str:  # never the DSN: it holds a password
        where = f"{self.variable}={self.path}" if self.path else "a fixed DSN"
        return f"DsnSource({where})"

    @property
    def generation(self) -> int:
        return self._generation

    def read(self) -> str:
        """The DSN to connect with now; a file is read every time."""
        if self.path is None:
            assert self._dsn is not None
            return self._dsn
        with self._lock:
            return self._read_file(self.path)

    def rotated(self, generation: int) -> bool:
        """True when the DSN differs from the one of `generation`. Cheap: looks at the file
        at most once per `check_interval_s`, and reads it only when its stamp changed. A file
        that cannot be read now keeps the current connection (it still works; connecting
        anew would fail the same way)."""
        if self.path is None:
            return False
        with self._lock:
            now = self._clock()
            if now - self._checked >= self._check_interval_s:
                self._checked = now
                with contextlib.suppress(OSError, DsnError):
                    if _stamp(self.path) != self._stamp:
                        self._read_file(self.path)
            return self._generation != generation

    def _read_file(self, path: Path) -> str:
        where = f"{self.variable}={path}"
        try:
            stamp = _stamp(path)
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise DsnError(
                f"{where}: file not found (Vault Agent renders it; is its sidecar running?)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise DsnError(f"{where}: cannot be read: {reason}") from None
        if not text:
            raise DsnError(f"{where}: file is empty")
        try:
            conninfo_to_dict(text)
        except psycopg.ProgrammingError:
            # libpq's message quotes the text, which holds a password: say only what is wrong.
            raise DsnError(f"{where}: does not hold a PostgreSQL DSN") from None
        if text != self._dsn:
            if self._dsn is not None:
                self._generation += 1
            self._dsn = text
        self._stamp = stamp
        return text


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when Vault Agent rewrites the file (it renames a new file into place)."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size
