"""Who may connect to what across the two namespaces, read from the NetworkPolicies as built.

Both namespaces deny all ingress by default (components/namespace.py); every flow below is
admitted by a policy of its receiver. The platform namespace (operators, Argo, Vault) used
to admit every pod of both namespaces on every port, and PostgreSQL admitted the whole
platform namespace: any compromised pod could reach the operators' and Argo's APIs and
metrics, and any platform pod the database. Now the platform admits the pods that log in to
Vault on Vault's API port, Vault's servers each other, and the API server the webhooks; and
PostgreSQL admits, from the platform, Vault (its database engine) and the CloudNativePG
operator only. The small evaluator here follows the NetworkPolicy semantics the bundle uses
(matchLabels and matchExpressions, namespaceSelector by `kubernetes.io/metadata.name`,
ipBlock 0.0.0.0/0 as anyone); a policy shape it does not know fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from components.argo import CONTROLLER_SERVICE_ACCOUNT
from components.kube import ANYWHERE
from components.namespace import EGRESS_INTERNET_LABEL
from components.postgres import OPERATOR_PODS as CNPG_OPERATOR_PODS
from components.vault import CLUSTER_PORT, PORT, SERVER_PODS
from infra.policypack.checks import pod_spec_of
from infra.stack import STEPS_SERVICE_ACCOUNT, vault_access
from tests.infra.harness import BuiltStack, Registered

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
PG_PORT = 5432
PG_INSTANCES = {"cnpg.io/cluster": "cct-pg"}
# The platform's other pods, by the labels their charts give them: what must stay out.
ARGO_CONTROLLER = {"app.kubernetes.io/name": "argo-workflows-workflow-controller"}
ARGO_SERVER = {"app.kubernetes.io/name": "argo-workflows-server"}
STRIMZI_OPERATOR = {"name": "strimzi-cluster-operator", "strimzi.io/kind": "cluster-operator"}
# Ports those pods serve: the Argo server's API, the controller's and operators' metrics.
PLATFORM_PORTS = (2746, 9090, 8080, PORT, CLUSTER_PORT)


@dataclass(frozen=True)
class Pod:
    what: str
    namespace: str
    labels: Mapping[str, str]
    service_account: str | None = None


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    assert not unknown, f"selector fields this evaluator does not know: {unknown}"
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        assert expression["operator"] == "Exists", f"unknown operator in {expression}"
        if expression["key"] not in labels:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, source: Pod) -> bool:
    if "ipBlock" in peer:
        assert peer == ANYWHERE, f"an ipBlock peer this evaluator does not know: {peer}"
        return True
    namespaces = peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = source.namespace == policy_namespace
    else:
        in_namespace = _selects(namespaces, {NAMESPACE_LABEL: source.namespace})
    return in_namespace and _selects(peer.get("podSelector") or {}, source.labels)


def admits(built: BuiltStack, source: Pod, target: Pod, port: int) -> bool:
    """Whether some ingress rule of `target`'s namespace lets `source` reach it on `port`."""
    for policy in built.of_type(NETWORK_POLICY):
        if policy.inputs["metadata"]["namespace"] != target.namespace:
            continue
        spec = policy.inputs["spec"]
        if "Ingress" not in spec["policyTypes"] or not _selects(spec["podSelector"], target.labels):
            continue
        for rule in spec.get("ingress") or []:
            ports = {int(p["port"]) for p in rule.get("ports") or []}
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers or any(_peer_matches(p, target.namespace, source) for p in peers):
                return True
    return False


def _bundle_pods(built: BuiltStack) -> Iterator[Pod]:
    """The pods of the bundle's own workloads (not the charts' or the operators')."""
    for resource in built.resources:
        pod = pod_spec_of(resource.typ, resource.inputs)
        if pod is None:
            continue
        spec = resource.inputs["spec"]
        if resource.typ.endswith("CronJob"):
            spec = spec["jobTemplate"]["spec"]
        yield Pod(
            resource.inputs["metadata"]["name"],
            resource.inputs["metadata"]["namespace"],
            spec["template"]["metadata"].get("labels") or {},
            pod.get("serviceAccountName"),
        )


def _release(built: BuiltStack, name: str) -> Registered:
    (release,) = [
        r for r in built.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == name
    ]
    return release


def _platform_pods(built: BuiltStack) -> dict[str, Pod]:
    platform = built.settings.platform_namespace
    vault_values = _release(built, "vault").inputs["values"]["server"]
    cnpg_values = _release(built, "cloudnative-pg").inputs["values"]
    return {
        "vault": Pod("vault", platform, {**SERVER_PODS, **vault_values.get("extraLabels", {})}),
        "cnpg-operator": Pod(
            "cnpg-operator", platform, {**CNPG_OPERATOR_PODS, **cnpg_values.get("podLabels", {})}
        ),
        "argo-controller": Pod(
            "argo-controller", platform, ARGO_CONTROLLER, CONTROLLER_SERVICE_ACCOUNT
        ),
        "argo-server": Pod("argo-server", platform, ARGO_SERVER),
        "strimzi-operator": Pod("strimzi-operator", platform, STRIMZI_OPERATOR),
    }


def _step_pod(built: BuiltStack) -> Pod:
    """A workflow step pod: the label Argo puts on each, plus the workflow defaults' labels."""
    values = _release(built, "argo-workflows").inputs["values"]
    labels = values["controller"]["workflowDefaults"]["spec"]["podMetadata"]["labels"]
    assert labels == {EGRESS_INTERNET_LABEL: "true"}
    return Pod(
        "workflow step",
        built.settings.namespace,
        {"workflows.argoproj.io/workflow": "cct-rightsize-compute-1", **labels},
        STEPS_SERVICE_ACCOUNT,
    )


def test_the_pods_that_log_in_to_vault_reach_it_and_no_other_pod_does(built: BuiltStack) -> None:
    vault = _platform_pods(built)["vault"]
    accounts = set(vault_access(built.settings))
    pods = [*_bundle_pods(built), _step_pod(built)]
    logs_in = {p.what for p in pods if p.service_account in accounts}
    # Every Vault role has pods that use it, and each reaches Vault's API.
    assert {p.service_account for p in pods if p.what in logs_in} == accounts
    for pod in pods:
        reached = admits(built, pod, vault, PORT)
        assert reached == (pod.what in logs_in), (
            f"{pod.what} (service account {pod.service_account}):"
            f" {'admitted' if reached else 'refused'} by Vault"
        )
        assert not admits(built, pod, vault, CLUSTER_PORT), (
            f"{pod.what} reaches Vault's cluster port"
        )


@pytest.mark.parametrize("port", PLATFORM_PORTS)
def test_no_other_platform_pod_is_reachable_from_the_bundle(built: BuiltStack, port: int) -> None:
    platform = _platform_pods(built)
    for pod in [*_bundle_pods(built), _step_pod(built)]:
        for name, target in platform.items():
            if name == "vault" and port == PORT:
                continue  # the test above
            assert not admits(built, pod, target, port), f"{pod.what} reaches {name}:{port}"


def test_vault_servers_reach_each_other_and_nothing_else_in_the_platform_does(
    built: BuiltStack,
) -> None:
    platform = _platform_pods(built)
    vault = platform["vault"]
    for port in (PORT, CLUSTER_PORT):
        assert admits(built, vault, vault, port)
        for name, pod in platform.items():
            if name != "vault":
                assert not admits(built, pod, vault, port), f"{name} reaches Vault:{port}"


def test_postgres_admits_vault_and_its_operator_from_the_platform_only(built: BuiltStack) -> None:
    instances = Pod("postgres", built.settings.namespace, PG_INSTANCES)
    platform = _platform_pods(built)
    assert admits(built, platform["vault"], instances, PG_PORT), "Vault's database engine"
    assert admits(built, platform["cnpg-operator"], instances, PG_PORT)
    assert admits(built, platform["cnpg-operator"], instances, 8000), "the instance manager"
    for name in ("argo-controller", "argo-server", "strimzi-operator"):
        for port in (PG_PORT, 8000):
            assert not admits(built, platform[name], instances, port), f"{name} reaches :{port}"
    assert not admits(built, platform["vault"], instances, 8000)


def test_the_webhooks_are_the_only_ports_open_to_anyone(built: BuiltStack) -> None:
    anyone = Pod("anyone", "elsewhere", {})
    platform = _platform_pods(built)
    for name, pod in platform.items():
        for port in PLATFORM_PORTS:
            assert not admits(built, anyone, pod, port), f"{name}:{port} is open to anyone"


def _policies_in(built: BuiltStack, namespace: str) -> Sequence[str]:
    return sorted(
        p.inputs["metadata"]["name"]
        for p in built.of_type(NETWORK_POLICY)
        if p.inputs["metadata"]["namespace"] == namespace
        and "Ingress" in p.inputs["spec"]["policyTypes"]
    )


def test_the_platform_ingress_policies_are_these(built: BuiltStack) -> None:
    assert _policies_in(built, built.settings.platform_namespace) == [
        "default-deny",
        "ingress-webhooks",
        "vault-clients",
        "vault-peers",
    ]
