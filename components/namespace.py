"""A namespace with the restricted Pod Security Standard enforced and default-deny networking.

Ingress is denied unless a component admits a peer on a port (each component declares who may
call it). Egress is allowed to DNS and to the namespaces listed in `internal_namespaces`, since
every in-cluster flow is already gated by its receiver's ingress policy; egress to the
internet (443, outside the cluster's ranges) or to the Kubernetes API (443/6443 at the
`apiserver_cidrs` only) is opt-in per pod by label. The charts' and operators' pods that need
either carry the label through their own pod-label values (components/kafka.py, postgres.py,
argo.py, vault.py; tests/infra/test_egress.py checks every one against the vendored chart).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube

EGRESS_INTERNET_LABEL = "cct.io/egress-internet"
EGRESS_KUBE_API_LABEL = "cct.io/egress-kube-api"
# Ingress, opt-in per pod too: the pods that log in to Vault (a handler's Vault Agent); Vault
# admits these and the workflow steps, no other pod.
VAULT_CLIENT_LABEL = "cct.io/vault-client"
POD_SECURITY_LEVELS = ("restricted", "baseline", "privileged")
# The API server listens on 443 (managed control planes) or 6443 (kubeadm, kind).
KUBE_API_PORTS = (443, 6443)


def require_apiserver_cidrs(cidrs: Sequence[str]) -> None:
    """The API server's addresses must be named, and none may stand for everyone."""
    if not cidrs:
        raise ValueError("apiserver_cidrs: name the API server's addresses")
    for cidr in cidrs:
        if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
            raise ValueError(f"apiserver_cidrs: {cidr} is anywhere, not the API server")


def kube_api_egress(apiserver_cidrs: Sequence[str]) -> dict[str, Any]:
    """The egress rule to the Kubernetes API: its ports, at the API server's addresses only.
    NetworkPolicy sees a connection after kube-proxy (or the CNI) has translated the
    `kubernetes.default` Service address into an endpoint's, so these are the endpoint
    addresses (`kubectl get endpoints kubernetes`), not the Service's ClusterIP."""
    require_apiserver_cidrs(apiserver_cidrs)
    return {
        "to": [{"ipBlock": {"cidr": cidr}} for cidr in apiserver_cidrs],
        "ports": [{"protocol": "TCP", "port": port} for port in KUBE_API_PORTS],
    }


@dataclass(frozen=True)
class NamespaceArgs:
    name: str
    # The API server's endpoint addresses (see kube_api_egress): the only destinations of the
    # Kubernetes API egress policy.
    apiserver_cidrs: Sequence[str]
    internal_namespaces: Sequence[str] = field(default_factory=tuple)
    # Ports admitted from anywhere: admission webhooks called by the API server.
    webhook_ports: Sequence[int] = field(default_factory=tuple)
    pod_security: str = "restricted"
    # The cluster's own ranges, excluded from "internet" so opting into internet egress never
    # opens a path around the in-cluster ingress policies.
    cluster_cidrs: Sequence[str] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

    def __post_init__(self) -> None:
        if self.pod_security not in POD_SECURITY_LEVELS:
            raise ValueError(
                f"pod_security must be one of {POD_SECURITY_LEVELS}, not {self.pod_security!r}"
            )
        require_apiserver_cidrs(self.apiserver_cidrs)


class Namespace(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(
        self, name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:platform:Namespace", name, None, opts)
        child = kube.child_opts(self, opts)
        level = args.pod_security
        ns = k8s.core.v1.Namespace(
            name,
            metadata={
                "name": args.name,
                "labels": {
                    **kube.labels(args.name, "namespace"),
                    "pod-security.kubernetes.io/enforce": level,
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "pod-security.kubernetes.io/audit": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
            opts=child,
        )
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[ns])
        meta = kube.metadata
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny",
            metadata=meta("default-deny", args.name, "network"),
            spec=kube.manifest({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            opts=in_ns,
        )
        internal = [kube.namespace_peer(n) for n in (args.name, *args.internal_namespaces)]
        dns = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
        k8s.networking.v1.NetworkPolicy(
            f"{name}-egress-internal",
            metadata=meta("egress-internal", args.name, "network"),
            spec=kube.manifest(
                {
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {
                            "to": [dns],
                            "ports": [
                                {"protocol": "UDP", "port": 53},
                                {"protocol": "TCP", "port": 53},
                            ],
                        },
                        {"to": internal},
                    ],
                }
            ),
            opts=in_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-egress-internet",
            metadata=meta("egress-internet", args.name, "network"),
            spec=kube.manifest(
                {
                    "podSelector": {"matchLabels": {EGRESS_INTERNET_LABEL: "true"}},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {
                            "to": [
                                {
                                    "ipBlock": {
                                        "cidr": "0.0.0.0/0",
                                        "except": list(args.cluster_cidrs),
                                    }
                                }
                            ],
                            "ports": [{"protocol": "TCP", "port": 443}],
                        }
                    ],
                }
            ),
            opts=in_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-egress-kube-api",
            metadata=meta("egress-kube-api", args.name, "network"),
            spec=kube.manifest(
                {
                    "podSelector": {"matchLabels": {EGRESS_KUBE_API_LABEL: "true"}},
                    "policyTypes": ["Egress"],
                    # Not anywhere: that would also open every in-cluster 443 endpoint and
                    # the internet to pods that never opted into internet egress.
                    "egress": [kube_api_egress(args.apiserver_cidrs)],
                }
            ),
            opts=in_ns,
        )
        if args.webhook_ports:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-ingress-webhooks",
                metadata=meta("ingress-webhooks", args.name, "network"),
                spec=kube.manifest(
                    {
                        "podSelector": {},
                        "policyTypes": ["Ingress"],
                        "ingress": [
                            {
                                "from": [kube.ANYWHERE],
                                "ports": [
                                    {"protocol": "TCP", "port": p} for p in args.webhook_ports
                                ],
                            }
                        ],
                    }
                ),
                opts=in_ns,
            )
        self.name = ns.metadata.name
        self.register_outputs({"name": self.name})
