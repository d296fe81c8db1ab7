"""Policy decisions: one row per verdict (admission webhook, trigger pre-check, steps).

Writes are idempotent on `decision_id` (the AdmissionReview uid, or `<run_id>/precheck`):
the API server retries a webhook call with the same uid and a redelivered event repeats the
pre-check, and neither may add a second row or fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from lambdas.store.db import translate_errors

Conn = psycopg.Connection[tuple[Any, ...]]
Source = Literal["admission", "precheck", "step"]


@dataclass(frozen=True)
class DecisionRecord:
    decision_id: str
    source: Source
    verdict: str  # allow | deny | require-approval
    policy_ids: Sequence[str]
    reasons: Sequence[str]
    input: Mapping[str, Any]  # what was decided on: parameters, time, recent actions
    decided_at: datetime
    run_id: str | None = None
    # Admission only: whether the object was admitted (require-approval without an approval
    # step is not), whether it was a dry run, and the account it acts in.
    allowed: bool | None = None
    dry_run: bool | None = None
    account_id: str | None = None


_INSERT = """
    insert into policy_decisions (decision_id, source, run_id, verdict, policy_ids, reasons,
                                  input, decided_at, allowed, dry_run, account_id)
    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    on conflict (decision_id) do nothing
"""


def decision_input(parameters: Mapping[str, str], **facts: Any) -> dict[str, Any]:
    """A decision's `input`: the workflow parameters under "parameters" (`reporting.
    policy_decisions` reads provider, account-id, team, environment and resource-id there for
    a decision without a run row), next to the other facts decided on."""
    return {**facts, "parameters": dict(parameters)}


def _row(rec: DecisionRecord) -> tuple[Any, ...]:
    return (
        rec.decision_id,
        rec.source,
        rec.run_id,
        rec.verdict,
        list(rec.policy_ids),
        list(rec.reasons),
        Jsonb(dict(rec.input)),
        rec.decided_at,
        rec.allowed,
        rec.dry_run,
        rec.account_id,
    )


def record_decision(conn: Conn, rec: DecisionRecord) -> bool:
    """Insert one decision; False when a row with this decision_id already existed."""
    with translate_errors("record policy decision"):
        cur = conn.execute(_INSERT, _row(rec))
        return cur.rowcount == 1


def record_decisions(conn: Conn, records: Sequence[DecisionRecord]) -> int:
    """Insert a batch in one round trip; returns how many were new."""
    if not records:
        return 0
    with translate_errors("record policy decisions"), conn.cursor() as cur:
        cur.executemany(_INSERT, [_row(r) for r in records])
        return max(cur.rowcount, 0)


def admitted_since(conn: Conn, since: datetime) -> list[tuple[str, str, datetime]]:
    """(decision_id, account_id, decided_at) of every non-dry-run workflow the webhook
    admitted since `since`: the recent actions the blast-radius rules count."""
    with translate_errors("read admitted decisions"):
        rows = conn.execute(
            """select decision_id, account_id, decided_at from policy_decisions
               where source = 'admission' and allowed and not dry_run
                 and decided_at > %s and account_id is not null""",
            (since,),
        ).fetchall()
    return [(str(d), str(a), t) for d, a, t in rows]


def get_decision(conn: Conn, decision_id: str) -> dict[str, Any] | None:
    with translate_errors("read policy decision"):
        cur = conn.execute(
            """select decision_id, source, run_id, verdict, policy_ids, reasons, input,
                      decided_at, allowed, dry_run, account_id
               from policy_decisions where decision_id = %s""",
            (decision_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        names = [c.name for c in cur.description or ()]
    return dict(zip(names, row, strict=True))
