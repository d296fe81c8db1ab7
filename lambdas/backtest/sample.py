"""A realistic multi-cloud FOCUS dataset with labeled, injected anomalies.

Hourly cost rows for a few hundred resources across AWS, Azure and GCP (several billing
accounts, services, regions and teams) with daily and weekly seasonality, growth, noise and
routine churn of small resources. Anomalies of six kinds are injected and written to a labels
file, never into the data: spike, level shift, slow ramp, seasonal break, a new expensive
resource, and many small resources adding up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

KINDS = (
    "spike",
    "level_shift",
    "slow_ramp",
    "seasonal_break",
    "new_expensive_resource",
    "many_small_resources",
)
DEFAULT_START = datetime(2026, 8, 3, tzinfo=UTC)  # a Monday

PROVIDERS: dict[str, dict[str, Any]] = {
    "aws": {
        "name": "AWS",
        "regions": ["us-east-1", "eu-west-1"],
        "accounts": ["111122223333", "444455556666"],
        "services": {
            "Amazon Elastic Compute Cloud": ("Compute", "Instance", "i-"),
            "Amazon Relational Database Service": ("Databases", "DBInstance", "db-"),
            "Amazon Simple Storage Service": ("Storage", "Bucket", "s3-"),
        },
    },
    "azure": {
        "name": "Microsoft",
        "regions": ["eastus", "westeurope"],
        "accounts": ["ea-7731"],
        "services": {
            "Virtual Machines": ("Compute", "Microsoft.Compute/virtualMachines", "vm-"),
            "Azure SQL Database": ("Databases", "Microsoft.Sql/servers/databases", "sqldb-"),
            "Storage Accounts": ("Storage", "Microsoft.Storage/storageAccounts", "st"),
        },
    },
    "gcp": {
        "name": "Google Cloud",
        "regions": ["us-central1", "europe-west1"],
        "accounts": ["01A2B3-C4D5E6-F7A8B9"],
        "services": {
            "Compute Engine": ("Compute", "compute.googleapis.com/Instance", "gce-"),
            "Cloud SQL": ("Databases", "sqladmin.googleapis.com/Instance", "sql-"),
            "Cloud Storage": ("Storage", "storage.googleapis.com/Bucket", "gcs-"),
        },
    },
}
TEAMS = ("payments", "search", "data", "platform", "web", "ml")
ENVS = ("prod", "staging", "dev")


@dataclass(frozen=True)
class Label:
    """One injected anomaly: when it started and ended, and which resources carry it."""

    id: str
    kind: str
    start: str
    end: str
    resource_ids: list[str]
    provider: str
    billing_account_id: str
    service_name: str
    team: str
    delta_usd_per_hour: float


@dataclass
class _Resource:
    rid: str
    provider: str
    account: str
    region: str
    service: str
    category: str
    rtype: str
    team: str
    env: str
    rate: np.ndarray  # $/h for every hour of the dataset (0 when the resource does not exist)


@dataclass(frozen=True)
class SampleSpec:
    seed: int = 7
    weeks: int = 8
    start: datetime = DEFAULT_START
    resources_per_account: int = 45
    anomalies_per_kind: int = 2
    kinds: Sequence[str] = KINDS


def _profile(rng: np.random.Generator, hours: int, category: str, env: str) -> np.ndarray:
    """Relative usage per hour: daily and weekly seasonality for compute and databases."""
    t = np.arange(hours)
    hod = t % 24
    dow = (t // 24) % 7
    if category == "Storage":
        return np.ones(hours)
    amp = rng.uniform(0.15, 0.6) if category == "Compute" else rng.uniform(0.05, 0.2)
    peak = rng.uniform(13, 17)
    daily = 1 + amp * np.cos((hod - peak) / 24 * 2 * np.pi)
    weekend = np.where(dow >= 5, 1 - rng.uniform(0.1, 0.4) * (env != "prod"), 1.0)
    return np.asarray(daily * weekend)


def generate(spec: SampleSpec) -> tuple[list[_Resource], list[Label]]:
    rng = np.random.default_rng(spec.seed)
    hours = spec.weeks * 7 * 24
    t = np.arange(hours)
    resources: list[_Resource] = []
    counter = 0

    def new_id(prefix: str) -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}{rng.integers(16**8):08x}{counter:04d}"

    for provider, p in PROVIDERS.items():
        for account in p["accounts"]:
            for _ in range(spec.resources_per_account):
                service = str(rng.choice(list(p["services"])))
                category, rtype, prefix = p["services"][service]
                region = str(rng.choice(p["regions"]))
                team = str(rng.choice(TEAMS))
                env = str(rng.choice(ENVS, p=[0.5, 0.3, 0.2]))
                base = float(rng.lognormal(mean=np.log(0.8), sigma=1.1))
                growth = 1 + rng.uniform(0, 0.03) * t / (7 * 24)
                noise = 1 + rng.normal(0, rng.uniform(0.01, 0.05), hours)
                rate = base * _profile(rng, hours, category, env) * growth * noise
                rate = np.maximum(rate, 0.0)
                # Routine churn: some small resources live only part of the period.
                if base < 0.8 and rng.random() < 0.3:
                    a = int(rng.integers(0, hours - 48))
                    b = int(rng.integers(a + 24, hours))
                    rate[:a] = 0.0
                    rate[b:] = 0.0
                resources.append(
                    _Resource(
                        new_id(prefix),
                        provider,
                        account,
                        region,
                        service,
                        category,
                        rtype,
                        team,
                        env,
                        rate,
                    )
                )

    labels: list[Label] = []
    kinds = [k for k in spec.kinds for _ in range(spec.anomalies_per_kind)]
    rng.shuffle(kinds)
    # Spread the anomalies over the period, leaving room after each to return to normal. The
    # first lands in the first week, while the series have no seasonal history yet.
    slots: list[int] = (
        np.linspace(2 * 24, hours - 4 * 24, num=len(kinds)).astype(int).tolist() if kinds else []
    )
    injector = _Injector(rng, resources, hours, new_id, spec.start)
    for n, (kind, slot) in enumerate(zip(kinds, slots, strict=True)):
        labels.append(injector.inject(kind, int(slot + rng.integers(0, 12)), n))
    return resources, labels


class _Injector:
    """Adds one anomaly of a kind to the resources and returns its label."""

    def __init__(
        self,
        rng: np.random.Generator,
        resources: list[_Resource],
        hours: int,
        new_id: Callable[[str], str],
        t0: datetime,
    ) -> None:
        self.rng = rng
        self.resources = resources
        self.hours = hours
        self.new_id = new_id
        self.t0 = t0
        self.used: set[str] = set()

    def inject(self, kind: str, start: int, n: int) -> Label:
        make = {
            "spike": self._spike,
            "level_shift": self._level_shift,
            "slow_ramp": self._slow_ramp,
            "seasonal_break": self._seasonal_break,
            "new_expensive_resource": self._new_expensive,
            "many_small_resources": self._many_small,
        }.get(kind)
        if make is None:
            raise ValueError(f"unknown anomaly kind {kind!r}; known: {', '.join(KINDS)}")
        affected, end, delta = make(start)
        first = affected[0]
        return Label(
            id=f"a{n:02d}-{kind}",
            kind=kind,
            start=_iso(self.t0 + timedelta(hours=start)),
            end=_iso(self.t0 + timedelta(hours=end)),
            resource_ids=[r.rid for r in affected],
            provider=first.provider,
            billing_account_id=first.account,
            service_name=first.service,
            team=first.team,
            delta_usd_per_hour=round(float(delta), 4),
        )

    def _pick(self, start: int, category: str | None = None, min_base: float = 1.5) -> _Resource:
        """An unused resource alive around `start`, with at least `min_base` $/h."""
        pool = [
            r
            for r in self.resources
            if r.rid not in self.used
            and r.rate[start - 24 : start].min() > 0
            and np.median(r.rate[start - 24 : start]) >= min_base
            and r.rate[start : start + 96].min() > 0
            and (category is None or r.category == category)
        ]
        chosen = pool[int(self.rng.integers(len(pool)))]
        self.used.add(chosen.rid)
        return chosen

    def _before(self, r: _Resource, start: int) -> float:
        return float(np.median(r.rate[start - 24 : start]))

    def _spike(self, start: int) -> tuple[list[_Resource], int, float]:
        r = self._pick(start)
        end = start + int(self.rng.integers(2, 5))
        delta = max(self._before(r, start) * self.rng.uniform(2, 4), 8.0)
        r.rate[start:end] += delta
        return [r], end, delta

    def _level_shift(self, start: int) -> tuple[list[_Resource], int, float]:
        r = self._pick(start)
        end = start + int(self.rng.integers(48, 96))
        delta = max(self._before(r, start) * self.rng.uniform(0.8, 1.5), 6.0)
        r.rate[start:end] += delta
        return [r], end, delta

    def _slow_ramp(self, start: int) -> tuple[list[_Resource], int, float]:
        r = self._pick(start)
        ramp = int(self.rng.integers(24, 48))
        end = start + ramp + 24
        delta = max(self._before(r, start) * self.rng.uniform(1.5, 2.5), 10.0)
        r.rate[start : start + ramp] += np.linspace(0, delta, ramp)
        r.rate[start + ramp : end] += delta
        return [r], end, delta

    def _seasonal_break(self, start: int) -> tuple[list[_Resource], int, float]:
        # Autoscaling stuck at the daily peak: nights and weekends stop being cheap.
        r = self._pick(start, "Compute", min_base=1.0)
        end = start + int(self.rng.integers(48, 72))
        window = r.rate[max(0, start - 7 * 24) : start]
        peak = float(np.quantile(window[window > 0], 0.95)) * 1.6 + 6.0
        wobble = 1 + self.rng.normal(0, 0.02, end - start)
        r.rate[start:end] = np.maximum(r.rate[start:end], peak * wobble)
        return [r], end, peak - self._before(r, start)

    def _new_resource(
        self, host: _Resource, prefix: str, first: int, end: int, usd: float
    ) -> _Resource:
        rate = np.zeros(self.hours)
        rate[first:end] = usd * (1 + self.rng.normal(0, 0.02, end - first))
        r = _Resource(
            self.new_id(prefix),
            host.provider,
            host.account,
            host.region,
            host.service,
            host.category,
            host.rtype,
            host.team,
            host.env,
            rate,
        )
        self.resources.append(r)
        return r

    def _new_expensive(self, start: int) -> tuple[list[_Resource], int, float]:
        host = self._pick(start, min_base=0.0)
        end = start + int(self.rng.integers(24, 72))
        delta = float(self.rng.uniform(15, 40))
        return [self._new_resource(host, "big-", start, end, delta)], end, delta

    def _many_small(self, start: int) -> tuple[list[_Resource], int, float]:
        host = self._pick(start, min_base=0.0)
        end = start + int(self.rng.integers(24, 72))
        affected = [
            self._new_resource(
                host,
                "small-",
                start + int(self.rng.integers(0, 2)),
                end,
                float(self.rng.uniform(0.3, 0.6)),
            )
            for _ in range(int(self.rng.integers(30, 50)))
        ]
        return affected, end, float(sum(r.rate[end - 1] for r in affected))


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def to_table(resources: Sequence[_Resource], start: datetime) -> pa.Table:
    """FOCUS 1.0 columns, one row per resource and hour it existed."""
    hours = resources[0].rate.size if resources else 0
    starts = [_iso(start + timedelta(hours=h)) for h in range(hours + 1)]
    period_start: list[str] = []
    period_end: list[str] = []
    for h in range(hours):
        ts = start + timedelta(hours=h)
        first = datetime(ts.year, ts.month, 1, tzinfo=UTC)
        nxt = datetime(ts.year + ts.month // 12, ts.month % 12 + 1, 1, tzinfo=UTC)
        period_start.append(_iso(first))
        period_end.append(_iso(nxt))
    cols: dict[str, list[object]] = {
        name: []
        for name in (
            "BilledCost",
            "EffectiveCost",
            "ListCost",
            "ContractedCost",
            "BillingCurrency",
            "BillingAccountId",
            "BillingAccountName",
            "SubAccountId",
            "SubAccountName",
            "ProviderName",
            "PublisherName",
            "InvoiceIssuerName",
            "BillingPeriodStart",
            "BillingPeriodEnd",
            "ChargePeriodStart",
            "ChargePeriodEnd",
            "ChargeCategory",
            "ChargeFrequency",
            "ChargeDescription",
            "PricingQuantity",
            "PricingUnit",
            "RegionId",
            "RegionName",
            "ServiceName",
            "ServiceCategory",
            "ResourceId",
            "ResourceName",
            "ResourceType",
            "SkuId",
            "Tags",
        )
    }
    for r in resources:
        hrs = np.flatnonzero(r.rate > 0)
        if hrs.size == 0:
            continue
        cost = np.round(r.rate[hrs], 6)
        pname = PROVIDERS[r.provider]["name"]
        tags = json.dumps({"team": r.team, "env": r.env}, sort_keys=True)
        k = hrs.size
        cols["BilledCost"] += cost.tolist()
        cols["EffectiveCost"] += cost.tolist()
        cols["ListCost"] += np.round(cost * 1.08, 6).tolist()
        cols["ContractedCost"] += cost.tolist()
        hl = hrs.tolist()
        cols["BillingPeriodStart"] += [period_start[h] for h in hl]
        cols["BillingPeriodEnd"] += [period_end[h] for h in hl]
        cols["ChargePeriodStart"] += [starts[h] for h in hl]
        cols["ChargePeriodEnd"] += [starts[h + 1] for h in hl]
        const = {
            "BillingCurrency": "USD",
            "BillingAccountId": r.account,
            "BillingAccountName": f"{r.provider}-{r.account}",
            "SubAccountId": f"{r.account}-{r.env}",
            "SubAccountName": f"{r.team}-{r.env}",
            "ProviderName": pname,
            "PublisherName": pname,
            "InvoiceIssuerName": pname,
            "ChargeCategory": "Usage",
            "ChargeFrequency": "Usage-Based",
            "ChargeDescription": f"{r.service} usage",
            "PricingQuantity": 1.0,
            "PricingUnit": "Hours",
            "RegionId": r.region,
            "RegionName": r.region,
            "ServiceName": r.service,
            "ServiceCategory": r.category,
            "ResourceId": r.rid,
            "ResourceName": r.rid,
            "ResourceType": r.rtype,
            "SkuId": f"{r.provider}-{r.category.lower()}",
            "Tags": tags,
        }
        for name, value in const.items():
            cols[name] += [value] * k
    return pa.table(cols)


def write(spec: SampleSpec, out_dir: Path, fmt: str = "parquet") -> tuple[Path, Path, int]:
    """Write the dataset (`focus.parquet` or `focus.csv`) and `labels.json`; returns both
    paths and the row count."""
    resources, labels = generate(spec)
    table = to_table(resources, spec.start)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / f"focus.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, data_path)
    elif fmt == "csv":
        pacsv.write_csv(table, data_path)
    else:
        raise ValueError(f"unknown format {fmt!r}: use parquet or csv")
    labels_path = out_dir / "labels.json"
    labels_path.write_text(
        json.dumps(
            {"seed": spec.seed, "weeks": spec.weeks, "anomalies": [asdict(a) for a in labels]},
            indent=2,
        )
        + "\n"
    )
    return data_path, labels_path, table.num_rows


def read_labels(path: Path) -> list[Label]:
    doc = json.loads(path.read_text())
    return [Label(**a) for a in doc["anomalies"]]
