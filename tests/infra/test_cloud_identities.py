"""The identities the bundle gives its cloud-side pieces hold exactly what their code calls:
each forwarder reads only what it reads (the Azure one the ARM resources of its events, the
AWS and GCP ones nothing), none of them reaches the billing exports, the GCP forwarder may
invoke only its own service, Vault's AWS engine has the identity the CCT roles trust, and the
collector, which calls nothing outside the cluster, has no internet egress."""

from __future__ import annotations

import json
import tarfile
from typing import Any

import pytest

from components.azure_subscription import STORAGE_BLOB_DATA_OWNER
from components.kube import chart_archive
from components.namespace import EGRESS_INTERNET_LABEL
from components.vault import CHART, CHART_VERSION, IRSA_ANNOTATION
from lambdas.forwarders.azure import API_VERSIONS, ARM_READ_ACTIONS
from tests.infra.harness import BuiltStack
from tests.infra.mocks import (
    ACCOUNT,
    FUNCTION_PRINCIPAL,
    PROJECT,
    SUBSCRIPTION,
    azure_name,
    azure_resource_id,
)

SUBSCRIPTION_SCOPE = f"/subscriptions/{SUBSCRIPTION}"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
ROLE_DEFINITION = "azure-native:authorization:RoleDefinition"
STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"


@pytest.fixture
def everything(stacks: dict[str, BuiltStack]) -> BuiltStack:
    return stacks["dev-all"]


def _id(built: BuiltStack, name: str) -> str:
    resource = built.named(name)
    return azure_resource_id(resource.typ, resource.name)


def _function_assignments(built: BuiltStack) -> list[dict[str, Any]]:
    """Every role assignment of the Azure forwarder Function's managed identity."""
    return [
        r.inputs
        for r in built.of_type(ROLE_ASSIGNMENT)
        if r.inputs["principalId"] == FUNCTION_PRINCIPAL
    ]


def test_the_azure_forwarders_declared_reads_are_the_ones_its_code_makes() -> None:
    """arm_reader GETs exactly the resource types of API_VERSIONS; each GET is the type's
    `read` operation (RBAC operation names are case-insensitive)."""
    assert {a.lower() for a in ARM_READ_ACTIONS} == {f"{t}/read" for t in API_VERSIONS}
    assert len(set(ARM_READ_ACTIONS)) == len(ARM_READ_ACTIONS)


def test_azure_forwarder_reads_exactly_what_its_code_reads(everything: BuiltStack) -> None:
    role = everything.named("azure-forwarder-arm-read").inputs
    (permission,) = role["permissions"]
    assert sorted(permission["actions"]) == sorted(ARM_READ_ACTIONS)
    assert not permission.get("notActions")
    assert not permission.get("dataActions")
    assert role["assignableScopes"] == [SUBSCRIPTION_SCOPE]
    by_role = {a["roleDefinitionId"]: a for a in _function_assignments(everything)}
    arm_read = _id(everything, "azure-forwarder-arm-read")
    host_storage = f"{SUBSCRIPTION_SCOPE}/providers/Microsoft.Authorization/roleDefinitions/"
    host_storage += STORAGE_BLOB_DATA_OWNER
    # The ARM reads, where the events come from; beyond them only its own host storage.
    assert set(by_role) == {arm_read, host_storage}
    assert by_role[arm_read]["scope"] == SUBSCRIPTION_SCOPE
    assert by_role[host_storage]["scope"] == _id(everything, "azure-function-storage")


def test_azure_forwarder_cannot_touch_the_billing_exports(everything: BuiltStack) -> None:
    """No assignment of the Function's identity covers the export container: none on the
    container, its storage account or its resource group, and the one at subscription scope
    (an ancestor of everything) grants reads of the priced Compute and SQL resources, nothing
    of Storage and no data action."""
    exports = everything.named("azure-exports").inputs
    exports_account, host_account = (
        azure_name("azure-storage"),
        azure_name("azure-function-storage"),
    )
    assert exports["accountName"] == exports_account != host_account
    ancestors = {
        _id(everything, "azure-exports"),
        _id(everything, "azure-storage"),
        _id(everything, "azure-group"),
    }
    assignments = _function_assignments(everything)
    assert assignments
    for assignment in assignments:
        assert assignment["scope"] not in ancestors, assignment
    arm_read = _id(everything, "azure-forwarder-arm-read")
    for assignment in assignments:
        if assignment["scope"] == SUBSCRIPTION_SCOPE:
            assert assignment["roleDefinitionId"] == arm_read
    (permission,) = everything.named("azure-forwarder-arm-read").inputs["permissions"]
    assert all(
        a.startswith(("Microsoft.Compute/", "Microsoft.Sql/servers/databases/"))
        and a.endswith("/read")
        for a in permission["actions"]
    )
    # The Functions host and its package live in the host's own account.
    (app,) = everything.of_type("azure-native:web:WebApp")
    settings = {s["name"]: s["value"] for s in app.inputs["siteConfig"]["appSettings"]}
    assert settings["AzureWebJobsStorage__accountName"] == host_account
    assert settings["WEBSITE_RUN_FROM_PACKAGE"].startswith(
        f"https://{host_account}.blob.core.windows.net/"
    )
    # A private blob on an account without shared keys: fetched with the app's identity,
    # which must be named (the app has a system-assigned one, given Blob Data Owner above).
    assert settings["WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID"] == "SystemAssigned"
    assert app.inputs["identity"]["type"] == "SystemAssigned"
    package = everything.named("azure-forwarder-package").inputs
    assert package["accountName"] == host_account


def test_aws_forwarder_holds_nothing_but_its_logs(everything: BuiltStack) -> None:
    """The AWS forwarder calls no AWS API (it receives EventBridge events and posts them):
    its role may write its log group and nothing else."""
    role = "cct-forwarder"
    policies = [
        p for p in everything.of_type("aws:iam/rolePolicy:RolePolicy") if p.inputs["role"] == role
    ]
    assert [p.name for p in policies] == ["aws-forwarder-policy"]
    (statement,) = json.loads(policies[0].inputs["policy"])["Statement"]
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    attachments = everything.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert not [a for a in attachments if a.inputs.get("role") == role]


def test_gcp_forwarder_may_invoke_only_its_own_service(everything: BuiltStack) -> None:
    """The GCP forwarder calls no GCP API either: it reads its token secret and is invoked by
    Eventarc as itself, on its own Cloud Run service, never on the project's."""
    member = f"serviceAccount:cct-forwarder@{PROJECT}.iam.gserviceaccount.com"
    function = everything.named("gcp-forwarder").inputs
    invoker = everything.named("gcp-forwarder-invoker")
    assert invoker.typ == "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
    assert invoker.inputs == {
        "project": PROJECT,
        "location": function["location"],
        "name": function["name"],
        "role": "roles/run.invoker",
        "member": member,
    }
    grants = {
        (r.typ, r.name) for r in everything.of_package("gcp") if r.inputs.get("member") == member
    }
    assert grants == {
        ("gcp:secretmanager/secretIamMember:SecretIamMember", "gcp-forwarder-token-access"),
        ("gcp:cloudrunv2/serviceIamMember:ServiceIamMember", "gcp-forwarder-invoker"),
    }
    project_grants = everything.of_type("gcp:projects/iAMMember:IAMMember")
    assert not [g for g in project_grants if g.inputs["member"] == member]


def test_the_vault_chart_annotates_its_service_account() -> None:
    """The vendored chart puts `server.serviceAccount.annotations` on the server's service
    account (outside dev mode), which the server StatefulSet runs as."""
    with tarfile.open(chart_archive(CHART, CHART_VERSION)) as chart:

        def text(path: str) -> str:
            member = chart.extractfile(f"vault/templates/{path}")
            assert member is not None
            return member.read().decode()

        helpers = text("_helpers.tpl")
        account = text("server-serviceaccount.yaml")
        statefulset = text("server-statefulset.yaml")
    define = helpers.split('{{- define "vault.serviceAccount.annotations" -}}', 1)[1]
    define = define.split("{{- end -}}", 1)[0]
    assert "toYaml .Values.server.serviceAccount.annotations" in define
    assert '{{ template "vault.serviceAccount.annotations" . }}' in account
    assert 'serviceAccountName: {{ template "vault.serviceAccount.name" . }}' in statefulset


@pytest.mark.parametrize("variant", ["dev-aws", "dev-all", "prod-all"])
def test_vault_runs_as_the_role_the_cct_roles_trust(
    stacks: dict[str, BuiltStack], variant: str
) -> None:
    built = stacks[variant]
    assert built.settings.aws is not None
    arn = built.settings.aws.vault_principal_arn
    assert arn == f"arn:aws:iam::{ACCOUNT}:role/vault"
    values = built.named("vault-chart").inputs["values"]["server"]
    assert values["serviceAccount"]["annotations"] == {IRSA_ANNOTATION: arn}
    # No static key: the engine takes the web identity the annotation brings.
    engine = built.named("vault-aws").inputs
    assert "accessKey" not in engine and "secretKey" not in engine
    trust = json.loads(built.named("aws-remediation").inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"AWS": arn}]


@pytest.mark.parametrize("variant", ["dev-off", "dev-azure", "dev-gcp", "prod-off"])
def test_vault_has_no_aws_identity_without_aws(stacks: dict[str, BuiltStack], variant: str) -> None:
    values = stacks[variant].named("vault-chart").inputs["values"]["server"]
    assert values["serviceAccount"]["annotations"] == {}


def test_the_collector_has_no_internet_egress(built: BuiltStack) -> None:
    (collector,) = [
        d
        for d in built.of_type("kubernetes:apps/v1:Deployment")
        if d.inputs["metadata"]["name"] == "collector"
    ]
    labels = collector.inputs["spec"]["template"]["metadata"]["labels"]
    assert EGRESS_INTERNET_LABEL not in labels


def test_every_cloud_identity_vault_hands_out_is_granted_to_a_client(
    everything: BuiltStack,
) -> None:
    """Review finding: the AWS, Azure and GCP cost-read identities were provisioned with their
    Vault roles, yet no Vault policy granted them and no handler used them: only something to
    steal. Every cloud role Vault can issue credentials for must be in some client's policy."""
    issuable = {
        f"aws/sts/{r.inputs['name']}"
        for r in everything.of_type("vault:aws/secretBackendRole:SecretBackendRole")
    }
    issuable |= {
        f"azure/creds/{r.inputs['role']}"
        for r in everything.of_type("vault:azure/backendRole:BackendRole")
    }
    issuable |= {
        f"gcp/token/{r.inputs['roleset']}"
        for r in everything.of_type("vault:gcp/secretRoleset:SecretRoleset")
    }
    assert len(issuable) == 4, issuable  # AWS remediation and billing read, Azure, GCP
    policies = "\n".join(
        p.inputs["policy"] for p in everything.of_type("vault:index/policy:Policy")
    )
    unused = {path for path in issuable if f'path "{path}"' not in policies}
    assert not unused, f"no Vault policy grants {sorted(unused)}"
