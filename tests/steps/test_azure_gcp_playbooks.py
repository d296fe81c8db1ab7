"""Every playbook end to end on Azure and GCP, against recorded HTTP exchanges in the REST
APIs' documented formats, with credentials from Vault's recorded exchanges (see
tests/steps/recordings/*.json for where each recording comes from)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from tests.steps.conftest import assert_no_secrets
from tests.steps.replay import Replay
from tests.steps.runner import call_step, run_playbook

SUB_RG = "/subscriptions/d3b7c1a2-4e5f-4a6b-9c8d-7e6f5a4b3c2d/resourceGroups/rg-payments-dev"
ARM_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.AZURE-ARM-ACCESS-TOKEN-must-never-leak"
GCP_TOKEN = "ya29.c.GCP-ACCESS-TOKEN-must-never-leak-0123456789"


@dataclass(frozen=True)
class Case:
    recording: str
    playbook: str
    provider: str
    resource_id: str
    service: str
    region: str
    unit: str
    prices: dict[str, str]
    saving: str
    final_state: str
    target: str | None = None


CASES = [
    Case(
        "azure_rightsize_vm.json",
        "rightsize-compute",
        "azure",
        f"{SUB_RG}/providers/Microsoft.Compute/virtualMachines/vm-api-01",
        "Virtual Machines",
        "eastus",
        "hour",
        {"Standard_D4s_v3": "0.192", "Standard_D2s_v3": "0.096"},
        "70.08",
        "resized",
        "Standard_D2s_v3",
    ),
    Case(
        "azure_deallocate_vm.json",
        "stop-idle-compute",
        "azure",
        f"{SUB_RG}/providers/Microsoft.Compute/virtualMachines/vm-batch-02",
        "Virtual Machines",
        "eastus",
        "hour",
        {"Standard_D2s_v3": "0.096"},
        "49.22",
        "deallocated",
    ),
    Case(
        "azure_delete_disk.json",
        "delete-unattached-volume",
        "azure",
        f"{SUB_RG}/providers/Microsoft.Compute/disks/disk-old-data",
        "Storage",
        "eastus",
        "gib_month",
        {"Premium_LRS": "0.15", "snapshot": "0.05"},
        "25.60",
        "deleted",
    ),
    Case(
        "azure_tiering.json",
        "storage-tiering",
        "azure",
        f"{SUB_RG}/providers/Microsoft.Storage/storageAccounts/stpaymentslogs",
        "Storage",
        "eastus",
        "gib_month",
        {"Hot": "0.0184", "Cool": "0.01"},
        "8.60",
        "tiered",
    ),
    Case(
        "azure_sql_rightsize.json",
        "rightsize-database",
        "azure",
        f"{SUB_RG}/providers/Microsoft.Sql/servers/sql-payments/databases/ledger",
        "SQL Database",
        "eastus",
        "hour",
        {"GP_Gen5_4": "1.011", "GP_Gen5_2": "0.505"},
        "369.38",
        "scaled",
        "GP_Gen5_2",
    ),
    Case(
        "gcp_rightsize_instance.json",
        "rightsize-compute",
        "gcp",
        "projects/cct-payments-dev/zones/us-central1-a/instances/api-1",
        "Compute Engine",
        "us-central1",
        "hour",
        {"e2-standard-4": "0.134", "e2-standard-2": "0.067"},
        "48.91",
        "resized",
        "e2-standard-2",
    ),
    Case(
        "gcp_stop_instance.json",
        "stop-idle-compute",
        "gcp",
        "projects/cct-payments-dev/zones/us-central1-a/instances/batch-1",
        "Compute Engine",
        "us-central1",
        "hour",
        {"e2-standard-2": "0.067"},
        "34.35",
        "stopped",
    ),
    Case(
        "gcp_delete_disk.json",
        "delete-unattached-volume",
        "gcp",
        "projects/cct-payments-dev/zones/us-central1-a/disks/old-data",
        "Compute Engine",
        "us-central1",
        "gib_month",
        {"pd-ssd": "0.17", "snapshot": "0.026"},
        "28.80",
        "deleted",
    ),
    Case(
        "gcp_tiering.json",
        "storage-tiering",
        "gcp",
        "cct-payments-archive",
        "Cloud Storage",
        "us-central1",
        "gib_month",
        {"STANDARD": "0.02", "NEARLINE": "0.01"},
        "20.48",
        "tiered",
    ),
    Case(
        "gcp_sql_rightsize.json",
        "rightsize-database",
        "gcp",
        "projects/cct-payments-dev/instances/ledger-pg",
        "Cloud SQL",
        "us-central1",
        "hour",
        {"db-custom-4-16384": "0.4126", "db-custom-2-8192": "0.2063"},
        "150.60",
        "updated",
        "db-custom-2-8192",
    ),
]


def _params(case: Case, uid: str) -> dict[str, Any]:
    return {
        "provider": case.provider,
        "service": case.service,
        "resource-id": case.resource_id,
        "resource-type": "x",
        "action": case.playbook,
        "environment": "dev",
        "team": "payments",
        "account-id": "acct-1",
        "region": case.region,
        "tags": '{"team": "payments"}',
        "estimated-monthly-impact-usd": "40",
        "dry-run": "false",
        "event-id": f"evt-{uid}",
    }


@pytest.mark.parametrize("case", CASES, ids=[c.recording.removesuffix(".json") for c in CASES])
def test_playbook_end_to_end(
    *,
    case: Case,
    replay: Callable[..., AbstractContextManager[Replay]],
    step_env: Callable[..., dict[str, str]],
    seed_prices: Any,
    db: Any,
    uid: str,
) -> None:
    seed_prices(case.provider, case.service, case.region, case.unit, case.prices)
    run_id = f"cct-{case.playbook}-{case.provider}-{uid}"
    params = _params(case, uid)
    extra = ("azure_login.json",) if case.provider == "azure" else ()
    with replay("vault.json", *extra, case.recording) as r:
        env = step_env(r.base_url)
        result = run_playbook(case.playbook, run_id, params, env, inprocess=True)
        if case.playbook == "rightsize-database":
            assert result.awaiting_approval
            assert db("select state from optimization_runs where run_id = %s", run_id) == [
                ("awaiting_approval",)
            ]
            result = run_playbook(
                case.playbook,
                run_id,
                params,
                env,
                inprocess=True,
                approval={"approved": True, "by": "alice"},
                resume=result,
            )

        assert result.failed_step is None, result.runs[-1]
        assert r.unmatched == [], [f"{u.method} {u.path} {u.query}" for u in r.unmatched]
        assert r.state == case.final_state
        if case.target:
            assert result.outputs["plan"]["action_params"]["target_sku"] == case.target
            assert result.outputs["verify"]["state"]["sku"] == case.target
        cloud_calls = [x for x in r.requests if not x.path.startswith(("/v1/", "/72f988bf"))]
        bearer = ARM_TOKEN if case.provider == "azure" else GCP_TOKEN
        assert cloud_calls and all(
            x.headers["authorization"] == f"Bearer {bearer}" for x in cloud_calls
        )

        # Idempotent: execute again with the same plan reads the changed resource, does nothing.
        doc = {
            "run_id": run_id,
            "playbook": case.playbook,
            "parameters": params,
            "previous": {k: result.outputs[k] for k in ("analyze", "plan", "approve")},
        }
        again = call_step("execute", doc, env, inprocess=True)
        assert again.exit_code == 0, again.output
        assert again.output["outcome"] == "already_done"
        assert r.unmatched == []

    state, est, verified = db(
        "select state, estimated_monthly_saving_usd, verified_monthly_saving_usd"
        " from optimization_runs where run_id = %s",
        run_id,
    )[0]
    assert (state, est, verified) == ("succeeded", Decimal(case.saving), Decimal(case.saving))
    outcome, before, after = db(
        "select outcome, before_state, after_state from optimization_actions where run_id = %s",
        run_id,
    )[0]
    assert outcome == "changed" and before != after
    assert_no_secrets(result.text + again.stderr)


def test_azure_access_denied_leaves_the_vm_and_names_the_permission(
    *,
    replay: Callable[..., AbstractContextManager[Replay]],
    step_env: Callable[..., dict[str, str]],
    seed_prices: Any,
    db: Any,
    uid: str,
) -> None:
    case = CASES[0]
    seed_prices(case.provider, case.service, case.region, case.unit, case.prices)
    run_id = f"cct-rightsize-compute-denied-{uid}"
    with replay("vault.json", "azure_login.json", "azure_resize_denied.json") as r:
        result = run_playbook(
            case.playbook, run_id, _params(case, uid), step_env(r.base_url), inprocess=True
        )
    assert result.failed_step == "execute"
    error = result.runs[-2].output["error"]
    assert error["type"] == "AccessDenied"
    assert "Microsoft.Compute/virtualMachines/write" in error["message"]
    assert db("select state from optimization_runs where run_id = %s", run_id) == [("failed",)]
    assert db("select outcome from optimization_actions where run_id = %s", run_id) == [
        ("restored",)
    ]


def test_azure_throttling_is_retryable(
    *,
    replay: Callable[..., AbstractContextManager[Replay]],
    step_env: Callable[..., dict[str, str]],
    uid: str,
) -> None:
    case = CASES[0]
    with replay("vault.json", "azure_login.json", "azure_throttled.json") as r:
        run = call_step(
            "analyze",
            {
                "run_id": f"cct-x-{uid}",
                "playbook": case.playbook,
                "parameters": _params(case, uid),
                "previous": {},
            },
            step_env(r.base_url),
            inprocess=True,
        )
    assert run.exit_code == 75
    assert run.output["error"]["retryable"] is True
    assert "TooManyRequests" in run.output["error"]["message"]


def test_gcp_playbook_through_the_real_entrypoint(
    *,
    replay: Callable[..., AbstractContextManager[Replay]],
    step_env: Callable[..., dict[str, str]],
    seed_prices: Any,
    db: Any,
    uid: str,
) -> None:
    """A GCP playbook also runs as `cct step` subprocesses (the AWS suite has one too); the
    other cases run the same code in-process to keep the suite fast."""
    case = CASES[6]
    seed_prices(case.provider, case.service, case.region, case.unit, case.prices)
    run_id = f"cct-{case.playbook}-sub-{uid}"
    with replay("vault.json", case.recording) as r:
        result = run_playbook(case.playbook, run_id, _params(case, uid), step_env(r.base_url))
    assert result.failed_step is None, result.runs[-1]
    assert r.state == case.final_state
    assert_no_secrets(result.text)
    assert db("select state from optimization_runs where run_id = %s", run_id) == [("succeeded",)]


def test_gcp_failed_resize_starts_the_instance_at_its_old_size(
    *,
    replay: Callable[..., AbstractContextManager[Replay]],
    step_env: Callable[..., dict[str, str]],
    seed_prices: Any,
    db: Any,
    uid: str,
) -> None:
    case = CASES[5]
    seed_prices(case.provider, case.service, case.region, case.unit, case.prices)
    run_id = f"cct-rightsize-compute-gcpfail-{uid}"
    params = {
        **_params(case, uid),
        "resource-id": "projects/cct-payments-dev/zones/us-central1-a/instances/api-2",
    }
    with replay("vault.json", "gcp_resize_fails.json") as r:
        result = run_playbook(case.playbook, run_id, params, step_env(r.base_url), inprocess=True)
        assert r.unmatched == []
        # stop, setMachineType (failed), then start again: the instance is as it was.
        assert r.state == "restored"
    assert result.failed_step == "execute"
    error = result.runs[-2].output["error"]
    assert error["type"] == "Permanent" and "UNSUPPORTED_OPERATION" in error["message"]
    outcome, before, after = db(
        "select outcome, before_state, after_state from optimization_actions where run_id = %s",
        run_id,
    )[0]
    assert outcome == "restored" and before == after
    state, reason = db("select state, reason from optimization_runs where run_id = %s", run_id)[0]
    assert state == "failed" and "UNSUPPORTED_OPERATION" in reason
