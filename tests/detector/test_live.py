"""The live detector against the real VictoriaMetrics, Alertmanager and PostgreSQL, and the
generated budget rules in a real vmalert delivering to the real Alertmanager.

Every test writes series of its own billing account and team (from `uid`) and filters on
them, so tests running in parallel against the shared services never see each other."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb

from lambdas import contract
from lambdas.alerting.config import AlertRoutingSettings, render_alertmanager_config
from lambdas.collector.core import Applied, Labels, Rollups, resource_lines
from lambdas.collector.model import Resource, change_of
from lambdas.common.vm import Sample, VictoriaMetrics
from lambdas.detector.alerts import Alertmanager, fingerprint
from lambdas.detector.config import DetectionConfig, SeriesKey
from lambdas.detector.core import BASE_WEEKLY, Transition
from lambdas.detector.reports import MAX_UNREAD_TRIES, Report
from lambdas.detector.rules import Budget, RulesSettings, render_vmalert_rules
from lambdas.detector.service import Detector, DetectorSettings
from lambdas.ingest.exposition import body
from lambdas.store import anomalies as store
from lambdas.store.inventory import write_batch
from tests.routing.helpers import alertmanager_process
from tests.support.procs import free_port, http_ready, running

ROLLUP = "cct_cost_rate_rollup_usd_per_hour"
RESOURCE = "cct_cost_rate_usd_per_hour"
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def am_alerts(alertmanager_url: str, **matchers: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(
        [("filter", f'{k}="{v}"') for k, v in matchers.items()], doseq=True
    )
    with urllib.request.urlopen(f"{alertmanager_url}/api/v2/alerts?{query}", timeout=5) as r:
        return list(json.loads(r.read()))


class Account:
    """Series of one test's own account: a rollup for team and service, and resources."""

    def __init__(self, vm: VictoriaMetrics, uid: str) -> None:
        self.vm = vm
        self.account = f"acct-{uid}"
        self.team = f"team-{uid}"
        self.group = {
            "provider": "aws",
            "billing_account_id": self.account,
            "service_name": "Amazon EC2",
            "region_id": "us-east-1",
            "team": self.team,
            "env": "prod",
            "basis": "list",
        }

    def rollup(self, value: float, at: float | None = None) -> Sample:
        return Sample(ROLLUP, self.group, value, int((at or time.time()) * 1000))

    def resource(self, rid: str, value: float, team: str | None = None) -> Sample:
        """A resource of the account; under another team tag than the account's (a re-tag)
        when `team` is given."""
        labels = {
            **self.group,
            "team": team or self.team,
            "resource_id": rid,
            "resource_type": "instance",
            "sub_account_id": self.account,
        }
        return Sample(RESOURCE, labels, value, int(time.time() * 1000))

    def visible(self, value: float) -> bool:
        rows = self.vm.query(f'{ROLLUP}{{billing_account_id="{self.account}"}}')
        return bool(rows) and float(rows[0]["value"][1]) == value

    def write(self, rollup: float, **resources: float) -> None:
        self.vm.import_samples(
            [self.rollup(rollup)] + [self.resource(k, v) for k, v in resources.items()]
        )
        wait_for(lambda: self.visible(rollup), f"rollup {rollup} to be queryable")


@pytest.fixture
def account(vm: VictoriaMetrics, uid: str) -> Account:
    return Account(vm, uid)


def watching(
    account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str, **changes: Any
) -> DetectorSettings:
    """A detector's settings for the account alone, its history not loaded, an incident
    resolved after two normal evaluations; `changes` on top."""
    settings = DetectorSettings(
        vm_url=vm_url,
        alertmanager_url=alertmanager_url,
        pg_dsn=pg_dsn,
        selector=f'billing_account_id="{account.account}"',
        bootstrap_hours=0,
        detection=DetectionConfig(resolve_after_ticks=2),
    )
    return replace(settings, **changes)


@pytest.fixture
def detector(
    account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str
) -> Iterator[Detector]:
    d = Detector(watching(account, vm_url, alertmanager_url, pg_dsn))
    yield d
    d.close()


def insert_events(pg_dsn: str, account: Account, at: datetime) -> None:
    rows = [
        (
            "ev-resize-" + account.account,
            "i-old",
            "ModifyInstanceAttribute",
            100.0,
            150.0,
            {"team": account.team, "pulumi:project": "shop", "pulumi:stack": "prod"},
        ),
        (
            "ev-create-" + account.account,
            "i-new",
            "RunInstances",
            None,
            50.0,
            {"team": account.team},
        ),
        (
            "ev-other-" + account.account,
            "i-other",
            "RunInstances",
            None,
            9.0,
            {"team": "someone-else"},
        ),
    ]
    with psycopg.connect(pg_dsn) as conn:
        for eid, rid, action, before, after, tags in rows:
            conn.execute(
                """insert into resource_events (event_id, provider, resource_id,
                   billing_account_id, sub_account_id, region_id, service_name, resource_type,
                   action, actor, event_time, tags, usd_per_hour_before, usd_per_hour_after)
                   values (%s, 'aws', %s, %s, %s, 'us-east-1', 'Amazon EC2', 'instance', %s,
                           'arn:aws:iam::1:user/alice', %s, %s, %s, %s)""",
                (
                    eid,
                    rid,
                    account.account if tags.get("team") != "someone-else" else "x",
                    account.account,
                    action,
                    at,
                    Jsonb(tags),
                    before,
                    after,
                ),
            )
            if tags.get("team") == account.team:
                insert_inventory(conn, account, rid, after, at)


def insert_inventory(
    conn: psycopg.Connection[Any], account: Account, rid: str, rate: float, at: datetime
) -> None:
    """The collector's inventory row of a resource of the test's account (what the detector
    reads a new resource's labels and run-rate from). Tests reuse resource ids in accounts
    of their own, and the inventory's key is (provider, resource_id): the whole row is the
    latest test's, or a resource another test deleted would stay deleted and elsewhere."""
    conn.execute(
        """insert into resource_inventory (provider, resource_id, billing_account_id,
           sub_account_id, region_id, service_name, resource_type, state, tags, usd_per_hour,
           priced, last_event_id, last_event_time)
           values ('aws', %s, %s, %s, 'us-east-1', 'Amazon EC2', 'instance', 'running', %s,
                   %s, true, 'seed', %s)
           on conflict (provider, resource_id)
           do update set usd_per_hour = excluded.usd_per_hour,
                         billing_account_id = excluded.billing_account_id,
                         sub_account_id = excluded.sub_account_id,
                         state = excluded.state, tags = excluded.tags""",
        (
            rid,
            account.account,
            account.account,
            Jsonb({"Team": account.team, "env": "prod"}),
            rate,
            at,
        ),
    )


def test_a_step_is_one_incident_per_resource_that_explains_it_with_its_ancestors_as_context(
    detector: Detector, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    account.write(100.0, **{"i-old": 100.0})
    assert detector.cycle(time.time()) == []
    assert detector.cycle(time.time()) == []

    # i-old is resized (+50 $/h, an existing series) and i-new created (+50 $/h, a new series
    # that VictoriaMetrics may not serve for seconds: the change events know it already).
    events_at = datetime.now(UTC) - timedelta(seconds=5)
    insert_events(pg_dsn, account, events_at)
    account.write(200.0, **{"i-old": 150.0, "i-new": 50.0})
    step_at = time.time()
    opened = [t for t in detector.cycle(step_at) if t.kind == "opened"]
    assert {"account", "service", "team"} <= {t.key.level for t in opened}
    assert {t.rule for t in opened} == {"day0_step"}
    # Two causes, two incidents: each resource, reported with the aggregates it explains.
    assert sorted(k.as_dict()["resource_id"] for k in detector.reports) == ["i-new", "i-old"]
    latency = detector.metrics.event_to_alert
    assert sum(b.get() for b in latency._buckets) == 2

    alerts = wait_for(
        lambda: (
            am_alerts(alertmanager_url, billing_account_id=account.account)
            if len(am_alerts(alertmanager_url, billing_account_id=account.account)) == 2
            else None
        ),
        "the detector's alerts in Alertmanager",
    )
    assert {a["labels"]["level"] for a in alerts} == {"resource"}
    by_resource = {a["labels"]["resource_id"]: a for a in alerts}
    old = by_resource["i-old"]
    labels = old["labels"]
    assert labels == {
        "alertname": "CostAnomaly",
        "severity": "critical",
        "level": "resource",
        "rule": "day0_step",
        "source": "detector",
        "provider": "aws",
        "billing_account_id": account.account,
        "sub_account_id": account.account,
        "region_id": "us-east-1",
        "service_name": "Amazon EC2",
        "resource_type": "instance",
        "resource_id": "i-old",
        "team": account.team,
        "env": "prod",
    }
    assert contract.alert_problems(labels, old["annotations"]) == []
    # Our fingerprint is Alertmanager's: the anomalies row and Kafka share the key.
    assert old["fingerprint"] == fingerprint(labels)
    ann = old["annotations"]
    assert float(ann["expected_usd_per_hour"]) == pytest.approx(100.0)
    assert float(ann["observed_usd_per_hour"]) == 150.0
    ancestors = json.loads(ann["ancestors"])
    assert [a["level"] for a in ancestors] == ["service", "team", "account"]
    assert all(a["delta_usd_per_hour"] == pytest.approx(100.0) for a in ancestors)
    events = json.loads(ann["change_events"])
    [resize] = events
    assert resize["event_id"] == "ev-resize-" + account.account
    assert resize["actor"] == "arn:aws:iam::1:user/alice"
    assert (resize["pulumi_project"], resize["pulumi_stack"]) == ("shop", "prod")
    new = by_resource["i-new"]
    assert new["labels"]["resource_type"] == "instance"
    assert [e["event_id"] for e in json.loads(new["annotations"]["change_events"])] == [
        "ev-create-" + account.account
    ]

    with psycopg.connect(pg_dsn) as conn:
        [row] = store.get(conn, old["fingerprint"])
    assert (row["rule"], row["level"], row["severity"]) == ("day0_step", "resource", "critical")
    assert row["dimensions"]["resource_id"] == "i-old"
    assert float(row["observed_usd_per_hour"]) == 150.0
    assert row["resolved_at"] is None
    assert [a["level"] for a in row["ancestors"]] == ["service", "team", "account"]

    # Still high on the next cycle: the same incidents, no more alerts.
    account.write(200.0, **{"i-old": 150.0, "i-new": 50.0})
    detector.cycle(time.time())
    assert len(am_alerts(alertmanager_url, billing_account_id=account.account)) == 2

    # Back to normal: resolved after two normal cycles, in Alertmanager and in the table.
    # i-old is resized back and i-new terminated (the collector records both in the inventory
    # with their events).
    with psycopg.connect(pg_dsn) as conn:
        for rid, action, before, after in (
            ("i-old", "ModifyInstanceAttribute", 150, 100),
            ("i-new", "TerminateInstances", 50, 0),
        ):
            conn.execute(
                """insert into resource_events (event_id, provider, resource_id,
                   billing_account_id, sub_account_id, region_id, service_name, resource_type,
                   action, event_time, usd_per_hour_before, usd_per_hour_after)
                   values (%s, 'aws', %s, %s, %s, 'us-east-1', 'Amazon EC2', 'instance',
                           %s, now(), %s, %s)""",
                (
                    f"ev-{action}-{account.account}",
                    rid,
                    account.account,
                    account.account,
                    action,
                    before,
                    after,
                ),
            )
            conn.execute(
                "update resource_inventory set usd_per_hour = %s, state = %s "
                "where resource_id = %s and billing_account_id = %s",
                (after, "deleted" if after == 0 else "running", rid, account.account),
            )
    account.write(100.0, **{"i-old": 100.0, "i-new": 0.0})
    detector.cycle(time.time())
    detector.cycle(time.time())
    assert detector.reports == {}
    active = [
        a
        for a in am_alerts(alertmanager_url, billing_account_id=account.account)
        if a["status"]["state"] == "active"
    ]
    assert active == []
    with psycopg.connect(pg_dsn) as conn:
        [row] = store.get(conn, old["fingerprint"])
    assert row["resolved_at"] is not None


def test_an_escalation_is_still_one_alert_in_alertmanager_and_one_row(
    detector: Detector, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    account.write(100.0)
    # Series already there at a start are judged from their second value on.
    detector.cycle(time.time())
    detector.cycle(time.time())
    account.write(130.0)  # +30 $/h: a warning
    [opened] = [t for t in detector.cycle(time.time()) if t.key.level == "team"]
    [warning] = am_alerts(alertmanager_url, team=account.team, source="detector")
    assert (opened.kind, warning["labels"]["severity"]) == ("opened", "warning")

    account.write(300.0)  # the ramp grows to +200 $/h: critical
    [escalated] = [t for t in detector.cycle(time.time()) if t.key.level == "team"]
    assert (escalated.kind, escalated.severity) == ("escalated", "critical")
    assert escalated.started_at == opened.started_at
    # Alertmanager holds one alert for the incident: the critical one, from the incident's
    # start; the warning was resolved in the same post and points at its successor.
    [critical] = am_alerts(alertmanager_url, team=account.team, source="detector")
    assert critical["labels"] == {**warning["labels"], "severity": "critical"}
    assert critical["startsAt"] == warning["startsAt"]
    assert critical["annotations"]["escalated_from"] == "warning"
    assert float(critical["annotations"]["observed_usd_per_hour"]) == 300.0
    assert critical["status"]["state"] == "active"
    with psycopg.connect(pg_dsn) as conn:
        assert store.get(conn, warning["fingerprint"]) == []
        [row] = store.get(conn, critical["fingerprint"])
    assert (row["severity"], row["resolved_at"]) == ("critical", None)
    assert float(row["observed_usd_per_hour"]) == 300.0

    # Falling back does not de-escalate; resolving ends the one alert and the one row.
    account.write(150.0)
    assert [t.kind for t in detector.cycle(time.time())] == []
    assert am_alerts(alertmanager_url, team=account.team)[0]["labels"]["severity"] == "critical"
    account.write(100.0)
    detector.cycle(time.time())
    resolved = [t for t in detector.cycle(time.time()) if t.key.level == "team"]
    assert [(t.kind, t.severity) for t in resolved] == [("resolved", "critical")]
    assert am_alerts(alertmanager_url, team=account.team) == []
    with psycopg.connect(pg_dsn) as conn:
        [row] = store.get(conn, critical["fingerprint"])
    assert row["resolved_at"] is not None
    assert detector.metrics.transitions.labels("escalated")._value.get() == 3  # every level


def test_series_that_vanish_are_evicted_from_the_engine_and_the_key_cache(
    detector: Detector, account: Account, vm: VictoriaMetrics, uid: str
) -> None:
    detector.engine.cfg = DetectionConfig(stale_after_s=1.0, evict_after_s=1.0)
    account.write(10.0)
    detector.cycle(time.time())
    team = SeriesKey.of("team", {"team": account.team})
    assert team in detector.engine and team in detector.key_cache["team"].values()

    # The account's groups are gone (here: the detector now watches another account).
    other = Account(vm, f"{uid}-other")
    other.write(10.0)
    detector.cfg = replace(detector.cfg, selector=f'billing_account_id="{other.account}"')
    detector.cycle(time.time())
    time.sleep(1.1)
    detector.cycle(time.time())
    assert team not in detector.engine
    assert team not in detector.key_cache["team"].values()
    assert detector.engine.series_count == 3  # the other account's three levels
    assert detector.metrics.known._value.get() == 3


def test_a_row_postgres_refuses_is_dropped_and_does_not_block_the_rows_behind_it(
    detector: Detector, pg_dsn: str, uid: str
) -> None:
    from lambdas.detector.outbox import Upsert

    def row(fp: str, severity: str) -> store.AnomalyRow:
        return store.AnomalyRow(
            fingerprint=fp,
            started_at=datetime.now(UTC),
            rule="day0_step",
            level="team",
            severity=severity,
            dimensions={"team": uid},
            expected_usd_per_hour=1.0,
            observed_usd_per_hour=50.0,
            deviation=49.0,
            contributors=[],
            change_events=[],
        )

    bad, good = f"bad-{uid}", f"good-{uid}"
    detector.pending_rows.add(Upsert(row(bad, "apocalyptic")))
    detector.pending_rows.add(Upsert(row(good, "critical")))
    detector._write()
    assert len(detector.pending_rows) == 0
    assert detector.metrics.errors.labels("postgres")._value.get() == 2  # batch, then the row
    with psycopg.connect(pg_dsn) as conn:
        assert store.get(conn, bad) == []
        [written] = store.get(conn, good)
    assert written["severity"] == "critical"


def test_an_alert_alertmanager_refuses_does_not_take_the_others_with_it(
    detector: Detector, account: Account, alertmanager_url: str
) -> None:
    account.write(100.0)
    detector.cycle(time.time())
    detector.cycle(time.time())
    bad = {"labels": {"alertname": ""}, "annotations": {}}  # Alertmanager: 400
    detector.unsent.add([bad])
    account.write(250.0)
    assert len(detector.cycle(time.time())) == 3
    assert len(detector.unsent) == 0
    assert detector.metrics.errors.labels("alertmanager")._value.get() == 2  # batch, then it
    assert detector.metrics.posted._value.get() == 3
    [alert] = am_alerts(alertmanager_url, team=account.team, source="detector")
    assert float(alert["annotations"]["observed_usd_per_hour"]) == 250.0


def test_history_is_loaded_at_start_so_the_seasonal_baseline_is_warm(
    detector: Detector, account: Account, vm: VictoriaMetrics
) -> None:
    now = time.time()
    hour = int(now // 3600)
    hours = 16 * 24
    values = 100 + 40 * np.sin(np.arange(hours) / 24 * 2 * np.pi)
    samples = [
        account.rollup(float(v), at=(hour - hours + n) * 3600 + 1800) for n, v in enumerate(values)
    ]
    vm.import_samples(samples)
    wait_for(
        lambda: (
            vm.query_range(
                f'{ROLLUP}{{billing_account_id="{account.account}"}}', now - hours * 3600, now, "1h"
            )
            or None
        ),
        "the backfilled history to be queryable",
    )
    restarted = Detector(replace(detector.cfg, bootstrap_hours=hours))
    assert restarted.bootstrap(now) == 3  # one series per level
    engine = restarted.engine
    idx = engine.index_of([SeriesKey.of("team", {"team": account.team})])
    assert engine.observe(now, idx, [float(values[-24])]) == []
    assert engine.mode[idx[0]] == BASE_WEEKLY  # without waiting two weeks
    assert engine.exp_seasonal[idx[0]] == pytest.approx(values[-24], rel=0.05)


def test_a_detector_every_five_minutes_reports_a_local_step_end_to_end(
    account: Account, vm: VictoriaMetrics, vm_url: str, alertmanager_url: str, pg_dsn: str
) -> None:
    # 30 hours of a daily pattern (50-150 $/h, 0.3 % jitter) every 5 minutes ending now at
    # its peak, then 187 $/h: a jump the hourly model cannot see (docs/detection.md).
    step, hours = 300.0, 30
    end = time.time() - 1.0
    times = end - step * np.arange(hours * 12)[::-1]
    phase = (times - times[0]) / 86400 * 2 * np.pi
    rng = np.random.default_rng(8)
    values = 100 * (1 + 0.5 * np.sin(phase)) * (1 + rng.normal(0, 0.003, times.size))
    values[-2:] = 187.0
    vm.import_samples(
        [account.rollup(float(v), at=float(t)) for t, v in zip(times, values, strict=True)]
    )
    wait_for(lambda: account.visible(187.0), "the 5-minute history to be queryable")
    settings = DetectorSettings(
        vm_url=vm_url,
        alertmanager_url=alertmanager_url,
        pg_dsn=pg_dsn,
        selector=f'billing_account_id="{account.account}"',
        levels=("account",),
        interval_s=step,
        bootstrap_hours=0,
    )
    d = Detector(settings)
    try:
        opened = [
            (n, tr) for n, t in enumerate(times) for tr in d.cycle(float(t)) if tr.kind == "opened"
        ]
    finally:
        d.close()
    # Nothing before the jump; at the jump one incident, by the local step.
    [(n, tr)] = opened
    assert n == times.size - 2
    assert (tr.rule, tr.baseline) == ("local_step", "recent_level")
    assert 140 < tr.expected < 155
    [alert] = wait_for(
        lambda: am_alerts(alertmanager_url, billing_account_id=account.account) or None,
        "the local step's alert in Alertmanager",
    )
    assert alert["labels"]["rule"] == "local_step"
    assert alert["annotations"]["baseline"] == "recent_level"
    assert contract.alert_problems(alert["labels"], alert["annotations"]) == []
    with psycopg.connect(pg_dsn) as conn:
        [row] = store.get(conn, alert["fingerprint"])
    assert (row["rule"], row["level"]) == ("local_step", "account")


def test_a_value_beyond_any_cost_rate_is_skipped_and_counted(
    detector: Detector, account: Account
) -> None:
    account.write(100.0)
    assert detector.cycle(time.time()) == []
    account.write(1e40)  # a garbage sample written straight to VictoriaMetrics
    assert detector.cycle(time.time()) == []
    # One value per level (account, service, team): skipped like missing ones, counted.
    assert detector.metrics.out_of_range._value.get() == 3
    account.write(100.0)
    assert detector.cycle(time.time()) == []


def test_budget_rules_in_a_real_vmalert_reach_the_real_alertmanager(
    account: Account, vm_url: str, alertmanager_url: str, tmp_path: Path, uid: str
) -> None:
    budget = Budget(f"team-{uid}", "team", {"team": account.team}, 50.0, severity="critical")
    rules = tmp_path / "rules.yaml"
    rules.write_text(render_vmalert_rules(RulesSettings(budgets=(budget,))))
    port = free_port()
    account.write(80.0)
    cmd = [
        "vmalert",
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-rule={rules}",
        f"-datasource.url={vm_url}",
        f"-notifier.url={alertmanager_url}",
        "-evaluationInterval=3s",
    ]
    with running(cmd, http_ready(f"http://127.0.0.1:{port}/health"), tmp_path / "vmalert.log"):

        def arrived() -> list[dict[str, Any]] | None:
            account.vm.import_samples([account.rollup(80.0)])  # the collector's heartbeat
            return am_alerts(alertmanager_url, budget=budget.name) or None

        [alert] = wait_for(arrived, "vmalert's budget alert in Alertmanager", timeout=45)
    labels = alert["labels"]
    assert (labels["alertname"], labels["rule"], labels["source"]) == (
        "CostAnomaly",
        "budget",
        "vmalert",
    )
    assert (labels["level"], labels["team"], labels["severity"]) == (
        "team",
        account.team,
        "critical",
    )
    ann = alert["annotations"]
    assert float(ann["observed_usd_per_hour"]) == 80.0
    assert float(ann["expected_usd_per_hour"]) == 50.0
    assert float(ann["delta_usd_per_hour"]) == pytest.approx(30.0)
    assert float(ann["deviation"]) == pytest.approx(0.6)
    assert json.loads(ann["contributors"]) == []


def test_a_critical_budget_mutes_its_own_warning_tier_not_the_detector_s_warning(
    account: Account, vm_url: str, pg_dsn: str, tmp_path: Path, uid: str
) -> None:
    """Review finding: the inhibition matched dimensions only, so a team over its critical
    budget muted the detector's warning on that team (its cause, and its playbook through the
    bridge). Real vmalert and a real detector post into an Alertmanager running the config
    the bundle deploys: the budget's warning tier is muted, the detector's warning is not."""
    token = tmp_path / "bridge.token"
    token.write_text("t" * 32)
    closed = f"http://127.0.0.1:{free_port()}"
    config = render_alertmanager_config(
        AlertRoutingSettings(
            bridge_url=f"{closed}/v1/alerts",
            zenduty_relay_url=f"{closed}/v1/relay/zenduty",
            token_file=str(token),
        )
    )
    budgets = (
        Budget(f"crit-{uid}", "team", {"team": account.team}, 50.0, severity="critical"),
        Budget(f"warn-{uid}", "team", {"team": account.team}, 40.0, severity="warning"),
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(render_vmalert_rules(RulesSettings(budgets=budgets)))
    account.write(100.0)
    with alertmanager_process(tmp_path / "am", config) as am:
        detector = Detector(watching(account, vm_url, am, pg_dsn, levels=("team",)))
        try:
            detector.cycle(time.time())
            detector.cycle(time.time())
            account.write(130.0)
            port = free_port()
            cmd = [
                "vmalert",
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-rule={rules}",
                f"-datasource.url={vm_url}",
                f"-notifier.url={am}",
                "-evaluationInterval=3s",
            ]
            with running(
                cmd, http_ready(f"http://127.0.0.1:{port}/health"), tmp_path / "vmalert.log"
            ):

                def all_three() -> dict[str, dict[str, Any]] | None:
                    account.vm.import_samples([account.rollup(130.0)])  # the heartbeat
                    detector.cycle(time.time())
                    with urllib.request.urlopen(f"{am}/api/v2/alerts", timeout=5) as r:
                        found = json.loads(r.read())
                    by = {
                        a["labels"].get("budget", a["labels"]["source"]): a
                        for a in found
                        if a["labels"].get("team") == account.team
                    }
                    return by if len(by) == 3 else None

                alerts = wait_for(all_three, "both budget alerts and the detector's", timeout=60)
        finally:
            detector.close()
    own = alerts["detector"]
    assert (own["labels"]["level"], own["labels"]["severity"]) == ("team", "warning")
    assert own["status"] == {**own["status"], "state": "active", "inhibitedBy": []}
    assert alerts[f"crit-{uid}"]["status"]["state"] == "active"
    muted = alerts[f"warn-{uid}"]["status"]
    assert muted["state"] == "suppressed"
    assert muted["inhibitedBy"] == [alerts[f"crit-{uid}"]["fingerprint"]]


@pytest.fixture
def serve_env(account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str) -> dict[str, str]:
    return {
        "CCT_VM_URL": vm_url,
        "CCT_ALERTMANAGER_URL": alertmanager_url,
        "CCT_PG_DSN": pg_dsn,
        "CCT_DETECTOR_SELECTOR": f'billing_account_id="{account.account}"',
        "CCT_DETECTOR_PORT": str(free_port()),
        "CCT_DETECTOR_INTERVAL_S": "1",
        "CCT_DETECTOR_BOOTSTRAP_HOURS": "0",
    }


def test_cct_serve_detector_runs_the_loop_and_alerts(
    serve_env: dict[str, str],
    account: Account,
    alertmanager_url: str,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    port = serve_env["CCT_DETECTOR_PORT"]
    account.write(100.0)
    cmd = [str(repo_root / ".venv/bin/cct"), "serve", "detector"]
    health = f"http://127.0.0.1:{port}/readyz"
    with running(cmd, http_ready(health), tmp_path / "detector.log", env=serve_env):
        account.write(300.0)
        [alert] = wait_for(
            lambda: am_alerts(alertmanager_url, team=account.team, source="detector") or None,
            "the served detector's alert",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    assert alert["labels"]["rule"] == "day0_step"
    assert float(alert["annotations"]["delta_usd_per_hour"]) == pytest.approx(200.0)
    assert 'cct_detector_incidents_total{kind="opened"} 3.0' in metrics
    assert "cct_detector_series 3.0" in metrics
    logs = (tmp_path / "detector.log").read_text().splitlines()
    assert logs and all(json.loads(line)["level"] for line in logs)


def go_dark(detector: Detector, **settings: Any) -> Callable[[], None]:
    """Point the detector at a closed port for Alertmanager and PostgreSQL (with `settings`
    changed too); returns what brings both back."""
    real_am, real_cfg = detector.am, detector.cfg
    closed = free_port()
    detector.am = Alertmanager(f"http://127.0.0.1:{closed}", timeout=2)
    detector.cfg = replace(real_cfg, pg_dsn=f"postgresql://cct@127.0.0.1:{closed}/cct", **settings)

    def restore() -> None:
        detector.am, detector.cfg = real_am, real_cfg

    return restore


def resolve_all(detector: Detector, cycles: int = 10) -> None:
    """Cycle until every report has resolved (the value is back), at most `cycles` times."""
    for _ in range(cycles):
        detector.cycle(time.time())
        if not detector.reports:
            break
    assert detector.reports == {}


def step_up(detector: Detector, account: Account) -> list[Transition]:
    """The account at 100 $/h for two cycles, then 250: three incidents open (account,
    service, team)."""
    account.write(100.0)
    detector.cycle(time.time())
    detector.cycle(time.time())
    account.write(250.0)
    opened = detector.cycle(time.time())
    assert len(opened) == 3
    return opened


def test_alerts_and_rows_wait_out_alertmanager_and_postgres_outages(
    detector: Detector, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    restore = go_dark(detector)

    opened = step_up(detector, account)
    # Nothing the drill-down read explains the rise, and the change events (which know the
    # resources too new to be served) cannot be read: held, then reported without them
    # (docs/detection.md, "When the attribution cannot be read").
    assert set(detector.book.held) == {o.key for o in opened} and len(detector.unsent) == 0
    for _ in range(MAX_UNREAD_TRIES - 1):
        detector.cycle(time.time())
    assert len(detector.unsent) == 3 and len(detector.pending_rows) == 3
    errors = detector.metrics.errors
    assert errors.labels("alertmanager")._value.get() == 1
    assert errors.labels("postgres")._value.get() >= 1
    assert am_alerts(alertmanager_url, team=account.team, source="detector") == []

    restore()
    assert detector.cycle(time.time()) == []  # still high: nothing new, the backlog goes out
    assert len(detector.unsent) == 0 and len(detector.pending_rows) == 0
    [alert] = am_alerts(alertmanager_url, team=account.team, source="detector")
    with psycopg.connect(pg_dsn) as conn:
        [row] = store.get(conn, alert["fingerprint"])
    assert float(row["observed_usd_per_hour"]) == 250.0
    # Review finding: the adoption, which now writes the queued rows before it reads the
    # open ones, did not know them for this run's own and closed them.
    assert row["resolved_at"] is None
    assert detector.cycle(time.time()) == [] and len(detector.reports) == 3


def test_a_long_outage_queues_one_alert_and_one_row_per_incident(
    detector: Detector, account: Account, alertmanager_url: str, pg_dsn: str
) -> None:
    """Review finding: every cycle's re-post of each open incident was queued again, so an
    outage of an hour filled the queues with copies and the cap dropped the oldest entries
    first (an incident's insert, a resolve). Now a newer state replaces the queued one."""
    # Re-post every open incident at every cycle, as a long outage would many times.
    restore = go_dark(detector, resend_s=0.001)

    step_up(detector, account)
    for value in (251.0, 252.0, 253.0, 254.0, 255.0, 256.0):
        account.write(value)
        detector.cycle(time.time())
    assert len(detector.unsent) == 3 and len(detector.pending_rows) == 3
    assert am_alerts(alertmanager_url, team=account.team, source="detector") == []

    restore()
    detector.cycle(time.time())
    assert len(detector.unsent) == 0 and len(detector.pending_rows) == 0
    [alert] = am_alerts(alertmanager_url, team=account.team, source="detector")
    assert float(alert["annotations"]["observed_usd_per_hour"]) == 256.0
    with psycopg.connect(pg_dsn) as conn:
        [row] = store.get(conn, alert["fingerprint"])
    assert float(row["observed_usd_per_hour"]) == 256.0
    assert detector.metrics.dropped.labels("row")._value.get() == 0


def test_a_stopping_detector_delivers_what_it_queued_or_says_what_it_could_not(
    detector: Detector,
    account: Account,
    alertmanager_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    restore = go_dark(detector)
    step_up(detector, account)
    for _ in range(MAX_UNREAD_TRIES - 1):
        detector.cycle(time.time())
    assert len(detector.unsent) == 3 and len(detector.pending_rows) == 3

    with caplog.at_level(logging.ERROR, logger="cct.detector"):
        detector.flush()  # both still down: nothing delivered, and said so
    [record] = [r for r in caplog.records if "undelivered" in r.getMessage()]
    assert (record.__dict__["alerts"], record.__dict__["rows"]) == (3, 3)

    restore()
    detector.flush()  # what `cct serve detector` does at SIGTERM, before it closes
    assert len(detector.unsent) == 0 and len(detector.pending_rows) == 0
    [alert] = am_alerts(alertmanager_url, team=account.team, source="detector")
    assert float(alert["annotations"]["observed_usd_per_hour"]) == 250.0


def stored(pg_dsn: str, fingerprints: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    with psycopg.connect(pg_dsn) as conn:
        return {fp: store.get(conn, fp) for fp in fingerprints}


def test_a_detector_that_dies_in_an_outage_leaves_its_queue_to_the_next_one(
    account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    """Review finding: the queues lived in memory only, so a detector that died (not a
    SIGTERM) while PostgreSQL was down lost the rows of the incidents it opened meanwhile.
    The spool keeps them; the next detector writes them, adopts those incidents (their start
    kept, not detected again as new ones) and delivers their alerts."""
    settings = watching(account, vm_url, alertmanager_url, pg_dsn, spool_file=str(tmp_path / "q"))
    first = Detector(settings)
    go_dark(first)
    opened = step_up(first, account)
    for _ in range(MAX_UNREAD_TRIES - 1):
        first.cycle(time.time())
    assert len(first.unsent) == 3 and len(first.pending_rows) == 3
    spooled = {op.row.fingerprint: op.row.started_at for op in first.pending_rows}
    first.close()  # no flush: the process died

    second = Detector(settings)
    try:
        # The rows are replayed; the firing alerts are not (older than what the detector
        # re-sends for the incidents it takes over).
        assert len(second.unsent) == 0 and len(second.pending_rows) == 3
        # Taken over from the spool at start, before PostgreSQL is read; but the team's,
        # whose rollup lacks the account label this detector is selected by: that one waits
        # for the adoption, which knows the series the detector reads.
        assert {r.key for r in second.reports.values()} == {
            o.key for o in opened if o.key.level != "team"
        }
        assert second.cycle(time.time()) == []  # still high: adopted, not opened again
        assert {r.key for r in second.reports.values()} == {o.key for o in opened}
        assert all(r.adopted for r in second.reports.values())
        assert len(second.unsent) == 0 and len(second.pending_rows) == 0
        assert not (tmp_path / "q").exists()
        rows = stored(pg_dsn, spooled)
        assert {fp: [r["started_at"] for r in found] for fp, found in rows.items()} == {
            fp: [at] for fp, at in spooled.items()
        }
        [alert] = am_alerts(alertmanager_url, team=account.team, source="detector")
        assert alert["fingerprint"] in spooled
        # Alertmanager keeps milliseconds.
        starts = datetime.fromisoformat(alert["startsAt"])
        assert abs(starts - spooled[alert["fingerprint"]]) < timedelta(milliseconds=1)
    finally:
        second.close()


def test_an_incident_that_opened_and_resolved_in_an_outage_is_stored_resolved_after_a_crash(
    account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    settings = watching(account, vm_url, alertmanager_url, pg_dsn, spool_file=str(tmp_path / "q"))
    first = Detector(settings)
    go_dark(first)
    step_up(first, account)
    for _ in range(MAX_UNREAD_TRIES - 1):
        first.cycle(time.time())
    account.write(100.0)
    wait_for(lambda: account.visible(100.0), "the fall back")
    resolve_all(first)
    spooled = {op.row.fingerprint for op in first.pending_rows}
    assert len(spooled) == 3
    first.close()

    second = Detector(settings)
    try:
        assert second.cycle(time.time()) == []
        assert second.reports == {} and len(second.pending_rows) == 0
        rows = stored(pg_dsn, spooled)
        assert all(len(found) == 1 and found[0]["resolved_at"] for found in rows.values())
        assert am_alerts(alertmanager_url, team=account.team, source="detector") == []
    finally:
        second.close()


def test_a_stale_spool_does_not_bring_back_incidents_postgres_has_resolved(
    account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    """Review finding: the incidents taken over from the spool at start were never checked
    against PostgreSQL; a spool left behind (one that could not be removed) brought back
    incidents resolved since, and re-fired their alerts. Dropped once PostgreSQL answers."""
    spool = tmp_path / "q"
    settings = watching(account, vm_url, alertmanager_url, pg_dsn, spool_file=str(spool))
    first = Detector(settings)
    restore = go_dark(first)
    step_up(first, account)
    for _ in range(MAX_UNREAD_TRIES - 1):
        first.cycle(time.time())
    stale = spool.read_bytes()
    fingerprints = {op.row.fingerprint for op in first.pending_rows}
    restore()
    first.cycle(time.time())
    assert not spool.exists()
    account.write(100.0)
    resolve_all(first)
    final = stored(pg_dsn, fingerprints)
    first.close()

    spool.write_bytes(stale)
    second = Detector(settings)
    try:
        assert len(second.reports) == 2  # taken over at start (the team's waits, above) ...
        assert second.cycle(time.time()) == []
        assert second.reports == {}  # ... and dropped: PostgreSQL has them resolved
        assert stored(pg_dsn, fingerprints) == final  # not reopened, figures kept
        assert am_alerts(alertmanager_url, team=account.team, source="detector") == []
    finally:
        second.close()


def test_a_detector_killed_in_an_outage_leaves_its_queue_to_the_next_one(
    serve_env: dict[str, str],
    account: Account,
    alertmanager_url: str,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    """The same through `cct serve detector`, killed with SIGKILL: nothing runs at exit."""
    pg_dsn = serve_env["CCT_PG_DSN"]
    spool = tmp_path / "spool.json"
    closed = free_port()
    dark = {
        **serve_env,
        "CCT_ALERTMANAGER_URL": f"http://127.0.0.1:{closed}",
        "CCT_PG_DSN": f"postgresql://cct@127.0.0.1:{closed}/cct",
        "CCT_DETECTOR_SPOOL_FILE": str(spool),
    }
    port = serve_env["CCT_DETECTOR_PORT"]
    cmd = [str(repo_root / ".venv/bin/cct"), "serve", "detector"]

    def cycles() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        count = "cct_detector_cycle_seconds_count "
        [line] = [ln for ln in text.splitlines() if ln.startswith(count)]
        return float(line.split()[-1])

    def spooled() -> dict[str, Any] | None:
        try:
            doc = json.loads(spool.read_text())
        except FileNotFoundError:
            return None
        return doc if len(doc["rows"]) == 3 and len(doc["alerts"]) == 3 else None

    account.write(100.0)
    health = f"http://127.0.0.1:{port}/healthz"
    with running(cmd, http_ready(health), tmp_path / "dark.log", env=dark) as proc:
        wait_for(lambda: cycles() >= 3 or None, "three cycles at 100 $/h")
        account.write(250.0)
        doc = wait_for(spooled, "the spooled rows and alerts")
        proc.kill()
        proc.wait(timeout=10)
    starts = {op["row"]["fingerprint"]: op["row"]["started_at"] for op in doc["rows"]}

    again = {**serve_env, "CCT_DETECTOR_SPOOL_FILE": str(spool)}
    with running(cmd, http_ready(health), tmp_path / "again.log", env=again):
        [alert] = wait_for(
            lambda: am_alerts(alertmanager_url, team=account.team, source="detector") or None,
            "the spooled alert",
        )
        wait_for(lambda: not spool.exists() or None, "the spool emptied")
        rows = stored(pg_dsn, starts)
    assert {fp: [r["started_at"].isoformat() for r in found] for fp, found in rows.items()} == {
        fp: [datetime.fromisoformat(at).isoformat()] for fp, at in starts.items()
    }
    spooled_start = datetime.fromisoformat(starts[alert["fingerprint"]])
    assert abs(datetime.fromisoformat(alert["startsAt"]) - spooled_start) < timedelta(
        milliseconds=1
    )
    logs = [json.loads(ln) for ln in (tmp_path / "again.log").read_text().splitlines()]
    [recovered] = [e for e in logs if e["msg"].startswith("undelivered alerts and anomaly")]
    assert (recovered["alerts"], recovered["rows"]) == (3, 3)


class Collected:
    """Resources of the test's account written as the collector writes them, with its own
    code: `commit` is the inventory row and change event (`inventory.write_batch`, which the
    detector's fast path reads), `publish` the resources' series and the rollups of every
    group the batch changed (`Rollups.apply`, including a group a re-tag left). The
    collector commits before it publishes, so a detector cycle can fall in between."""

    def __init__(self, account: Account, pg_dsn: str, vm_url: str, **team_of: str) -> None:
        self.account = account
        self.pg_dsn = pg_dsn
        self.vm_url = vm_url
        self.rollups = Rollups(Labels(contract.TAG_LABELS))
        self.tags = dict(team_of)  # resource id -> its team tag
        self.costs: dict[str, float] = {}
        self.rows: list[Resource] = []

    def commit(self) -> None:
        now = datetime.now(UTC)
        before = {r.resource_id: r.usd_per_hour for r in self.rows}
        self.rows[:] = [
            Resource(
                provider="aws",
                resource_id=rid,
                billing_account_id=self.account.account,
                sub_account_id=self.account.account,
                region_id="us-east-1",
                service_name="Amazon EC2",
                resource_type="instance",
                sku=None,
                size={},
                state="running",
                tags={"team": self.tags[rid], "env": "prod"},
                usd_per_hour=cost,
                last_event_id=f"ev-{rid}-{uuid.uuid4().hex}",
                last_event_time=now,
            )
            for rid, cost in self.costs.items()
        ]
        applied = [
            Applied(
                change_of(r, r.last_event_id, "CreateTags", now, tags=r.tags),
                before.get(r.resource_id, r.usd_per_hour),  # there before the test
                r.usd_per_hour,
                False,
            )
            for r in self.rows
        ]

        async def write() -> None:
            async with await psycopg.AsyncConnection.connect(self.pg_dsn) as conn:
                await write_batch(conn, {r.key: r for r in self.rows}, applied, now)

        asyncio.run(write())

    def publish(self) -> None:
        placed, groups = self.rollups.apply(self.rows)
        ts = int(time.time() * 1000)
        lines = [
            ln
            for r in self.rows
            for ln in resource_lines(placed[r.key][1], self.costs[r.resource_id], None, ts)
        ]
        lines += self.rollups.rollup_lines(groups, {}, ts)
        req = urllib.request.Request(f"{self.vm_url}/api/v1/import/prometheus", data=body(lines))
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def team_total(self, team: str) -> float | None:
        found = self.account.vm.query(f'sum({ROLLUP}{{team="{team}",basis="list"}})')
        return float(found[0]["value"][1]) if found else None

    def served(self, rid: str) -> bool:
        """`rid` is queryable under its current team, and that team's total is its
        resources' sum."""
        team = self.tags[rid]
        moved = self.account.vm.query(f'{RESOURCE}{{resource_id="{rid}",team="{team}"}}')
        total = sum(c for r, c in self.costs.items() if self.tags[r] == team)
        return bool(moved) and self.team_total(team) == total

    def write(self, what: str, rid: str) -> None:
        """Commit and publish, and wait until `rid` is served."""
        self.commit()
        self.publish()
        wait_for(lambda: self.served(rid), what)


def test_a_re_tag_as_the_collector_writes_it_opens_nothing_at_any_level(
    detector: Detector, account: Account, vm_url: str, pg_dsn: str
) -> None:
    """Review findings: the resource was followed under its new labels, but its teams were
    not. The collector moves a re-tagged resource's cost from one team's total to the
    other's in one write: the team it joined stepped up by the whole cost and was reported
    (`day0_step`), and, while the collector wrote only the group joined, the account and
    service read the resource twice until the next heartbeat. Written here in the
    collector's order with its own code: the inventory row and change event committed
    (`inventory.write_batch`, which the detector's fast path reads), a cycle, and only then
    the series (`Rollups.apply`), so the detector learns of the re-tag before the teams'
    totals move. Nothing opens at any level, also when the re-tag is undone minutes later
    (the label set it returns to was held out as a stale series, its team stepped up) or
    re-tagged twice between two cycles (the second new label set was taken for a new
    resource, a step from nothing); a real step afterwards is reported at the resource,
    under its team."""
    teams = {t: f"{account.team}-{t}" for t in ("web", "data", "ops", "batch")}
    done = Collected(account, pg_dsn, vm_url, **{"i-moves": teams["web"], "i-stays": teams["data"]})
    done.costs.update({"i-moves": 40.0, "i-stays": 60.0})

    def opened(cycles: int) -> list[Transition]:
        return [t for _ in range(cycles) for t in detector.cycle(time.time()) if t.kind == "opened"]

    for _ in range(3):
        done.write("the resources and their teams", "i-moves")
        assert opened(1) == []
    for team, relabelled in (("data", 1), ("web", 2)):  # re-tagged, then undone
        done.tags["i-moves"] = teams[team]
        done.commit()
        assert opened(1) == []  # the teams' totals not moved yet
        done.publish()
        wait_for(lambda: done.served("i-moves"), "the re-tagged resource and its team's total")
        assert opened(3) == []
        assert detector.metrics.relabelled._value.get() == relabelled
    # Re-tagged twice between two cycles: VictoriaMetrics serves both new label sets, the
    # inventory says which is current.
    for team in ("ops", "batch"):
        done.tags["i-moves"] = teams[team]
        done.commit()
        done.publish()
    wait_for(lambda: done.served("i-moves"), "the twice re-tagged resource and its team's total")
    passed = f'{RESOURCE}{{resource_id="i-moves",team="{teams["ops"]}"}}'
    wait_for(lambda: account.vm.query(passed), "the label set it had in between")
    assert opened(3) == []
    assert detector.metrics.relabelled._value.get() == 3
    assert done.team_total(teams["data"]) == done.costs["i-stays"]
    assert detector.reports == {}

    done.costs["i-moves"] = 100.0
    done.write("the step", "i-moves")
    detector.cycle(time.time())
    [report] = detector.reports.values()
    assert (report.key.level, report.labels["resource_id"]) == ("resource", "i-moves")
    assert report.labels["team"] == teams["batch"]
    assert report.delta == pytest.approx(60.0)


def test_a_resource_re_tagged_during_its_incident_is_reported_from_its_level_under_new_labels(
    detector: Detector, account: Account, vm_url: str, pg_dsn: str
) -> None:
    """Review finding: a resource re-tagged while its incident was open started afresh under
    its new labels, a step from nothing ($0 to its whole cost, `day0_step`). Its state is now
    copied to the new labels: the cost still high is reported there measured from its level
    before the episode (its new owner is told), and the open incident keeps the old labels
    its alert carries. The series are the collector's (`Collected`): its team's total moves
    with it."""
    moved = f"{account.team}-platform"
    done = Collected(account, pg_dsn, vm_url, **{"i-retag-open": account.team})
    done.costs["i-retag-open"] = 40.0

    def resources(team: str) -> list[Report]:
        return [
            r
            for r in detector.reports.values()
            if r.key.level == "resource" and r.labels["team"] == team
        ]

    for _ in range(3):
        done.write("the resource and its team", "i-retag-open")
        detector.cycle(time.time())
    done.costs["i-retag-open"] = 100.0
    done.write("the step", "i-retag-open")
    detector.cycle(time.time())
    [before] = resources(account.team)

    done.tags["i-retag-open"] = moved
    done.write("the re-tagged resource and its team's total", "i-retag-open")
    detector.cycle(time.time())
    assert detector.metrics.relabelled._value.get() == 1
    assert resources(account.team) == [before]
    [after] = resources(moved)
    # From the level before the episode (40 $/h), not from nothing.
    assert after.expected == pytest.approx(40.0, rel=0.05)
    assert after.delta == pytest.approx(60.0, rel=0.05)
    # One incident per cause: the team joined is not reported besides its resource.
    assert [r.key.level for r in detector.reports.values() if r.labels.get("team") == moved] == [
        "resource"
    ]
