"""One incident per cause, across levels and across restarts, on the real VictoriaMetrics,
Alertmanager and PostgreSQL: a new resource alerts from the inventory before its series is
queryable, and a restarted detector adopts the incidents its predecessor left open."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from lambdas.common.vm import VictoriaMetrics
from lambdas.detector.config import DetectionConfig
from lambdas.detector.service import Detector, DetectorSettings, selector_matches
from lambdas.store import anomalies as store
from tests.detector.test_live import Account, am_alerts, insert_inventory, wait_for


@pytest.fixture
def settings(account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str) -> DetectorSettings:
    return DetectorSettings(
        vm_url=vm_url,
        alertmanager_url=alertmanager_url,
        pg_dsn=pg_dsn,
        selector=f'billing_account_id="{account.account}"',
        bootstrap_hours=0,
        resend_s=0.01,
        detection=DetectionConfig(resolve_after_ticks=2),
    )


@pytest.fixture
def account(vm: VictoriaMetrics, uid: str) -> Account:
    return Account(vm, uid)


@pytest.fixture
def detector(settings: DetectorSettings) -> Iterator[Detector]:
    d = Detector(settings)
    yield d
    d.close()


def launch(pg_dsn: str, account: Account, rid: str, rate: float) -> None:
    """What the collector commits for a new resource: its inventory row and its event."""
    now = datetime.now(UTC)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            """insert into resource_events (event_id, provider, resource_id,
               billing_account_id, sub_account_id, region_id, service_name, resource_type,
               action, event_time, tags, usd_per_hour_before, usd_per_hour_after)
               values (%s, 'aws', %s, %s, %s, 'us-east-1', 'Amazon EC2', 'instance',
                       'RunInstances', %s, '{}', null, %s)""",
            (f"ev-{rid}-{account.account}", rid, account.account, account.account, now, rate),
        )
        insert_inventory(conn, account, rid, rate, now)


def test_a_new_resource_alerts_from_the_inventory_before_its_series_is_queryable(
    detector: Detector, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    account.write(100.0, **{"i-base": 100.0})
    detector.cycle(time.time())
    detector.cycle(time.time())
    # The collector wrote the new resource's inventory row and event, and the rollup (an
    # existing series, queryable at once); its own series is not in VictoriaMetrics at all.
    launch(pg_dsn, account, "i-fresh", 80.0)
    account.write(180.0)
    detector.cycle(time.time())
    [report] = detector.reports.values()
    labels = report.labels
    assert (labels["level"], labels["resource_id"], labels["resource_type"]) == (
        "resource",
        "i-fresh",
        "instance",
    )
    assert (labels["env"], labels["team"]) == ("prod", account.team)
    assert detector.metrics.fast_path._value.get() >= 1
    [alert] = wait_for(
        lambda: am_alerts(alertmanager_url, resource_id="i-fresh", team=account.team) or None,
        "the new resource's alert",
    )
    ancestors = json.loads(alert["annotations"]["ancestors"])
    assert {a["level"] for a in ancestors} == {"service", "team", "account"}


def test_a_restarted_detector_adopts_open_incidents_and_resolves_them_when_cost_falls(
    settings: DetectorSettings, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    first = Detector(settings)
    account.write(100.0, **{"i-big": 100.0})
    # Two values first: a series already there at a start is judged from its second value
    # on (core.UNKNOWN_PAST_VALUES); a changed resource would be seeded from its event.
    first.cycle(time.time())
    first.cycle(time.time())
    account.write(300.0, **{"i-big": 300.0})
    first.cycle(time.time())
    [before] = first.reports.values()
    first.close()  # the pod is replaced

    second = Detector(settings)
    try:
        account.write(300.0, **{"i-big": 300.0})
        second.cycle(time.time())
        [adopted] = second.reports.values()
        assert adopted.labels == before.labels
        assert adopted.started_at == pytest.approx(before.started_at, abs=1e-5)  # microseconds
        assert second.metrics.reported.labels("resource", "adopted")._value.get() == 1
        [alert] = am_alerts(alertmanager_url, resource_id="i-big", team=account.team)
        assert alert["status"]["state"] == "active"
        # Still high: kept open and re-sent; the aggregates' incidents never reappear on
        # their own (the new engine sees 300 as the level it started from).
        for _ in range(3):
            second.cycle(time.time())
        assert list(second.reports) == [adopted.key]

        account.write(100.0, **{"i-big": 100.0})
        second.cycle(time.time())
        second.cycle(time.time())
        assert second.reports == {}
        with psycopg.connect(pg_dsn) as conn:
            rows = store.get(conn, alert["fingerprint"])
        assert len(rows) == 1 and rows[0]["resolved_at"] is not None
        assert [
            a
            for a in am_alerts(alertmanager_url, resource_id="i-big", team=account.team)
            if a["status"]["state"] == "active"
        ] == []
    finally:
        second.close()


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ('provider="aws"', {"provider": "aws"}, True),
        ('provider="aws",team!="web"', {"provider": "aws", "team": "web"}, False),
        ('region_id=~"us-.*"', {"region_id": "us-east-1"}, True),
        ('region_id!~"us-.*"', {"region_id": "us-east-1"}, False),
        ('provider="a\\"b"', {"provider": 'a"b'}, True),
        ("provider=aws", {"provider": "aws"}, None),
        ('provider="aws" or', {"provider": "aws"}, None),
    ],
)
def test_the_fast_path_and_adoption_follow_the_detectors_selector(
    selector: str, labels: dict[str, str], expected: bool | None
) -> None:
    assert selector_matches(selector, labels) is expected
