"""One incident, one workflow per playbook, however often its severity rises.

The chain is the real one up to Kafka: the real detector (shared VictoriaMetrics and
PostgreSQL) reports a resource's step as a warning and escalates it to critical; a private
real Alertmanager running the bundle's routing notifies a recording receiver in the
bridge's place; the bridge's own conversion turns each notification into the events it
would produce; the trigger's processor handles them (real PostgreSQL, the shipped policies,
the Argo backend on the fake Kubernetes API or the detached local backend).

Severity is a label, so an escalation is a new alert to Alertmanager: a new fingerprint and
a new event id. Runs used to be named after the event id, so the same incident started the
same playbook again at each severity (a reviewer saw cct-rightsize-compute-cb603c568840 for
the warning and ...-317e96b2f951 for its escalation: two runs, two approvals, one cause).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lambdas import contract
from lambdas.alerting.config import AlertRoutingSettings, render_alertmanager_config
from lambdas.bridge.core import convert
from lambdas.collector.core import Applied, Labels, Rollups, resource_lines
from lambdas.collector.model import Resource, ResourceChange
from lambdas.detector.config import DetectionConfig
from lambdas.detector.service import Detector, DetectorSettings
from lambdas.events.cloudevents import AnomalyEvent, decode
from lambdas.ingest.exposition import body
from lambdas.policy import load_policy_set
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.store.db import open_pool
from lambdas.store.inventory import write_batch
from lambdas.trigger.argo import ArgoBackend, KubeSettings, api_client
from lambdas.trigger.backends import Backend
from lambdas.trigger.detached import DetachedLocalBackend
from lambdas.trigger.mapping import PlaybookMapping, load_mapping, parse_mapping
from lambdas.trigger.processor import Handled, Processor
from tests.routing.helpers import RecordingReceiver, alertmanager_process, wait_until
from tests.support.databases import own_database
from tests.support.services import ROOT
from tests.trigger.events import EC2
from tests.trigger.fake_kube import FakeKube

TOKEN = "kube-token"
FAKE_STEP = str(Path(__file__).with_name("fake_step.py"))


class Series:
    """One production instance of its own account, written as the collector writes it: the
    resource's run-rate and its group's rollup, labelled by the collector's own code. No
    inventory row or change event: the instance exists before the detector starts, so its
    step is judged from its series (not as a brand-new resource)."""

    def __init__(self, vm_url: str, uid: str) -> None:
        self.vm_url = vm_url
        self.account = f"acct-{uid}"
        self.resource_id = f"i-{uid}"
        self.rollups = Rollups(Labels(contract.TAG_LABELS))
        self.rate = 0.0

    def write(self, usd_per_hour: float) -> None:
        now = datetime.now(UTC)
        resource = Resource(
            provider="aws",
            resource_id=self.resource_id,
            billing_account_id=self.account,
            sub_account_id=f"{self.account}-sub",
            region_id="us-east-1",
            service_name=EC2,
            resource_type="Instance",
            sku=None,
            size={},
            state="running",
            tags={"team": "web", "env": "prod"},
            usd_per_hour=usd_per_hour,
            last_event_id="none",
            last_event_time=now,
        )
        group, labels = self.rollups.update(resource)
        ts = int(now.timestamp() * 1000)
        lines = resource_lines(labels, usd_per_hour, None, ts)
        lines += self.rollups.rollup_lines({group}, {}, ts)
        req = urllib.request.Request(f"{self.vm_url}/api/v1/import/prometheus", data=body(lines))
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        self.rate = usd_per_hour

    def served(self, detector: Detector) -> bool:
        vector = detector.read(time.time())
        values = [
            v for k, v in zip(vector.keys, vector.values, strict=True) if k.level == "resource"
        ]
        return values == [self.rate]


@dataclass(frozen=True)
class Chain:
    """What the trigger received: every event the bridge would have produced, in order."""

    events: list[bytes]
    resource_id: str


def record_neighbour(pg_dsn: str, team: str) -> str:
    """Another account's new development instance of the same team, launched now, as the
    collector records it (`inventory.write_batch`: its inventory row and change event). In a
    shared database, other accounts' changes are always there: found through the team's
    change events, this one was reported as a root cause of the test's team rollup although
    the detector watches one account only (the CI-only failure of this test). Returns its
    resource id."""
    uid = uuid.uuid4().hex[:10]
    now = datetime.now(UTC)
    change = ResourceChange(
        event_id=f"ev-neighbour-{uid}",
        provider="aws",
        billing_account_id=f"acct-{uid}",
        sub_account_id=f"acct-{uid}-sub",
        region_id="us-east-1",
        service_name=EC2,
        resource_id=f"i-{uid}",
        resource_type="Instance",
        action="RunInstances",
        event_time=now,
        state="running",
        tags={"team": team, "env": "dev"},
    )
    resource = Resource(
        "aws", change.resource_id, change.billing_account_id, change.sub_account_id,
        "us-east-1", EC2, "Instance", None, {}, "running", dict(change.tags or {}), 40.0,
        change.event_id, now,
    )  # fmt: skip

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            key = (resource.provider, resource.resource_id)
            await write_batch(conn, {key: resource}, [Applied(change, None, 40.0, False)], now)

    asyncio.run(write())
    return change.resource_id


def _received(receiver: RecordingReceiver) -> list[dict[str, Any]]:
    """The alerts of every notification the bridge's endpoint got, in order."""
    return [a for r in receiver.snapshot() if r.path == "/v1/alerts" for a in r.body["alerts"]]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, vm_url: str, pg_dsn: str) -> Iterator[Chain]:
    """A warning, its escalation to critical, its resolution, and later a new warning of
    the same resource, through the real detector and a real Alertmanager."""
    workdir = tmp_path_factory.mktemp("escalation")
    token = workdir / "bridge.token"
    token.write_text("t0ken\n")
    series = Series(vm_url, uuid.uuid4().hex[:10])
    neighbour = record_neighbour(pg_dsn, "web")
    with RecordingReceiver() as bridge:
        config = render_alertmanager_config(
            AlertRoutingSettings(
                bridge_url=f"{bridge.url}/v1/alerts",
                zenduty_relay_url=f"{bridge.url}/v1/relay/zenduty",
                token_file=str(token),
            )
        )
        with alertmanager_process(workdir / "am", config) as alertmanager:
            detector = Detector(
                DetectorSettings(
                    vm_url=vm_url,
                    alertmanager_url=alertmanager,
                    pg_dsn=pg_dsn,
                    selector=f'billing_account_id="{series.account}"',
                    bootstrap_hours=0,
                    # A new incident right after the last one resolved, not a day later.
                    detection=DetectionConfig(cooldown_s=0),
                )
            )
            try:

                def step(usd_per_hour: float, cycles: int = 1) -> list[tuple[str, str]]:
                    series.write(usd_per_hour)
                    wait_until(lambda: series.served(detector), 30, f"{usd_per_hour} $/h")
                    found = []
                    for _ in range(cycles):
                        found += [
                            (t.kind, t.severity)
                            for t in detector.cycle(time.time())
                            if t.key.level == "resource"
                        ]
                    return found

                def notified(status: str, severity: str, starts: int = 1) -> None:
                    """Until notifications of `starts` different incidents (startsAt) with
                    this status and severity came: Alertmanager may deliver a notification
                    more than once, so copies of the first do not count as the second."""

                    def seen() -> bool:
                        alerts = _received(bridge)
                        found = {
                            a["startsAt"]
                            for a in alerts
                            if a["status"] == status and a["labels"]["severity"] == severity
                        }
                        return len(found) >= starts

                    wait_until(seen, 30, f"{starts} {status} {severity} notifications")

                # Series already there at a start are judged from their second value on.
                assert step(100.0, cycles=2) == []
                assert step(130.0) == [("opened", "warning")]
                notified("firing", "warning")
                assert step(300.0) == [("escalated", "critical")]
                # (The warning's resolution, posted with it, is not notified: the bundle's
                # inhibition mutes a warning while a critical of its dimensions fires.)
                notified("firing", "critical")
                assert step(100.0, cycles=3) == [("resolved", "critical")]
                notified("resolved", "critical")
                assert step(130.0) == [("opened", "warning")]
                notified("firing", "warning", starts=2)
            finally:
                detector.close()
        received = bridge.snapshot()
    # Only the watched account's resource is reported, never the neighbour.
    reported = {a["labels"].get("resource_id") for r in received for a in r.body["alerts"]}
    assert reported == {series.resource_id}, reported
    assert neighbour not in reported
    events = []
    for notification in received:
        if notification.path == "/v1/alerts":
            received_at = datetime.now(UTC).isoformat()
            conversion = convert(json.dumps(notification.body).encode(), received_at)
            assert conversion.invalid == [] and conversion.ignored == 0
            events += [e.value for e in conversion.events]
    yield Chain(events, series.resource_id)


@pytest.fixture
def own_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A database of this test's own: the runs of one incident are named alike in every
    test that handles the chain's events."""
    with own_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(TOKEN) as fake:
        yield fake


def argo(kube: FakeKube, tmp_path: Path) -> ArgoBackend:
    token = tmp_path / "kube.token"
    token.write_text(TOKEN)
    settings = KubeSettings("cct-system", api_url=kube.url, token_file=str(token))
    return ArgoBackend(api_client(settings), "cct-system", 5.0)


@contextmanager
def processor_on(
    dsn: str, backend: Backend, mapping: PlaybookMapping | None = None
) -> Iterator[Processor]:
    """The trigger's processor on the shipped policies (and mapping, unless given)."""
    pool = open_pool(dsn, application_name="cct-trigger-test")
    try:
        yield Processor(
            mapping or load_mapping(ROOT / "policies" / "playbooks.yaml"),
            load_policy_set(ROOT / "policies" / "optimization"),
            backend,
            connection=pool.connection,
            stopping=threading.Event(),
            max_backoff_s=1.0,
        )
    finally:
        pool.close()


def handle_all(processor: Processor, events: list[bytes]) -> list[tuple[AnomalyEvent, Handled]]:
    return [(decode(raw), processor.handle(raw)) for raw in events]


def by_incident(
    handled: list[tuple[AnomalyEvent, Handled]],
) -> list[list[tuple[AnomalyEvent, Handled]]]:
    """The firing events grouped by their alert's startsAt, in the order they came."""
    groups: dict[str, list[tuple[AnomalyEvent, Handled]]] = {}
    for event, outcome in handled:
        if event.detected:
            groups.setdefault(event.starts_at, []).append((event, outcome))
    seen = [
        (e.labels["severity"], "firing" if e.detected else "resolved", e.starts_at, h.outcome)
        for e, h in handled
    ]
    assert len(groups) == 2, f"two incidents expected, the chain delivered {seen}"
    return list(groups.values())


def runs_of(dsn: str, resource_id: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select run_id, playbook, event_id from optimization_runs where resource_id = %s"
            " order by created_at",
            (resource_id,),
        ).fetchall()
    return [(str(r), str(p), str(e)) for r, p, e in rows]


def test_an_escalation_finds_its_incident_s_run_and_a_new_incident_gets_a_new_one(
    chain: Chain, kube: FakeKube, pg_dsn: str, tmp_path: Path
) -> None:
    with processor_on(pg_dsn, argo(kube, tmp_path)) as processor:
        handled = handle_all(processor, chain.events)
    first, later = by_incident(handled)

    # What the detector keeps across an escalation, and what it changes: the name rests on
    # the one and must not on the other.
    warning, critical = first[0][0], next(e for e, _ in first if e.labels["severity"] == "critical")
    assert (warning.labels["severity"], critical.annotations[contract.A_ESCALATED_FROM]) == (
        "warning",
        "warning",
    )
    assert dict(critical.labels) == {**warning.labels, "severity": "critical"}
    assert critical.starts_at == warning.starts_at
    assert (critical.fingerprint, critical.id) != (warning.fingerprint, warning.id)

    # One run for the incident: the escalation (and any repeat Alertmanager sent) is the run
    # the warning started; only a later incident of the same resource starts another.
    [created, *repeats] = [outcome for _, outcome in first]
    assert created.outcome == "created"
    assert repeats and {(h.outcome, h.run_id) for h in repeats} == {
        ("already_exists", created.run_id)
    }
    [(new_event, new_run), *_] = later
    assert new_event.labels == warning.labels and new_event.starts_at != warning.starts_at
    assert new_run.outcome == "created" and new_run.run_id != created.run_id
    assert {h.outcome for e, h in handled if not e.detected} == {"resolved"}
    assert kube.created_names() == [created.run_id, new_run.run_id]
    assert runs_of(pg_dsn, chain.resource_id) == [
        (created.run_id, "rightsize-compute", warning.id),
        (new_run.run_id, "rightsize-compute", new_event.id),
    ]


def test_a_mapping_that_picks_by_severity_runs_each_playbook_once_per_incident(
    chain: Chain, kube: FakeKube, own_dsn: str, tmp_path: Path
) -> None:
    schema = json.loads((ROOT / "policies" / "playbooks.schema.json").read_text())
    mapping = parse_mapping(
        {
            "version": 1,
            "rules": [
                {
                    "id": "critical-compute",
                    "playbook": "rightsize-compute",
                    "match": {"level": ["resource"], "severity": ["critical"]},
                },
                {
                    "id": "compute",
                    "playbook": "stop-idle-compute",
                    "match": {"level": ["resource"]},
                },
            ],
        },
        schema,
        "test",
    )
    with processor_on(own_dsn, argo(kube, tmp_path), mapping) as processor:
        handled = handle_all(processor, chain.events)
    first, later = by_incident(handled)
    names = {(e.labels["severity"], h.run_id) for e, h in first if h.outcome != "already_exists"}
    # The escalation asks for another playbook: that is a run of its own, the warning's
    # playbook is not started again.
    assert {severity for severity, _ in names} == {"warning", "critical"}
    assert len({name for _, name in names}) == 2
    assert [playbook for _, playbook, _ in runs_of(own_dsn, chain.resource_id)] == [
        "stop-idle-compute",
        "rightsize-compute",
        "stop-idle-compute",
    ]
    assert later[0][1].run_id not in {name for _, name in names}


def test_the_detached_local_backend_starts_the_incident_s_workflow_once(
    chain: Chain, own_dsn: str, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    backend = DetachedLocalBackend(
        tmp_path / "workflows",
        command=[sys.executable, FAKE_STEP],
        env={**os.environ, "FAKE_STEP_DIR": str(calls)},
    )
    with processor_on(own_dsn, backend) as processor:
        handled = handle_all(processor, chain.events)
    backend.reap(wait=True)
    first, later = by_incident(handled)
    assert [h.outcome for _, h in first] == ["created"] + ["already_exists"] * (len(first) - 1)
    assert later[0][1].outcome == "created"
    runs = [h.run_id for _, h in (first[0], later[0])]
    for run_id in runs:
        assert run_id is not None
        outcome = json.loads(backend.paths(run_id)[2].read_text())
        assert outcome["detail"] == "completed"
    steps = [json.loads(line)["step"] for line in (calls / "calls.jsonl").read_text().splitlines()]
    assert len(steps) == 2 * len(PLAYBOOKS["rightsize-compute"].steps)
