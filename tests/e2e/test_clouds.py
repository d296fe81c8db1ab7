"""Azure and GCP through the whole pipeline (issue #15), driven as a user's cloud would.

A Cloud SQL instance too: created in the GCP simulator's Cloud SQL Admin API, priced from its
audit entry, alerted, and planned by the rightsize-database workflow, which waits for a
person.

A user creates an expensive VM in the Azure simulator (ARM PUT) and an expensive instance in
the GCP simulator (Compute instances.insert). The simulators raise the providers' events
(Event Grid ResourceWriteSuccess; the Admin Activity audit entry on the log sink's Pub/Sub
topic) and push them to the real forwarders, which read the resource back (Azure: ARM with
the Function's managed identity) and post to the collector. Then every hop is checked with
its time: priced run-rate in VictoriaMetrics -> detector alert in Alertmanager -> CloudEvent
on Kafka -> workflow run (the shipped playbooks map both to stop-idle-compute in dev) ->
admission decision -> the steps, with credentials the credential source made on the
simulators (a Graph application per lease; generateAccessToken), deallocate / stop the
machine -> the change event flows back through the forwarder -> verified saving and the
action in PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lambdas import contract
from lambdas.steps.providers.azure import RESTART_SCHEDULE_TAG
from lambdas.steps.providers.gcp import RESTART_SCHEDULE_LABEL
from tests.e2e.stack import Stack, TopicWatch
from tests.e2e.test_pipeline import (
    Scenario,
    alerted,
    decisions,
    on_kafka,
    paged,
    rightsize_waits_for_a_person,
    run_of,
    settled,
)

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.timeout(900)]


@dataclass
class Launched:
    subscription: str
    project: str
    watch: TopicWatch
    azure_vm: Scenario
    gcp_instance: Scenario
    gcp_name: str
    cloud_sql: Scenario
    cloud_sql_name: str
    azure_db: Scenario


@pytest.fixture(scope="module")
def launched(stack: Stack) -> Iterator[Launched]:
    uid = uuid.uuid4().hex[:6]
    # A fresh subscription and project per run keep per-account policy counts apart.
    subscription = str(uuid.uuid4())
    project = f"shop-{uid}"
    topics = (contract.TOPIC_ANOMALIES, contract.TOPIC_UNMAPPED)
    with TopicWatch(stack.bootstrap, topics) as watch:
        t0, wall = time.monotonic(), time.time()
        rid = stack.azure(subscription).create_vm(
            f"rg-web-{uid}", f"web-{uid}", "Standard_D2s_v3", {"env": "dev", "team": f"web-{uid}"}
        )
        # The collector keys Azure resources by the lower-cased ARM id.
        vm = Scenario("new Azure dev VM -> deallocate", rid.lower(), t0, wall)

        t0, wall = time.monotonic(), time.time()
        name = f"api-{uid}"
        asset = stack.gcp(project).insert_instance(
            name, "e2-standard-8", {"env": "dev", "team": f"api-{uid}"}
        )
        inst = Scenario("new GCP dev instance -> stop", asset, t0, wall)

        t0, wall = time.monotonic(), time.time()
        db_name = f"orders-{uid}"
        db_asset = stack.gcp(project).insert_sql_instance(
            db_name, "db-custom-4-16384", {"env": "staging", "team": f"orders-{uid}"}
        )
        db = Scenario("new Cloud SQL instance -> rightsize, approval", db_asset, t0, wall)

        t0, wall = time.monotonic(), time.time()
        azure_db = stack.azure(subscription).create_sql_database(
            f"rg-data-{uid}",
            f"sql-{uid}",
            f"orders-{uid}",
            "GP_Gen5_4",
            {"env": "staging", "team": f"orders-az-{uid}"},
        )
        az_db = Scenario(
            "new Azure SQL database -> rightsize, approval", azure_db.lower(), t0, wall
        )
        yield Launched(subscription, project, watch, vm, inst, name, db, db_name, az_db)


def priced(stack: Stack, s: Scenario) -> float:
    """The run-rate VictoriaMetrics held for the resource since launch: the other scenario's
    test runs first, and by then the workflow may have stopped this one (rate back to 0)."""

    def check() -> float | None:
        expr = f'max_over_time(cct_cost_rate_usd_per_hour{{resource_id="{s.resource_id}"}}[15m])'
        value = sum(float(r["value"][1]) for r in stack.vm_query(expr))
        return value if value > 0 else None

    return s.hop("priced run-rate in VictoriaMetrics", check)


def _action_row(stack: Stack, run_id: str) -> tuple[Any, ...]:
    rows = stack.sql(
        "select action, outcome, dry_run, before_state, after_state,"
        " verified_monthly_saving_usd from optimization_actions where run_id = %s",
        run_id,
    )
    assert len(rows) == 1, rows
    return rows[0]


def test_azure_and_gcp_changes_are_priced_alerted_and_published(
    stack: Stack, launched: Launched
) -> None:
    """The early hops of both, first: once a workflow stops a machine its alert resolves."""
    vm, inst = launched.azure_vm, launched.gcp_instance
    assert priced(stack, vm) > 0 and priced(stack, inst) > 0
    for s, provider, rtype in (
        (vm, "azure", "Microsoft.Compute/virtualMachines"),
        (inst, "gcp", "compute.googleapis.com/Instance"),
    ):
        labels = alerted(stack, s, launched.watch)["labels"]
        assert labels["resource_type"] == rtype and labels["provider"] == provider, labels
        assert labels["env"] == "dev", labels
    # Standard_D2s_v3 is $0.096/h (warning); e2-standard-8 about $0.27/h pages.
    paged(stack, inst)
    on_kafka(launched.watch, vm)
    on_kafka(launched.watch, inst)


def test_new_azure_vm_is_deallocated(stack: Stack, launched: Launched) -> None:
    s = launched.azure_vm
    azure = stack.azure(launched.subscription)
    rid = s.resource_id
    run = run_of(stack, s)
    assert run["playbook"] == "stop-idle-compute"
    s.hop("admission decision allow", lambda: decisions(stack, run["run_id"]).get("admission"))
    assert decisions(stack, run["run_id"])["admission"][0] == "allow"
    state = settled(stack, s, run["run_id"], {"succeeded", "failed"})
    assert state == "succeeded", stack.sql(
        "select state, reason from optimization_runs where run_id = %s", run["run_id"]
    )
    # ARM ids are case-insensitive: the collector's lower-cased id names the same VM.
    assert s.hop("VM deallocated in the simulator", lambda: azure.power_state(rid) == "deallocated")
    assert RESTART_SCHEDULE_TAG in azure.tags(rid)
    name, outcome, dry_run, before, after, verified = _action_row(stack, run["run_id"])
    assert name == "azure.compute.deallocate_vm" and outcome == "changed" and dry_run is False
    assert before != after and verified is not None and verified > 0
    # The deallocation went back through Event Grid and the forwarder: the collector's
    # run-rate for the VM drops to zero.
    s.hop("run-rate back to zero (deallocate event via the forwarder)", _rate_zero(stack, s))


def test_new_gcp_instance_is_stopped(stack: Stack, launched: Launched) -> None:
    s = launched.gcp_instance
    gcp = stack.gcp(launched.project)
    run = run_of(stack, s)
    assert run["playbook"] == "stop-idle-compute"
    s.hop("admission decision allow", lambda: decisions(stack, run["run_id"]).get("admission"))
    assert decisions(stack, run["run_id"])["admission"][0] == "allow"
    state = settled(stack, s, run["run_id"], {"succeeded", "failed"})
    assert state == "succeeded", stack.sql(
        "select state, reason from optimization_runs where run_id = %s", run["run_id"]
    )
    assert s.hop(
        "instance stopped in the simulator",
        lambda: gcp.instance(launched.gcp_name)["status"] == "TERMINATED",
    )
    assert RESTART_SCHEDULE_LABEL in gcp.instance(launched.gcp_name)["labels"]
    name, outcome, dry_run, before, after, verified = _action_row(stack, run["run_id"])
    assert name == "gcp.compute.stop_instance" and outcome == "changed" and dry_run is False
    assert before != after and verified is not None and verified > 0
    s.hop("run-rate back to zero (stop audit entry via the forwarder)", _rate_zero(stack, s))


def _rate_zero(stack: Stack, s: Scenario) -> Callable[[], bool]:
    def check() -> bool:
        found = stack.vm_query(f'cct_cost_rate_usd_per_hour{{resource_id="{s.resource_id}"}}')
        return bool(found) and sum(float(r["value"][1]) for r in found) == 0

    return check


def _database_planned(
    stack: Stack, launched: Launched, s: Scenario, rtype: str, service: str
) -> dict[str, Any] | None:
    """A new managed database's hops up to its rightsize-database run settling; the plan, or
    None when critical-services denied the run before planning (New York business hours)."""
    labels = alerted(stack, s, launched.watch)["labels"]
    assert labels["resource_type"] == rtype and labels["service_name"] == service, labels
    on_kafka(launched.watch, s)
    return rightsize_waits_for_a_person(stack, s)


def test_a_new_azure_sql_database_is_priced_at_once_and_waits_for_approval(
    stack: Stack, launched: Launched
) -> None:
    """Its Event Grid write, read back by the forwarder from ARM (`2021-11-01`), prices it
    within seconds: GP_Gen5_4's compute, the SQL Server licence for 4 vCores, 32 GB of data
    storage; the plan resizes it to GP_Gen5_2 on Azure Monitor's idle CPU."""
    s = launched.azure_db
    assert priced(stack, s) == pytest.approx(0.6088 + 4 * 0.1 + 32 * 0.115 / 730, abs=1e-5)
    plan = _database_planned(stack, launched, s, "Microsoft.Sql/servers/databases", "SQL Database")
    if plan is None:  # denied in business hours: unchanged, nothing planned
        assert stack.azure(launched.subscription).sql_objective(s.resource_id) == "GP_Gen5_4"
        return
    assert plan["action"] == "azure.sql.update_database_sku", plan
    assert plan["action_params"]["target_sku"] == "GP_Gen5_2", plan
    assert plan["estimated_monthly_saving_usd"] == "368.21", plan  # (1.0088 - 0.5044) x 730
    rid = plan["action_params"]["resource_id"]
    assert rid.lower() == s.resource_id and "/Microsoft.Sql/servers/" in rid, plan
    assert stack.azure(launched.subscription).sql_objective(rid) == "GP_Gen5_4"


def test_a_new_cloud_sql_instance_is_priced_at_once_and_waits_for_approval(
    stack: Stack, launched: Launched
) -> None:
    """A managed database used to be seen only through the billing export, hours later: its
    Admin Activity entry (cloudsql.instances.create, through the log sink's Pub/Sub push and
    the real forwarder) now prices it within seconds (4 vCPU + 16 GiB + a 100 GB SSD at the
    loaded Cloud SQL prices), the detector alerts on it, and the shipped playbooks start the
    rightsize-database workflow, which plans on the simulator's Cloud SQL Admin and Monitoring
    APIs and then waits for a person (or is denied in business hours)."""
    s = launched.cloud_sql
    gcp = stack.gcp(launched.project)
    assert priced(stack, s) == pytest.approx(4 * 0.0413 + 16 * 0.007 + 100 * 0.17 / 730, abs=1e-5)
    # The plan, on the simulator's idle CPU and the loaded prices: half the vCPUs and memory.
    plan = _database_planned(stack, launched, s, "sqladmin.googleapis.com/Instance", "Cloud SQL")
    instance = gcp.sql_instance(launched.cloud_sql_name)
    if plan is None:  # denied in business hours: unchanged, nothing planned
        assert instance["settings"]["tier"] == "db-custom-4-16384", instance
        return
    assert plan["action"] == "gcp.sql.set_tier", plan
    assert plan["action_params"] == {
        "target_sku": "db-custom-2-8192",
        "resource_id": f"projects/{launched.project}/instances/{launched.cloud_sql_name}",
    }, plan
    assert plan["estimated_monthly_saving_usd"] == "101.18", plan  # (0.2772 - 0.1386) x 730
    assert instance["settings"]["tier"] == "db-custom-4-16384", "changed without approval"


def test_deleting_a_resource_group_takes_what_it_held_out_of_the_run_rate(stack: Stack) -> None:
    """Azure raises one Event Grid event for a resource group's deletion, none for the VMs
    and disks that go with it: they stayed priced for good. A user deletes a group holding a
    VM: the forwarder passes the group's deletion on, the collector deletes the VM under the
    group's event, and its run-rate is 0 within seconds; a VM in another group whose name
    starts the same keeps its cost."""
    uid = uuid.uuid4().hex[:6]
    azure = stack.azure(str(uuid.uuid4()))
    # Production: its alert's workflow (rightsize-compute) only plans, the VM keeps running.
    tags = {"env": "prod", "team": f"batch-{uid}"}
    t0, wall = time.monotonic(), time.time()
    vm = azure.create_vm(f"rg-tmp-{uid}", f"batch-{uid}", "Standard_D2s_v3", tags).lower()
    twin = azure.create_vm(f"rg-tmp-{uid}2", f"batch-{uid}", "Standard_D2s_v3", tags).lower()
    s = Scenario("resource group deleted -> its VM's run-rate 0", vm, t0, wall)

    def rate(rid: str) -> float | None:
        expr = f'cct_cost_rate_usd_per_hour{{resource_id="{rid}",basis="list"}}'
        found = stack.vm_query(expr)
        return float(found[0]["value"][1]) if found else None

    priced = s.hop("VM priced", lambda: rate(vm) or None)
    s.hop("twin priced", lambda: rate(twin) or None)
    azure.delete_group(f"rg-tmp-{uid}")
    s.hop("VM's run-rate 0 after its group's deletion", lambda: rate(vm) == 0.0 or None)
    ((state, event_id),) = stack.sql(
        "select state, last_event_id from resource_inventory where resource_id = %s", vm
    )
    assert state == "deleted" and event_id.startswith("azure:") and event_id.endswith(f"/{vm}")
    assert rate(twin) == priced > 0


def test_a_re_tag_moves_the_cost_to_the_team_joined_and_pages_no_team(stack: Stack) -> None:
    """A user moves a VM to another team through the Tags API, as the portal and `az tag
    update` do. Azure raises the write of the VM's tags resource; the forwarder reads the VM
    back; the collector moves its cost from the team it left to the team it joined in one
    write, within seconds; and the detector follows the re-tag: no incident opens above the
    resource (the team joined did not step up, the team left did not drop for a cost
    reason), also after the minute the team left is held for. The VM's own incident, opened
    at its creation, is the resource's and may be told to its new owner (docs/detection.md)."""
    uid = uuid.uuid4().hex[:6]
    subscription = str(uuid.uuid4())
    azure = stack.azure(subscription)
    left, joined = f"ops-{uid}", f"data-{uid}"

    def team_total(team: str) -> float | None:
        expr = f'sum(cct_cost_rate_rollup_usd_per_hour{{team="{team}",basis="list"}})'
        found = stack.vm_query(expr)
        return float(found[0]["value"][1]) if found else None

    with TopicWatch(stack.bootstrap, (contract.TOPIC_ANOMALIES,)) as watch:
        t0, wall = time.monotonic(), time.time()
        vm = azure.create_vm(
            f"rg-ops-{uid}", f"etl-{uid}", "Standard_D2s_v3", {"env": "prod", "team": left}
        )
        s = Scenario("new VM of a team", vm.lower(), t0, wall)
        rate = s.hop("the team's total priced", lambda: team_total(left) or None)
        alerted(stack, s, watch)  # the detector follows the VM's series
        retagged, wall = time.monotonic(), time.time()
        azure.merge_tags(vm, {"team": joined})
        moved = Scenario("re-tag -> cost moves to the team joined", vm.lower(), retagged, wall)
        moved.hop(
            "the cost moved to the team joined",
            lambda: (team_total(joined) == rate and team_total(left) == 0.0) or None,
        )
        # Past the hold of the team left (REGROUP_SETTLE_S, 60 s from when the detector reads
        # the re-tag, a cycle of 3 s after it), then several cycles more.
        time.sleep(max(0.0, 80.0 - (time.monotonic() - retagged)))

        def above_the_resource(e: dict[str, Any]) -> bool:
            # A team-level alert carries its level's labels only (no account): its team says.
            labels = e["data"]["labels"]
            ours = labels.get("billing_account_id") == subscription or labels.get("team") in (
                left,
                joined,
            )
            return e["type"] == contract.DETECTED and ours and labels.get("level") != "resource"

        # From the VM's creation on: that too is one cause, reported at the resource.
        above = watch.find(contract.TOPIC_ANOMALIES, above_the_resource)
    assert above == [], [e["data"]["labels"] for e in above]
    ((tags,),) = stack.sql("select tags from resource_inventory where resource_id = %s", vm.lower())
    assert tags == {"env": "prod", "team": joined}
