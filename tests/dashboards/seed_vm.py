"""Realistic VictoriaMetrics series for one test module, written through the project's VM
client: the collector's rollup (the exposition lines its own `Rollups` writes, from resources
whose rates step), the billing loader's billed cost and estimate error, and the handlers' own
counters and histograms, all labelled with one unique account / namespace."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

from lambdas.collector.core import Factors, Group, Labels, Rollups
from lambdas.collector.model import Resource
from lambdas.common.vm import Sample, VictoriaMetrics
from lambdas.contract import TAG_LABELS
from tests.store.seed import Scope

MINUTE = 60
HOUR = 3600
# (provider, service, region, team attr, env, $/h now, $/h a day ago or None if new since)
GROUPS = (
    ("aws", "AmazonEC2", "us-east-1", "team", "prod", 42.0, 30.0),  # riser
    ("aws", "AmazonRDS", "eu-west-1", "other_team", "prod", 12.0, 20.0),  # faller
    ("gcp", "Compute Engine", "europe-west1", "team", "staging", 6.5, None),  # new today
)
RECONCILED = 0.93  # reconciliation factor applied to the list-price run-rate
# The billing loader has loaded the AWS export only: the GCP group has no factor, so the
# collector writes its list rate alone.
UNBILLED = frozenset({"gcp"})


def cost_series() -> int:
    """How many cost series `rollup_lines` and `cost_samples` write (list, reconciled where
    billed, unpriced, error ratio, billed)."""
    return sum(4 if g[0] in UNBILLED else 5 for g in GROUPS)


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


def rollup_lines(scope: Scope, now: float) -> list[str]:
    """What the collector writes for each group over 26 hours, a sample a minute: one priced
    resource per group at the group's rate (stepping three hours ago; the new group's
    resource appears six hours ago) and one resource without a price."""
    rollups = Rollups(Labels(TAG_LABELS))
    factors: Factors = {
        (g[0], scope.account, g[1]): RECONCILED for g in GROUPS if g[0] not in UNBILLED
    }
    out: list[str] = []
    for age in range(26 * HOUR - MINUTE, 9, -MINUTE):
        present: list[Group] = []
        for g in GROUPS:
            rate = _rate_at(g[5], g[6], age)
            if rate is None:
                continue
            group, _ = rollups.update(_resource(scope, g, f"vm-{g[1]}", rate))
            rollups.update(_resource(scope, g, f"unpriced-{g[1]}", None))
            present.append(group)
        out += rollups.rollup_lines(present, factors, int((now - age) * 1000))
    return out


def cost_samples(scope: Scope, now: float) -> Iterator[Sample]:
    """The billing loader's series: the estimate error and the billed hours."""
    for provider, service, region, team_attr, env, rate_now, rate_before in GROUPS:
        team = getattr(scope, team_attr)
        group = {
            "provider": provider,
            "billing_account_id": scope.account,
            "service_name": service,
            "region_id": region,
            "team": team,
            "env": env,
        }
        account_level = {
            "provider": provider,
            "billing_account_id": scope.account,
            "service_name": service,
        }
        for age in range(10, 26 * HOUR, MINUTE):
            if _rate_at(rate_now, rate_before, age) is not None:
                t_ms = int((now - age) * 1000)
                yield Sample("cct_cost_estimate_error_ratio", account_level, -0.07, t_ms)
        # Billed hours arrive late: the newest billed hour is three hours old.
        hour_now = int(now // HOUR) * HOUR
        for h in range(3, 48):
            start = hour_now - h * HOUR
            rate = _rate_at(rate_now, rate_before, int(now - start))
            if rate is None:
                continue
            yield Sample(
                "cct_billed_cost_usd",
                {
                    **group,
                    "sub_account_id": f"sub-{scope.uid}",
                    "billing_period": time.strftime("%Y-%m", time.gmtime(start)),
                    "load_id": "load-0001",
                },
                round(rate * 0.95, 6),
                start * 1000,
            )


_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))


def _histogram(
    name: str, labels: dict[str, str], i: int, shares: tuple[float, ...], t_ms: int
) -> Iterator[Sample]:
    """Cumulative bucket counters after i observations per tick, distributed by `shares`."""
    cumulative = 0.0
    for le, share in zip(_BUCKETS, shares, strict=True):
        cumulative += share
        le_text = "+Inf" if le == float("inf") else repr(le)
        yield Sample(f"{name}_bucket", {**labels, "le": le_text}, round(cumulative * i * 4), t_ms)


def pipeline_samples(scope: Scope, now: float) -> Iterator[Sample]:
    ns = {"namespace": namespace(scope)}
    for i, age in enumerate(range(2 * HOUR, 0, -15)):
        t_ms = int((now - age) * 1000)
        for provider, per_tick in (("aws", 30), ("azure", 6), ("gcp", 12)):
            yield Sample(
                "cct_collector_events_total",
                {**ns, "provider": provider, "outcome": "accepted"},
                i * per_tick,
                t_ms,
            )
        yield Sample("cct_collector_rejected_total", {**ns, "reason": "missing_field"}, i, t_ms)
        yield from _histogram(
            "cct_detector_cycle_seconds", ns, i, (0.6, 0.3, 0.1, 0, 0, 0, 0), t_ms
        )
        yield from _histogram(
            "cct_detector_event_to_alert_seconds", ns, i, (0, 0, 0, 0.1, 0.5, 0.4, 0), t_ms
        )
        yield from _histogram(
            "cct_admission_request_duration_seconds", ns, i, (0.95, 0.05, 0, 0, 0, 0, 0), t_ms
        )
        for partition in range(3):
            yield Sample(
                "cct_trigger_consumer_lag_messages",
                {**ns, "topic": "cct.cost.anomalies", "partition": str(partition)},
                float(i % 5),
                t_ms,
            )
        yield Sample("cct_trigger_events_total", {**ns, "outcome": "dead_letter"}, i // 4, t_ms)
        yield Sample("cct_bridge_rejected_total", {**ns, "reason": "bad_json"}, i // 8, t_ms)
        yield Sample("cct_bridge_produce_failures_total", ns, i // 16, t_ms)


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
