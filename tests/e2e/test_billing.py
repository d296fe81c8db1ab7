"""The billing loader in the local stack (issue #15): `cct billing load` run by the stack's
billing CronJob stand-in over its drop directory, on demand (a new delivery, or POST /run)
and on a schedule; `cct status` shows the last run. Driven only through the drop directory
(where a provider's export lands), the loader's status endpoint, `cct status` and the
stores' public queries."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack, get_json, wait_for
from tests.ingest.test_billing import HOUR0, focus_rows, write

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.timeout(600)]
TIMEOUT_S = 120.0


def _drop(path: Path, write_to: Any) -> Path:
    """Write a delivery under a dot-name first and rename it, as an upload completes: the
    loader never reads half a file."""
    tmp = path.with_name("." + path.name)
    write_to(tmp)
    tmp.rename(path)
    return path


def _outcome(stack: Stack, delivery: str, trigger: str | None, after: float) -> Any:
    status = get_json(stack.doc["parts"]["billing"]["status"])
    last = status.get("last_run") or {}
    if last.get("started_at", 0) < after or (trigger and last.get("trigger") != trigger):
        return None
    found = [o for o in last.get("outcomes", []) if o["delivery"] == delivery]
    return found[0] if found else None


def test_billing_loader_on_demand_on_request_and_broken_files(stack: Stack) -> None:
    drop = Path(stack.doc["parts"]["billing"]["drop"])
    account = f"{uuid.uuid4().int % 10**12:012d}"
    good = drop / "focus" / f"e2e-{account}.csv"
    broken = drop / "focus" / f"e2e-broken-{account}.csv"
    try:
        # On demand: a new delivery in the drop directory is loaded within seconds.
        t0 = time.time()
        _drop(good, lambda p: write(focus_rows(account), p))
        name = f"focus/{good.name}"
        outcome = wait_for(
            lambda: _outcome(stack, name, "new-delivery", t0), TIMEOUT_S, "new delivery loaded"
        )
        assert outcome["exit_code"] == 0, outcome
        assert outcome["report"]["rows_read"] == 8 and outcome["report"]["rows_rejected"] == 0
        loads = stack.sql(
            "select status, rows_read from billing_loads where billing_account_id = %s", account
        )
        assert loads == [("current", 8)], loads
        # The rows are of September 2024: ask VictoriaMetrics at that time.
        q = urllib.parse.urlencode(
            {
                "query": f'sum(cct_billed_cost_usd{{billing_account_id="{account}"}})',
                "time": str(HOUR0 + 2 * 3600),
            }
        )
        vm = stack.service("victoriametrics")["url"]
        # A new series becomes queryable seconds after it is written (shared/notes: 4 to 10 s).
        billed = wait_for(
            lambda: get_json(f"{vm}/api/v1/query?{q}")["data"]["result"],
            TIMEOUT_S,
            "billed cost queryable in VictoriaMetrics",
        )
        assert float(billed[0]["value"][1]) > 0, billed

        # On request: POST /run loads every delivery again; unchanged content writes nothing.
        t1 = time.time()
        req = urllib.request.Request(
            stack.doc["parts"]["billing"]["status"].replace("/status", "/run"),
            method="POST",
            data=b"",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
        again = wait_for(lambda: _outcome(stack, name, "request", t1), TIMEOUT_S, "requested run")
        assert again["exit_code"] == 0
        assert stack.sql(
            "select count(*) from billing_loads where billing_account_id = %s", account
        ) == [(1,)], "a reload of the same delivery must not add a load"

        # A broken delivery: exit 65, dead-lettered, not retried until it changes; the loader
        # keeps running and the next good delivery still loads.
        t2 = time.time()
        letters = stack.sql("select count(*) from ingest_dead_letters where source = 'billing'")
        _drop(broken, lambda p: p.write_text("not,a,focus,file\n1,2,3,4\n"))
        bad = wait_for(
            lambda: _outcome(stack, f"focus/{broken.name}", "new-delivery", t2),
            TIMEOUT_S,
            "broken delivery reported",
        )
        assert bad["exit_code"] == 65, bad
        after = stack.sql("select count(*) from ingest_dead_letters where source = 'billing'")
        assert after[0][0] > letters[0][0]
        assert not stack.unhealthy()

        # `cct status` shows the loader's last run.
        cct = str(Path(sys.executable).parent / "cct")
        out = subprocess.run([cct, "status"], capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("billing ")), "")
        assert "healthy" in line and "last run" in line and "next scheduled run" in line, out
    finally:
        good.unlink(missing_ok=True)
        broken.unlink(missing_ok=True)
