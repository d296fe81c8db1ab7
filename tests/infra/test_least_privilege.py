"""IAM, Azure RBAC, GCP IAM, Vault and Kubernetes RBAC grant exactly what CCT calls: the
remediation roles equal the actions registry, mutations are fenced by the protect tag, and
Vault paths are the ones the workflow steps request."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from components.aws_account import PROTECT_TAG, export_bucket_name
from components.handlers import CREDENTIALS_DIR
from lambdas.steps.registry import ACTIONS
from lambdas.steps.settings import StepSettings
from lambdas.store.grants import HANDLER_PRIVILEGES, group_role
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
    for name in ("aws-remediation", "aws-billing-read"):
        trust = json.loads(everything.named(name).inputs["assumeRolePolicy"])["Statement"]
        assert trust == [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/vault"},
                "Action": "sts:AssumeRole",
            }
        ], name


def test_forwarder_may_only_write_its_logs(everything: BuiltStack) -> None:
    (statement,) = _policy(everything, "aws-forwarder-policy")
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statement["Resource"].startswith("arn:aws:logs:")


def test_billing_loader_role_only_reads_the_export(everything: BuiltStack) -> None:
    bucket = f"arn:aws:s3:::{export_bucket_name('cct', ACCOUNT)}"
    assert _policy(everything, "aws-billing-read-policy") == [
        {
            "Sid": "ListExport",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": ["focus/*"]}},
        },
        {
            "Sid": "ReadExport",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": f"{bucket}/focus/*",
        },
    ]
    vault_role = everything.named("aws-vault-cct-billing-read").inputs
    assert vault_role["credentialType"] == "assumed_role"
    assert vault_role["roleArns"] == [f"arn:aws:iam::{ACCOUNT}:role/cct-billing-read"]
    assert vault_role["maxStsTtl"] <= 3600


def test_billing_loader_gets_its_aws_credentials_from_vault(everything: BuiltStack) -> None:
    """The CronJob's Vault Agent sidecar logs in as the billing loader, renders the STS
    credentials of exactly the path its policy grants, and the loader reads that file."""
    (cron,) = everything.of_type("kubernetes:batch/v1:CronJob")
    pod = cron.inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "billing-loader"
    assert pod["automountServiceAccountToken"] is False
    (agent,) = pod["initContainers"]
    (loader,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["credentials"]["emptyDir"]["medium"] == "Memory"
    token_source = volumes["vault-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token_source["expirationSeconds"] == 600

    def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in container["volumeMounts"]}

    assert mounts(agent)["credentials"]["mountPath"] == CREDENTIALS_DIR
    assert mounts(loader)["credentials"] == {
        "name": "credentials",
        "mountPath": CREDENTIALS_DIR,
        "readOnly": True,
    }
    # Only the agent holds the service account token.
    assert "vault-token" not in mounts(loader)
    env = {e["name"]: e.get("value") for e in loader["env"]}
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == f"{CREDENTIALS_DIR}/aws-credentials"

    config = everything.named("handlers-billing-loader-vault-agent").inputs["data"]
    assert 'role = "billing-loader"' in config["agent.hcl"]
    assert 'address = "https://vault.cct-platform.svc:8200"' in config["agent.hcl"]
    assert f'destination = "{CREDENTIALS_DIR}/aws-credentials"' in config["agent.hcl"]
    paths = set(re.findall(r'secret "([^"]+)"', config["aws-credentials.ctmpl"]))
    assert paths == {"aws/sts/cct-billing-read"}
    granted = _policies(everything)["cct-billing-loader"]
    assert granted["aws/sts/cct-billing-read"] == '"update"'


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


_GRANT = re.compile(r'path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]')
HANDLER_ACCOUNTS = ("collector", "billing-loader", "detector", "bridge", "trigger", "admission")


def _policies(built: BuiltStack) -> dict[str, dict[str, str]]:
    """Vault policy name -> {path: capabilities}."""
    return {
        p.inputs["name"]: dict(_GRANT.findall(p.inputs["policy"]))
        for p in built.of_type("vault:index/policy:Policy")
    }


def _login_roles(built: BuiltStack) -> dict[str, list[dict[str, Any]]]:
    """Service account -> the Kubernetes auth roles that admit it."""
    roles: dict[str, list[dict[str, Any]]] = {}
    for role in built.of_type("vault:kubernetes/authBackendRole:AuthBackendRole"):
        for account in role.inputs["boundServiceAccountNames"]:
            roles.setdefault(account, []).append(role.inputs)
    return roles


def _expected_access(s: StepSettings, *, aws: bool, azure: bool, gcp: bool) -> dict[str, Any]:
    steps = {"sys/leases/revoke": '"update"', "auth/token/revoke-self": '"update"'}
    if aws:
        steps[f"{s.vault_aws_mount}/sts/{s.vault_aws_role}"] = '"update"'
    if azure:
        steps[f"{s.vault_azure_mount}/creds/{s.vault_azure_role}"] = '"read"'
    if gcp:
        steps[f"{s.vault_gcp_mount}/token/{s.vault_gcp_roleset}"] = '"read"'
    # Vault Agent renews its own token and leases; nothing else beyond the handler's creds.
    renew = {"sys/leases/renew": '"update"', "auth/token/renew-self": '"update"'}
    access: dict[str, Any] = {
        "cct-steps": steps,
        # Each PostgreSQL handler reads its own database role's credentials and nothing else.
        "collector": {"database/creds/cct-collector": '"read"', **renew},
        "detector": {"database/creds/cct-detector": '"read"', **renew},
        "trigger": {"database/creds/cct-trigger": '"read"', **renew},
        "admission": {"database/creds/cct-admission": '"read"', **renew},
    }
    if aws:
        access["billing-loader"] = {
            "database/creds/cct-billing-loader": '"read"',
            "aws/sts/cct-billing-read": '"update"',
            **renew,
        }
    return access


@pytest.mark.parametrize(
    ("variant", "clouds"),
    [
        ("dev-all", {"aws": True, "azure": True, "gcp": True}),
        ("dev-vault", {"aws": False, "azure": False, "gcp": False}),
        ("dev-aws", {"aws": True, "azure": False, "gcp": False}),
        ("dev-gcp", {"aws": False, "azure": False, "gcp": True}),
    ],
)
def test_every_service_account_gets_exactly_its_own_paths(
    stacks: dict[str, BuiltStack],
    monkeypatch: pytest.MonkeyPatch,
    variant: str,
    clouds: dict[str, bool],
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://vault:8200")
    expected = _expected_access(StepSettings.from_env(), **clouds)
    built = stacks[variant]
    policies = _policies(built)
    assert policies == {f"cct-{account}": paths for account, paths in expected.items()}
    roles = _login_roles(built)
    assert set(roles) == set(expected)
    for account, (role,) in roles.items():
        assert role["roleName"] == account
        assert role["boundServiceAccountNames"] == [account]
        assert role["boundServiceAccountNamespaces"] == ["cct-system"]
        assert role["tokenPolicies"] == [f"cct-{account}"]
        assert role["tokenNoDefaultPolicy"] is True
        assert role["tokenTtl"] <= 900 and role["tokenMaxTtl"] <= 3600


def test_every_handler_account_is_decided(everything: BuiltStack) -> None:
    accounts = {
        r.inputs["metadata"]["name"]
        for r in everything.of_type("kubernetes:core/v1:ServiceAccount")
        if r.inputs["metadata"]["labels"]["app.kubernetes.io/component"] == "handler"
    }
    assert accounts == set(HANDLER_ACCOUNTS)
    # The bridge reads nothing from Vault, so it has no login at all.
    assert set(_login_roles(everything)) == {*HANDLER_ACCOUNTS, "cct-steps"} - {"bridge"}


def test_database_roles_are_one_per_handler(everything: BuiltStack) -> None:
    roles = {
        r.inputs["name"]: r.inputs
        for r in everything.of_type("vault:database/secretBackendRole:SecretBackendRole")
    }
    handlers = ("collector", "billing-loader", "detector", "trigger", "admission")
    assert set(roles) == {f"cct-{h}" for h in handlers}
    assert set(HANDLER_PRIVILEGES) == set(handlers)
    cluster = everything.named("postgres-cluster").inputs["spec"]
    managed = {r["name"]: r for r in cluster["managed"]["roles"]}
    for handler in handlers:
        role = roles[f"cct-{handler}"]
        # Each user joins its handler's group role, which holds exactly the table privileges
        # of lambdas.store.grants (checked on a real PostgreSQL in tests/pg_credentials), and
        # nothing else: never the application owner.
        group = group_role(handler)
        assert role["creationStatements"][1:] == [f'GRANT "{group}" TO "{{{{name}}}}";']
        assert managed[group] == {"name": group, "ensure": "present", "login": False}
        assert role["defaultTtl"] <= 900 and role["maxTtl"] <= 3600
    (connection,) = everything.of_type(
        "vault:database/secretBackendConnection:SecretBackendConnection"
    )
    assert connection.inputs["allowedRoles"] == sorted(roles)


def test_trigger_may_only_create_workflows(everything: BuiltStack) -> None:
    """The trigger's only Kubernetes call is `create_namespaced_custom_object` (an
    AlreadyExists answer is its duplicate check); reading workflows or templates was granted
    and never used."""
    rules = everything.named("argo-workflows-trigger").inputs["rules"]
    assert rules == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["create"]},
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
