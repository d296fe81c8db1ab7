"""SQL of the remediation steps: prices for planning, policy verdicts for approval, and the
run, decision and action records.

Steps normally update a run row the trigger created; when no trigger ran (a step invoked by
hand, a test) `ensure_run` creates it, so a record is never lost for want of its parent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import psycopg.errors
from psycopg.types.json import Jsonb

FINAL_STATES = frozenset({"succeeded", "failed", "dry_run", "denied"})


def prices(
    conn: psycopg.Connection[Any], provider: str, service_name: str, region: str, unit: str
) -> dict[str, Decimal]:
    """Current list price per SKU for one provider, service, region and unit."""
    rows = conn.execute(
        """select sku, usd_per_unit from price_catalog
            where provider = %s and service_name = %s and region_id = %s and unit = %s
              and effective_from <= now()""",
        (provider, service_name, region, unit),
    ).fetchall()
    return {str(sku): Decimal(price) for sku, price in rows}


@dataclass(frozen=True)
class PolicyVerdict:
    decision_id: str
    verdict: str
    policy_ids: list[str]
    reasons: list[str]


def latest_verdict(
    conn: psycopg.Connection[Any], run_id: str, workflow_uid: str | None = None
) -> PolicyVerdict | None:
    """The newest verdict the trigger's pre-check or the admission webhook gave this run; with
    `workflow_uid`, of the admission verdicts only its own workflow's: a second CREATE of the
    same name (a redelivered event's, or someone's with other parameters) is judged and
    recorded before the API server refuses it, and must not decide for the running one. (A
    row without a uid, written before webhooks recorded it, still counts.)"""
    row = conn.execute(
        """select decision_id, verdict, policy_ids, reasons from policy_decisions
            where run_id = %s
              and (source = 'precheck' or (source = 'admission'
                   and (%s::text is null or input->>'workflow_uid' is null
                        or input->>'workflow_uid' = %s::text)))
            order by decided_at desc limit 1""",
        (run_id, workflow_uid, workflow_uid),
    ).fetchone()
    if row is None:
        return None
    return PolicyVerdict(row[0], row[1], list(row[2]), list(row[3]))


def record_step_decision(
    conn: psycopg.Connection[Any],
    run_id: str,
    verdict: str,
    *,
    policy_ids: Sequence[str],
    reasons: Sequence[str],
    decision_input: Mapping[str, Any],
) -> None:
    conn.execute(
        """insert into policy_decisions
               (decision_id, source, run_id, verdict, policy_ids, reasons, input)
           values (%s, 'step', %s, %s, %s, %s, %s)
           on conflict (decision_id) do update set
               verdict = excluded.verdict, policy_ids = excluded.policy_ids,
               reasons = excluded.reasons, input = excluded.input, decided_at = now()""",
        (
            f"{run_id}/approve",
            run_id,
            verdict,
            list(policy_ids),
            list(reasons),
            Jsonb(dict(decision_input)),
        ),
    )


@dataclass(frozen=True)
class RunRow:
    run_id: str
    event_id: str
    playbook: str
    backend: str
    provider: str
    # The account the workflow acts in. A run the steps create (no trigger planned it) knows
    # no other, so it is also the run's billing_account_id.
    account_id: str
    resource_id: str
    team: str
    environment: str
    parameters: Mapping[str, Any]


class RunConflict(RuntimeError):
    """Another run already owns this (event id, playbook): the input names the wrong run."""


def ensure_run(conn: psycopg.Connection[Any], run: RunRow) -> None:
    """Create the run row unless the trigger already did."""
    try:
        with conn.transaction():
            _insert_run(conn, run)
    except psycopg.errors.UniqueViolation:
        raise RunConflict(
            f"event {run.event_id!r} already has a {run.playbook} run other than {run.run_id!r}"
        ) from None


def _insert_run(conn: psycopg.Connection[Any], run: RunRow) -> None:
    conn.execute(
        """insert into optimization_runs
               (run_id, event_id, playbook, backend, state, provider, billing_account_id,
                account_id, resource_id, team, environment, parameters)
           values (%s, %s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s)
           on conflict (run_id) do nothing""",
        (
            run.run_id,
            run.event_id,
            run.playbook,
            run.backend,
            run.provider,
            run.account_id or None,
            run.account_id or None,
            run.resource_id,
            run.team or None,
            run.environment or None,
            Jsonb(dict(run.parameters)),
        ),
    )


def set_run_state(
    conn: psycopg.Connection[Any],
    run_id: str,
    state: str,
    reason: str | None = None,
    *,
    estimated_usd: Decimal | None = None,
    verified_usd: Decimal | None = None,
) -> None:
    """Move a run to `state`. Savings already recorded are kept when not given again."""
    conn.execute(
        """update optimization_runs set
               state = %s,
               reason = coalesce(%s, reason),
               estimated_monthly_saving_usd = coalesce(%s, estimated_monthly_saving_usd),
               verified_monthly_saving_usd = coalesce(%s, verified_monthly_saving_usd),
               updated_at = now(),
               finished_at = case when %s then coalesce(finished_at, now()) else finished_at end
            where run_id = %s""",
        (state, reason, estimated_usd, verified_usd, state in FINAL_STATES, run_id),
    )


def mark_running(conn: psycopg.Connection[Any], run_id: str) -> None:
    """A step started work; a finished run keeps its final state (a repeated step must not
    make a recorded result look unfinished)."""
    conn.execute(
        """update optimization_runs set state = 'running', updated_at = now()
            where run_id = %s and state in ('submitted', 'awaiting_approval', 'running')""",
        (run_id,),
    )


def run_state(conn: psycopg.Connection[Any], run_id: str) -> tuple[str, str | None] | None:
    row = conn.execute(
        "select state, reason from optimization_runs where run_id = %s", (run_id,)
    ).fetchone()
    return (row[0], row[1]) if row else None


@dataclass(frozen=True)
class ActionRow:
    run_id: str
    action: str
    resource_id: str
    dry_run: bool
    outcome: str
    reason: str | None
    before_state: Mapping[str, Any] | None
    after_state: Mapping[str, Any] | None
    estimated_usd: Decimal | None
    verified_usd: Decimal | None


def first_before_state(
    conn: psycopg.Connection[Any], run_id: str, action: str, resource_id: str
) -> dict[str, Any] | None:
    """The before-state an earlier attempt of this run's action captured (None: this is the
    first): whether a failure left the resource as it was is judged against it."""
    row = conn.execute(
        """select before_state from optimization_actions
            where run_id = %s and action = %s and resource_id = %s""",
        (run_id, action, resource_id),
    ).fetchone()
    return dict(row[0]) if row and row[0] is not None else None


def upsert_action(conn: psycopg.Connection[Any], row: ActionRow) -> None:
    """One row per (run, action, resource); a re-run of the step updates it in place, but
    never forgets the first captured before-state."""
    conn.execute(
        """insert into optimization_actions
               (run_id, action, resource_id, dry_run, outcome, reason, before_state,
                after_state, estimated_monthly_saving_usd, verified_monthly_saving_usd)
           values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           on conflict (run_id, action, resource_id) do update set
               dry_run = excluded.dry_run,
               outcome = case
                   when optimization_actions.outcome = 'changed'
                        and excluded.outcome = 'already_done' then 'changed'
                   else excluded.outcome end,
               reason = excluded.reason,
               before_state = coalesce(optimization_actions.before_state, excluded.before_state),
               after_state = excluded.after_state,
               estimated_monthly_saving_usd = excluded.estimated_monthly_saving_usd,
               verified_monthly_saving_usd = excluded.verified_monthly_saving_usd,
               executed_at = now()""",
        (
            row.run_id,
            row.action,
            row.resource_id,
            row.dry_run,
            row.outcome,
            row.reason,
            Jsonb(dict(row.before_state)) if row.before_state is not None else None,
            Jsonb(dict(row.after_state)) if row.after_state is not None else None,
            row.estimated_usd,
            row.verified_usd,
        ),
    )


@dataclass(frozen=True)
class RunOutcome:
    """What the results event reports about a finished run (its action, if one ran)."""

    state: str
    reason: str | None
    provider: str | None
    resource_id: str | None
    estimated_usd: Decimal | None
    verified_usd: Decimal | None
    action: str | None
    outcome: str | None
    dry_run: bool | None


def run_outcome(conn: psycopg.Connection[Any], run_id: str) -> RunOutcome | None:
    row = conn.execute(
        """select r.state, r.reason, r.provider, r.resource_id,
                  r.estimated_monthly_saving_usd, r.verified_monthly_saving_usd,
                  a.action, a.outcome, a.dry_run
             from optimization_runs r
             left join optimization_actions a using (run_id)
            where r.run_id = %s
            order by a.executed_at desc nulls last
            limit 1""",
        (run_id,),
    ).fetchone()
    return RunOutcome(*row) if row else None
