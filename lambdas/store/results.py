"""Results-store upkeep: the retention setting and the deletes that apply it.

Each relation under retention has one rule: which rows are *finished* (an open anomaly, a
running workflow or a live resource is never deleted, however old) and which timestamp ages
them. The number of days each relation keeps is data in the `retention_policy` table, so an
operator changes it with `cct db retention --set RELATION=DAYS` without a release.

Deletes run in batches, each in its own short transaction, so a large backlog never holds
locks that the handlers' writes would wait on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from lambdas.store.db import translate_errors

Conn = psycopg.Connection[tuple[Any, ...]]


class RetentionError(ValueError):
    """The retention setting names an unknown relation or a bad number of days. Not retryable."""


@dataclass(frozen=True)
class RetentionRule:
    relation: str
    # Deletes at most %(batch)s finished rows older than %(cutoff)s; returns one row per
    # deleted row of `relation` (rows of dependent tables go with them in the same statement).
    delete_batch: str
    # Counts the rows the next run would delete (for --dry-run).
    count: str


def _simple(relation: str, finished: str) -> RetentionRule:
    return RetentionRule(
        relation=relation,
        delete_batch=f"""
            with doomed as (
                select ctid from {relation} where {finished} limit %(batch)s for update skip locked)
            delete from {relation} where ctid = any(array(select ctid from doomed)) returning 1""",
        count=f"select count(*) from {relation} where {finished}",
    )


_TERMINAL_RUN = "state in ('succeeded', 'failed', 'denied', 'dry_run')"

RULES: dict[str, RetentionRule] = {
    rule.relation: rule
    for rule in (
        _simple("anomalies", "resolved_at is not null and resolved_at < %(cutoff)s"),
        _simple("policy_decisions", "decided_at < %(cutoff)s"),
        RetentionRule(
            relation="optimization_runs",
            # A run's actions (before/after state) are part of the run: they go together, in
            # one statement, so the foreign key holds at every commit.
            delete_batch=f"""
                with doomed as (
                    select run_id from optimization_runs
                     where finished_at < %(cutoff)s and {_TERMINAL_RUN}
                     limit %(batch)s for update skip locked),
                actions as (
                    delete from optimization_actions a using doomed d where a.run_id = d.run_id)
                delete from optimization_runs r using doomed d where r.run_id = d.run_id
                returning 1""",
            count=f"""select count(*) from optimization_runs
                       where finished_at < %(cutoff)s and {_TERMINAL_RUN}""",
        ),
        _simple("resource_events", "event_time < %(cutoff)s"),
        # Only rows of deleted resources; a live resource's row is its current state.
        _simple("resource_inventory", "state = 'deleted' and last_event_time < %(cutoff)s"),
        _simple("container_deletions", "deleted_at < %(cutoff)s"),
        _simple("ingest_dead_letters", "received_at < %(cutoff)s"),
        _simple("billing_hourly", "hour < %(cutoff)s"),
    )
}


@dataclass(frozen=True)
class RetentionResult:
    relation: str
    keep_days: int
    cutoff: datetime
    deleted: int  # rows deleted, or that would be deleted in a dry run


def load_policy(conn: Conn) -> dict[str, int]:
    """relation -> days to keep, as stored in `retention_policy`."""
    with translate_errors("read retention_policy"):
        rows = conn.execute("select relation, keep_days from retention_policy").fetchall()
    return {str(relation): int(days) for relation, days in rows}


def set_policy(conn: Conn, keep_days: Mapping[str, int]) -> None:
    """Upsert days to keep per relation (idempotent); unknown relations are refused."""
    for relation, days in keep_days.items():
        if relation not in RULES:
            raise RetentionError(
                f"no retention rule for {relation!r}; known: {', '.join(sorted(RULES))}"
            )
        if days < 1:
            raise RetentionError(f"{relation}: keep_days must be at least 1, got {days}")
    with translate_errors("write retention_policy"), conn.transaction():
        for relation, days in keep_days.items():
            conn.execute(
                """insert into retention_policy (relation, keep_days) values (%s, %s)
                   on conflict (relation) do update
                      set keep_days = excluded.keep_days, updated_at = now()""",
                (relation, days),
            )


def apply_retention(
    conn: Conn,
    now: datetime,
    *,
    dry_run: bool = False,
    batch: int = 5000,
) -> list[RetentionResult]:
    """Delete finished rows older than each relation's setting; `now` is passed in so a run is
    reproducible. The connection must be in autocommit mode: each batch commits on its own.
    A relation with a rule but no setting is kept whole (retention is opt-in per relation)."""
    if not conn.autocommit:
        raise RetentionError("apply_retention needs an autocommit connection (one commit a batch)")
    results = []
    for relation, days in sorted(load_policy(conn).items()):
        rule = RULES.get(relation)
        if rule is None:
            raise RetentionError(
                f"retention_policy names {relation!r}, which has no retention rule in this release"
            )
        params: dict[str, object] = {"cutoff": now - timedelta(days=days), "batch": batch}
        with translate_errors(f"retention of {relation}"):
            if dry_run:
                row = conn.execute(rule.count, params).fetchone()
                deleted = int(row[0]) if row else 0
            else:
                deleted = 0
                while True:
                    with conn.transaction():
                        n = len(conn.execute(rule.delete_batch, params).fetchall())
                    deleted += n
                    if n < batch:
                        break
        results.append(RetentionResult(relation, days, now - timedelta(days=days), deleted))
    return results
