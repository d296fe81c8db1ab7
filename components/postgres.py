"""PostgreSQL: the CloudNativePG operator (official chart) and one Cluster.

The operator creates the application role and its Secret (`<cluster>-app`, with a ready `uri`
the migration Job reads as CCT_PG_DSN). A second managed role, `vault`, may create roles: Vault's
database secrets engine uses it to issue short-lived users, each a member of its handler's
group role (`group_roles`, also managed here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from components.derived import derived_secret
from components.namespace import EGRESS_KUBE_API_LABEL

CNPG_CHART = "cloudnative-pg"
CNPG_VERSION = "0.26.0"
# A minimal image (no in-core Barman; the bundle configures no backups) by its immutable build
# tag. The bare `15.14` tag is the deprecated `system` image on Debian bullseye, whose
# rolling tags upstream removes with bullseye's end of life.
IMAGE = "ghcr.io/cloudnative-pg/postgresql:15.14-202509091311-minimal-trixie"
PORT = 5432
METRICS_PORT = 9187
VAULT_ROLE = "vault"
# The operator's pods (the chart's selector labels, templates/_helpers.tpl).
OPERATOR_PODS = {"app.kubernetes.io/name": "cloudnative-pg"}


@dataclass(frozen=True)
class PostgresArgs:
    namespace: str
    operator_namespace: str
    clients: Sequence[Mapping[str, Any]]
    # The stack secret every login password is derived from (components.derived).
    secret_seed: pulumi.Input[str]
    cluster_name: str = "cct-pg"
    database: str = "cct"
    owner: str = "cct"
    # Login roles -> the roles they are members of (e.g. grafana -> cct_grafana), each
    # with a generated password in a Secret `<cluster>-<role>`.
    logins: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Group roles without login (one per handler, holding its table privileges; Vault's
    # users join them). Their privileges are granted by `cct db migrate`, as the owner.
    group_roles: Sequence[str] = ()
    instances: int = 1
    storage_size: str = "20Gi"
    storage_class: str | None = None
    high_availability: bool = False
    image: str = IMAGE
    operator_version: str = CNPG_VERSION
    resources: kube.Resources = field(
        default_factory=lambda: kube.Resources("250m", "512Mi", "2", "2Gi")
    )
    # False on a cluster whose operator pods never run (the local stack has no nodes): the
    # operator's webhooks then let objects through unchecked by the operator instead of
    # refusing every one of them; the API server still validates them against the CRDs.
    operator_webhooks_fail_closed: bool = True

    def __post_init__(self) -> None:
        if self.high_availability and self.instances < 3:
            raise ValueError("high_availability needs at least 3 PostgreSQL instances")
        kube.require_pinned_image(self.image, "postgresql")


class Postgres(pulumi.ComponentResource):
    host: pulumi.Output[str]
    app_secret_name: pulumi.Output[str]
    vault_username: pulumi.Output[str]
    vault_password: pulumi.Output[str]
    # login role -> its password (secret Outputs).
    passwords: dict[str, pulumi.Output[str]]

    def __init__(
        self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:data:Postgres", name, None, opts)
        child = kube.child_opts(self, opts)
        ns, cluster = args.namespace, args.cluster_name
        webhook_failure = "Fail" if args.operator_webhooks_fail_closed else "Ignore"
        operator = kube.helm_release(
            f"{name}-cnpg",
            chart=CNPG_CHART,
            version=args.operator_version,
            namespace=args.operator_namespace,
            values={
                "replicaCount": 2 if args.high_availability else 1,
                "resources": kube.Resources("100m", "128Mi", "500m", "512Mi").to_k8s(),
                "containerSecurityContext": kube.container_security_context(),
                "podSecurityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "webhook": {
                    kind: {"failurePolicy": webhook_failure} for kind in ("mutating", "validating")
                },
                # The operator reconciles through the API server (templates/deployment.yaml).
                "podLabels": {EGRESS_KUBE_API_LABEL: "true"},
            },
            opts=child,
        )
        password = self._login_secret(name, args, VAULT_ROLE, child)
        roles: list[dict[str, Any]] = [
            {
                "name": VAULT_ROLE,
                "ensure": "present",
                "login": True,
                "createrole": True,
                "passwordSecret": {"name": f"{cluster}-{VAULT_ROLE}"},
            }
        ]
        passwords: dict[str, pulumi.Output[str]] = {}
        for login, member_of in sorted(args.logins.items()):
            passwords[login] = self._login_secret(name, args, login, child)
            roles.append(
                {
                    "name": login,
                    "ensure": "present",
                    "login": True,
                    "inRoles": list(member_of),
                    "passwordSecret": {"name": f"{cluster}-{login.replace('_', '-')}"},
                }
            )
        roles += [
            {"name": group, "ensure": "present", "login": False}
            for group in sorted(args.group_roles)
        ]
        affinity: dict[str, Any] = {
            "enablePodAntiAffinity": True,
            "topologyKey": "kubernetes.io/hostname",
        }
        if args.high_availability:
            affinity["podAntiAffinityType"] = "required"
        cluster_res = k8s.apiextensions.CustomResource(
            f"{name}-cluster",
            api_version="postgresql.cnpg.io/v1",
            kind="Cluster",
            metadata={"name": cluster, "namespace": ns, "labels": kube.labels(cluster, "data")},
            spec={
                "instances": args.instances,
                "imageName": args.image,
                "primaryUpdateStrategy": "unsupervised",
                "storage": {
                    "size": args.storage_size,
                    **({"storageClass": args.storage_class} if args.storage_class else {}),
                },
                "resources": args.resources.to_k8s(),
                "affinity": affinity,
                "enablePDB": args.instances > 1,
                "bootstrap": {"initdb": {"database": args.database, "owner": args.owner}},
                "managed": {"roles": roles},
                # Inherited by the instance pods and the initdb/join Jobs' pods, whose
                # instance manager reads the Cluster, its Secrets and writes status through
                # the API server.
                "inheritedMetadata": {
                    "labels": {**kube.labels(cluster, "data"), EGRESS_KUBE_API_LABEL: "true"},
                    "annotations": kube.scrape_annotations(METRICS_PORT),
                },
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[operator])),
        )
        instance_pods = {"cnpg.io/cluster": cluster}
        kube.ingress_policy(
            f"{name}-ingress",
            f"{cluster}-clients",
            ns,
            "data",
            pod_selector=instance_pods,
            ports=[PORT],
            peers=[*args.clients, kube.pod_peer(ns, instance_pods)],
            opts=child,
        )
        # The operator reaches every instance's manager for status and switchover.
        kube.ingress_policy(
            f"{name}-operator",
            f"{cluster}-operator",
            ns,
            "data",
            pod_selector=instance_pods,
            ports=[8000, PORT],
            peers=[kube.pod_peer(args.operator_namespace, OPERATOR_PODS)],
            opts=child,
        )
        # Through the cluster's id, so users of the host wait for the cluster.
        self.host = cluster_res.id.apply(lambda _: f"{cluster}-rw.{ns}.svc")
        self.app_secret_name = pulumi.Output.from_input(f"{cluster}-app")
        self.vault_username = pulumi.Output.from_input(VAULT_ROLE)
        self.vault_password = pulumi.Output.secret(password)
        self.passwords = {k: pulumi.Output.secret(v) for k, v in passwords.items()}
        self.register_outputs(
            {
                "host": self.host,
                "app_secret_name": self.app_secret_name,
                "vault_username": self.vault_username,
            }
        )

    def _login_secret(
        self, name: str, args: PostgresArgs, role: str, opts: pulumi.ResourceOptions
    ) -> pulumi.Output[str]:
        """A derived password in the basic-auth Secret CloudNativePG reads for `role`."""
        slug = role.replace("_", "-")
        password = derived_secret(args.secret_seed, f"postgres/{args.cluster_name}/{role}")
        login: dict[str, pulumi.Input[str]] = {"username": role, "password": password}
        k8s.core.v1.Secret(
            f"{name}-{slug}-login",
            metadata=kube.metadata(f"{args.cluster_name}-{slug}", args.namespace, "data"),
            type="kubernetes.io/basic-auth",
            string_data=login,
            opts=opts,
        )
        return password
