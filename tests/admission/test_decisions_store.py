"""lambdas.store.decisions against the real PostgreSQL: idempotent writes, the recent-action
query the blast-radius count uses, and the recorder's batching around bad rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg

from lambdas.admission.metrics import AdmissionMetrics
from lambdas.admission.recorder import DecisionRecorder
from lambdas.store.decisions import (
    DecisionRecord,
    admitted_since,
    get_decision,
    record_decision,
    record_decisions,
)
from tests.admission.conftest import wait_for


def record(decision_id: str, **overrides: object) -> DecisionRecord:
    values: dict[str, object] = {
        "decision_id": decision_id,
        "source": "admission",
        "verdict": "allow",
        "policy_ids": (),
        "reasons": (),
        "input": {"parameters": {"provider": "aws"}},
        "decided_at": datetime.now(UTC),
        "run_id": "cct-rightsize-compute-0123456789ab",
        "allowed": True,
        "dry_run": False,
        "account_id": "111",
    }
    values.update(overrides)
    return DecisionRecord(**values)  # type: ignore[arg-type]


def sample(metrics: AdmissionMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_record_is_idempotent_on_decision_id(pg_dsn: str, uid: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert record_decision(conn, record(uid, verdict="deny", reasons=("no",))) is True
        assert record_decision(conn, record(uid, verdict="allow")) is False
        row = get_decision(conn, uid)
    assert row is not None
    assert (row["verdict"], row["reasons"], row["source"]) == ("deny", ["no"], "admission")


def test_precheck_rows_need_no_admission_columns(pg_dsn: str, uid: str) -> None:
    precheck = DecisionRecord(
        decision_id=f"cct-x-{uid}/precheck",
        source="precheck",
        verdict="require-approval",
        policy_ids=("production-approval/production",),
        reasons=("prod needs approval",),
        input={},
        decided_at=datetime.now(UTC),
        run_id=f"cct-x-{uid}",
    )
    with psycopg.connect(pg_dsn) as conn:
        assert record_decisions(conn, [precheck]) == 1
        row = get_decision(conn, precheck.decision_id)
    assert row is not None
    assert (row["allowed"], row["dry_run"], row["account_id"]) == (None, None, None)


def test_admitted_since_counts_only_admitted_real_actions(pg_dsn: str, uid: str) -> None:
    now = datetime.now(UTC)
    account = f"acct-{uid}"
    rows = [
        record(f"{uid}-ok", account_id=account),
        record(f"{uid}-old", account_id=account, decided_at=now - timedelta(hours=2)),
        record(f"{uid}-denied", account_id=account, allowed=False, verdict="deny"),
        record(f"{uid}-dry", account_id=account, dry_run=True),
        record(f"{uid}-pre", account_id=account, source="precheck"),
    ]
    with psycopg.connect(pg_dsn) as conn:
        assert record_decisions(conn, rows) == 5
        found = [r for r in admitted_since(conn, now - timedelta(hours=1)) if r[1] == account]
    assert [r[0] for r in found] == [f"{uid}-ok"]


def test_recorder_keeps_good_rows_when_one_is_rejected(pg_dsn: str, uid: str) -> None:
    metrics = AdmissionMetrics()
    recorder = DecisionRecorder(pg_dsn, metrics, queue_size=100)
    good = [record(f"{uid}-{i}") for i in range(5)]
    bad = record(f"{uid}-bad", verdict="maybe")  # violates the verdict check constraint
    for rec in [*good[:2], bad, *good[2:]]:
        assert recorder.submit(rec)
    recorder.start()
    try:
        wait_for(
            lambda: (
                metrics.decisions_recorded._value.get() == 5
                and metrics.decisions_dropped.labels(reason="rejected")._value.get() == 1
            ),
            what="the batch to be written",
        )
    finally:
        recorder.close()
    with psycopg.connect(pg_dsn) as conn:
        assert all(get_decision(conn, r.decision_id) for r in good)
        assert get_decision(conn, bad.decision_id) is None


def test_a_full_queue_drops_and_counts_instead_of_blocking(pg_dsn: str, uid: str) -> None:
    metrics = AdmissionMetrics()
    recorder = DecisionRecorder(pg_dsn, metrics, queue_size=2)  # not started: nothing drains
    assert recorder.submit(record(f"{uid}-1"))
    assert recorder.submit(record(f"{uid}-2"))
    assert recorder.submit(record(f"{uid}-3")) is False
    assert sample(metrics, "cct_admission_decisions_dropped_total", reason="queue_full") == 1


def test_a_second_create_of_the_same_name_does_not_decide_for_the_running_workflow(
    pg_dsn: str, uid: str
) -> None:
    """The webhook judges (and records) a CREATE before the API server refuses a name that
    exists: a second Workflow of the same name with other parameters must not replace the
    running one's require-approval with its own allow. Steps read their own workflow's."""
    from lambdas.admission.review import decide
    from lambdas.store.actions import latest_verdict
    from tests.admission.support import params, review, workflow
    from tests.admission.test_review import context

    name = f"cct-rightsize-compute-{uid[:12]}"
    outcomes = []
    for n, environment in enumerate(("prod", "dev")):
        wf = workflow(name, params(environment=environment))
        wf["metadata"]["uid"] = f"{uid}-uid-{n}"
        outcomes.append(decide(review(wf, uid=f"{uid}-review-{n}"), context()))
    first, second = (o.record for o in outcomes)
    assert first is not None and second is not None
    assert (first.verdict, second.verdict) == ("require-approval", "allow")
    later = second.decided_at + timedelta(seconds=1)  # the duplicate came later
    with psycopg.connect(pg_dsn) as conn:
        record_decisions(conn, [first, replace(second, decided_at=later)])
        mine = latest_verdict(conn, name, f"{uid}-uid-0")
        newest = latest_verdict(conn, name)
    assert mine is not None and mine.verdict == "require-approval"
    assert newest is not None and newest.verdict == "allow"  # what it read before
    # A row from a webhook that did not record uids yet (an upgrade) still counts.
    old_style = replace(
        second,
        decision_id=f"{uid}-review-old",
        verdict="deny",
        input={k: v for k, v in second.input.items() if k != "workflow_uid"},
        decided_at=later + timedelta(seconds=1),
    )
    with psycopg.connect(pg_dsn) as conn:
        record_decisions(conn, [old_style])
        mine = latest_verdict(conn, name, f"{uid}-uid-0")
    assert mine is not None and mine.verdict == "deny"
