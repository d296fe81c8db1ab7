"""The detector's incident rows survive a rotation of its Vault database user: a rotation
noticed at a cycle boundary costs nothing; a user revoked under it costs a failed write whose
rows wait for the next cycle, which connects with the DSN the file holds then."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from lambdas.common.pg import DsnSource
from lambdas.common.vm import VictoriaMetrics
from lambdas.detector.config import DetectionConfig
from lambdas.detector.service import Detector, DetectorSettings
from tests.detector.test_live import Account
from tests.pg_credentials.conftest import FakeVault, Vaults


@pytest.fixture
def vault(vaults: Vaults) -> FakeVault:
    return vaults("detector")


@pytest.fixture
def detector(
    vault: FakeVault, vm: VictoriaMetrics, vm_url: str, alertmanager_url: str, uid: str
) -> Iterator[tuple[Detector, Account]]:
    account = Account(vm, uid)
    settings = DetectorSettings(
        vm_url=vm_url,
        alertmanager_url=alertmanager_url,
        pg_dsn=DsnSource(path=vault.path, check_interval_s=0.05),
        selector=f'billing_account_id="{account.account}"',
        bootstrap_hours=0,
        # Re-post (and re-write) every open incident each cycle, so every cycle writes.
        resend_s=0.01,
        detection=DetectionConfig(resolve_after_ticks=2),
    )
    d = Detector(settings)
    yield d, account
    d.close()


def observed(pg_dsn: str, account: Account) -> list[float]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select observed_usd_per_hour::float8 from anomalies"
            " where dimensions->>'billing_account_id' = %s or dimensions->>'team' = %s"
            " order by level",
            (account.account, account.team),
        ).fetchall()
    return [float(r[0]) for r in rows]


def detector_users(pg_dsn: str) -> set[str]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select distinct usename from pg_stat_activity"
            " where application_name = 'cct-detector' and datname = current_database()"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_incident_rows_land_across_a_rotation(
    detector: tuple[Detector, Account], vault: FakeVault, pg_dsn: str
) -> None:
    d, account = detector
    first = vault.issue()
    account.write(100.0)
    # Series already there at a start are judged from their second value on.
    d.cycle(time.time())
    d.cycle(time.time())
    account.write(250.0)
    assert len(d.cycle(time.time())) == 3
    assert observed(pg_dsn, account) == [250.0] * 3
    assert first in detector_users(pg_dsn)

    # Rotated, noticed at the next cycle's first database call, then the old user revoked.
    second = vault.issue()
    time.sleep(0.1)
    account.write(260.0)
    d.cycle(time.time())
    vault.revoke(first)
    account.write(265.0)
    d.cycle(time.time())
    assert observed(pg_dsn, account) == [265.0] * 3
    assert d.metrics.errors.labels("postgres")._value.get() == 0
    assert detector_users(pg_dsn) == {second}

    # Revoked before a new user exists: the write fails and its rows wait.
    vault.revoke(second)
    account.write(270.0)
    d.cycle(time.time())
    assert len(d.pending_rows)
    assert d.metrics.errors.labels("postgres")._value.get() >= 1
    third = vault.issue()
    d.cycle(time.time())
    assert len(d.pending_rows) == 0
    assert observed(pg_dsn, account) == [270.0] * 3
    assert detector_users(pg_dsn) == {third}
