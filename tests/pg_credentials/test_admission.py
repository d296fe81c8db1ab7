"""The admission webhook's decision writer keeps every decision through a rotation of its
Vault database user: a batch stays with the writer until it is committed."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from lambdas.admission.metrics import AdmissionMetrics
from lambdas.admission.recorder import DecisionRecorder
from lambdas.common.pg import DsnSource
from lambdas.store.grants import group_role
from tests.admission.conftest import wait_for
from tests.admission.test_decisions_store import record
from tests.pg_credentials.conftest import FakeVault, Vaults


@pytest.fixture
def vault(vaults: Vaults) -> FakeVault:
    return vaults("admission")


def stored(pg_dsn: str, uid: str) -> tuple[int, int]:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "select count(*), count(distinct decision_id) from policy_decisions"
            " where decision_id like %s",
            (f"{uid}-%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def writer_users(pg_dsn: str) -> set[str]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select distinct usename from pg_stat_activity"
            " where application_name = 'cct-admission' and datname = current_database()"
        ).fetchall()
    return {str(r[0]) for r in rows}


def dropped_total(metrics: AdmissionMetrics) -> float:
    return sum(
        s.value
        for family in metrics.decisions_dropped.collect()
        for s in family.samples
        if s.name.endswith("_total")
    )


def test_decisions_land_exactly_once_across_rotations(
    vault: FakeVault, pg_dsn: str, uid: str
) -> None:
    metrics = AdmissionMetrics()
    recorded = metrics.decisions_recorded
    first = vault.issue()
    recorder = DecisionRecorder(
        DsnSource(path=vault.path, check_interval_s=0.05), metrics, queue_size=1000
    )
    recorder.start()
    sent = 0

    def submit(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            assert recorder.submit(record(f"{uid}-{sent}"))
            sent += 1

    try:
        submit(10)  # before
        wait_for(lambda: recorded._value.get() == sent, what="the first decisions")
        assert writer_users(pg_dsn) == {first}

        second = vault.issue()  # rotated: the next batch switches first
        time.sleep(0.1)
        submit(10)
        wait_for(lambda: recorded._value.get() == sent, what="decisions after the rotation")
        vault.revoke(first)
        submit(10)
        wait_for(lambda: recorded._value.get() == sent, what="decisions after the revocation")
        assert metrics.decision_write_errors._value.get() == 0
        assert writer_users(pg_dsn) == {second}

        # Revoked with no new user yet: the batch waits, retried with backoff.
        vault.revoke(second)
        submit(10)
        wait_for(lambda: metrics.decision_write_errors._value.get() >= 1, what="a failure")
        third = vault.issue()
        wait_for(lambda: recorded._value.get() == sent, what="the held batch")
        assert writer_users(pg_dsn) == {third}
    finally:
        recorder.close()
    assert dropped_total(metrics) == 0
    assert stored(pg_dsn, uid) == (sent, sent)


def test_a_missing_grant_holds_the_decisions_until_it_is_back(
    private_vaults: Vaults, private_db: str, uid: str
) -> None:
    """Review finding: "permission denied" is not the records' fault, yet the writer dropped
    every decision one by one as "rejected" while the grant was missing."""
    vault = private_vaults("admission")
    vault.issue()
    table = sql.SQL("policy_decisions")
    role = sql.Identifier(group_role("admission"))
    with psycopg.connect(private_db, autocommit=True) as conn:
        conn.execute(sql.SQL("revoke insert on {} from {}").format(table, role))
    metrics = AdmissionMetrics()
    recorder = DecisionRecorder(
        DsnSource(path=vault.path, check_interval_s=0.05), metrics, queue_size=100
    )
    recorder.start()
    try:
        for i in range(5):
            assert recorder.submit(record(f"{uid}-{i}"))
        wait_for(lambda: metrics.decision_write_errors._value.get() >= 2, what="refusals")
        assert recorder.queue_depth() == 5
        with psycopg.connect(private_db, autocommit=True) as conn:
            conn.execute(sql.SQL("grant insert on {} to {}").format(table, role))
        wait_for(
            lambda: metrics.decisions_recorded._value.get() == 5,
            what="the held decisions",
            timeout=15,
        )
    finally:
        recorder.close()
    assert dropped_total(metrics) == 0
    assert stored(private_db, uid) == (5, 5)
