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


def cloudtrail(name: str, account: str, instance_id: str, sku: str) -> dict[str, Any]:
    """A real CloudTrail event of the fixtures (RunInstances or ModifyInstanceAttribute),
    now, for this instance and instance type."""
    event = load_event(name)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event["id"] = f"ev-{name}-{instance_id}"
    event["time"] = event["detail"]["eventTime"] = now
    event["detail"]["eventID"] = f"ct-{name}-{instance_id}"
    request = event["detail"]["requestParameters"]
    if name == "aws_run_instances":
        request["instanceType"] = sku
        item = event["detail"]["responseElements"]["instancesSet"]["items"][0]
        item["instanceId"], item["instanceType"] = instance_id, sku
    else:
        request["instanceId"], request["instanceType"] = instance_id, {"value": sku}
    return record("aws", event, account)


async def launch(
    collector: Collector,
    vm: VictoriaMetrics,
    account: str,
    rid: str,
    *,
    sku: str = "m5.xlarge",
    event: str = "aws_run_instances",
) -> None:
    status, body = await collector.post([cloudtrail(event, account, rid, sku)])
    assert (status, body["accepted"]) == (200, 1), body

    with psycopg.connect(collector.dsn) as conn:
        [(rate,)] = conn.execute(
            "select usd_per_hour from resource_inventory where resource_id = %s", (rid,)
        ).fetchall()

    def served() -> bool:
        rows = vm.query(f'{RATE}{{resource_id="{rid}",billing_account_id="{account}"}}')
        return bool(rows) and float(rows[0]["value"][1]) == pytest.approx(float(rate))

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
    old, new, resized = f"i-{uid}-old", f"i-{uid}-new", f"i-{uid}-resized"
    await launch(collector, vm, account, old)
    await launch(collector, vm, account, resized, sku="m5.large")
    await asyncio.sleep(WINDOW_S + 1.0)  # their creation is now older than the window
    await launch(collector, vm, account, new)
    await launch(
        collector, vm, account, resized, sku="m5.xlarge", event="aws_modify_instance_attribute"
    )
    with psycopg.connect(str(settings.pg_dsn)) as conn:
        [(before, after)] = conn.execute(
            """select usd_per_hour_before, usd_per_hour_after from resource_events
               where resource_id = %s and action = 'ModifyInstanceAttribute'""",
            (resized,),
        ).fetchall()
    assert 0 < before < after
    # Only now does the detector start (a restart).
    detector = Detector(settings)
    try:
        transitions = await asyncio.to_thread(detector.cycle, time.time())
        # All three were evaluated on that first cycle: the new one stepped from nothing,
        # the resized one from its rate before the resize, the old one did not.
        evaluated = {k.as_dict().get("resource_id") for k in detector.engine.keys}
        assert {old, new, resized} <= evaluated
        steps = {
            t.key.as_dict().get("resource_id"): (t.kind, t.rule, t.expected)
            for t in transitions
            if t.key.level == "resource"
        }
        assert steps == {
            new: ("opened", "day0_step", 0.0),
            resized: ("opened", "day0_step", pytest.approx(float(before))),
        }
        assert set(detector.reports) == {t.key for t in transitions if t.key.level == "resource"}
        # Posted to the real Alertmanager, and stored (the stack's own detector, if one runs
        # on these services, posts to the same Alertmanager but writes another database).
        assert len(detector.unsent) == 0
        with psycopg.connect(str(settings.pg_dsn)) as conn:
            stored = [
                (r.dimensions.get("resource_id"), r.rule)
                for r in store.open_rows(conn, ("resource",))
                if r.dimensions.get("billing_account_id") == account
            ]
        assert sorted(stored) == sorted([(new, "day0_step"), (resized, "day0_step")])
        assert am_alerts(settings.alertmanager_url, resource_id=new, rule="day0_step")
    finally:
        detector.close()
