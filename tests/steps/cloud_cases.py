"""The Azure and GCP playbook cases: one recording per playbook and provider (see
tests/steps/recordings/*.json for where each comes from), the prices the plan needs, and the
saving and final replay state each must reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lambdas.steps.providers import azure, gcp
from lambdas.steps.steps import api_resource_id, resource_account

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
    # Price files (tests/ingest/fixtures/prices) `cct prices load` reads before the run.
    catalog: tuple[str, ...] = ()


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
        {},
        # The 256 GiB Premium_LRS disk is a P15 ($38.012142 a month), its snapshot 256 GiB of
        # Standard HDD snapshot storage at $0.05: 38.01 - 12.80.
        "25.21",
        "deleted",
        catalog=("azure_retail_page1.json", "azure_retail_page2.json"),
    ),
    Case(
        "azure_tiering.json",
        "storage-tiering",
        "azure",
        f"{SUB_RG}/providers/Microsoft.Storage/storageAccounts/stpaymentslogs",
        "Storage",
        "eastus",
        "gib_month",
        {},
        "8.60",  # a Standard_LRS account: (Hot LRS $0.0184 - Cool LRS $0.01) x its GiB
        "tiered",
        catalog=("azure_retail_blob.json",),
    ),
    Case(
        "azure_sql_rightsize.json",
        "rightsize-database",
        "azure",
        f"{SUB_RG}/providers/Microsoft.Sql/servers/sql-payments/databases/ledger",
        "SQL Database",
        "eastus",
        "hour",
        {},
        # Licence included: (2 vCores' compute $0.3044 + 2 x $0.1 licence) an hour saved.
        "368.21",
        "scaled",
        "GP_Gen5_2",
        catalog=("azure_retail_sql.json",),
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
        {},
        "24.00",  # 200 GiB x (pd-ssd $0.17 - standard snapshot storage $0.05)
        "deleted",
        catalog=("gcp_compute_skus.json",),
    ),
    Case(
        "gcp_tiering.json",
        "storage-tiering",
        "gcp",
        "cct-payments-archive",
        "Cloud Storage",
        "us-central1",
        "gib_month",
        {},
        "20.48",  # 2,048 GiB x (Standard $0.02 - Nearline $0.01) in us-central1
        "tiered",
        catalog=("gcp_storage_skus.json",),
    ),
    Case(
        "gcp_sql_rightsize.json",
        "rightsize-database",
        "gcp",
        "projects/cct-payments-dev/instances/ledger-pg",
        "Cloud SQL",
        "us-central1",
        "hour",
        {},
        # A zonal PostgreSQL instance: 2 vCPU x $0.0413 + 8 GiB x $0.007 an hour saved.
        "101.18",
        "updated",
        "db-custom-2-8192",
        catalog=("gcp_sql_skus.json",),
    ),
]


def params(case: Case, uid: str, **extra: str) -> dict[str, Any]:
    """The workflow parameters (section 6) of a run of `case`, as Argo passes them."""
    return {
        "provider": case.provider,
        "service": case.service,
        "resource-id": case.resource_id,
        "resource-type": "x",
        "action": case.playbook,
        "environment": "dev",
        "team": "payments",
        # The subscription or project the resource is in, as the trigger passes it.
        "account-id": resource_account(case.provider, case.resource_id) or "acct-1",
        "region": case.region,
        "tags": '{"team": "payments"}',
        "estimated-monthly-impact-usd": "40",
        "dry-run": "false",
        "event-id": f"evt-{uid}",
        **extra,
    }


# Vault's paths and the Azure token endpoint; every other request is a cloud API call
# (Cloud SQL's Admin API also starts with /v1/, hence the mount names).
NOT_CLOUD = ("/v1/auth/", "/v1/sys/", "/v1/aws/", "/v1/azure/", "/v1/gcp/", "/72f988bf-")


def recordings(case: Case) -> tuple[str, ...]:
    """The recordings a run of `case` needs: Vault, Azure's token endpoint, the cloud."""
    login = ("azure_login.json",) if case.provider == "azure" else ()
    return ("vault.json", *login, case.recording)


def values(case: Case, run_id: str) -> dict[str, str]:
    """What the placeholders in `case`'s recording stand for in the run `run_id`: a delete's
    snapshot names (`snapshot-0` is the run's first), which the run id decides."""
    if case.playbook != "delete-unattached-volume":
        return {}
    name = azure.snapshot_name if case.provider == "azure" else gcp.snapshot_name
    rid = api_resource_id(case.provider, case.resource_id)
    return {f"snapshot-{g}": name(rid, run_id, g) for g in range(2)}
