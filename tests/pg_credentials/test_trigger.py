"""The trigger keeps creating exactly one run per event through a rotation of its Vault
database user: the pool switches users at the checkout after the file changes, and an event
whose database call fails is retried (its offset is committed only after PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lambdas.common.pg import DsnSource
from lambdas.policy import load_policy_set
from lambdas.store.db import PoolConnections, open_pool
from lambdas.trigger.argo import ArgoBackend, KubeSettings, api_client
from lambdas.trigger.mapping import load_mapping
from lambdas.trigger.processor import Processor
from tests.pg_credentials.conftest import FakeVault, Vaults
from tests.support.services import ROOT
from tests.trigger.events import event_bytes
from tests.trigger.fake_kube import FakeKube

TOKEN = "kube-token"


@pytest.fixture
def vault(vaults: Vaults) -> FakeVault:
    return vaults("trigger")


def _deny_prod(workflow: dict[str, Any]) -> str | None:
    """The admission webhook refuses production workflows: their runs are settled as denied."""
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    return "production needs a change request" if params["environment"] == "prod" else None


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(TOKEN, deny=_deny_prod) as fake:
        yield fake


def stored(pg_dsn: str, uid: str) -> tuple[int, int]:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "select count(*), count(*) filter (where d.decision_id is not null)"
            " from optimization_runs r"
            " left join policy_decisions d on d.decision_id = r.run_id || '/precheck'"
            " where r.parameters->>'resource-id' like %s",
            (f"i-{uid}%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def trigger_users(pg_dsn: str) -> set[str]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select distinct usename from pg_stat_activity"
            " where application_name = 'cct-trigger' and datname = current_database()"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_every_event_makes_one_run_across_rotations(
    vault: FakeVault, kube: FakeKube, pg_dsn: str, uid: str, tmp_path: Path
) -> None:
    first = vault.issue()
    source = DsnSource(path=vault.path, check_interval_s=0.05)
    pool = open_pool(source, application_name="cct-trigger", max_size=2)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    processor = Processor(
        load_mapping(ROOT / "policies" / "playbooks.yaml"),
        load_policy_set(ROOT / "policies" / "optimization"),
        ArgoBackend(
            api_client(KubeSettings("cct-system", api_url=kube.url, token_file=str(token))),
            "cct-system",
            5.0,
        ),
        connection=PoolConnections(pool, source).connection,
        stopping=threading.Event(),
        clock=lambda: datetime.now(UTC),
        max_backoff_s=0.5,
    )

    def handle(numbers: range) -> list[str]:
        return [processor.handle(event_bytes(uid, n)).outcome for n in numbers]

    try:
        assert handle(range(5)) == ["created"] * 5
        assert trigger_users(pg_dsn) == {first}

        second = vault.issue()
        time.sleep(0.1)
        assert handle(range(5, 10)) == ["created"] * 5
        vault.revoke(first)
        assert handle(range(10, 15)) == ["created"] * 5
        denied = processor.handle(event_bytes(uid, 99, env="prod"))
        assert denied.outcome == "denied"  # settled by an update, as the new user
        assert trigger_users(pg_dsn) == {second}

        # Revoked with no new user yet: the event's database call is retried, not skipped.
        vault.revoke(second)
        with ThreadPoolExecutor(1) as pool_thread:
            pending = pool_thread.submit(handle, range(15, 16))
            time.sleep(0.5)
            assert not pending.done()
            third = vault.issue()
            assert pending.result(timeout=30) == ["created"]
        # Kafka redelivers an event whose offset was not committed: nothing new.
        assert handle(range(3, 4)) == ["already_exists"]
        assert trigger_users(pg_dsn) == {third}
    finally:
        pool.close()
    assert sorted(kube.created_names()) == sorted(set(kube.created_names()))
    assert len(kube.created_names()) == 16
    assert stored(pg_dsn, uid) == (17, 17)
