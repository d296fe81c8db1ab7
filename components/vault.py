"""Vault: the official chart, and (once Vault is initialised) its configuration through
pulumi-vault: Kubernetes auth, one role and one policy per CCT service account, the AWS, Azure
and GCP secrets engines, and the database secrets engine for PostgreSQL.

Vault serves TLS only: its listener has a server certificate for its Service names (a CA and
certificate generated with pulumi-tls, or the operator's own Secret, `VaultTls`), and the CA
is published to the clients' namespace as the ConfigMap `vault-ca`, which every client (Vault
Agent, the workflow steps) verifies Vault against. Tokens and issued credentials never cross
the network in clear.

The cloud account components add the engines' roles (the AWS role, the GCP roleset, ...) on
the mount paths this component exposes, because only they know the cloud-side identities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_vault as vault

from components import kube, pki
from components.namespace import EGRESS_INTERNET_LABEL, EGRESS_KUBE_API_LABEL
from lambdas.store.grants import vault_role_statements

CHART = "vault"
CHART_VERSION = "0.31.0"
IMAGE = "hashicorp/vault:1.20.4"
PORT = 8200
# Raft replication and request forwarding between the servers (HA).
CLUSTER_PORT = 8201
# The chart's server pods (templates/server-statefulset.yaml: its selector labels).
SERVER_PODS = {"app.kubernetes.io/name": "vault", "component": "server"}
# The chart mounts each of `server.extraVolumes` at /vault/userconfig/<name>.
USERCONFIG_DIR = "/vault/userconfig"
# The generated server certificate's Secret (tls.crt, tls.key, ca.crt) in Vault's namespace.
TLS_SECRET = "vault-tls"  # noqa: S105 - the Secret's name
# The CA clients verify Vault against, in the clients' namespace (a CA is not a secret).
CA_CONFIG_MAP = "vault-ca"
CA_FILE = "ca.crt"
# The addresses Vault's certificate holds besides its names (`server_names`).
SERVER_IPS = ("127.0.0.1", "::1")
ALLOWED_CAPABILITIES = frozenset({"create", "read", "update", "list"})
# Policy paths are exact: no glob (`*`) and no segment wildcard (`+`), so a service account
# can reach exactly the credentials it was granted.
_EXACT_PATH = re.compile(r"^[a-z0-9][a-z0-9\-_/.]*[a-z0-9]$")
# Short-lived by design: a leaked credential is useless within minutes.
TOKEN_TTL_SECONDS = 900
TOKEN_MAX_TTL_SECONDS = 3600
# IAM roles for service accounts (EKS): the role a pod of this service account runs as.
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"


@dataclass(frozen=True)
class VaultGrant:
    path: str
    capabilities: tuple[str, ...] = ("read",)

    def __post_init__(self) -> None:
        if not _EXACT_PATH.match(self.path):
            raise ValueError(f"Vault policy path {self.path!r} must be exact (no wildcards)")
        unknown = set(self.capabilities) - ALLOWED_CAPABILITIES
        if unknown or not self.capabilities:
            raise ValueError(
                f"Vault policy path {self.path!r}: capabilities {sorted(unknown) or '[]'} are"
                f" not allowed (use {sorted(ALLOWED_CAPABILITIES)})"
            )


def render_policy(grants: Sequence[VaultGrant]) -> str:
    """HCL for one Vault policy, one `path` block per grant, in a stable order."""
    blocks = []
    for grant in sorted(grants, key=lambda g: g.path):
        caps = ", ".join(f'"{c}"' for c in sorted(grant.capabilities))
        blocks.append(f'path "{grant.path}" {{\n  capabilities = [{caps}]\n}}\n')
    return "\n".join(blocks)


def database_role_statements(grant_role: str) -> tuple[list[str], list[str]]:
    """Creation and revocation statements of a database-engine role whose users join
    `grant_role` (defined with the grants, so the local Vault stand-in runs the same ones)."""
    return vault_role_statements(grant_role)


def server_names(namespace: str) -> list[str]:
    """The names Vault is reached by, which its certificate must hold: the Service (as the
    clients name it), the active and standby Services, every server pod through the headless
    Service (Raft's retry_join) and localhost (the pods' own CLI, an operator's port-forward)."""
    names = ["localhost"]
    for service in ("vault", "vault-active", "vault-standby", "vault-internal"):
        names += [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    names += [f"*.vault-internal.{namespace}.svc", f"*.vault-internal.{namespace}"]
    return names


def _listener(tls_dir: str) -> str:
    return (
        'listener "tcp" {\n'
        f'  address = "[::]:{PORT}"\n'
        f'  cluster_address = "[::]:{CLUSTER_PORT}"\n'
        f'  tls_cert_file = "{tls_dir}/tls.crt"\n'
        f'  tls_key_file = "{tls_dir}/tls.key"\n'
        '  tls_min_version = "tls12"\n'
        "}\n"
    )


def standalone_config(tls_dir: str) -> str:
    """The single server's config: the chart's (file storage), with a TLS listener (the
    chart's own has `tls_disable = 1`)."""
    return f'ui = true\n{_listener(tls_dir)}storage "file" {{\n  path = "/vault/data"\n}}\n'


def raft_config(replicas: int, namespace: str, tls_dir: str) -> str:
    """The chart's Raft server config with one `retry_join` per replica. The chart's own config
    (vault-helm 0.31.0) has none, so every node but vault-0 would stay out of the cluster; with
    them each unsealed node joins the leader by itself, over TLS, verifying it against the CA."""
    peers = [f"https://vault-{i}.vault-internal.{namespace}.svc:{PORT}" for i in range(replicas)]
    joins = "".join(
        "  retry_join {\n"
        f'    leader_api_addr = "{peer}"\n'
        f'    leader_ca_cert_file = "{tls_dir}/{CA_FILE}"\n'
        "  }\n"
        for peer in peers
    )
    return (
        f"ui = true\n{_listener(tls_dir)}"
        f'storage "raft" {{\n  path = "/vault/data"\n{joins}}}\n'
        'service_registration "kubernetes" {}\n'
    )


@dataclass(frozen=True)
class VaultTls:
    """Vault's server certificate, brought by the operator (cert-manager, say) instead of
    generated: a Secret in Vault's namespace holding `tls.crt`, `tls.key` and `ca.crt`, whose
    certificate holds every name of `server_names` (the wildcard for the Raft peers included)
    and the IP addresses 127.0.0.1 and ::1 (a port-forward, the pods' own CLI); `ca_pem` is that
    CA's PEM text, published to the clients."""

    secret_name: str
    ca_pem: str

    def __post_init__(self) -> None:
        if "BEGIN CERTIFICATE" not in self.ca_pem:
            raise ValueError("VaultTls.ca_pem holds no PEM certificate")


@dataclass(frozen=True)
class VaultAwsEngine:
    region: str
    # Vault's own AWS identity. None: the pod's ambient identity (IRSA), which is preferred.
    access_key: pulumi.Input[str] | None = None
    secret_key: pulumi.Input[str] | None = None
    # The IAM role Vault runs as through IRSA: it annotates Vault's service account (the
    # chart's `server.serviceAccount.annotations`, templates/_helpers.tpl
    # "vault.serviceAccount.annotations"), and EKS's pod identity webhook then gives the
    # Vault pods AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE. With no access key configured,
    # Vault's AWS engine builds its credential chain with go-secure-stdlib/awsutil, which
    # (since awsutil v0.2.3, "ensure GenerateCredentialChain checks envs") adds a web
    # identity provider from exactly those two variables, so it assumes this role.
    role_arn: str | None = None

    def __post_init__(self) -> None:
        if self.role_arn is not None and not re.fullmatch(
            r"arn:aws:iam::\d{12}:role/\S+", self.role_arn
        ):
            raise ValueError(f"Vault's AWS role_arn {self.role_arn!r} is not an IAM role ARN")

    def service_account_annotations(self) -> dict[str, str]:
        if self.role_arn is None or self.access_key is not None:
            return {}
        return {IRSA_ANNOTATION: self.role_arn}


@dataclass(frozen=True)
class VaultAzureEngine:
    subscription_id: str
    tenant_id: str
    client_id: str
    client_secret: pulumi.Input[str]


@dataclass(frozen=True)
class VaultGcpEngine:
    # Service account key JSON of the identity Vault uses to mint roleset tokens.
    credentials: pulumi.Input[str]


@dataclass(frozen=True)
class VaultDatabaseEngine:
    host: pulumi.Input[str]
    database: str
    username: pulumi.Input[str]
    password: pulumi.Input[str]
    # Vault database role -> the PostgreSQL role its issued users join (e.g. the application
    # owner for a handler that writes, pg_read_all_data for one that only reads).
    roles: Mapping[str, str]


@dataclass(frozen=True)
class VaultArgs:
    namespace: str
    # Namespace of the service accounts that log in (CCT's handlers and workflow steps).
    clients_namespace: str
    # service account -> what it may read. Each becomes one Kubernetes auth role + one policy.
    access: Mapping[str, Sequence[VaultGrant]]
    # Network peers admitted to the API port: the pods that log in. Nothing else in the
    # cluster reaches Vault (the operator's own `pulumi up` comes through a port-forward).
    clients: Sequence[Mapping[str, Any]] = ()
    # False on the first deployment: Vault must be initialised and unsealed before it can be
    # configured (see the README's deploy steps).
    configure: bool = True
    aws: VaultAwsEngine | None = None
    azure: VaultAzureEngine | None = None
    gcp: VaultGcpEngine | None = None
    database: VaultDatabaseEngine | None = None
    high_availability: bool = False
    # None: a CA and a server certificate generated with pulumi-tls (kept in the state).
    tls: VaultTls | None = None
    chart_version: str = CHART_VERSION
    image: str = IMAGE
    storage_size: str = "10Gi"
    # None: the cluster's default class (the chart's `server.dataStorage.storageClass`).
    storage_class: str | None = None
    resources: kube.Resources = field(
        default_factory=lambda: kube.Resources("100m", "256Mi", "1", "512Mi")
    )

    def __post_init__(self) -> None:
        kube.require_pinned_image(self.image, "vault")
        for account, grants in self.access.items():
            if not grants:
                raise ValueError(f"Vault access for {account!r} is empty; leave it out instead")


class Vault(pulumi.ComponentResource):
    address: pulumi.Output[str]
    ca_pem: pulumi.Output[str]
    aws_path: pulumi.Output[str] | None
    azure_path: pulumi.Output[str] | None
    gcp_path: pulumi.Output[str] | None
    database_path: pulumi.Output[str] | None
    policy_names: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: VaultArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:secrets:Vault", name, None, opts)
        child = kube.child_opts(self, opts)
        repository, tag = args.image.rsplit(":", 1)
        replicas = 3 if args.high_availability else 1
        secret_name, ca_pem, chart_needs = self._certificate(name, args, child)
        tls_dir = f"{USERCONFIG_DIR}/{secret_name}"
        # The clients' copy of the CA (Vault Agent's `ca_cert`, the steps' VAULT_CACERT).
        k8s.core.v1.ConfigMap(
            f"{name}-ca",
            metadata=kube.metadata(CA_CONFIG_MAP, args.clients_namespace, "secrets"),
            data={CA_FILE: ca_pem},
            opts=child,
        )
        kube.helm_release(
            f"{name}-chart",
            chart=CHART,
            version=args.chart_version,
            namespace=args.namespace,
            values={
                # https everywhere the chart builds an address (VAULT_ADDR, VAULT_API_ADDR,
                # the probes).
                "global": {"tlsDisable": False},
                # Pods log in themselves (the steps with hvac, the billing loader through the
                # Vault Agent init container the bundle declares); no injector is needed.
                "injector": {"enabled": False},
                "server": {
                    "image": {"repository": repository, "tag": tag},
                    "resources": args.resources.to_k8s(),
                    "authDelegator": {"enabled": True},
                    # The AWS engine's identity (VaultAwsEngine.role_arn), if any.
                    "serviceAccount": {
                        "annotations": args.aws.service_account_annotations() if args.aws else {}
                    },
                    "dataStorage": {
                        "enabled": True,
                        "size": args.storage_size,
                        "storageClass": args.storage_class,
                    },
                    "standalone": {
                        "enabled": not args.high_availability,
                        "config": standalone_config(tls_dir),
                    },
                    # The certificate, mounted at tls_dir; the pods' own CLI trusts its CA.
                    # Readable by Vault's group only (fsGroup), not by every user.
                    "extraVolumes": [{"type": "secret", "name": secret_name, "defaultMode": 0o440}],
                    "extraEnvironmentVars": {"VAULT_CACERT": f"{tls_dir}/{CA_FILE}"},
                    "ha": {
                        "enabled": args.high_availability,
                        "replicas": replicas,
                        # The address a server gives clients and peers for itself: a name its
                        # certificate holds (the chart's default is the pod IP, which it does
                        # not). Kubernetes expands $(VAULT_K8S_POD_NAME), set before it.
                        "apiAddr": (
                            f"https://$(VAULT_K8S_POD_NAME).vault-internal.{args.namespace}.svc:{PORT}"
                        ),
                        "raft": (
                            {
                                "enabled": True,
                                "setNodeId": True,
                                "config": raft_config(replicas, args.namespace, tls_dir),
                            }
                            if args.high_availability
                            else {"enabled": False}
                        ),
                    },
                    "statefulSet": {
                        "securityContext": {
                            "pod": {
                                "runAsNonRoot": True,
                                "runAsUser": 100,
                                "runAsGroup": 1000,
                                "fsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "container": kube.container_security_context(),
                        }
                    },
                    # The entrypoint renders its config into /tmp: writable scratch space.
                    "volumes": [kube.tmp_volume()],
                    "volumeMounts": [kube.TMP_MOUNT],
                    # Kubernetes auth reviews every login's token (TokenReview) and HA
                    # registers each pod's role through the API server; the AWS, Azure and GCP
                    # engines call the clouds' APIs. Always both: a label change rolls the
                    # StatefulSet, and every restarted Vault pod comes back sealed.
                    "extraLabels": {EGRESS_KUBE_API_LABEL: "true", EGRESS_INTERNET_LABEL: "true"},
                },
            },
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=chart_needs)
            ),
        )
        if args.clients:
            kube.ingress_policy(
                f"{name}-clients",
                "vault-clients",
                args.namespace,
                "secrets",
                pod_selector=SERVER_PODS,
                ports=[PORT],
                peers=args.clients,
                opts=child,
            )
        # The servers join, replicate and forward requests to the leader among themselves.
        kube.ingress_policy(
            f"{name}-peers",
            "vault-peers",
            args.namespace,
            "secrets",
            pod_selector=SERVER_PODS,
            ports=[PORT, CLUSTER_PORT],
            peers=[kube.pod_peer(args.namespace, SERVER_PODS)],
            opts=child,
        )
        self.address = pulumi.Output.from_input(f"https://vault.{args.namespace}.svc:{PORT}")
        self.ca_pem = pulumi.Output.from_input(ca_pem)
        self.aws_path = self.azure_path = self.gcp_path = self.database_path = None
        if not args.configure:
            self.policy_names = pulumi.Output.from_input([])
            self.register_outputs(
                {"address": self.address, "ca_pem": self.ca_pem, "policy_names": self.policy_names}
            )
            return

        auth = vault.AuthBackend(
            f"{name}-kubernetes", type="kubernetes", path="kubernetes", opts=child
        )
        vault.kubernetes.AuthBackendConfig(
            f"{name}-kubernetes-config",
            backend=auth.path,
            # Vault runs in the cluster and reviews tokens with its own service account.
            kubernetes_host="https://kubernetes.default.svc",
            opts=child,
        )
        policy_names = []
        for account, grants in sorted(args.access.items()):
            policy = vault.Policy(
                f"{name}-policy-{account}",
                name=f"cct-{account}",
                policy=render_policy(grants),
                opts=child,
            )
            policy_names.append(f"cct-{account}")
            vault.kubernetes.AuthBackendRole(
                f"{name}-role-{account}",
                backend=auth.path,
                role_name=account,
                bound_service_account_names=[account],
                bound_service_account_namespaces=[args.clients_namespace],
                token_policies=[policy.name],
                token_no_default_policy=True,
                token_ttl=TOKEN_TTL_SECONDS,
                token_max_ttl=TOKEN_MAX_TTL_SECONDS,
                opts=child,
            )
        if args.aws:
            aws = vault.aws.SecretBackend(
                f"{name}-aws",
                path="aws",
                region=args.aws.region,
                access_key=args.aws.access_key,
                secret_key=args.aws.secret_key,
                default_lease_ttl_seconds=TOKEN_TTL_SECONDS,
                max_lease_ttl_seconds=TOKEN_MAX_TTL_SECONDS,
                opts=child,
            )
            self.aws_path = aws.id.apply(lambda _: "aws")
        if args.azure:
            azure = vault.azure.Backend(
                f"{name}-azure",
                path="azure",
                subscription_id=args.azure.subscription_id,
                tenant_id=args.azure.tenant_id,
                client_id=args.azure.client_id,
                client_secret=args.azure.client_secret,
                default_lease_ttl_seconds=TOKEN_TTL_SECONDS,
                max_lease_ttl_seconds=TOKEN_MAX_TTL_SECONDS,
                opts=child,
            )
            self.azure_path = azure.id.apply(lambda _: "azure")
        if args.gcp:
            gcp = vault.gcp.SecretBackend(
                f"{name}-gcp",
                path="gcp",
                credentials=args.gcp.credentials,
                default_lease_ttl_seconds=TOKEN_TTL_SECONDS,
                max_lease_ttl_seconds=TOKEN_MAX_TTL_SECONDS,
                opts=child,
            )
            self.gcp_path = gcp.id.apply(lambda _: "gcp")
        if args.database:
            db = args.database
            mount = vault.Mount(
                f"{name}-database",
                path="database",
                type="database",
                default_lease_ttl_seconds=TOKEN_TTL_SECONDS,
                max_lease_ttl_seconds=TOKEN_MAX_TTL_SECONDS,
                opts=child,
            )
            connection = vault.database.SecretBackendConnection(
                f"{name}-postgres",
                backend=mount.path,
                name="cct-postgres",
                allowed_roles=sorted(db.roles),
                postgresql={
                    "connection_url": pulumi.Output.concat(
                        "postgresql://{{username}}:{{password}}@", db.host, f":5432/{db.database}"
                    ),
                    "username": db.username,
                    "password": db.password,
                },
                opts=child,
            )
            for role_name, grant_role in sorted(db.roles.items()):
                creation, revocation = database_role_statements(grant_role)
                vault.database.SecretBackendRole(
                    f"{name}-postgres-{role_name}",
                    backend=mount.path,
                    name=role_name,
                    db_name=connection.name,
                    creation_statements=creation,
                    revocation_statements=revocation,
                    default_ttl=TOKEN_TTL_SECONDS,
                    max_ttl=TOKEN_MAX_TTL_SECONDS,
                    opts=child,
                )
            self.database_path = mount.id.apply(lambda _: "database")
        self.policy_names = pulumi.Output.from_input(policy_names)
        self.register_outputs(
            {
                "address": self.address,
                "ca_pem": self.ca_pem,
                "policy_names": self.policy_names,
                "aws_path": self.aws_path,
                "azure_path": self.azure_path,
                "gcp_path": self.gcp_path,
                "database_path": self.database_path,
            }
        )

    @staticmethod
    def _certificate(
        name: str, args: VaultArgs, opts: pulumi.ResourceOptions
    ) -> tuple[str, pulumi.Input[str], list[pulumi.Resource]]:
        """The server certificate's Secret name, its CA's PEM and what the chart waits for:
        the operator's Secret as is, or a generated CA and certificate in a Secret of ours."""
        if args.tls is not None:
            return args.tls.secret_name, args.tls.ca_pem, []
        ca_key, ca = pki.generate_ca(f"{name}-ca", "cct-vault-ca", opts)
        key, cert = pki.signed_pair(
            f"{name}-server",
            (ca_key, ca),
            common_name=f"vault.{args.namespace}.svc",
            dns_names=server_names(args.namespace),
            ip_addresses=list(SERVER_IPS),
            usage="server_auth",
            opts=opts,
        )
        private_key: pulumi.Output[str] = pulumi.Output.secret(key.private_key_pem)
        secret = k8s.core.v1.Secret(
            f"{name}-tls",
            metadata=kube.metadata(TLS_SECRET, args.namespace, "secrets"),
            type="kubernetes.io/tls",
            string_data={
                "tls.crt": cert.cert_pem,
                "tls.key": private_key,
                CA_FILE: ca.cert_pem,
            },
            opts=opts,
        )
        return TLS_SECRET, ca.cert_pem, [secret]
