"""A detector that starts after a resource was created still reports the new resource's
day-0 step (issue #17: a `kill detector` run lost one), and still does not page on the
resources that were there before.

Real services and the real collector: the resources are launched as CloudTrail events
through the collector (`Processor`, in-process), which commits the inventory row and the
change event in PostgreSQL and writes the series in VictoriaMetrics; only then does a fresh
detector start and run its first cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from lambdas.common.vm import VictoriaMetrics
from lambdas.detector.config import DetectionConfig
from lambdas.detector.service import Detector, DetectorSettings
from lambdas.store import anomalies as store
from tests.detector.test_live import am_alerts, wait_for
from tests.ingest.conftest import (
    Collector,
    collector_settings,
    load_event,
    load_prices,
    record,
    running_collector,
)

RATE = "cct_cost_rate_usd_per_hour"
# Short, so the "old" resource is older than the window after a short wait; the day-0 step
# of a new resource needs no longer window.
WINDOW_S = 12.0


@pytest.fixture
async def collector(pg_dsn: str, vm_url: str) -> AsyncIterator[Collector]:
    load_prices(pg_dsn)
    async with running_collector(collector_settings(pg_dsn, vm_url, writers=1)) as running:
        yield running


def run_instance(account: str, instance_id: str) -> dict[str, Any]:
    """The real CloudTrail RunInstances event of the fixtures, for a new m5.xlarge now."""
    event = load_event("aws_run_instances")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event["id"] = f"ev-{instance_id}"
    event["time"] = event["detail"]["eventTime"] = now
    event["detail"]["eventID"] = f"ct-{instance_id}"
    event["detail"]["requestParameters"]["instanceType"] = "m5.xlarge"
    item = event["detail"]["responseElements"]["instancesSet"]["items"][0]
    item["instanceId"], item["instanceType"] = instance_id, "m5.xlarge"
    return record("aws", event, account)


async def launch(collector: Collector, vm: VictoriaMetrics, account: str, rid: str) -> None:
    status, body = await collector.post([run_instance(account, rid)])
    assert (status, body["accepted"]) == (200, 1), body

    def served() -> bool:
        return bool(vm.query(f'{RATE}{{resource_id="{rid}",billing_account_id="{account}"}}'))

    await asyncio.to_thread(wait_for, served, f"{rid}'s series in VictoriaMetrics")


@pytest.fixture
def settings(vm_url: str, alertmanager_url: str, pg_dsn: str, uid: str) -> DetectorSettings:
    """A detector of the test's own account, started as `make up` starts it: no history."""
    return DetectorSettings(
        vm_url=vm_url,
        alertmanager_url=alertmanager_url,
        pg_dsn=pg_dsn,
        selector=f'billing_account_id="acct-{uid}"',
        bootstrap_hours=0,
        # An m5.xlarge is 0.192 $/h in the fixture prices: below the default floor.
        detection=DetectionConfig(day0_window_s=WINDOW_S, min_impact_usd_per_hour=0.05),
    )


async def test_a_resource_created_before_the_detector_starts_is_a_day0_step_on_its_first_cycle(
    collector: Collector, vm: VictoriaMetrics, settings: DetectorSettings, uid: str
) -> None:
    account = f"acct-{uid}"
    old, new = f"i-{uid}-old", f"i-{uid}-new"
    await launch(collector, vm, account, old)
    await asyncio.sleep(WINDOW_S + 1.0)  # the old one's event is now older than the window
    await launch(collector, vm, account, new)
    # Only now does the detector start (a restart).
    detector = Detector(settings)
    try:
        transitions = await asyncio.to_thread(detector.cycle, time.time())
        # Both resources were evaluated on that first cycle; only the new one stepped.
        evaluated = {k.as_dict().get("resource_id") for k in detector.engine.keys}
        assert {old, new} <= evaluated
        steps = [
            (t.kind, t.key.as_dict().get("resource_id"), t.rule, t.expected)
            for t in transitions
            if t.key.level == "resource"
        ]
        assert steps == [("opened", new, "day0_step", 0.0)]
        assert set(detector.reports) == {t.key for t in transitions if t.key.level == "resource"}
        # Posted to the real Alertmanager, and stored (the stack's own detector, if one runs
        # on these services, posts to the same Alertmanager but writes another database).
        assert detector.unsent == []
        with psycopg.connect(str(settings.pg_dsn)) as conn:
            stored = [
                (r.dimensions.get("resource_id"), r.rule)
                for r in store.open_rows(conn, ("resource",))
                if r.dimensions.get("billing_account_id") == account
            ]
        assert stored == [(new, "day0_step")]
        assert am_alerts(settings.alertmanager_url, resource_id=new, rule="day0_step")
    finally:
        detector.close()
