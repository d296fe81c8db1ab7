"""The billing drop's scheduling (no services): what it loads when, and what it retries.
The loader itself runs for real in tests/e2e/test_billing.py; here a stand-in command exits
with the code the delivery's content names, so each rule is seen in isolation."""

from __future__ import annotations

import sys
from pathlib import Path

from lambdas.devstack.billing_drop import BillingDrop

# `<cmd> billing load --format F PATH`: exit with the number in the file, print a report.
FAKE = (
    "import json,sys; code=int(open(sys.argv[-1]).read()); "
    "print(json.dumps({'rows_read': 1})) if code == 0 else sys.stderr.write('bad'); "
    "sys.exit(code)"
)


def _drop(tmp_path: Path) -> BillingDrop:
    (tmp_path / "focus").mkdir()
    return BillingDrop(tmp_path, [sys.executable, "-c", FAKE], interval_s=300.0)


def test_schedule_new_deliveries_requests_and_retries(tmp_path: Path) -> None:
    drop = _drop(tmp_path)
    (tmp_path / "focus" / "a.csv").write_text("0")
    run = drop.tick(now=0.0)
    assert run is not None and run.trigger == "schedule" and run.ok
    assert run.outcomes[0].report == {"rows_read": 1}
    assert drop.tick(now=1.0) is None  # nothing new, schedule not due

    (tmp_path / "focus" / "broken.csv").write_text("65")
    (tmp_path / "focus" / "later.csv").write_text("75")
    (tmp_path / "focus" / ".partial.csv").write_text("0")  # an upload in progress
    run = drop.tick(now=2.0)
    assert run is not None and run.trigger == "new-delivery" and not run.ok
    codes = {o.delivery: o.exit_code for o in run.outcomes}
    assert codes == {"focus/broken.csv": 65, "focus/later.csv": 75}
    # A broken file is not retried until it changes; a retryable failure is.
    run = drop.tick(now=3.0)
    assert run is not None and [o.delivery for o in run.outcomes] == ["focus/later.csv"]

    drop.request()
    run = drop.tick(now=4.0)
    assert run is not None and run.trigger == "request" and len(run.outcomes) == 3
    run = drop.tick(now=301.0)
    assert run is not None and run.trigger == "schedule"
    status = drop.status()
    assert status["runs"] == 5 and status["last_run"]["trigger"] == "schedule"
