"""The collector pricing what used to be unpriced, on the real PostgreSQL (price catalog loaded
from the real-format fixtures by `priced_db`) and VictoriaMetrics: EBS provisioned IOPS and
throughput, RDS storage, GCP shared-core types and licensed operating systems. Whatever is
still unknown stays unpriced and counted, never $0."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from lambdas.common.vm import VictoriaMetrics
from tests.ingest.conftest import Collector, collector_settings, record, running_collector
from tests.ingest.test_collector import wait_for

Event = Callable[[str], dict[str, Any]]
H = 730.0  # hours per month, the providers' convention for monthly prices
E2_CORE, E2_RAM = 0.02181159, 0.00292353


def rates(dsn: str) -> dict[str, tuple[float | None, bool]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select resource_id, usd_per_hour::float8, priced from resource_inventory"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def rows_of(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def priced_at(expected: float) -> tuple[Any, bool]:
    # resource_inventory keeps 6 decimals
    return (pytest.approx(expected, abs=1e-6), True)


async def post(collector: Collector, batch: list[dict[str, Any]]) -> None:
    status, body = await collector.post(batch)
    assert status == 200 and body["rejected"] == [], body
    assert body["accepted"] == len(batch), body


async def test_ebs_volumes_are_priced_with_provisioned_iops_and_throughput(
    collector: Collector, priced_db: str, event: Event, uid: str
) -> None:
    acct = f"acct-{uid}"
    modify = event("aws_modify_volume")
    modify["detail"]["requestParameters"]["ModifyVolumeRequest"].update(Iops=6000, Throughput=250)
    target = modify["detail"]["responseElements"]["ModifyVolumeResponse"]["volumeModification"]
    target.update(targetIops=6000, targetThroughput=250)
    await post(
        collector,
        [
            record("aws", event("aws_create_volume"), acct),
            record("aws", event("aws_create_volume_io2"), acct),
        ],
    )
    got = rates(priced_db)
    # gp3 at its included 3,000 IOPS / 125 MiB/s: storage only
    assert got["vol-0123456789abcdef0"] == priced_at(100 * 0.08 / H)
    # io2 40,000 IOPS: the first 32,000 at the tier-1 rate, the rest at tier 2
    assert got["vol-0fedcba9876543210"] == priced_at(
        (500 * 0.125 + 32000 * 0.065 + 8000 * 0.0455) / H
    )
    await post(collector, [record("aws", modify, acct)])
    got = rates(priced_db)
    assert got["vol-0123456789abcdef0"] == priced_at(
        (200 * 0.08 + (6000 - 3000) * 0.005 + (250 - 125) * 0.04) / H
    )


async def test_rds_instances_are_priced_with_their_storage(
    collector: Collector, priced_db: str, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    acct = f"acct-{uid}"
    await post(
        collector,
        [
            record("aws", event("aws_create_db_instance"), acct),
            record("aws", event("aws_create_db_instance_io1"), acct),
        ],
    )
    orders = "arn:aws:rds:us-east-1:111122223333:db:orders-db"
    ledger = "arn:aws:rds:us-east-1:111122223333:db:ledger-db"
    got = rates(priced_db)
    assert got[orders] == priced_at(0.178 + 20 * 0.115 / H)  # gp3 20 GiB at its baseline
    assert got[ledger] == priced_at(0.178 + (100 * 0.125 + 3000 * 0.10) / H)  # io1 + IOPS
    # A class change keeps the storage the inventory knows from CreateDBInstance.
    await post(collector, [record("aws", event("aws_modify_db_instance"), acct)])
    assert rates(priced_db)[orders] == priced_at(0.356 + 20 * 0.115 / H)
    # ... and the group's run-rate in VictoriaMetrics is the sum of both, storage included.
    await wait_for(
        vm,
        f'sum(cct_cost_rate_rollup_usd_per_hour{{billing_account_id="{acct}",basis="list"}})',
        round(0.356 + 20 * 0.115 / H, 6) + round(0.178 + (100 * 0.125 + 3000 * 0.10) / H, 6),
    )


async def test_licensed_operating_systems_and_gcp_shared_core(
    collector: Collector, priced_db: str, event: Event, uid: str
) -> None:
    acct = f"acct-{uid}"
    micro, small = event("gcp_instances_insert"), event("gcp_instances_insert")
    for ev, name, machine in ((micro, "micro-1", "e2-micro"), (small, "legacy-1", "f1-micro")):
        payload = ev["protoPayload"]
        payload["resourceName"] = f"projects/shop-prod-123/zones/us-central1-a/instances/{name}"
        payload["request"]["machineType"] = f"zones/us-central1-a/machineTypes/{machine}"
        ev["insertId"] = f"-{name}"
    await post(
        collector,
        [
            record("aws", event("aws_run_instances"), acct),
            record("aws", event("aws_run_instances_windows"), acct),
            record("azure", event("azure_vm_write"), acct, resource=event("arm_vm")),
            record(
                "azure",
                event("azure_vm_write_windows"),
                acct,
                resource=event("arm_vm_windows"),
            ),
            record("gcp", event("gcp_instances_insert_windows"), acct),
            record("gcp", micro, acct),
            record("gcp", small, acct),
        ],
    )
    got = rates(priced_db)
    vm_id = (
        "/subscriptions/00000000-1111-2222-3333-444444444444/resourcegroups/rg-web/providers/"
        "microsoft.compute/virtualmachines/{}"
    )
    gce = "//compute.googleapis.com/projects/shop-prod-123/zones/us-central1-a/instances/{}"
    assert got["i-0aaa1111bbbb2222c"] == priced_at(0.096)  # Linux
    assert got["i-0bbb2222cccc3333d"] == priced_at(0.188)  # Windows: RunInstances:0002
    assert got[vm_id.format("web-1")] == priced_at(0.096)
    assert got[vm_id.format("win-1")] == priced_at(0.188)
    # Windows Server image: e2-standard-4 plus the licence per vCPU
    assert got[gce.format("win-1")] == priced_at(4 * E2_CORE + 16 * E2_RAM + 4 * 0.046)
    assert got[gce.format("micro-1")] == priced_at(0.25 * E2_CORE + 1 * E2_RAM)
    assert got[gce.format("legacy-1")] == priced_at(0.0076)


async def test_what_is_still_unknown_stays_unpriced_and_counted(
    collector: Collector, priced_db: str, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    acct = f"acct-{uid}"
    rhel = event("aws_run_instances")
    item = rhel["detail"]["responseElements"]["instancesSet"]["items"][0]
    item["platformDetails"] = "Red Hat Enterprise Linux"  # no RHEL price in the catalog
    magnetic = event("aws_create_db_instance")
    magnetic["detail"]["requestParameters"]["storageType"] = "standard"
    magnetic["detail"]["responseElements"]["storageType"] = "standard"
    sles = event("gcp_instances_insert")
    sles["protoPayload"]["request"]["disks"] = [
        {
            "boot": True,
            "initializeParams": {"sourceImage": "projects/suse-cloud/global/images/sles-15"},
        }
    ]
    await post(
        collector,
        [record("aws", rhel, acct), record("aws", magnetic, acct), record("gcp", sles, acct)],
    )
    got = rates(priced_db)
    assert sorted(got.values(), key=str) == [(None, False)] * 3
    await wait_for(vm, f'sum(cct_cost_rate_unpriced_resources{{billing_account_id="{acct}"}})', 3.0)
    metrics = await (await collector.client.get("/metrics")).text()
    assert 'cct_collector_unpriced_events_total{provider="aws"} 2.0' in metrics
    assert 'cct_collector_unpriced_events_total{provider="gcp"} 1.0' in metrics


CLOUD_SQL = "//cloudsql.googleapis.com/projects/shop-prod-123/instances/orders-db"
AZURE_DB = (
    "/subscriptions/00000000-1111-2222-3333-444444444444/resourcegroups/rg-data/providers/"
    "microsoft.sql/servers/sql-shop/databases/orders"
)
PG_CORE, PG_RAM, PG_SSD = 0.0413, 0.007, 0.17  # Cloud SQL for PostgreSQL, zonal, Americas


async def test_a_cloud_sql_instance_is_priced_within_seconds_of_each_change(
    collector: Collector, priced_db: str, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    """Created, resized, stopped and deleted through its audit entries (the real normaliser,
    prices from `cct prices load` of the Cloud Billing Catalog fixture): its tier's vCPUs and
    memory at its engine's prices plus its data disk, and only the disk while stopped."""
    acct = f"acct-{uid}"
    disk = 100 * PG_SSD / H
    await post(collector, [record("gcp", event("gcp_cloudsql_create"), acct)])
    assert rates(priced_db)[CLOUD_SQL] == priced_at(4 * PG_CORE + 16 * PG_RAM + disk)
    await post(collector, [record("gcp", event("gcp_cloudsql_update"), acct)])
    resized = 8 * PG_CORE + 32 * PG_RAM + disk
    assert rates(priced_db)[CLOUD_SQL] == priced_at(resized)
    await wait_for(
        vm,
        f'sum(cct_cost_rate_rollup_usd_per_hour{{billing_account_id="{acct}",basis="list",'
        'team="data"})',
        round(resized, 6),
    )
    # A PATCH of labels merges them; null removes one (gcloud --remove-labels).
    relabel = event("gcp_cloudsql_update")
    relabel["protoPayload"]["request"]["body"]["settings"] = {
        "userLabels": {"team": "web", "env": None}
    }
    relabel["insertId"], relabel["timestamp"] = "-sqllabels01", "2026-11-27T10:15:00Z"
    await post(collector, [record("gcp", relabel, acct)])
    [(tags,)] = rows_of(
        priced_db, "select tags from resource_inventory where resource_id = %s", CLOUD_SQL
    )
    assert tags == {"team": "web"}
    await wait_for(
        vm,
        f'sum(cct_cost_rate_rollup_usd_per_hour{{billing_account_id="{acct}",basis="list",'
        'team="web"})',
        round(resized, 6),
    )
    stop = event("gcp_cloudsql_update")
    stop["protoPayload"]["request"]["body"]["settings"] = {"activationPolicy": "NEVER"}
    stop["insertId"], stop["timestamp"] = "-sqlstop01", "2026-11-27T10:30:00Z"
    await post(collector, [record("gcp", stop, acct)])
    assert rates(priced_db)[CLOUD_SQL] == priced_at(disk)
    await post(collector, [record("gcp", event("gcp_cloudsql_delete"), acct)])
    assert rates(priced_db)[CLOUD_SQL] == priced_at(0.0)


async def test_cloud_sql_tiers_and_engines_without_a_price_stay_unpriced(
    collector: Collector, priced_db: str, event: Event, uid: str
) -> None:
    """SQL Server (its licence is not priced), a legacy `db-n1-*` tier: unpriced and counted,
    never $0 or a price without their licence."""
    acct = f"acct-{uid}"
    batch = []
    for n, (version, tier) in enumerate(
        [("SQLSERVER_2019_STANDARD", "db-custom-4-16384"), ("POSTGRES_15", "db-n1-standard-2")]
    ):
        ev = event("gcp_cloudsql_create")
        body = ev["protoPayload"]["request"]["body"]
        body["databaseVersion"], body["settings"]["tier"] = version, tier
        ev["protoPayload"]["resourceName"] = f"projects/shop-prod-123/instances/db-{n}"
        ev["insertId"] = f"-db-{n}"
        batch.append(record("gcp", ev, acct))
    await post(collector, batch)
    got = rates(priced_db)
    for n in range(2):
        assert got[CLOUD_SQL.replace("orders-db", f"db-{n}")] == (None, False)


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        # GP_Gen5_4: compute, the SQL Server licence per vCore, 32 GB of data storage.
        ({}, 0.6088 + 4 * 0.1 + 32 * 0.115 / H),
        # Azure Hybrid Benefit: the licence is the customer's own.
        ({"licenseType": "BasePrice"}, 0.6088 + 32 * 0.115 / H),
        # A resize asked for: priced at its target at once.
        ({"requestedServiceObjectiveName": "GP_Gen5_2"}, 0.3044 + 2 * 0.1 + 32 * 0.115 / H),
        # Zone-redundant General Purpose pays a meter not read; serverless and DTU sizes,
        # an elastic pool's database (billed through its pool): no price.
        ({"zoneRedundant": True}, None),
        ({"currentServiceObjectiveName": "GP_S_Gen5_2"}, None),
        ({"currentServiceObjectiveName": "S0", "requestedServiceObjectiveName": "S0"}, None),
        ({"currentServiceObjectiveName": "ElasticPool"}, None),
    ],
)
async def test_an_azure_sql_database_is_priced_from_its_arm_resource(
    collector: Collector,
    priced_db: str,
    event: Event,
    uid: str,
    *,
    props: dict[str, Any],
    expected: float | None,
) -> None:
    acct = f"acct-{uid}"
    arm = event("arm_sql_database")
    arm["properties"].update(props)
    if "currentServiceObjectiveName" in props and "requestedServiceObjectiveName" not in props:
        arm["properties"]["requestedServiceObjectiveName"] = props["currentServiceObjectiveName"]
    await post(collector, [record("azure", event("azure_sql_database_write"), acct, resource=arm)])
    got = rates(priced_db)[AZURE_DB]
    assert got == ((None, False) if expected is None else priced_at(expected))


async def test_deleting_a_resource_group_or_a_server_deletes_what_it_holds(
    collector: Collector, priced_db: str, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    """Event Grid raises one deletion for a resource group (or a SQL logical server), none for
    the VMs, disks and databases that go with it: they stayed priced for good. Now each live
    resource under the container is deleted, once (a redelivery finds nothing left), and
    nothing outside it, even in a group whose name starts the same."""
    acct = f"acct-{uid}"
    group = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg-web"
    twin = event("azure_vm_write")  # the same VM name in rg-web2
    twin["id"] = f"twin-{uid}"
    twin["subject"] = twin["subject"].replace("/rg-web/", "/rg-web2/")
    twin["data"]["resourceUri"] = twin["subject"]
    await post(
        collector,
        [
            record("azure", event("azure_vm_write"), acct, resource=event("arm_vm")),
            record("azure", event("azure_disk_write"), acct, resource=event("arm_disk")),
            record("azure", twin, acct, resource=event("arm_vm")),
            record(
                "azure",
                event("azure_sql_database_write"),
                acct,
                resource=event("arm_sql_database"),
            ),
        ],
    )
    before = rates(priced_db)
    in_group = [r for r in before if r.startswith(group.lower() + "/")]
    assert len(in_group) == 2 and all(before[r][0] for r in in_group)
    server = AZURE_DB.split("/databases/", maxsplit=1)[0]

    def deletion(uri: str, event_id: str) -> dict[str, Any]:
        ev = event("azure_vm_delete")
        ev["data"]["resourceUri"] = ev["subject"] = uri
        ev["id"], ev["eventTime"] = event_id, "2026-11-27T12:00:00Z"
        return record("azure", ev, acct)

    status, body = await collector.post([deletion(server, f"srv-{uid}")])
    assert status == 200 and body["accepted"] == 1, body
    after = rates(priced_db)
    assert after[AZURE_DB] == priced_at(0.0)
    assert all(after[r] == before[r] for r in in_group)  # another container's
    status, body = await collector.post([deletion(group, f"rg-{uid}")])
    assert status == 200 and body["accepted"] == 2, body
    after = rates(priced_db)
    assert all(after[r] == priced_at(0.0) for r in in_group)
    twin_id = twin["subject"].lower()
    assert after[twin_id] == before[twin_id] and before[twin_id][0]
    # Event Grid delivers at least once: the redelivery finds nothing left to delete.
    status, body = await collector.post([deletion(group, f"rg-{uid}")])
    assert status == 200 and body["accepted"] == 0 and body["rejected"] == [], body
    states = dict(
        rows_of(
            priced_db,
            "select resource_id, state from resource_inventory where resource_id like %s",
            group.lower() + "/%",
        )
    )
    assert set(states.values()) == {"deleted"} and len(states) == 2
    await wait_for(
        vm,
        f'sum(cct_cost_rate_rollup_usd_per_hour{{billing_account_id="{acct}",basis="list"}})',
        float(before[twin_id][0] or 0.0),
    )


async def test_a_write_dated_before_its_groups_deletion_is_a_deletion_even_after_a_restart(
    priced_db: str, vm_url: str, event: Event, uid: str
) -> None:
    """Event Grid delivers in no order: a VM's write can arrive after its resource group's
    deletion, which found nothing to delete then. It stayed priced for good (review of the
    container deletions). Now the deletion is kept (container_deletions): a write dated
    before it is applied as the VM's deletion, also by a collector started later; a write
    dated after it is a VM of a group created again, priced."""
    acct = f"acct-{uid}"
    sub = "/subscriptions/00000000-1111-2222-3333-444444444444"
    group = f"{sub}/resourceGroups/rg-gone-{uid}"

    def vm_write(name: str, event_id: str, when: str) -> dict[str, Any]:
        ev = event("azure_vm_write")
        ev["subject"] = ev["data"]["resourceUri"] = (
            f"{group}/providers/Microsoft.Compute/virtualMachines/{name}"
        )
        ev["id"], ev["eventTime"] = event_id, when
        return record("azure", ev, acct, resource=event("arm_vm"))

    deletion = event("azure_vm_delete")
    deletion["data"]["resourceUri"] = deletion["subject"] = group
    deletion["id"], deletion["eventTime"] = f"rg-{uid}", "2026-11-27T12:00:00Z"
    settings = collector_settings(priced_db, vm_url)
    async with running_collector(settings) as collector:
        status, body = await collector.post([record("azure", deletion, acct)])
        assert status == 200 and body["accepted"] == 0 and body["rejected"] == [], body
        await post(collector, [vm_write("late-1", f"w1-{uid}", "2026-11-27T11:59:00Z")])
    (recorded,) = rows_of(
        priced_db,
        "select deleted_at, event_id from container_deletions where container_id = %s",
        group.lower(),
    )
    assert recorded[1] == f"azure:rg-{uid}"
    async with running_collector(settings) as collector:  # a restart reads the table
        await post(
            collector,
            [
                vm_write("late-2", f"w2-{uid}", "2026-11-27T11:59:30Z"),
                vm_write("new-1", f"w3-{uid}", "2026-11-27T12:05:00Z"),
            ],
        )
        live = {rid for _, rid in collector.processor.rollups.live}
    states = dict(
        rows_of(
            priced_db,
            "select resource_id, state from resource_inventory where resource_id like %s",
            group.lower() + "/%",
        )
    )
    vms = f"{group.lower()}/providers/microsoft.compute/virtualmachines"
    assert states == {
        f"{vms}/late-1": "deleted",
        f"{vms}/late-2": "deleted",
        f"{vms}/new-1": "running",
    }
    after = rates(priced_db)
    assert after[f"{vms}/late-1"] == after[f"{vms}/late-2"] == priced_at(0.0)
    assert after[f"{vms}/new-1"][0]
    assert f"{vms}/new-1" in live and f"{vms}/late-2" not in live
    # Each write is recorded (attribution), as what it turned out to be.
    events = dict(
        rows_of(
            priced_db,
            "select event_id, usd_per_hour_after::float8 from resource_events"
            " where event_id = any(%s)",
            [f"azure:w1-{uid}", f"azure:w2-{uid}", f"azure:w3-{uid}"],
        )
    )
    assert events[f"azure:w1-{uid}"] == events[f"azure:w2-{uid}"] == 0.0
    assert events[f"azure:w3-{uid}"] == after[f"{vms}/new-1"][0]
