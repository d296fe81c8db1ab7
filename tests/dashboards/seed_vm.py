"""Realistic VictoriaMetrics and PostgreSQL data for one test module, written by the real
producers, all labelled with one unique account / namespace:
- the collector's rollup: the exposition lines its own `Rollups` writes, from resources whose
  rates step;
- the billing loader's billed and effective cost, reconciliation and estimate error: the real
  `cct billing load` of a FOCUS export, reconciled against that rollup; the collector then
  reads the factors it saved, as it does, and adds the reconciled basis;
- the handlers' own counters, gauges and histograms: their real metric objects, scraped.

The order is the order of a new installation: the collector runs for a day with no factor,
the first bill is loaded two hours ago, and the collector publishes both bases since."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lambdas.admission.metrics import AdmissionMetrics
from lambdas.billing.loader import BillingSettings, LoadReport, load
from lambdas.bridge.server import Metrics as BridgeMetrics
from lambdas.collector.core import Factors, Group, Labels, Rollups
from lambdas.collector.model import Resource
from lambdas.collector.normalize import AWS_EC2, AWS_RDS, GCP_COMPUTE
from lambdas.collector.service import Metrics as CollectorMetrics
from lambdas.common.vm import Sample, VictoriaMetrics
from lambdas.contract import TAG_LABELS
from lambdas.detector.service import Metrics as DetectorMetrics
from lambdas.store.inventory import reconciliation_factors
from lambdas.trigger.service import Metrics as TriggerMetrics
from tests.store.seed import Scope

MINUTE = 60
HOUR = 3600
# (provider, service, region, team attr, env, $/h now, $/h a day ago or None if new since)
GROUPS = (
    ("aws", AWS_EC2, "us-east-1", "team", "prod", 42.0, 30.0),  # riser
    ("aws", AWS_RDS, "eu-west-1", "other_team", "prod", 12.0, 20.0),  # faller
    ("gcp", GCP_COMPUTE, "europe-west1", "team", "staging", 6.5, None),  # new today
)
# The bill's EffectiveCost is this share of the list-price run-rate, so the loader's
# reconciliation must find this factor (and an estimate error of RECONCILED - 1).
RECONCILED = 0.93
BILLED_SHARE = 0.95  # BilledCost / list: the bill's other cost column, before credits
# Only the AWS export is loaded: the GCP group has no factor, so the collector writes its
# list rate alone.
UNBILLED = frozenset({"gcp"})
HISTORY = 26 * HOUR  # how long the collector has run
LOADED_AGO = 2 * HOUR  # when `cct billing load` ran
# Billed hours arrive late: the newest starts four hours ago, so every billed hour ends
# before the rates stepped (three hours ago) and the estimate over them is exact.
NEWEST_BILLED_H = 4
BILLED_HOURS = 20
RECONCILE_WINDOW_H = BILLED_HOURS


def cost_series() -> int:
    """How many cost series the seed writes for the account: per group list, unpriced and,
    where billed, reconciled, billed and effective; per billed service factor and error.
    (A month boundary inside the billed hours splits billed and effective in two.)"""
    billed = sum(g[0] not in UNBILLED for g in GROUPS)
    return 2 * len(GROUPS) + 3 * billed + 2 * billed


def namespace(scope: Scope) -> str:
    return f"ns-{scope.uid}"


def _rate_at(now_rate: float, day_ago: float | None, age_s: int) -> float | None:
    """Rates step to their current value three hours ago; a new group appeared six hours ago."""
    if day_ago is None:
        return now_rate if age_s <= 6 * HOUR else None
    return now_rate if age_s <= 3 * HOUR else day_ago


def _resource(scope: Scope, group: tuple[object, ...], name: str, rate: float | None) -> Resource:
    provider, service, region, team_attr, env = (str(v) for v in group[:5])
    return Resource(
        provider=provider,
        resource_id=f"{name}-{scope.uid}",
        billing_account_id=scope.account,
        sub_account_id=f"sub-{scope.uid}",
        region_id=region,
        service_name=service,
        resource_type="x",
        sku=None,
        size={},
        state="running",
        tags={"Team": getattr(scope, team_attr), "env": env},
        usd_per_hour=rate,
        last_event_id="seed",
        last_event_time=datetime.now(UTC),
    )


class Collector:
    """The collector's rollup state for the scope, run minute by minute over a span of ages."""

    def __init__(self, scope: Scope, now: float) -> None:
        self.scope = scope
        self.now = now
        self.rollups = Rollups(Labels(TAG_LABELS))

    def lines(self, factors: Factors, oldest_s: int, newest_s: int) -> list[str]:
        """What it writes, a sample a minute, from `oldest_s` ago to after `newest_s` ago:
        one priced resource per group at the group's rate (stepping three hours ago; the new
        group's resource appears six hours ago) and one resource without a price."""
        out: list[str] = []
        for age in range(oldest_s, newest_s, -MINUTE):
            present: list[Group] = []
            for g in GROUPS:
                rate = _rate_at(g[5], g[6], age)
                if rate is None:
                    continue
                group, _ = self.rollups.update(_resource(self.scope, g, f"vm-{g[1]}", rate))
                self.rollups.update(_resource(self.scope, g, f"unpriced-{g[1]}", None))
                present.append(group)
            out += self.rollups.rollup_lines(present, factors, int((self.now - age) * 1000))
        return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _month_start(t: float) -> float:
    d = datetime.fromtimestamp(t, UTC)
    return d.replace(day=1, hour=0, minute=0, second=0).timestamp()


def _next_month(t: float) -> float:
    d = datetime.fromtimestamp(_month_start(t), UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return d.replace(year=year, month=month).timestamp()


def focus_export(scope: Scope, now: float, path: Path) -> Path:
    """The AWS FOCUS export of the billed groups' resources: one row per resource-hour, as
    the provider writes it (tags as JSON, ISO timestamps with Z)."""
    rows = []
    hour_now = int(now // HOUR) * HOUR
    for provider, service, region, team_attr, env, rate_now, rate_before in GROUPS:
        if provider in UNBILLED:
            continue
        for h in range(NEWEST_BILLED_H, NEWEST_BILLED_H + BILLED_HOURS):
            start = hour_now - h * HOUR
            rate = _rate_at(rate_now, rate_before, int(now - start))
            assert rate is not None
            rows.append(
                {
                    "ProviderName": "AWS",
                    "BillingAccountId": scope.account,
                    "SubAccountId": f"sub-{scope.uid}",
                    "BillingPeriodStart": _iso(_month_start(start)),
                    "BillingPeriodEnd": _iso(_next_month(start)),
                    "ChargePeriodStart": _iso(start),
                    "ChargePeriodEnd": _iso(start + HOUR),
                    "RegionId": region,
                    "ServiceName": service,
                    "BilledCost": round(rate * BILLED_SHARE, 6),
                    "EffectiveCost": round(rate * RECONCILED, 6),
                    "ListCost": rate,
                    "BillingCurrency": "USD",
                    "Tags": json.dumps({"team": getattr(scope, team_attr), "env": env}),
                }
            )
    pacsv.write_csv(pa.Table.from_pylist(rows), path)
    return path


def load_bill(pg_dsn: str, vm: VictoriaMetrics, scope: Scope, now: float, tmp: Path) -> LoadReport:
    """`cct billing load` of the export, run `LOADED_AGO` before `now`."""
    settings = BillingSettings(
        pg_dsn=pg_dsn,
        vm_url=vm.write_url,
        vm_read_url=vm.read_url,
        reconcile_window_h=RECONCILE_WINDOW_H,
    )
    export = focus_export(scope, now, tmp / f"focus-{scope.uid}.csv")
    return load(settings, [str(export)], now=datetime.fromtimestamp(now - LOADED_AGO, UTC))


def saved_factors(pg_dsn: str, scope: Scope) -> Factors:
    """The factors the collector reads back from PostgreSQL (its own query), for the scope."""

    async def read() -> Factors:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            factors = await reconciliation_factors(conn)
        return {k: v for k, v in factors.items() if k[1] == scope.account}

    return asyncio.run(read())


# A request, a cycle, a review: what each tick's traffic takes, in seconds (one value per
# histogram observation of the tick).
_CYCLE_S = (0.02, 0.03, 0.08, 0.2)
_EVENT_TO_ALERT_S = (0.4, 0.7, 1.5, 2.5)
_REVIEW_S = (0.002, 0.003, 0.004, 0.015)
SCRAPE_S = 15


def _scraped(registry: CollectorRegistry, labels: dict[str, str], t_ms: int) -> Iterator[Sample]:
    """One scrape of a handler's registry: every sample prometheus_client exposes, with the
    labels the scrape adds."""
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield Sample(s.name, {**s.labels, **labels}, s.value, t_ms)


def pipeline_samples(scope: Scope, now: float) -> Iterator[Sample]:
    """The handlers' own metrics, from their real metric objects: two hours of traffic,
    every registry scraped every 15 s (names, labels and buckets are the handlers')."""
    collector, detector = CollectorMetrics(), DetectorMetrics()
    trigger, bridge, admission = TriggerMetrics(), BridgeMetrics(), AdmissionMetrics()
    registries = [m.registry for m in (collector, detector, trigger, bridge, admission)]
    ns = {"namespace": namespace(scope)}
    for i, age in enumerate(range(2 * HOUR, 0, -SCRAPE_S)):
        for provider, per_tick in (("aws", 30), ("azure", 6), ("gcp", 12)):
            collector.events.labels(provider, "accepted").inc(per_tick)
        collector.rejected.labels("missing_field").inc()
        for seconds in _CYCLE_S:
            detector.cycle.observe(seconds)
        for seconds in _EVENT_TO_ALERT_S:
            detector.event_to_alert.observe(seconds)
        for seconds in _REVIEW_S:
            admission.duration.observe(seconds)
        for partition in range(3):
            trigger.consumer_lag.labels("cct.cost.anomalies", str(partition)).set(i % 5)
        if i % 4 == 3:
            trigger.events.labels("dead_letter").inc()
        if i % 8 == 7:
            bridge.rejected.labels("bad_json").inc()
        if i % 16 == 15:
            bridge.produce_failures.inc()
        t_ms = int((now - age) * 1000)
        for registry in registries:
            yield from _scraped(registry, ns, t_ms)


def wait_until_visible(vm: VictoriaMetrics, selector: str, expected: int, now: float) -> None:
    """New series become searchable seconds after import (shared/notes): poll, bounded."""
    urllib.request.urlopen(f"{vm.write_url}/internal/force_flush", timeout=10).read()
    deadline = time.monotonic() + 30
    found = 0
    while time.monotonic() < deadline:
        result = vm.query(f"count(last_over_time({selector}[2d]))", time_s=now)
        found = int(float(result[0]["value"][1])) if result else 0
        if found >= expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{selector}: {found} of {expected} series visible after 30 s")


def label_values(
    vm: VictoriaMetrics, label: str, match: str | None, start: float, end: float
) -> list[str]:
    params = {"start": f"{start:.0f}", "end": f"{end:.0f}"}
    if match:
        params["match[]"] = match
    url = f"{vm.read_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc = json.load(resp)
    assert doc["status"] == "success", doc
    return list(doc["data"])
