"""Realistic results-store rows for one test, all inside one billing account so tests that
share the session database never see each other's rows.

Anomalies, policy decisions, optimization runs with their actions and dead letters go
through their producers' writers (runs from the trigger's planning of the real detector's
recorded alert: `run`); writers that stamp now() have their timestamps moved afterwards,
because the tests need rows of past months and of expired age. Resource events and the
inventory still get plain inserts with explicit timestamps.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lambdas.collector.model import EventRejected
from lambdas.collector.normalize import normalize
from lambdas.detector.attribution import ChangeEvent, Contributor
from lambdas.events.cloudevents import anomaly_event, decode, encode
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.steps.registry import ACTIONS
from lambdas.store import actions, anomalies
from lambdas.store.decisions import DecisionRecord, decision_input, record_decision
from lambdas.store.inventory import insert_dead_letters
from lambdas.store.runs import create_run
from lambdas.trigger.core import WorkflowRun, plan_run
from lambdas.trigger.mapping import load_mapping
from lambdas.trigger.processor import new_run
from tests.contract.recorded import recorded_alert

EVENTS = Path(__file__).resolve().parents[1] / "ingest" / "fixtures" / "events"

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class Scope:
    """Labels shared by one test's rows and series."""

    uid: str

    @property
    def account(self) -> str:
        return f"acct-{self.uid}"

    @property
    def team(self) -> str:
        return f"payments-{self.uid}"

    @property
    def other_team(self) -> str:
        return f"search-{self.uid}"

    @property
    def env(self) -> str:
        return "prod"


def contributor(resource_id: str, region: str, delta: float, share: float) -> dict[str, Any]:
    return Contributor(
        level="resource",
        labels={"resource_id": resource_id, "service_name": "AmazonEC2", "region_id": region},
        expected=1.0,
        observed=1.0 + delta,
        delta=delta,
        share=share,
    ).as_json()


def change_event(event_id: str, resource_id: str, at: datetime, after: float) -> dict[str, Any]:
    return ChangeEvent(
        event_id=event_id,
        provider="aws",
        resource_id=resource_id,
        action="RunInstances",
        actor="arn:aws:iam::123456789012:user/alice",
        event_time=at,
        tags={"pulumi:stack": "checkout-prod"},
        usd_per_hour_before=None,
        usd_per_hour_after=after,
    ).as_json()


def anomaly(
    conn: Conn,
    s: Scope,
    fingerprint: str,
    started_at: datetime,
    *,
    resolved_at: datetime | None = None,
    severity: str = "warning",
    expected: float = 10.0,
    observed: float = 16.5,
    team: str | None = None,
    contributors: Any = None,
    change_events: Any = None,
    level: str = "service",
    dimensions: dict[str, str] | None = None,
    ancestors: Any = (),
) -> None:
    """Through the detector's writer, with the detector's own JSON for contributors and
    change events unless a test passes malformed ones on purpose. (The dashboards' tests take
    the detector's real rows: tests/dashboards/seed_detector.py.)"""
    dims = dimensions or {
        "provider": "aws",
        "billing_account_id": s.account,
        "service_name": "AmazonEC2",
        "team": team or s.team,
        "env": s.env,
    }
    if contributors is None:
        contributors = [
            contributor(f"i-{fingerprint}-a", "us-east-1", 4.55, 0.7),
            contributor(f"i-{fingerprint}-b", "eu-west-1", 1.95, 0.3),
        ]
    if change_events is None:
        change_events = [
            change_event(
                f"evt-{fingerprint}", f"i-{fingerprint}-a", started_at - timedelta(seconds=4), 4.55
            )
        ]
    anomalies.upsert(
        conn,
        anomalies.AnomalyRow(
            fingerprint=fingerprint,
            started_at=started_at,
            rule="day0_step",
            level=level,
            severity=severity,
            dimensions=dims,
            expected_usd_per_hour=expected,
            observed_usd_per_hour=observed,
            deviation=(observed - expected) / expected,
            contributors=contributors,
            change_events=change_events,
            ancestors=ancestors,
        ),
    )
    if resolved_at is not None:
        anomalies.resolve(conn, fingerprint, started_at, resolved_at)


def resource_event(
    conn: Conn,
    s: Scope,
    event_id: str,
    event_time: datetime,
    *,
    before: float | None,
    after: float | None,
    actor: str = "arn:aws:iam::123456789012:user/alice",
    action: str = "RunInstances",
    tags: dict[str, str] | None = None,
) -> None:
    conn.execute(
        """insert into resource_events (event_id, provider, resource_id, billing_account_id,
               sub_account_id, region_id, service_name, resource_type, action, actor,
               event_time, tags, usd_per_hour_before, usd_per_hour_after)
           values (%s, 'aws', %s, %s, %s, 'us-east-1', 'AmazonEC2', 'instance', %s, %s, %s,
                   %s, %s, %s)""",
        (
            event_id,
            f"i-{event_id}",
            s.account,
            f"sub-{s.uid}",
            action,
            actor,
            event_time,
            Jsonb({"team": s.team, "env": s.env} if tags is None else tags),
            before,
            after,
        ),
    )


def inventory(conn: Conn, s: Scope, resource_id: str, state: str, last_event: datetime) -> None:
    conn.execute(
        """insert into resource_inventory (provider, resource_id, billing_account_id,
               sub_account_id, region_id, service_name, resource_type, sku, state, tags,
               usd_per_hour, priced, last_event_id, last_event_time)
           values ('aws', %s, %s, %s, 'us-east-1', 'AmazonEC2', 'instance', 'm5.large', %s,
                   %s, 0.096, true, %s, %s)""",
        (
            resource_id,
            s.account,
            f"{s.account}-sub",
            state,
            Jsonb({"team": s.team}),
            f"evt-{resource_id}",
            last_event,
        ),
    )


def container_deletion(conn: Conn, s: Scope, group: str, deleted_at: datetime) -> None:
    conn.execute(
        """insert into container_deletions (provider, container_id, deleted_at, event_id, action)
           values ('azure', %s, %s, %s, 'resourceGroups/delete')""",
        (f"/subscriptions/{s.account}/resourcegroups/{group}", deleted_at, f"azure:{group}"),
    )


# The trigger's mapping as deployed: a prod instance's anomaly starts rightsize-compute.
_MAPPING = load_mapping(Path(__file__).resolve().parents[2] / "policies" / "playbooks.yaml")
_EVENT_TIME = "2026-11-27T09:00:01.000Z"


def planned_run(s: Scope, label: str, team: str | None = None, *, dry_run: bool) -> WorkflowRun:
    """The workflow the trigger plans for the real detector's alert on a new prod instance
    (the recording of tests/contract: billing account `s.account`, linked account
    `s.account`-sub), through the bridge's event, the deployed mapping (its rule's dry-run
    setting replaced by `dry_run`) and `plan_run`. `label` keeps each run's resource and
    event apart within the scope."""
    alert = recorded_alert("prod-instance", s.uid)
    alert["labels"].update(resource_id=f"i-{label}", team=team or s.team)
    alert.update(
        status="firing",
        startsAt="2026-11-27T09:00:00.000Z",
        endsAt="0001-01-01T00:00:00Z",
        fingerprint=f"fp-{s.uid}-{label}",
    )
    event = decode(encode(anomaly_event(alert, _EVENT_TIME)))
    rule = _MAPPING.select(event.labels)
    assert rule is not None, _MAPPING.why_unmapped(event.labels)
    return plan_run(event, replace(rule, dry_run=dry_run))


def _instance(sku: str) -> dict[str, Any]:
    """An instance as `aws.ec2.resize_instance` reads it (the before and after states the
    steps record)."""
    return {"sku": sku, "status": "running", "region": "us-east-1", "tags": {}, "busy": False}


def run(
    conn: Conn,
    s: Scope,
    label: str,
    state: str,
    created_at: datetime,
    *,
    finished_at: datetime | None = None,
    estimated: str | None = "120.00",
    verified: str | None = None,
    team: str | None = None,
    reasons: tuple[str, ...] = ("impact above $100/month needs approval",),
) -> str:
    """A run in `state`, written as the services write it: the trigger creates the row for
    its planned workflow (`planned_run`) after the pre-check, and the steps move it on and
    record its action (a resize, for a run that changed something or a dry run). Returns
    the run id (the trigger's workflow name).

    The writers stamp now(); the run's and its action's timestamps are then moved to
    `created_at` and `finished_at`, the only values not written by a producer (tests need
    runs of past months and of expired age)."""
    wf = planned_run(s, label, team, dry_run=state == "dry_run")
    run_id = wf.run_id
    verdict = "deny" if state == "denied" else "allow"
    assert create_run(conn, new_run(wf, "local", verdict, reasons)).created, run_id
    resize = ACTIONS[PLAYBOOKS[wf.playbook].actions["aws"]].name
    est = Decimal(estimated) if estimated else None
    ver = Decimal(verified) if verified else None
    if state != "denied":
        actions.mark_running(conn, run_id)
    if state == "awaiting_approval":
        actions.set_run_state(conn, run_id, state, "; ".join(reasons))
    elif state in {"succeeded", "dry_run"}:
        dry = state == "dry_run"
        actions.upsert_action(
            conn,
            actions.ActionRow(
                run_id,
                resize,
                wf.parameters["resource-id"],
                dry,
                "dry_run" if dry else "changed",
                "dry run: would resize m5.2xlarge to m5.large" if dry else "resized",
                _instance("m5.2xlarge"),
                None if dry else _instance("m5.large"),
                est,
                None if dry else ver,
            ),
        )
        actions.set_run_state(
            conn, run_id, state, "resized", estimated_usd=est, verified_usd=None if dry else ver
        )
    elif state == "failed":
        actions.set_run_state(conn, run_id, state, "execute failed: InsufficientInstanceCapacity")
    elif state not in {"denied", "running"}:
        raise ValueError(f"no producer writes a run in state {state!r}")
    conn.execute(
        """update optimization_runs
              set created_at = %(created)s,
                  updated_at = coalesce(%(finished)s, %(created)s),
                  finished_at = case when finished_at is not null
                                     then coalesce(%(finished)s, %(created)s) end
            where run_id = %(run)s""",
        {"created": created_at, "finished": finished_at, "run": run_id},
    )
    conn.execute(
        "update optimization_actions set executed_at = %s where run_id = %s",
        (created_at + (finished_at - created_at) / 2 if finished_at else created_at, run_id),
    )
    return run_id


def decision(
    conn: Conn,
    s: Scope,
    decision_id: str,
    verdict: str,
    decided_at: datetime,
    *,
    run_id: str | None = None,
    reasons: tuple[str, ...] = (),
) -> None:
    """A verdict as the admission webhook records it, on the workflow the trigger plans for
    `decision_id`'s resource (i-`decision_id`): its parameters as input, the account it acts
    in (`s.account`-sub) as account_id."""
    wf = planned_run(s, decision_id, dry_run=False)
    record_decision(
        conn,
        DecisionRecord(
            decision_id=decision_id,
            source="admission",
            verdict=verdict,
            policy_ids=tuple(f"prod-guard/{i}" for i, _ in enumerate(reasons)),
            reasons=reasons,
            input=decision_input(wf.parameters, recent_actions=0),
            decided_at=decided_at,
            run_id=run_id,
            account_id=wf.account_id,
        ),
    )


def dead_letter(dsn: str, received_at: datetime) -> tuple[str, str]:
    """A CloudTrail event without its eventName (a real fixture with the field cut, in the
    record shape the forwarders send), rejected by the collector's own normalization and
    written by its dead-letter writer as record 0 of a batch; the row is then dated
    `received_at`. Returns (reason, detail)."""
    event = json.loads((EVENTS / "aws_run_instances.json").read_text())
    del event["detail"]["eventName"]
    record = {"provider": "aws", "billing_account_id": "111122223333", "event": event}
    try:
        normalize(record)
    except EventRejected as exc:
        reason, detail = exc.reason, f"record 0: {exc.detail}"
    else:
        raise AssertionError("the collector accepted a CloudTrail event without eventName")
    assert reason == "missing_field", detail

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await insert_dead_letters(conn, "collector", [(reason, detail, json.dumps(record))])
            cur = await conn.execute(
                "update ingest_dead_letters set received_at = %s"
                " where id = currval('ingest_dead_letters_id_seq')",
                (received_at,),
            )
            assert cur.rowcount == 1

    asyncio.run(write())
    return reason, detail
