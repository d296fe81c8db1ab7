"""Record what the real detector emits, for the consumers' tests.

`python -m tests.contract.capture` (inside the services' network namespace) runs the real
detector over a scenario written the way the collector writes it (inventory rows and change
events in PostgreSQL, per-resource and rollup series rendered by the collector's own code in
VictoriaMetrics), captures every alert it posts to the real Alertmanager, and writes them to
`detector_alerts.json`. `test_contract.py` runs the same capture and fails when the recording
is no longer what the detector emits; the bridge, trigger and routing tests take their
alerts from the recording (`recorded.py`), never from hand-written labels.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lambdas.collector.core import Labels, Rollups, resource_lines
from lambdas.collector.model import Resource
from lambdas.contract import A_ANCESTORS, A_CHANGE_EVENTS, TAG_LABELS
from lambdas.detector.config import DetectionConfig
from lambdas.detector.service import Detector, DetectorSettings
from lambdas.ingest.exposition import body

RECORDING = Path(__file__).with_name("detector_alerts.json")
EC2 = "Amazon Elastic Compute Cloud"
RDS = "Amazon Relational Database Service"
AZURE_VM = "Virtual Machines"
GCP_DISK = "Compute Engine"
# Fields whose values are times of the run; the recording keeps their place, not the value.
TIME_FIELDS = ("event_time", "started_at")


@dataclass(frozen=True)
class Step:
    """A resource's state after a change: (provider, id, service, type, region, tags, $/h)."""

    provider: str
    resource_id: str
    service_name: str
    resource_type: str
    region_id: str
    tags: Mapping[str, str]
    usd_per_hour: float
    action: str


def scenario(uid: str) -> tuple[list[Step], list[Step]]:
    """The baseline (present from the detector's first cycle) and the changes after it: one
    cause for every kind of anomaly the playbooks know, and one diffuse increase no single
    resource explains."""
    web = {"team": "web", "env": "prod", "Owner": "ana"}
    baseline = [
        Step("aws", f"i-{uid}-web", EC2, "Instance", "us-east-1", web, 50.0, "RunInstances"),
        *(
            Step(
                "gcp",
                f"disk-{uid}-{n}",
                GCP_DISK,
                "compute.googleapis.com/Disk",
                "europe-west1",
                {"team": "data", "env": "prod"},
                1.0,
                "disks.insert",
            )
            for n in range(8)
        ),
    ]
    changes = [
        # A new expensive instance in a dev environment.
        Step(
            "aws",
            f"i-{uid}-dev",
            EC2,
            "Instance",
            "us-east-1",
            {"team": "web", "env": "dev"},
            40.0,
            "RunInstances",
        ),
        # A production instance resized up.
        replace(baseline[0], usd_per_hour=120.0, action="ModifyInstanceAttribute"),
        # A new managed database.
        Step(
            "aws",
            f"db-{uid}",
            RDS,
            "DBInstance",
            "us-east-1",
            {"team": "data", "env": "prod"},
            30.0,
            "CreateDBInstance",
        ),
        # A new large volume.
        Step(
            "aws",
            f"vol-{uid}",
            EC2,
            "Volume",
            "us-east-1",
            {"team": "web", "env": "prod"},
            6.0,
            "CreateVolume",
        ),
        # A staging VM on Azure.
        Step(
            "azure",
            f"/subscriptions/{uid}/vm-stg",
            AZURE_VM,
            "Microsoft.Compute/virtualMachines",
            "westeurope",
            {"Team": "web", "Env": "staging"},
            12.0,
            "Microsoft.Compute/virtualMachines/write",
        ),
        # Every disk of a service grows a little: a diffuse increase, the service's own.
        *(replace(s, usd_per_hour=1.9, action="disks.resize") for s in baseline[1:]),
    ]
    return baseline, changes


def _resource(step: Step, account: str, at: datetime) -> Resource:
    return Resource(
        provider=step.provider,
        resource_id=step.resource_id,
        billing_account_id=account,
        sub_account_id=f"{account}-sub",
        region_id=step.region_id,
        service_name=step.service_name,
        resource_type=step.resource_type,
        sku=None,
        size={},
        state="running",
        tags=dict(step.tags),
        usd_per_hour=step.usd_per_hour,
        last_event_id=f"ev-{step.resource_id}-{step.action}",
        last_event_time=at,
    )


class Writer:
    """Writes resources as the collector does: inventory row and change event committed
    together in PostgreSQL, then the resource's and its group's series in VictoriaMetrics,
    labelled by the collector's own code."""

    def __init__(self, pg_dsn: str, vm_url: str, account: str) -> None:
        self.pg_dsn = pg_dsn
        self.vm_url = vm_url
        self.account = account
        self.rollups = Rollups(Labels(TAG_LABELS))
        self.rates: dict[tuple[str, str], float] = {}

    def apply(self, steps: Sequence[Step]) -> None:
        now = datetime.now(UTC)
        resources = [_resource(s, self.account, now) for s in steps]
        with psycopg.connect(self.pg_dsn) as conn:
            for step, r in zip(steps, resources, strict=True):
                before = self.rates.get((r.provider, r.resource_id))
                conn.execute(
                    """insert into resource_inventory (provider, resource_id,
                       billing_account_id, sub_account_id, region_id, service_name,
                       resource_type, state, tags, usd_per_hour, priced, last_event_id,
                       last_event_time)
                       values (%s, %s, %s, %s, %s, %s, %s, 'running', %s, %s, true, %s, %s)
                       on conflict (provider, resource_id) do update set
                         usd_per_hour = excluded.usd_per_hour,
                         last_event_id = excluded.last_event_id,
                         last_event_time = excluded.last_event_time""",
                    (
                        r.provider,
                        r.resource_id,
                        r.billing_account_id,
                        r.sub_account_id,
                        r.region_id,
                        r.service_name,
                        r.resource_type,
                        Jsonb(dict(r.tags)),
                        r.usd_per_hour,
                        r.last_event_id,
                        now,
                    ),
                )
                conn.execute(
                    """insert into resource_events (event_id, provider, resource_id,
                       billing_account_id, sub_account_id, region_id, service_name,
                       resource_type, action, actor, event_time, tags, usd_per_hour_before,
                       usd_per_hour_after)
                       values (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'capture', %s, %s, %s, %s)""",
                    (
                        r.last_event_id,
                        r.provider,
                        r.resource_id,
                        r.billing_account_id,
                        r.sub_account_id,
                        r.region_id,
                        r.service_name,
                        r.resource_type,
                        step.action,
                        now,
                        Jsonb(dict(r.tags)),
                        before,
                        r.usd_per_hour,
                    ),
                )
                self.rates[(r.provider, r.resource_id)] = float(step.usd_per_hour)
        lines: list[str] = []
        ts = int(now.timestamp() * 1000)
        placed, groups = self.rollups.apply(resources)
        for r in resources:
            lines += resource_lines(placed[r.key][1], float(r.usd_per_hour or 0.0), None, ts)
        lines += self.rollups.rollup_lines(groups, {}, ts)
        req = urllib.request.Request(f"{self.vm_url}/api/v1/import/prometheus", data=body(lines))
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


def _normalize(alert: Mapping[str, Any], uid: str) -> dict[str, Any]:
    """An alert without the run's identity (uid) and times."""
    annotations = dict(alert["annotations"])
    for name in (A_CHANGE_EVENTS, A_ANCESTORS):
        items = json.loads(annotations[name])
        for item in items:
            for f in TIME_FIELDS:
                if f in item:
                    item[f] = "{time}"
        annotations[name] = json.dumps(items, sort_keys=True)
    text = json.dumps({"labels": alert["labels"], "annotations": annotations}, sort_keys=True)
    out: dict[str, Any] = json.loads(text.replace(uid, "{uid}"))
    return out


def capture(pg_dsn: str, vm_url: str, alertmanager_url: str) -> list[dict[str, Any]]:
    """Run the scenario through the real detector; the alerts it opened, normalized and in
    a stable order."""
    uid = uuid.uuid4().hex[:10]
    account = f"acct-{uid}"
    writer = Writer(pg_dsn, vm_url, account)
    detector = Detector(
        DetectorSettings(
            vm_url=vm_url,
            alertmanager_url=alertmanager_url,
            pg_dsn=pg_dsn,
            selector=f'billing_account_id="{account}"',
            bootstrap_hours=0,
            detection=DetectionConfig(),
        )
    )
    posted: list[dict[str, Any]] = []
    real_post = detector.am.post

    def post(alerts: Sequence[Mapping[str, Any]]) -> None:
        real_post(alerts)  # the real Alertmanager must accept them
        posted.extend(dict(a) for a in alerts)

    detector.am.post = post  # type: ignore[method-assign]
    baseline, changes = scenario(uid)
    try:
        writer.apply(baseline)
        wait_settled(detector, writer)
        # Two cycles: series already there at a start are judged from their second value on.
        detector.cycle(time.time())
        detector.cycle(time.time())
        writer.apply(changes)
        wait_settled(detector, writer)
        for _ in range(3):
            detector.cycle(time.time())
    finally:
        detector.close()
    first: dict[str, dict[str, Any]] = {}
    for alert in posted:
        key = json.dumps(alert["labels"], sort_keys=True)
        first.setdefault(key, alert)
    normalized = [_normalize(a, uid) for a in first.values()]
    return sorted(normalized, key=lambda a: json.dumps(a["labels"], sort_keys=True))


def wait_settled(detector: Detector, writer: Writer, timeout: float = 30.0) -> None:
    """Until VictoriaMetrics serves what the writer wrote: every resource series and the
    accounts' totals (new series take seconds to become queryable)."""
    deadline = time.monotonic() + timeout
    total = sum(writer.rates.values())
    while time.monotonic() < deadline:
        vector = detector.read(time.time())
        accounts = sum(
            v for k, v in zip(vector.keys, vector.values, strict=True) if k.level == "account"
        )
        resources = sum(1 for k in vector.keys if k.level == "resource")
        if resources >= len(writer.rates) and abs(accounts - total) < 1e-6:
            return
        time.sleep(0.25)
    raise AssertionError("the written series did not become queryable in time")


def write_recording(alerts: list[dict[str, Any]]) -> None:
    RECORDING.write_text(json.dumps(alerts, indent=1, sort_keys=True) + "\n")


@contextmanager
def fresh_database() -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    """A fresh, migrated database on the local services (dropped afterwards), and the
    services' settings."""
    from lambdas.store.migrate import migrate
    from tests.support.services import load_settings, require

    services = load_settings()
    admin = str(require(services, "postgres")["dsn"])
    name = f"cct_capture_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        dsn = admin.rsplit("/", 1)[0] + f"/{name}"
        migrate(dsn)
        yield dsn, services
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def main() -> None:
    """Capture into a fresh database of the local services."""
    with fresh_database() as (dsn, services):
        alerts = capture(dsn, services["victoriametrics"]["url"], services["alertmanager"]["url"])
    write_recording(alerts)
    print(f"{RECORDING}: {len(alerts)} alerts")


if __name__ == "__main__":
    main()
