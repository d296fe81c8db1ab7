"""Optimization runs as the trigger writes them: one row per workflow, keyed by its
deterministic name, created before the workflow is submitted.

Every write is idempotent, so an event redelivered after a crash (before or after the
submission) finds its row and continues instead of adding one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lambdas.store.db import StoreError, translate_errors

Conn = psycopg.Connection[tuple[Any, ...]]

# States after which the trigger has nothing left to do for a run.
SETTLED_STATES = frozenset({"denied", "succeeded", "failed", "dry_run", "awaiting_approval"})


@dataclass(frozen=True)
class NewRun:
    run_id: str
    event_id: str
    playbook: str
    backend: str
    state: str  # submitted, or denied when the pre-check said so
    reason: str | None
    parameters: Mapping[str, str]
    # The account the cost rolls up to (the dashboards filter on it); the run acts in the
    # parameters' account-id. None: only that account is known.
    billing_account_id: str | None = None


@dataclass(frozen=True)
class RunStatus:
    state: str
    reason: str | None
    created: bool  # this call inserted the row

    @property
    def settled(self) -> bool:
        return self.state in SETTLED_STATES


def create_run(conn: Conn, run: NewRun) -> RunStatus:
    """Insert the run unless it exists; either way return its current state."""
    p = run.parameters
    with translate_errors("create optimization run"):
        inserted = conn.execute(
            """insert into optimization_runs
                   (run_id, event_id, playbook, backend, state, reason, provider,
                    billing_account_id, account_id, resource_id, team, environment,
                    parameters, finished_at)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                       case when %s = 'denied' then now() end)
               on conflict do nothing""",
            (
                run.run_id,
                run.event_id,
                run.playbook,
                run.backend,
                run.state,
                run.reason,
                p.get("provider"),
                run.billing_account_id or p.get("account-id"),
                p.get("account-id"),
                p.get("resource-id"),
                p.get("team") or None,
                p.get("environment") or None,
                Jsonb(dict(p)),
                run.state,
            ),
        ).rowcount
        row = conn.execute(
            "select state, reason from optimization_runs where run_id = %s", (run.run_id,)
        ).fetchone()
    if row is None:
        # The insert conflicted on (event_id, playbook) under another name: only possible if
        # the naming rule changed between releases. Refuse rather than guess.
        raise StoreError(
            f"run {run.run_id}: (event_id, playbook) exists under another run_id",
            retryable=False,
        )
    return RunStatus(state=row[0], reason=row[1], created=inserted == 1)


def settle_run(conn: Conn, run_id: str, state: str, reason: str | None) -> None:
    """Mark a run denied or failed by the trigger (admission denial, refused submission)."""
    with translate_errors("settle optimization run"):
        conn.execute(
            """update optimization_runs
                  set state = %s, reason = %s, updated_at = now(),
                      finished_at = coalesce(finished_at, now())
                where run_id = %s and state not in ('succeeded', 'failed', 'dry_run')""",
            (state, reason, run_id),
        )


def recent_actions(conn: Conn, account_id: str, since: datetime) -> int:
    """Runs that may change resources (not dry runs, not denied) started in `account_id`
    since `since`: the policy engine's `recent_actions` input for that account. Rows without
    account_id (inserted by the previous release during an upgrade, migration 0705) hold
    the acted-in account in billing_account_id."""
    with translate_errors("count recent actions"):
        row = conn.execute(
            """select count(*) from optimization_runs
                where (account_id = %(account)s
                       or (account_id is null and billing_account_id = %(account)s))
                  and created_at > %(since)s
                  and state <> 'denied' and parameters ->> 'dry-run' = 'false'""",
            {"account": account_id, "since": since},
        ).fetchone()
    return int(row[0]) if row else 0
