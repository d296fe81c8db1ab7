"""One incident per cause, across levels and across restarts, on the real VictoriaMetrics,
Alertmanager and PostgreSQL: a new resource alerts from the inventory before its series is
queryable, and a restarted detector adopts the incidents its predecessor left open."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from lambdas.common.vm import Sample, VictoriaMetrics
from lambdas.detector.alerts import fingerprint
from lambdas.detector.reports import Report
from lambdas.detector.service import Detector, DetectorSettings, selector_matches
from lambdas.store import anomalies as store
from tests.detector.test_live import (
    RESOURCE,
    ROLLUP,
    Account,
    am_alerts,
    insert_events,
    insert_inventory,
    wait_for,
    watching,
)


@pytest.fixture
def settings(account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str) -> DetectorSettings:
    return watching(account, vm_url, alertmanager_url, pg_dsn, resend_s=0.01)


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


def fresh_instance_explains_a_step(detector: Detector, account: Account, pg_dsn: str) -> Report:
    """i-fresh (+80 $/h) explains a step, and is known only from the inventory: the
    collector wrote its inventory row and event, and the rollup (an existing series,
    queryable at once); its own series is not in VictoriaMetrics at all."""
    account.write(100.0, **{"i-base": 100.0})
    detector.cycle(time.time())
    detector.cycle(time.time())
    launch(pg_dsn, account, "i-fresh", 80.0)
    account.write(180.0)
    detector.cycle(time.time())
    [report] = detector.reports.values()
    return report


def test_a_new_resource_alerts_from_the_inventory_before_its_series_is_queryable(
    detector: Detector, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    report = fresh_instance_explains_a_step(detector, account, pg_dsn)
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
        # Its figures when reported, against which "fell back" is judged, survive the restart.
        assert (adopted.opened_expected, adopted.opened_delta) == pytest.approx(
            (before.opened_expected, before.opened_delta), abs=1e-4
        )
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


def test_an_aggregate_is_judged_on_the_labels_its_level_has() -> None:
    """A team's rollup selected by account carries `team` only: the account matcher cannot
    be judged on it and passes; its own labels still decide."""
    shard = 'billing_account_id="111",team!="web"'
    assert selector_matches(shard, {"team": "shop"}) is False
    assert selector_matches(shard, {"team": "shop"}, only={"team"}) is True
    assert selector_matches(shard, {"team": "web"}, only={"team"}) is False


def _active(alertmanager_url: str, account: Account) -> dict[str, dict[str, Any]]:
    return {
        a["labels"].get("resource_id", a["labels"]["level"]): a
        for a in am_alerts(alertmanager_url, billing_account_id=account.account)
        if a["status"]["state"] == "active"
    }


def _served(detector: Detector, rid: str, value: float) -> bool:
    """The detector's own read serves the resource at `value` (a new series can take
    seconds to appear in a query that ran before it existed)."""
    vector = detector.read(time.time())
    found = [
        v
        for k, v in zip(vector.keys, vector.values, strict=True)
        if k.level == "resource" and k.as_dict()["resource_id"] == rid
    ]
    return found == [value]


def terminate(pg_dsn: str, account: Account, rid: str, before: float) -> None:
    """What the collector commits when a resource is deleted: its event, and its inventory
    row at 0 $/h (the detector's fast path reads the inventory after a change)."""
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            """insert into resource_events (event_id, provider, resource_id,
               billing_account_id, sub_account_id, region_id, service_name, resource_type,
               action, event_time, tags, usd_per_hour_before, usd_per_hour_after)
               values (%s, 'aws', %s, %s, %s, 'us-east-1', 'Amazon EC2', 'instance',
                       'TerminateInstances', now(), '{}', %s, 0)""",
            (f"ev-end-{rid}-{account.account}", rid, account.account, account.account, before),
        )
        conn.execute(
            "update resource_inventory set usd_per_hour = 0, state = 'deleted'"
            " where resource_id = %s and billing_account_id = %s",
            (rid, account.account),
        )


def test_a_fixed_root_cause_resolves_while_its_aggregates_stay_high_for_another(
    detector: Detector, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    """Two resources explain a step; one is deleted. Its incident resolves although the
    service, team and account it explained stay high because of the other: before, a root
    cause stayed open for as long as any aggregate it explained did, so a workflow's fix
    did not close its incident."""
    account.write(100.0, **{"i-old": 100.0})
    detector.cycle(time.time())
    detector.cycle(time.time())
    insert_events(pg_dsn, account, datetime.now(UTC))
    account.write(200.0, **{"i-old": 150.0, "i-new": 50.0})
    detector.cycle(time.time())
    reports = {r.labels["resource_id"]: r for r in detector.reports.values()}
    assert sorted(reports) == ["i-new", "i-old"]

    terminate(pg_dsn, account, "i-new", 50.0)
    account.write(150.0, **{"i-old": 150.0, "i-new": 0.0})
    for _ in range(detector.cfg.detection.resolve_after_ticks):
        detector.cycle(time.time())
    [left] = detector.reports.values()
    assert left.labels["resource_id"] == "i-old"
    assert {k.level for k in left.ancestors} == {"service", "team", "account"}
    with psycopg.connect(pg_dsn) as conn:
        [row] = store.get(conn, fingerprint(reports["i-new"].labels))
    assert row["resolved_at"] is not None
    wait_for(
        lambda: set(_active(alertmanager_url, account)) == {"i-old"},
        "i-new's alert to resolve, i-old's to stay",
    )


def _new_instance_explains_a_step(detector: Detector, account: Account) -> None:
    """i-new (+100 $/h) is the one cause of the step of its service, team and account."""
    account.write(100.0, **{"i-old": 100.0})
    detector.cycle(time.time())
    detector.cycle(time.time())
    account.write(200.0, **{"i-old": 100.0, "i-new": 100.0})
    wait_for(lambda: _served(detector, "i-new", 100.0), "i-new to be served")
    detector.cycle(time.time())
    assert [r.labels["resource_id"] for r in detector.reports.values()] == ["i-new"]


def test_an_aggregate_still_high_after_its_cause_is_fixed_is_reported_again(
    detector: Detector, account: Account, alertmanager_url: str
) -> None:
    """i-new explains a step, then is deleted while i-old grows by as much: the aggregates'
    incidents never close, and what keeps them open now, i-old, is reported as their cause
    (before, nothing was: the aggregates were folded into a report that had ended)."""
    _new_instance_explains_a_step(detector, account)
    account.write(200.0, **{"i-old": 200.0, "i-new": 0.0})
    wait_for(lambda: _served(detector, "i-new", 0.0), "i-new at 0")
    wait_for(lambda: _served(detector, "i-old", 200.0), "i-old at 200")
    for _ in range(detector.cfg.detection.resolve_after_ticks):
        detector.cycle(time.time())
    [now_open] = detector.reports.values()
    assert now_open.labels["resource_id"] == "i-old"
    assert {k.level for k in now_open.ancestors} == {"service", "team", "account"}
    assert now_open.observed == 200.0
    wait_for(lambda: set(_active(alertmanager_url, account)) == {"i-old"}, "i-old's alert only")


def test_an_aggregate_read_high_after_its_cause_is_fixed_opens_no_alert_of_its_own(
    detector: Detector, account: Account, alertmanager_url: str
) -> None:
    """i-new is deleted, and its resource series reads 0 while the rollups still read the
    old total (a rollup read a few cycles late, or an aggregate on its way down): i-new's
    incident resolves and nothing explains the aggregates any more, so no alert replaces it.
    The aggregates are watched for a second cause, and their rule still fires on the old
    total, but none of their resources grew: still no alert, however many cycles it lasts."""
    _new_instance_explains_a_step(detector, account)
    account.write(200.0, **{"i-old": 100.0, "i-new": 0.0})
    wait_for(lambda: _served(detector, "i-new", 0.0), "i-new at 0")
    ticks = detector.cfg.detection.resolve_after_ticks
    for _ in range(ticks):
        detector.cycle(time.time())
    assert detector.reports == {}
    assert detector.book.silent  # watched
    for _ in range(2 * ticks + 1):
        detector.cycle(time.time())
        assert detector.reports == {}
    assert any(inc.firing for inc in detector.engine.open_incidents())
    assert {inc.key.level for inc in detector.engine.open_incidents()} >= {"account", "team"}
    wait_for(lambda: _active(alertmanager_url, account) == {}, "no active alert")


def test_a_diffuse_rise_that_outlasts_a_deleted_root_cause_is_reported_then(
    detector: Detector, account: Account, alertmanager_url: str
) -> None:
    """i-big's step is the aggregates' one cause. While it runs, forty small resources of the
    team each grow by 1.5 $/h (none material alone). Once i-big is deleted, the aggregates
    still rise by 60 $/h: the rule fires on them again at full strength, and after
    `resolve_after_ticks` evaluations the rise is reported, at the team or service, with its
    resources as contributors. Before, the aggregates stayed open with no alert at all."""
    small = {f"i-s{n:02d}": 1.0 for n in range(40)}
    grown = {rid: 2.5 for rid in small}
    account.write(40.0, **small)
    detector.cycle(time.time())
    detector.cycle(time.time())
    account.write(70.0, **small, **{"i-big": 30.0})
    wait_for(lambda: _served(detector, "i-big", 30.0), "i-big to be served")
    detector.cycle(time.time())
    assert [r.labels["resource_id"] for r in detector.reports.values()] == ["i-big"]
    account.write(130.0, **grown, **{"i-big": 30.0})
    wait_for(lambda: _served(detector, "i-s39", 2.5), "the small resources to be served")
    detector.cycle(time.time())
    assert [r.labels["resource_id"] for r in detector.reports.values()] == ["i-big"]

    account.write(100.0, **grown, **{"i-big": 0.0})
    wait_for(lambda: _served(detector, "i-big", 0.0), "i-big at 0")
    ticks = detector.cfg.detection.resolve_after_ticks
    for _ in range(ticks):
        detector.cycle(time.time())
    assert detector.reports == {}  # i-big is fixed; the aggregates are silent, and watched
    for _ in range(ticks):
        detector.cycle(time.time())
    [report] = detector.reports.values()
    assert report.key.level in {"service", "team"} and report.own
    assert report.delta == pytest.approx(60.0, rel=0.05)  # against a recent level that moved
    shown = [c for c in report.contributors if c["level"] == "resource"]
    assert shown and all(c["delta_usd_per_hour"] == pytest.approx(1.5, rel=0.05) for c in shown)
    # A team-level alert names the team only; a service-level one, the account.
    level = report.key.level
    where = {"team": account.team} if level == "team" else {"billing_account_id": account.account}

    def active() -> list[dict[str, Any]]:
        found = am_alerts(alertmanager_url, level=level, **where)
        return [a for a in found if a["status"]["state"] == "active"]

    [alert] = wait_for(active, "the rise's alert")
    assert alert["labels"]["rule"] == report.rule


def test_a_deleted_root_known_only_from_its_events_is_not_read_back_as_growth(
    settings: DetectorSettings, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    """i-fresh is known only from the collector's inventory row and events: its series never
    reaches VictoriaMetrics. It explains the step and is deleted, while the rollups are read
    late, still high. Once its fast-path window ends, the drill-down finds it only through
    its creation event (0 -> 80 $/h), and the watch must not count that as a second cause's
    growth: no alert, however many cycles the rollups stay high."""
    detector = Detector(dataclasses.replace(settings, new_resource_window_s=3.0))
    try:
        report = fresh_instance_explains_a_step(detector, account, pg_dsn)
        assert report.labels["resource_id"] == "i-fresh"

        terminate(pg_dsn, account, "i-fresh", 80.0)
        ticks = detector.cfg.detection.resolve_after_ticks
        for _ in range(ticks):
            detector.cycle(time.time())
        assert detector.reports == {}
        assert detector.book.silent  # the aggregates are watched
        # Cycles go on until the fast path forgets i-fresh: its window, counted from the last
        # read of its changes (each read overlaps the last by 5 s).
        deadline = time.time() + detector.cfg.new_resource_window_s + 15.0
        while detector.new_resources:
            assert time.time() < deadline, "the fast path still holds i-fresh"
            time.sleep(1.0)
            detector.cycle(time.time())
            assert detector.reports == {}
        service = next(k for k in detector.book.silent if k.level == "service")
        attribution = detector._attribute(service, time.time(), time.time())
        read_back = [c for c in attribution.resources if c.labels.get("resource_id") == "i-fresh"]
        assert [(c.expected, c.observed) for c in read_back] == [(0.0, 80.0)]  # from its event
        for _ in range(3 * ticks + 1):
            account.write(180.0, **{"i-base": 100.0})  # the rollups, read late
            detector.cycle(time.time())
            assert detector.reports == {}
        assert any(inc.firing for inc in detector.engine.open_incidents())
        wait_for(lambda: _active(alertmanager_url, account) == {}, "no active alert")
    finally:
        detector.close()


def test_a_diffuse_rise_of_one_team_in_one_service_is_one_incident(
    detector: Detector, account: Account, alertmanager_url: str
) -> None:
    """Twelve resources of one team, all in one service, each grow by 1.5 $/h: no resource
    explains it, so the service and the team are each their own cause, and the team is its
    service's sibling, not its child. Before, that was two incidents (and two pages) for one
    cause; now the team is the service's context, as the account is."""
    before = {f"i-batch-{n}": 1.0 for n in range(12)}
    account.write(12.0, **before)
    detector.cycle(time.time())
    detector.cycle(time.time())
    account.write(30.0, **{rid: 2.5 for rid in before})
    wait_for(lambda: _served(detector, "i-batch-11", 2.5), "the resources to be served")
    detector.cycle(time.time())
    [report] = detector.reports.values()
    assert report.key.level == "service"
    assert {k.level for k in report.ancestors} == {"team", "account"}
    assert {i.key.level for i in detector.engine.open_incidents()} == {"service", "team", "account"}
    [alert] = wait_for(lambda: list(_active(alertmanager_url, account).values()), "the alert")
    assert alert["labels"]["level"] == "service"

    account.write(12.0, **before)
    wait_for(lambda: _served(detector, "i-batch-11", 1.0), "the resources back")
    for _ in range(detector.cfg.detection.resolve_after_ticks):
        detector.cycle(time.time())
    assert detector.reports == {}
    wait_for(lambda: _active(alertmanager_url, account) == {}, "the alert to resolve")


def _level_values(detector: Detector, level: str) -> list[float]:
    vector = detector.read(time.time())
    return [v for k, v in zip(vector.keys, vector.values, strict=True) if k.level == level]


def test_a_team_still_growing_when_its_service_falls_back_is_reported_then(
    detector: Detector, account: Account, alertmanager_url: str
) -> None:
    """The team's diffuse rise is reported at its service, with the team as context. Then
    another team in the same service cuts as much: the service is back to normal and its
    incident resolves, while the team still grows. The team is reported then, on its own.
    Before, it stayed open in the engine without any alert."""
    other = {**account.group, "team": f"{account.team}-other"}

    def write(each: float, other_rate: float) -> None:
        now_ms = int(time.time() * 1000)
        samples = [
            Sample(ROLLUP, account.group, 12 * each, now_ms),
            Sample(ROLLUP, other, other_rate, now_ms),
        ]
        labels = {**account.resource("i-other", 0).labels, **other}
        samples.append(Sample(RESOURCE, labels, other_rate, now_ms))
        samples += [account.resource(f"i-batch-{n}", each) for n in range(12)]
        account.vm.import_samples(samples)
        service = 12 * each + other_rate
        wait_for(lambda: _level_values(detector, "service") == [service], f"service at {service}")
        wait_for(lambda: _served(detector, "i-batch-11", each), "the resources to be served")

    write(1.0, 20.0)
    detector.cycle(time.time())
    detector.cycle(time.time())
    write(2.5, 20.0)
    detector.cycle(time.time())
    [report] = detector.reports.values()
    assert report.key.level == "service"
    assert {k.level for k in report.ancestors} == {"team", "account"}

    write(2.5, 2.0)
    for _ in range(detector.cfg.detection.resolve_after_ticks):
        detector.cycle(time.time())
    [report] = detector.reports.values()
    assert report.key.as_dict() == {"team": account.team} and report.own
    # The service's alert resolved; the team's alert carries the team, not the account.
    wait_for(lambda: _active(alertmanager_url, account) == {}, "the service's alert to resolve")
    [alert] = wait_for(lambda: am_alerts(alertmanager_url, team=account.team), "the team's alert")
    assert alert["labels"]["level"] == "team" and alert["status"]["state"] == "active"


def _two_services(account: Account, each: float) -> None:
    """The account's team runs six resources in each of two services, each at `each` $/h
    (a rollup per service, as the collector writes them)."""
    now_ms = int(time.time() * 1000)
    samples = []
    for service in ("Amazon EC2", "Amazon RDS"):
        group = {**account.group, "service_name": service}
        samples.append(Sample(ROLLUP, group, 6 * each, now_ms))
        for n in range(6):
            labels = {
                **group,
                "resource_id": f"r-{service[-3:]}-{n}",
                "resource_type": "instance",
                "sub_account_id": account.account,
            }
            samples.append(Sample(RESOURCE, labels, each, now_ms))
    account.vm.import_samples(samples)
    wait_for(lambda: account.visible(6 * each), f"rollups at {6 * each}")


def test_a_diffuse_rise_of_one_team_across_two_services_is_the_team_s_one_incident(
    detector: Detector, account: Account, alertmanager_url: str
) -> None:
    """The team's twelve resources, six in each of two services, each grow by 1.5 $/h: each
    service's increase is all the team's, and the team's is split between them. One
    incident, the team's, with both services and the account as its context (before, three:
    the two services' and the team's)."""
    _two_services(account, 1.0)
    detector.cycle(time.time())
    detector.cycle(time.time())
    _two_services(account, 2.5)
    wait_for(lambda: _served(detector, "r-RDS-5", 2.5), "the resources to be served")
    detector.cycle(time.time())
    [report] = detector.reports.values()
    assert report.key.level == "team"
    assert sorted(k.level for k in report.ancestors) == ["account", "service", "service"]
    # A team's alert carries the team, not the account.
    [alert] = wait_for(lambda: am_alerts(alertmanager_url, team=account.team), "the alert")
    assert alert["labels"]["level"] == "team"
    assert _active(alertmanager_url, account) == {}
