"""Realistic results-store rows for one test, all inside one billing account so tests that
share the session database never see each other's rows.

Anomalies and policy decisions go through their areas' writers (lambdas.store.anomalies,
lambdas.store.decisions); the other tables get plain inserts with explicit timestamps, because
the tests need rows of past months and of expired age, which the handlers' writers (stamping
now()) cannot produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lambdas.detector.attribution import ChangeEvent, Contributor
from lambdas.policy.model import PolicyRequest
from lambdas.store import anomalies
from lambdas.store.decisions import DecisionRecord, decision_input, record_decision

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
            f"sub-{s.uid}",
            state,
            Jsonb({"team": s.team}),
            f"evt-{resource_id}",
            last_event,
        ),
    )


def run(
    conn: Conn,
    s: Scope,
    run_id: str,
    state: str,
    created_at: datetime,
    *,
    finished_at: datetime | None = None,
    estimated: str | None = "120.00",
    verified: str | None = None,
    team: str | None = None,
    playbook: str = "rightsize-compute",
) -> None:
    conn.execute(
        """insert into optimization_runs (run_id, event_id, playbook, backend, state, provider,
               billing_account_id, resource_id, team, environment, parameters,
               estimated_monthly_saving_usd, verified_monthly_saving_usd, created_at,
               updated_at, finished_at)
           values (%s, %s, %s, 'local', %s, 'aws', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            run_id,
            f"event-{run_id}",
            playbook,
            state,
            s.account,
            f"i-{run_id}",
            team or s.team,
            s.env,
            Jsonb({"action": "resize", "dry-run": "false"}),
            Decimal(estimated) if estimated else None,
            Decimal(verified) if verified else None,
            created_at,
            finished_at or created_at,
            finished_at,
        ),
    )


def action(conn: Conn, run_id: str, executed_at: datetime, *, outcome: str = "changed") -> None:
    conn.execute(
        """insert into optimization_actions (run_id, action, resource_id, dry_run, outcome,
               before_state, after_state, estimated_monthly_saving_usd,
               verified_monthly_saving_usd, executed_at)
           values (%s, 'resize', %s, false, %s, %s, %s, 120.00, 95.50, %s)""",
        (
            run_id,
            f"i-{run_id}",
            outcome,
            Jsonb({"instance_type": "m5.2xlarge"}),
            Jsonb({"instance_type": "m5.large"}),
            executed_at,
        ),
    )


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
    record_decision(
        conn,
        DecisionRecord(
            decision_id=decision_id,
            source="admission",
            verdict=verdict,
            policy_ids=tuple(f"prod-guard/{i}" for i, _ in enumerate(reasons)),
            reasons=reasons,
            # The shape both producers write (the webhook's policy request as parameters).
            input=decision_input(
                PolicyRequest(
                    provider="aws",
                    service="Amazon Elastic Compute Cloud",
                    resource_id=f"i-{decision_id}",
                    resource_type="Instance",
                    action="stop",
                    environment=s.env,
                    account_id=s.account,
                    estimated_monthly_impact_usd=-50.0,
                    team=s.team,
                ).to_parameters(),
                recent_actions=0,
            ),
            decided_at=decided_at,
            run_id=run_id,
            account_id=s.account,
        ),
    )


def dead_letter(conn: Conn, reason: str, received_at: datetime) -> None:
    conn.execute(
        """insert into ingest_dead_letters (source, reason, detail, payload, received_at)
           values ('collector', %s, %s, '{"detail-type": "?"}', %s)""",
        (reason, f"{reason}: field 'detail.requestParameters' is absent", received_at),
    )
