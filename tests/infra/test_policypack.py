"""The CrossGuard pack's own tests: every check rejects a bad resource with its exact message,
and the pulumi_policy wrappers report through the engine's interface.

The pack's runtime (`PolicyPack(...)` in `__main__.py`) only runs under the Pulumi CLI, which
is not available here; its policies are exercised through their `validate` functions with
the same argument objects the engine passes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from components import kube
from infra.policypack import checks
from infra.policypack.policies import POLICIES

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
GOOD_CONTAINER = {
    "name": "app",
    "image": "ghcr.io/cct-project/cct:0.1.0",
    "resources": kube.Resources().to_k8s(),
    "securityContext": kube.container_security_context(),
}
GOOD_DEPLOYMENT: dict[str, Any] = {
    "metadata": {"name": "app", "labels": kube.labels("app", "handler")},
    "spec": {
        "template": {
            "spec": {"securityContext": kube.pod_security_context(), "containers": [GOOD_CONTAINER]}
        }
    },
}


def deployment(**container_changes: Any) -> dict[str, Any]:
    props = copy.deepcopy(GOOD_DEPLOYMENT)
    props["spec"]["template"]["spec"]["containers"][0].update(container_changes)
    return props


def remediation_policy(statement: dict[str, Any]) -> dict[str, Any]:
    return {"policy": json.dumps({"Version": "2012-10-17", "Statement": [statement]})}


BAD_CASES = [
    (
        checks.check_pod_security,
        DEPLOYMENT,
        deployment(
            securityContext={**kube.container_security_context(), "readOnlyRootFilesystem": False}
        ),
        "container app: readOnlyRootFilesystem is not true",
    ),
    (
        checks.check_pod_security,
        DEPLOYMENT,
        deployment(
            securityContext={**kube.container_security_context(), "allowPrivilegeEscalation": True}
        ),
        "container app: allowPrivilegeEscalation is not false",
    ),
    (
        checks.check_pod_security,
        DEPLOYMENT,
        deployment(securityContext={**kube.container_security_context(), "capabilities": {}}),
        "container app: capabilities do not drop ALL",
    ),
    (
        checks.check_resources,
        DEPLOYMENT,
        deployment(resources={"requests": {"cpu": "1", "memory": "1Gi"}}),
        "container app: no cpu limit",
    ),
    (
        checks.check_pinned_images,
        DEPLOYMENT,
        deployment(image="ghcr.io/cct-project/cct:latest"),
        "container app: image 'ghcr.io/cct-project/cct:latest' is not pinned to an exact version",
    ),
    (
        checks.check_labels,
        "kubernetes:core/v1:ConfigMap",
        {"metadata": {"name": "x", "labels": {"app.kubernetes.io/part-of": "cct"}}},
        "label app.kubernetes.io/managed-by=pulumi is missing",
    ),
    (
        checks.check_namespace_pod_security,
        "kubernetes:core/v1:Namespace",
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}},
        "enforces Pod Security level 'baseline', not restricted",
    ),
    (
        checks.check_helm_pinned,
        "kubernetes:helm.sh/v3:Release",
        {"chart": "vault", "version": "0.x", "repositoryOpts": {"repo": "https://h"}},
        "chart vault version '0.x' is not an exact version",
    ),
    (
        checks.check_helm_pinned,
        "kubernetes:helm.sh/v3:Release",
        # A local path that is not a vendored, versioned archive is not a pin.
        {"chart": "charts/vault", "version": ""},
        "chart charts/vault version '' is not an exact version",
    ),
    (
        checks.check_iam_least_privilege,
        "aws:iam/rolePolicy:RolePolicy",
        remediation_policy({"Sid": "S", "Effect": "Allow", "Action": "ec2:*", "Resource": "*"}),
        "statement S: wildcard actions ['ec2:*']",
    ),
    (
        checks.check_iam_least_privilege,
        "aws:iam/rolePolicy:RolePolicy",
        remediation_policy(
            {"Sid": "S", "Effect": "Allow", "Action": ["ec2:StopInstances"], "Resource": "*"}
        ),
        "statement S: ['ec2:StopInstances'] on every resource without a resource-tag condition",
    ),
    (
        checks.check_cloud_custom_roles,
        "azure-native:authorization:RoleDefinition",
        {"permissions": [{"actions": ["Microsoft.Compute/*"]}]},
        "wildcard actions ['Microsoft.Compute/*']",
    ),
    (
        checks.check_cloud_custom_roles,
        "gcp:projects/iAMCustomRole:IAMCustomRole",
        {"permissions": ["compute.instances.*"]},
        "wildcard permissions ['compute.instances.*']",
    ),
    (
        checks.check_vault_policy,
        "vault:index/policy:Policy",
        {"policy": 'path "aws/creds/*" {\n  capabilities = ["read"]\n}\n'},
        "path 'aws/creds/*' uses a wildcard",
    ),
    (
        checks.check_vault_policy,
        "vault:index/policy:Policy",
        {"policy": 'path "aws/creds/x" {\n  capabilities = ["read", "sudo"]\n}\n'},
        "path 'aws/creds/x' grants ['sudo']",
    ),
    (
        checks.check_webhook,
        "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration",
        {
            "webhooks": [
                {
                    "name": "w",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                    "sideEffects": "None",
                    "clientConfig": {},
                }
            ]
        },
        "webhook w: no caBundle",
    ),
    (
        checks.check_webhook,
        "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration",
        {
            "webhooks": [
                {
                    "name": "w",
                    "objectSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "x"}},
                }
            ]
        },
        "webhook w: objectSelector lets an object's author skip it",
    ),
    (
        checks.check_webhook,
        "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration",
        {"webhooks": [{"name": "w"}]},
        "webhook w: no namespaceSelector (the managed namespaces)",
    ),
]


@pytest.mark.parametrize(("check", "resource_type", "props", "expected"), BAD_CASES)
def test_check_rejects_bad_resource(
    check: Any, resource_type: str, props: Any, expected: str
) -> None:
    assert expected in check(resource_type, props)


def test_good_deployment_passes_every_check() -> None:
    for check in checks.RESOURCE_CHECKS:
        assert check.function(DEPLOYMENT, GOOD_DEPLOYMENT) == [], check.name


@pytest.mark.parametrize(
    "image",
    [
        "a:latest", "a", "a:1", "a:1.2", "a:v1.2.3", "ghcr.io/x/y:15.14", "quay.io/a/b:v0.28.1",
        "x@sha256:" + "a" * 64, "x@sha256:abc", "localhost:5000/x", "localhost:5000/x:1.0.0",
    ],
)  # fmt: skip
def test_pack_and_components_agree_on_pinned_images(image: str) -> None:
    assert checks.is_pinned_image(image) == kube.is_pinned_image(image)


class Reports(list[tuple[str, str | None]]):
    """Collects what a policy reports, as the engine's `report_violation` would."""

    def __call__(self, message: str, urn: str | None = None) -> None:
        self.append((message, urn))


def _policy(name: str) -> Any:
    return next(p for p in POLICIES if p.name == name)


def _resource(resource_type: str, props: dict[str, Any], name: str = "r") -> PolicyResource:
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    return PolicyResource(
        resource_type,
        props,
        f"urn:pulumi:s::cct::{resource_type}::{name}",
        name,
        opts,
        None,
        None,
        [],
        {},
    )


def test_resource_policy_reports_through_the_engine_interface() -> None:
    policy = _policy("k8s-resources")
    assert isinstance(policy, ResourceValidationPolicy)
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    urn = f"urn:pulumi:s::cct::{DEPLOYMENT}::app"
    args = ResourceValidationArgs(DEPLOYMENT, deployment(resources={}), urn, "app", opts, None)
    reported = Reports()
    policy.validate(args, reported)
    assert (f"{urn}: container app: no cpu request", urn) in reported
    assert len(reported) == 4


def test_stack_policy_requires_default_deny() -> None:
    policy = _policy("k8s-default-deny")
    assert isinstance(policy, StackValidationPolicy)
    namespace = _resource("kubernetes:core/v1:Namespace", {"metadata": {"name": "cct-system"}})
    reported = Reports()
    policy.validate(StackValidationArgs([namespace]), reported)
    assert reported == [("namespace cct-system has no default-deny NetworkPolicy", None)]
    deny = _resource(
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
        {
            "metadata": {"name": "default-deny", "namespace": "cct-system"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        "deny",
    )
    reported.clear()
    policy.validate(StackValidationArgs([namespace, deny]), reported)
    assert reported == []


def test_every_check_is_a_mandatory_policy() -> None:
    names = {p.name for p in POLICIES}
    assert {c.name for c in checks.RESOURCE_CHECKS} | {"k8s-default-deny"} == names
    assert all(p.enforcement_level is EnforcementLevel.MANDATORY for p in POLICIES)
