"""Handle one anomaly event, synchronously: map, pre-check, record, submit.

Runs in a worker thread of the service (database and Kubernetes clients block). Every step is
idempotent, so the service may hand the same event in again after a crash at any point:
- the pre-check verdict is stored under `<run_id>/precheck` and reused when present, so a
  redelivered event gets the verdict it got the first time;
- the run row is keyed by the deterministic workflow name, made from the incident and the
  playbook (`core.workflow_name`): the event of an escalation finds the run of the incident
  it escalates, as a redelivery does;
- a run already settled (denied, finished, awaiting approval) is not submitted again, and a
  backend treats an existing workflow as done.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import psycopg

from lambdas.events.cloudevents import EventLimits, InvalidEvent, decode
from lambdas.policy import InvalidRequestError, PolicyRequest, PolicySet, evaluate
from lambdas.store.db import BadRecordError, StoreError
from lambdas.store.decisions import (
    DecisionRecord,
    decision_input,
    get_decision,
    record_decision,
)
from lambdas.store.runs import NewRun, RunStatus, create_run, recent_actions, settle_run
from lambdas.trigger.backends import (
    Backend,
    PermanentSubmitError,
    RetryableSubmitError,
    Submission,
)
from lambdas.trigger.core import MAX_DELTA_USD_PER_HOUR, WorkflowRun, plan_run, tags_parameter
from lambdas.trigger.mapping import PlaybookMapping

log = logging.getLogger("cct.trigger")

T = TypeVar("T")
Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]

Outcome = Literal[
    "created",  # a new workflow was submitted (local: and ran)
    "already_exists",  # the backend had it: an earlier delivery submitted it
    "denied",  # the admission webhook refused it
    "precheck_denied",  # the policy pre-check said deny: not submitted
    "settled",  # the run was already settled by an earlier delivery
    "unmapped",  # no playbook rule matches: published on the unmapped topic with the reason
    "resolved",  # a resolution event: nothing to start
    "dead_letter",  # poison: goes to the dead-letter topic with the reason
]

# The engine's blast-radius rules count actions over the hour before now.
RECENT_WINDOW = timedelta(hours=1)


def new_run(run: WorkflowRun, backend: str, verdict: str, reasons: Sequence[str]) -> NewRun:
    """The run row the trigger creates for a planned workflow after the pre-check's
    `verdict`: denied (with the reasons) or submitted."""
    denied = verdict == "deny"
    return NewRun(
        run_id=run.run_id,
        event_id=run.event_id,
        playbook=run.playbook,
        backend=backend,
        state="denied" if denied else "submitted",
        reason="; ".join(reasons) if denied else None,
        parameters=run.parameters,
        billing_account_id=run.billing_account_id or None,
    )


class Stopping(Exception):
    """Shutdown was requested while waiting to retry; leave the event uncommitted."""


@dataclass(frozen=True)
class Handled:
    outcome: Outcome
    run_id: str | None = None
    reason: str | None = None


class Processor:
    def __init__(
        self,
        mapping: PlaybookMapping,
        policy_set: PolicySet,
        backend: Backend,
        *,
        connection: Connect,
        stopping: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_backoff_s: float = 30.0,
        limits: EventLimits = EventLimits(),  # noqa: B008
        max_delta_usd_per_hour: Decimal = MAX_DELTA_USD_PER_HOUR,
    ) -> None:
        self.mapping = mapping
        self.policy_set = policy_set
        self.backend = backend
        # `pool.connection`: yields a connection and commits when the block ends.
        self.connection = connection
        self.stopping = stopping
        self.clock = clock
        self.max_backoff_s = max_backoff_s
        self.limits = limits
        self.max_delta = max_delta_usd_per_hour

    def handle(self, raw: bytes | None) -> Handled:
        """How the event was handled. A record the database refuses (BadRecordError) is
        dead-lettered: retrying it cannot help and must not stop the events behind it."""
        try:
            return self._handle(raw)
        except BadRecordError as exc:
            log.warning("the database refused the event's values", extra={"error": str(exc)})
            return Handled("dead_letter", reason=f"refused by the database: {exc}"[:1000])

    def _handle(self, raw: bytes | None) -> Handled:
        planned = self._plan(raw)
        if isinstance(planned, Handled):
            return planned
        run, request = self._retrying(lambda: self._with_inventory_tags(*planned))
        run = self._retrying(lambda: self._as_recorded(run))
        status = self._retrying(lambda: self._precheck_and_create(run, request))
        if status.settled:
            outcome: Outcome = "precheck_denied" if status.created else "settled"
            return Handled(outcome, run.run_id, status.reason)
        try:
            submission = self._retrying(lambda: self.backend.submit(run))
        except PermanentSubmitError as exc:
            reason = str(exc)
            self._retrying(lambda: self._settle(run.run_id, "failed", reason))
            return Handled("dead_letter", run.run_id, reason)
        return self._after_submit(run, submission)

    def _plan(self, raw: bytes | None) -> Handled | tuple[WorkflowRun, PolicyRequest]:
        """The run an event asks for, or how it was handled when it asks for none."""
        try:
            event = decode(raw, self.limits)
        except InvalidEvent as exc:
            return Handled("dead_letter", reason=str(exc))
        if not event.detected:
            return Handled("resolved")
        rule = self.mapping.select(event.labels)
        if rule is None:
            return Handled("unmapped", reason=self.mapping.why_unmapped(event.labels))
        try:
            run = plan_run(event, rule, self.max_delta)
            return run, PolicyRequest.from_parameters(run.parameters)
        except (InvalidEvent, InvalidRequestError) as exc:
            return Handled("dead_letter", reason=str(exc))

    def _with_inventory_tags(
        self, run: WorkflowRun, request: PolicyRequest
    ) -> tuple[WorkflowRun, PolicyRequest]:
        """The run with all of the resource's tags from the inventory, not only the few that
        are alert labels: policies match tags such as cct.io/protect or legal-hold, which an
        alert never carries. A resource the inventory does not know keeps the label tags."""
        with self.connection() as conn:
            row = conn.execute(
                "select tags from resource_inventory where provider = %s and resource_id = %s",
                (run.parameters["provider"], run.parameters["resource-id"]),
            ).fetchone()
        if not row or not isinstance(row[0], dict) or not row[0]:
            return run, request
        tags = {str(k): str(v) for k, v in row[0].items()}
        labelled = json.loads(run.parameters.get("tags") or "{}")
        tags.update(labelled)
        parameters = dict(run.parameters)
        parameters["tags"], left_out = tags_parameter(
            tags, self.policy_set.tag_keys | frozenset(labelled)
        )
        if left_out:
            log.warning(
                "tags left out of the workflow to fit the parameter limit",
                extra={"run_id": run.run_id, "left_out": left_out, "tags": len(tags)},
            )
        enriched = replace(run, parameters=MappingProxyType(parameters))
        return enriched, PolicyRequest.from_parameters(enriched.parameters)

    def _as_recorded(self, run: WorkflowRun) -> WorkflowRun:
        """The run under the name its event's run was recorded with. Releases before the
        incident-based name named a run after its event id; after an upgrade, Alertmanager
        re-sends every firing group (at each repeat_interval, when an alert joins), and the
        new name of the same (event, playbook) would collide with its own row, which the
        store refuses as an error that stops the trigger. That run is this event's run."""
        with self.connection() as conn:
            row = conn.execute(
                "select run_id from optimization_runs where event_id = %s and playbook = %s",
                (run.event_id, run.playbook),
            ).fetchone()
        if row is None or row[0] == run.run_id:
            return run
        log.info(
            "event's run recorded under its earlier name",
            extra={"run_id": row[0], "name_now": run.run_id},
        )
        return replace(run, run_id=str(row[0]))

    def _after_submit(self, run: WorkflowRun, submission: Submission) -> Handled:
        if submission.outcome == "denied":
            self._retrying(lambda: self._settle(run.run_id, "denied", submission.detail))
            log.info("admission denied the workflow", extra={"run_id": run.run_id})
            return Handled("denied", run.run_id, submission.detail)
        failure = submission.failure
        if failure is not None:
            # The local backend's failed step already ran `record`; settling again makes sure
            # the row says failed even if that record step could not write.
            self._retrying(lambda: self._settle(run.run_id, "failed", failure))
        log.info(
            "workflow submitted",
            extra={
                "run_id": run.run_id,
                "outcome": submission.outcome,
                "detail": submission.detail,
            },
        )
        return Handled(submission.outcome, run.run_id, submission.detail)

    def _precheck_and_create(self, run: WorkflowRun, request: PolicyRequest) -> RunStatus:
        decision_id = f"{run.run_id}/precheck"
        with self.connection() as conn:
            known = get_decision(conn, decision_id)
            if known is not None:
                verdict, reasons = str(known["verdict"]), list(known["reasons"])
            else:
                now = self.clock()
                recent = {run.account_id: recent_actions(conn, run.account_id, now - RECENT_WINDOW)}
                result = evaluate(self.policy_set, request, now, recent)
                verdict, reasons = result.decision, list(result.reasons)
                record_decision(
                    conn,
                    DecisionRecord(
                        decision_id=decision_id,
                        source="precheck",
                        run_id=run.run_id,
                        verdict=verdict,
                        policy_ids=result.policy_ids,
                        reasons=reasons,
                        input=decision_input(
                            run.parameters, now=now.isoformat(), recent_actions=recent
                        ),
                        decided_at=now,
                        dry_run=run.dry_run,
                        account_id=run.account_id,
                    ),
                )
            return create_run(conn, new_run(run, self.backend.name, verdict, reasons))

    def _settle(self, run_id: str, state: str, reason: str | None) -> None:
        with self.connection() as conn:
            settle_run(conn, run_id, state, reason)

    def _retrying(self, call: Callable[[], T]) -> T:
        """Call until it stops failing retryably; wait longer each time, up to the maximum."""
        delay = 0.5
        while True:
            try:
                return call()
            except RetryableSubmitError as exc:
                log.warning("backend unavailable; retrying", extra={"error": str(exc)})
            except StoreError as exc:
                if not exc.retryable:
                    raise
                log.warning("database unavailable; retrying", extra={"error": str(exc)})
            if self.stopping.wait(delay):
                raise Stopping
            delay = min(delay * 2, self.max_backoff_s)
