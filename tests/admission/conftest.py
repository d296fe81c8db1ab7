from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.admission.support import Tls, Webhook, make_tls, policies_for_now, serve_admission


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, tls: Tls) -> Iterator[Webhook]:
    """One `cct serve admission` for a test module, with the shipped policies on the test's
    clock, a 1 s request budget and a 256 KiB body limit (to test both quickly)."""
    tmp = tmp_path_factory.mktemp("admission")
    with serve_admission(
        tmp,
        pg_dsn,
        policies_for_now(tmp / "policies"),
        tls,
        CCT_ADMISSION_REQUEST_TIMEOUT_S="1.0",
        CCT_ADMISSION_MAX_BODY_BYTES=str(256 * 1024),
    ) as hook:
        yield hook


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def decision_row(pg_dsn: str, decision_id: str) -> dict[str, Any] | None:
    with psycopg.connect(pg_dsn) as conn:
        cur = conn.execute(
            """select source, run_id, verdict, policy_ids, reasons, input, allowed, dry_run,
                      account_id from policy_decisions where decision_id = %s""",
            (decision_id,),
        )
        row = cur.fetchone()
        names = [c.name for c in cur.description or ()]
    return dict(zip(names, row, strict=True)) if row else None


@pytest.fixture
def wait_decision(pg_dsn: str) -> Callable[[str], dict[str, Any]]:
    def wait(decision_id: str) -> dict[str, Any]:
        row: dict[str, Any] = wait_for(
            lambda: decision_row(pg_dsn, decision_id), what=f"decision {decision_id} in PostgreSQL"
        )
        return row

    return wait
