"""The Azure FOCUS cost export: declared at the Cost Management API version that knows FOCUS,
pinned to the FOCUS version the billing loader reads, and written by its own identity with
nothing more than write access to its container."""

from __future__ import annotations

from typing import Any

from components.azure_subscription import (
    EXPORT_API_VERSION,
    FOCUS_DATA_VERSION,
    STORAGE_BLOB_DATA_CONTRIBUTOR,
)
from tests.infra.harness import BuiltStack
from tests.infra.mocks import deployment_output


def _export(built: BuiltStack) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = built.named("azure-focus-export").inputs["properties"]
    (resource,) = deployment["template"]["resources"]
    return deployment, resource


def test_export_uses_the_focus_api(stacks: dict[str, BuiltStack]) -> None:
    deployment, export = _export(stacks["dev-all"])
    assert deployment["mode"] == "Incremental"
    assert (export["type"], export["apiVersion"]) == (
        "Microsoft.CostManagement/exports",
        EXPORT_API_VERSION,
    )
    props = export["properties"]
    assert props["definition"]["type"] == "FocusCost"
    assert props["definition"]["dataSet"]["configuration"] == {"dataVersion": FOCUS_DATA_VERSION}
    assert (props["format"], props["partitionData"]) == ("Parquet", True)
    assert export["identity"] == {"type": "SystemAssigned"}


def test_export_schedule_starts_in_the_future(stacks: dict[str, BuiltStack]) -> None:
    deployment, export = _export(stacks["dev-all"])
    start = export["properties"]["schedule"]["recurrencePeriod"]["from"]
    assert start == "[parameters('scheduleStart')]"
    # Left to its default, which ARM evaluates at deployment time.
    assert "scheduleStart" not in deployment["parameters"]
    assert "utcNow()" in deployment["template"]["parameters"]["scheduleStart"]["defaultValue"]


def test_export_writes_its_container_as_its_own_identity(stacks: dict[str, BuiltStack]) -> None:
    built = stacks["dev-all"]
    deployment, export = _export(built)
    destination = export["properties"]["deliveryInfo"]["destination"]
    assert destination["container"] == "[parameters('container')]"
    assert destination["resourceId"] == "[parameters('storageAccountId')]"
    assert set(deployment["parameters"]) == {
        "exportName",
        "storageAccountId",
        "container",
        "location",
    }
    writer = built.named("azure-export-writer").inputs
    assert writer["roleDefinitionId"].endswith(f"/roleDefinitions/{STORAGE_BLOB_DATA_CONTRIBUTOR}")
    assert writer["scope"].endswith("/azure-exports")
    assert writer["principalType"] == "ServicePrincipal"
    # The principal is the export's own, read from the deployment's output.
    assert writer["principalId"] == deployment_output("azure-focus-export", "principalId")


def test_no_export_without_azure(stacks: dict[str, BuiltStack]) -> None:
    for variant in ("dev-off", "dev-aws", "prod-off"):
        assert not stacks[variant].of_type("azure-native:resources:DeploymentAtSubscriptionScope")
