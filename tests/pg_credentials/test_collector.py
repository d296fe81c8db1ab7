"""The collector keeps ingesting through a rotation of its Vault database user: events posted
before, during and after the rotation land in resource_events exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from lambdas.collector.service import CollectorSettings, Processor, build_app
from lambdas.common.pg import DsnSource
from tests.ingest.conftest import TOKEN, load_event
from tests.pg_credentials.conftest import FakeVault, Vaults


@pytest.fixture
def private_vault(private_vaults: Vaults) -> FakeVault:
    return private_vaults("collector")


def state_change(n: int, account: str) -> dict[str, Any]:
    event = load_event("aws_ec2_state_change")
    event["id"] = str(uuid.uuid4())
    event["detail"]["instance-id"] = f"i-{n:017x}"
    event["detail"]["state"] = "running" if n % 2 else "stopped"
    return {"provider": "aws", "billing_account_id": account, "event": event}


class Shell:
    """The collector's HTTP shell, posting the way Fluent Bit does: a refused batch (503) is
    sent again until it is accepted."""

    def __init__(self, processor: Processor, client: TestClient[Any, Any]) -> None:
        self.processor = processor
        self.client = client
        self.refused = 0

    async def deliver(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        for _ in range(50):
            resp = await self.client.post(
                "/ingest",
                data=json.dumps(records).encode(),
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            body: dict[str, Any] = await resp.json()
            if resp.status == 200:
                return body
            assert resp.status == 503, body
            assert body["error"] == "store_unavailable"
            self.refused += 1
            await asyncio.sleep(0.05)
        raise AssertionError("the collector never recovered")


async def start(vault: FakeVault, vm_url: str, check_interval_s: float) -> Shell:
    settings = CollectorSettings(
        pg_dsn=DsnSource(path=vault.path, check_interval_s=check_interval_s),
        vm_url=vm_url,
        token=TOKEN,
        writers=2,
    )
    processor = Processor(settings)
    await processor.start(background=False)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(processor)))
    await client.start_server()
    return Shell(processor, client)


@pytest.fixture
async def shells() -> AsyncIterator[list[Shell]]:
    started: list[Shell] = []
    yield started
    for shell in started:
        await shell.client.close()
        await shell.processor.stop()


def stored(dsn: str, account: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*), count(distinct event_id) from resource_events"
            " where billing_account_id = %s",
            (account,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def collector_users(vault: FakeVault) -> set[str]:
    with psycopg.connect(vault.owner_dsn) as conn:
        rows = conn.execute(
            "select distinct usename from pg_stat_activity where application_name = 'cct-collector'"
            " and datname = current_database()"
        ).fetchall()
    return {str(r[0]) for r in rows}


async def test_rotation_is_picked_up_before_the_old_user_is_revoked(
    private_vault: FakeVault, private_db: str, vm_url: str, uid: str, shells: list[Shell]
) -> None:
    account = f"acct-{uid}"
    first = private_vault.issue()
    shell = await start(private_vault, vm_url, check_interval_s=0.05)
    shells.append(shell)
    sent = 0

    async def stream(batches: int) -> None:
        nonlocal sent
        for _ in range(batches):
            records = [state_change(sent + i, account) for i in range(20)]
            sent += len(records)
            body = await shell.deliver(records)
            assert body["accepted"] == len(records)

    await stream(5)  # before
    assert collector_users(private_vault) == {first}
    second = private_vault.issue()
    during = asyncio.create_task(stream(20))
    await asyncio.sleep(0.2)  # every writer has passed a batch boundary since
    await shell.processor.refresh()  # the reader's boundary
    private_vault.revoke(first)
    await during
    await stream(5)  # after
    assert collector_users(private_vault) == {second}
    # Switched before the revocation: not one batch was refused.
    assert shell.refused == 0
    assert stored(private_db, account) == (sent, sent)


async def test_a_user_revoked_under_the_collector_costs_a_retry_never_an_event(
    private_vault: FakeVault, private_db: str, vm_url: str, uid: str, shells: list[Shell]
) -> None:
    """The rotation is not noticed in time (an hour between checks): the revoked user's
    sessions end, the batch in flight fails with 503, the writer reconnects with the DSN it
    reads now, and Fluent Bit's retry is accepted, its committed parts as duplicates."""
    account = f"acct-{uid}"
    first = private_vault.issue()
    shell = await start(private_vault, vm_url, check_interval_s=3600)
    shells.append(shell)
    records = [state_change(i, account) for i in range(40)]
    assert (await shell.deliver(records[:10]))["accepted"] == 10
    second = private_vault.issue()
    private_vault.revoke(first)
    body = await shell.deliver(records[10:30])
    assert body["accepted"] + body["duplicates"] == 20
    assert shell.refused >= 1
    await shell.processor.refresh()  # the reader reconnects on its next round
    assert (await shell.deliver(records[30:]))["accepted"] == 10
    # A redelivery of everything adds nothing.
    again = await shell.deliver(records)
    assert (again["accepted"], again["duplicates"]) == (0, 40)
    assert collector_users(private_vault) == {second}
    assert stored(private_db, account) == (40, 40)


async def test_container_deletions_are_kept_and_read_back_as_the_collector_s_user(
    private_vault: FakeVault, private_db: str, vm_url: str, uid: str, shells: list[Shell]
) -> None:
    """The tombstones' table under the collector's least privilege: a resource group's
    deletion recorded, replaced by a newer one (the upsert), read back at start, and a VM
    write dated before it applied as the VM's deletion."""
    account = f"acct-{uid}"
    group = f"/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg-{uid}"
    private_vault.issue()
    shell = await start(private_vault, vm_url, check_interval_s=3600)
    shells.append(shell)

    def azure(name: str, event_id: str, when: str, uri: str) -> dict[str, Any]:
        event = load_event(name)
        event["subject"] = event["data"]["resourceUri"] = uri
        event["id"], event["eventTime"] = event_id, when
        return {"provider": "azure", "billing_account_id": account, "event": event}

    for n, when in enumerate(("2026-11-27T11:00:00Z", "2026-11-27T12:00:00Z")):
        body = await shell.deliver([azure("azure_vm_delete", f"rg{n}-{uid}", when, group)])
        assert body["rejected"] == [], body
    shell = await start(private_vault, vm_url, check_interval_s=3600)  # reads the table back
    shells.append(shell)
    vm = f"{group}/providers/Microsoft.Compute/virtualMachines/vm-1"
    write = azure("azure_vm_write", f"w-{uid}", "2026-11-27T11:30:00Z", vm)
    write["resource"] = load_event("arm_vm")
    assert (await shell.deliver([write]))["accepted"] == 1
    with psycopg.connect(private_db) as conn:
        kept = conn.execute(
            "select event_id from container_deletions where container_id = %s", (group.lower(),)
        ).fetchall()
        state = conn.execute(
            "select state from resource_inventory where resource_id = %s", (vm.lower(),)
        ).fetchall()
    assert kept == [(f"azure:rg1-{uid}",)]
    assert state == [("deleted",)]
