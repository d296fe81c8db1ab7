"""IAM, Azure RBAC, GCP IAM, Vault and Kubernetes RBAC grant exactly what CCT calls: the
remediation roles equal the actions registry, mutations are fenced by the protect tag, and
Vault paths are the ones the workflow steps request."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from components.aws_account import PROTECT_TAG
from lambdas.steps.registry import ACTIONS
from lambdas.steps.settings import StepSettings
from tests.infra.harness import BuiltStack
from tests.infra.mocks import ACCOUNT


def registry(provider: str) -> set[str]:
    return {
        p for action in ACTIONS.values() if action.provider == provider for p in action.permissions
    }


@pytest.fixture
def everything(stacks: dict[str, BuiltStack]) -> BuiltStack:
    return stacks["dev-all"]


def _policy(built: BuiltStack, name: str) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = json.loads(built.named(name).inputs["policy"])["Statement"]
    return statements


def test_remediation_role_grants_exactly_the_registry(everything: BuiltStack) -> None:
    statements = _policy(everything, "aws-remediation-policy")
    allowed = {a for s in statements if s["Effect"] == "Allow" for a in s["Action"]}
    assert allowed == registry("aws")
    assert not [a for a in allowed if "*" in a]


def test_remediation_mutations_are_fenced_by_the_protect_tag(everything: BuiltStack) -> None:
    statements = {s["Sid"]: s for s in _policy(everything, "aws-remediation-policy")}
    protected = {f"aws:ResourceTag/{PROTECT_TAG}": "true"}
    change, deny = statements["ChangeUnprotected"], statements["NeverTouchProtected"]
    assert change["Condition"] == {"StringNotEquals": protected}
    assert deny == {**deny, "Effect": "Deny", "Action": change["Action"]}
    assert deny["Condition"] == {"StringEquals": protected}
    reads = statements["Read"]["Action"]
    assert all(re.match(r"^[a-z0-9]+:(Describe|Get|List)", a) for a in reads), reads
    assert "Condition" not in statements["Read"]


def test_cloud_roles_trust_only_vault(everything: BuiltStack) -> None:
    for name in ("aws-remediation", "aws-cost-read"):
        trust = json.loads(everything.named(name).inputs["assumeRolePolicy"])["Statement"]
        assert trust == [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/vault"},
                "Action": "sts:AssumeRole",
            }
        ], name


def test_cost_read_role_only_reads(everything: BuiltStack) -> None:
    for statement in _policy(everything, "aws-cost-read-policy"):
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            assert re.match(r"^[a-z0-9]+:(Describe|Get|List)", action), action


def test_forwarder_may_only_write_its_logs(everything: BuiltStack) -> None:
    (statement,) = _policy(everything, "aws-forwarder-policy")
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statement["Resource"].startswith("arn:aws:logs:")


def test_azure_remediation_role_is_the_registry(everything: BuiltStack) -> None:
    (permission,) = everything.named("azure-remediation-role").inputs["permissions"]
    assert set(permission["actions"]) == registry("azure")
    assert permission.get("dataActions") in (None, [])


def test_gcp_remediation_role_is_the_registry(everything: BuiltStack) -> None:
    assert set(everything.named("gcp-remediation-role").inputs["permissions"]) == registry("gcp")


def test_vault_roles_hand_out_the_fenced_roles(everything: BuiltStack) -> None:
    aws_role = everything.named("aws-vault-cct-remediation").inputs
    assert aws_role["credentialType"] == "assumed_role"
    assert aws_role["roleArns"] == [f"arn:aws:iam::{ACCOUNT}:role/cct-remediation"]
    assert aws_role["defaultStsTtl"] <= 900
    roleset = everything.named("gcp-vault-remediation").inputs
    (binding,) = roleset["bindings"]
    assert binding["roles"] == ["projects/cct-test-project/roles/cctRemediation"]
    assert roleset["secretType"] == "access_token"


def test_vault_paths_are_those_the_steps_request(
    everything: BuiltStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://vault:8200")
    s = StepSettings.from_env()
    (policy,) = everything.of_type("vault:index/policy:Policy")
    granted = dict(
        re.findall(r'path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]', policy.inputs["policy"])
    )
    assert granted == {
        f"{s.vault_aws_mount}/sts/{s.vault_aws_role}": '"update"',
        f"{s.vault_azure_mount}/creds/{s.vault_azure_role}": '"read"',
        f"{s.vault_gcp_mount}/token/{s.vault_gcp_roleset}": '"read"',
        "sys/leases/revoke": '"update"',
        "auth/token/revoke-self": '"update"',
    }


def test_vault_login_is_bound_to_one_service_account(everything: BuiltStack) -> None:
    (role,) = everything.of_type("vault:kubernetes/authBackendRole:AuthBackendRole")
    inputs = role.inputs
    assert inputs["boundServiceAccountNames"] == [inputs["roleName"]] == ["cct-steps"]
    assert inputs["boundServiceAccountNamespaces"] == ["cct-system"]
    assert inputs["tokenNoDefaultPolicy"] is True
    assert inputs["tokenTtl"] <= 900 and inputs["tokenMaxTtl"] <= 3600
    assert inputs["tokenPolicies"] == ["cct-cct-steps"]


def test_vault_grants_follow_the_cloud_switches(stacks: dict[str, BuiltStack]) -> None:
    for variant, expected in (("dev-vault", set()), ("dev-aws", {"aws"}), ("dev-gcp", {"gcp"})):
        (policy,) = stacks[variant].of_type("vault:index/policy:Policy")
        engines = {p.split("/")[0] for p in re.findall(r'path "([^"]+)"', policy.inputs["policy"])}
        assert engines - {"sys", "auth"} == expected, variant


def test_trigger_may_only_create_and_read_workflows(everything: BuiltStack) -> None:
    rules = everything.named("argo-workflows-trigger").inputs["rules"]
    assert rules == [
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflows"],
            "verbs": ["create", "get", "list", "watch"],
        },
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflowtemplates"],
            "verbs": ["get", "list"],
        },
    ]
    binding = everything.named("argo-workflows-trigger-binding").inputs
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "trigger", "namespace": "cct-system"}
    ]


def test_only_api_callers_mount_a_token(everything: BuiltStack) -> None:
    mounted = {
        r.inputs["metadata"]["name"]
        for r in everything.of_type("kubernetes:core/v1:ServiceAccount")
        if r.inputs.get("automountServiceAccountToken")
    }
    # The steps (Vault login, Argo executor); trigger and VictoriaMetrics opt in per pod.
    assert mounted == {"cct-steps"}
    for workload in everything.of_type("kubernetes:apps/v1:Deployment"):
        pod = workload.inputs["spec"]["template"]["spec"]
        if pod.get("automountServiceAccountToken"):
            assert workload.inputs["metadata"]["name"] == "trigger", workload.urn
