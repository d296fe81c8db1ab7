"""CCT's own handlers: Deployments (HTTP API, /healthz, /readyz, /metrics), CronJobs, their
Services, service accounts and ingress policies, and the admission webhook with its
ValidatingWebhookConfiguration and a CA generated with pulumi-tls (components.pki).

Every handler runs the same image through the `cct` command; what differs is data
(`HandlerSpec`), so adding a handler never adds code here.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube, pki
from components.namespace import EGRESS_INTERNET_LABEL, EGRESS_KUBE_API_LABEL, VAULT_CLIENT_LABEL

HTTP_PORT = 8080
WEBHOOK_PORT = 8443
TLS_DIR = "/etc/cct/tls"
# The name on the API server's webhook client certificate the component generates.
WEBHOOK_CLIENT_NAME = "cct-admission-apiserver-client"
# Where a handler's Vault Agent sidecar renders its credentials (memory-backed).
CREDENTIALS_DIR = "/var/run/cct/credentials"
_AGENT_CONFIG_DIR = "/etc/vault-agent"
_AGENT_TOKEN_DIR = "/var/run/secrets/vault"  # noqa: S105 - a directory
_AGENT_CA_DIR = "/etc/vault-agent-ca"
# The shortest lifetime the API server issues for a projected token.
_AGENT_TOKEN_SECONDS = 600
FAILURE_POLICIES = ("Fail", "Ignore")


@dataclass(frozen=True)
class VaultAgentSpec:
    """Credentials from Vault for the pod's lifetime: Vault Agent runs as a native sidecar
    (an init container with `restartPolicy: Always`), logs in with the pod's service account
    (Kubernetes auth, role `role`) and renders each template into CREDENTIALS_DIR. The handler
    starts only once every file exists (the sidecar's startup probe); the agent then keeps
    renewing the leases and renders again when it takes a new one (a rotated database user),
    which the handler picks up by re-reading the file. In a CronJob's pod the sidecar ends
    with the job."""

    address: str
    role: str
    image: str
    # File name in CREDENTIALS_DIR -> its Consul Template text.
    templates: Mapping[str, str]
    # The ConfigMap (in the pod's namespace) whose `ca.crt` is the CA Vault's certificate is
    # verified against (components.vault.CA_CONFIG_MAP).
    ca_config_map: str
    resources: kube.Resources = field(
        default_factory=lambda: kube.Resources("10m", "32Mi", "200m", "64Mi")
    )

    def __post_init__(self) -> None:
        kube.require_pinned_image(self.image, "vault-agent")
        if not self.address.startswith("https://"):
            raise ValueError(
                f"Vault Agent for role {self.role!r}: address {self.address!r} is not https://"
                " (Vault serves TLS only)"
            )
        if not self.templates:
            raise ValueError(f"Vault Agent for role {self.role!r} renders no templates")

    def config(self) -> str:
        """The agent's HCL: log in, render every template and keep them current; exit
        (non-zero, so the kubelet restarts the sidecar) when Vault stays unreachable."""
        templates = "".join(
            f"""
template {{
  source = "{_AGENT_CONFIG_DIR}/{file}.ctmpl"
  destination = "{CREDENTIALS_DIR}/{file}"
  perms = "0400"
  error_on_missing_key = true
}}
"""
            for file in sorted(self.templates)
        )
        return f"""pid_file = "/tmp/vault-agent.pid"

vault {{
  address = "{self.address}"
  ca_cert = "{_AGENT_CA_DIR}/ca.crt"
}}

auto_auth {{
  method "kubernetes" {{
    mount_path = "auth/kubernetes"
    config = {{
      role = "{self.role}"
      token_path = "{_AGENT_TOKEN_DIR}/token"
    }}
  }}
}}

template_config {{
  exit_on_retry_failure = true
}}
{templates}"""


@dataclass(frozen=True)
class HandlerSpec:
    name: str
    # Arguments of the `cct` command, e.g. ("serve", "collector").
    command: tuple[str, ...]
    # Port of the handler's API; None for a CronJob that serves nothing.
    port: int | None = HTTP_PORT
    # Plain-HTTP port of /healthz and /metrics, when it is not `port` (the webhook serves
    # only TLS on its port).
    metrics_port: int | None = None
    # A CronJob when set (cron syntax, UTC), otherwise a Deployment.
    schedule: str | None = None
    replicas: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, kube.SecretEnv] = field(default_factory=dict)
    # ConfigMap or Secret name -> directory it is mounted at (read-only).
    config_mounts: Mapping[str, str] = field(default_factory=dict)
    secret_mounts: Mapping[str, str] = field(default_factory=dict)
    # Network peers that may call `port` (scraping is admitted by VictoriaMetrics separately).
    clients: Sequence[Mapping[str, Any]] = ()
    internet: bool = False
    kube_api: bool = False
    # Exactly one replica by design (work that must not run twice concurrently); exempt from
    # the high-availability replica minimum, and replaced by stopping the old pod first
    # (Recreate), never rolled.
    singleton: bool = False
    # A directory on a volume of the handler's own that outlives its pod (a
    # PersistentVolumeClaim of `state_size`, ReadWriteOnce, so a singleton's only): durable
    # state such as the detector's spool of undelivered alerts and rows. None: no volume.
    state_dir: str | None = None
    state_size: str = "1Gi"
    resources: kube.Resources = field(default_factory=kube.Resources)
    vault_agent: VaultAgentSpec | None = None
    # The readiness probe's route: the shared shell's /readyz (ready while the handler's
    # backends answer), or /healthz for a handler that must stay in its Service through a
    # backend outage because it serves something that does not need that backend.
    ready_path: str = "/readyz"

    @property
    def ops_port(self) -> int | None:
        return self.metrics_port or self.port

    def __post_init__(self) -> None:
        if self.schedule is None and self.port is None:
            raise ValueError(f"handler {self.name}: a Deployment needs a port")
        if (self.schedule is not None or self.singleton) and self.replicas != 1:
            raise ValueError(f"handler {self.name}: a CronJob or singleton runs one replica")
        if self.state_dir is not None and (self.schedule is not None or not self.singleton):
            raise ValueError(
                f"handler {self.name}: a state volume is ReadWriteOnce: a singleton's only"
            )
        if self.vault_agent is not None:
            clash = {"CCT_PG_DSN", "CCT_PG_DSN_FILE"} & set(self.secret_env)
            if clash:
                raise ValueError(
                    f"handler {self.name}: its PostgreSQL login comes from Vault Agent;"
                    f" drop {sorted(clash)} from secret_env"
                )


@dataclass(frozen=True)
class AdmissionSpec:
    """The admission webhook: a handler serving mutual TLS on WEBHOOK_PORT, its policies from
    git. Every Workflow created in `workflow_namespaces` is reviewed (matched on the namespace
    name, which the API server sets, never on a label the Workflow's author chooses); only
    the API server may connect (NetworkPolicy from `apiserver_cidrs`) and be heard (its
    client certificate: from `client_ca_pem`, or from a CA generated here whose client
    certificate the component exports for the API server's AdmissionConfiguration)."""

    handler: HandlerSpec
    # Source addresses of the API server (control-plane ENIs/nodes); cluster specific.
    apiserver_cidrs: Sequence[str]
    # Namespaces whose Workflows are reviewed; empty: the handlers' namespace.
    workflow_namespaces: Sequence[str] = ()
    # PEM CA of the API server's webhook client certificate; None: generated here.
    client_ca_pem: pulumi.Input[str] | None = None
    # CN or DNS SAN the API server's client certificate carries.
    client_names: Sequence[str] = (WEBHOOK_CLIENT_NAME,)
    failure_policy: str = "Fail"
    timeout_seconds: int = 5
    # The handler runs outside the cluster (the local stack runs it on the host): the webhook
    # is registered at this https URL, trusting `url_ca_pem`, and no admission Deployment,
    # Service or certificate is created in the cluster.
    url: str | None = None
    url_ca_pem: str | None = None

    def __post_init__(self) -> None:
        if self.failure_policy not in FAILURE_POLICIES:
            raise ValueError(f"failure_policy must be one of {FAILURE_POLICIES}")
        if (self.url is None) != (self.url_ca_pem is None):
            raise ValueError("url and url_ca_pem go together")
        if self.url is not None and not self.url.startswith("https://"):
            raise ValueError(f"webhook url {self.url!r} must be https")
        if not self.apiserver_cidrs:
            raise ValueError("apiserver_cidrs: name the API server's addresses")
        for cidr in self.apiserver_cidrs:
            network = ipaddress.ip_network(cidr, strict=False)
            if network.prefixlen == 0:
                raise ValueError(f"apiserver_cidrs: {cidr} admits anyone, not the API server")
        if not self.client_names:
            raise ValueError("client_names: name the API server's client certificate")
        if not 1 <= self.timeout_seconds <= 30:
            raise ValueError("timeout_seconds must be between 1 and 30 (the API server's range)")
        if self.handler.port != WEBHOOK_PORT or self.handler.metrics_port is None:
            raise ValueError(
                f"the webhook serves TLS on {WEBHOOK_PORT} and its probes on a plain metrics port"
            )


@dataclass(frozen=True)
class MigrationSpec:
    """`cct db migrate` as a Job, replaced (so run again) whenever the image changes, before
    the handlers roll out. It is the one pod with the application owner's login, because only
    the schema owner may run DDL; the handlers log in as Vault users that may not."""

    # The owner's DSN (CloudNativePG's `<cluster>-app` Secret, key `uri`).
    owner_dsn: kube.SecretEnv
    name: str = "db-migrate"
    resources: kube.Resources = field(
        default_factory=lambda: kube.Resources("50m", "128Mi", "500m", "256Mi")
    )


@dataclass(frozen=True)
class HandlersArgs:
    namespace: str
    image: str
    handlers: Sequence[HandlerSpec]
    admission: AdmissionSpec | None = None
    # ConfigMaps the handlers mount: name -> {filename: content}.
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    high_availability: bool = False
    migration: MigrationSpec | None = None
    # True while Vault is not configured yet (or, during the upgrade to TLS, still on its old
    # plain listener): handlers whose credentials come from Vault cannot become ready, so
    # `pulumi up` must not wait for them (they start once it is).
    vault_pending: bool = False
    # Storage class of the handlers' state volumes (HandlerSpec.state_dir); None: default.
    storage_class: str | None = None

    def __post_init__(self) -> None:
        kube.require_pinned_image(self.image, "cct")
        names = [h.name for h in self.all_handlers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate handler names: {names}")
        for handler in self.all_handlers:
            unknown = set(handler.config_mounts) - set(self.config_maps)
            if unknown:
                raise ValueError(
                    f"handler {handler.name} mounts unknown ConfigMaps {sorted(unknown)}"
                )
        if self.high_availability:
            single = [
                h.name
                for h in self.all_handlers
                if h.schedule is None and not h.singleton and h.replicas < 2
            ]
            if single:
                raise ValueError(f"high_availability needs at least 2 replicas for {single}")

    @property
    def all_handlers(self) -> list[HandlerSpec]:
        return [*self.handlers, *([self.admission.handler] if self.admission else [])]


class Handlers(pulumi.ComponentResource):
    urls: pulumi.Output[dict[str, str]]
    webhook_ca_pem: pulumi.Output[str]
    webhook_server_name: pulumi.Output[str]
    # The API server's webhook client certificate and key (when the component generated its
    # CA): what kube-apiserver's AdmissionConfiguration kubeconfig presents (docs/admission.md).
    webhook_client_cert_pem: pulumi.Output[str]
    webhook_client_key_pem: pulumi.Output[str]

    def __init__(
        self, name: str, args: HandlersArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:handlers:Handlers", name, None, opts)
        child = kube.child_opts(self, opts)
        ns = args.namespace
        config_maps = [
            k8s.core.v1.ConfigMap(
                f"{name}-{cm_name}",
                metadata=kube.metadata(cm_name, ns, "handler"),
                data=dict(files),
                opts=child,
            )
            for cm_name, files in sorted(args.config_maps.items())
        ]
        depends_on: list[pulumi.Resource] = list(config_maps)
        if args.migration:
            depends_on.append(self._migration(name, args, args.migration, child))
        urls: dict[str, str] = {}
        for spec in args.handlers:
            self._handler(name, args, spec, child, depends_on=depends_on)
            if spec.port is not None and spec.schedule is None:
                urls[spec.name] = f"http://{spec.name}.{ns}.svc:{spec.port}"
        self.webhook_ca_pem = pulumi.Output.from_input("")
        self.webhook_server_name = pulumi.Output.from_input("")
        self.webhook_client_cert_pem = pulumi.Output.from_input("")
        self.webhook_client_key_pem = pulumi.Output.secret("")
        if args.admission and args.admission.url and args.admission.url_ca_pem:
            self._webhook_configuration(
                name,
                args,
                args.admission,
                {"url": args.admission.url, "caBundle": _b64(args.admission.url_ca_pem)},
                child,
            )
            self.webhook_ca_pem = pulumi.Output.from_input(args.admission.url_ca_pem)
            urls[args.admission.handler.name] = args.admission.url
        elif args.admission:
            self._admission(name, args, args.admission, child, depends_on)
            urls[args.admission.handler.name] = f"https://{self.server_name(args)}:{WEBHOOK_PORT}"
        self.urls = pulumi.Output.from_input(urls)
        self.register_outputs(
            {
                "urls": self.urls,
                "webhook_ca_pem": self.webhook_ca_pem,
                "webhook_server_name": self.webhook_server_name,
                "webhook_client_cert_pem": self.webhook_client_cert_pem,
                "webhook_client_key_pem": self.webhook_client_key_pem,
            }
        )

    @staticmethod
    def server_name(args: HandlersArgs) -> str:
        assert args.admission is not None
        return f"{args.admission.handler.name}.{args.namespace}.svc"

    def _handler(
        self,
        name: str,
        args: HandlersArgs,
        spec: HandlerSpec,
        opts: pulumi.ResourceOptions,
        *,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> None:
        ns = args.namespace
        kube.service_account(f"{name}-{spec.name}-sa", spec.name, ns, "handler", opts)
        bind: dict[str, str] = {}
        if spec.schedule is None and spec.port is not None:
            # Handlers bind loopback by default (safe on a laptop); in the pod the Service and
            # the kubelet's probes must reach them, so the bundle opens the pod's interfaces.
            prefix = f"CCT_{spec.name.upper().replace('-', '_')}"
            bind = {f"{prefix}_HOST": "0.0.0.0", f"{prefix}_PORT": str(spec.port)}  # noqa: S104
        env = [{"name": k, "value": v} for k, v in sorted({**bind, **spec.env}.items())]
        env += [ref.to_k8s(k) for k, ref in sorted(spec.secret_env.items())]
        volumes: list[dict[str, Any]] = [kube.tmp_volume()]
        mounts: list[dict[str, Any]] = [dict(kube.TMP_MOUNT)]
        for source, path in sorted(spec.config_mounts.items()):
            volumes.append({"name": source, "configMap": {"name": source}})
            mounts.append({"name": source, "mountPath": path, "readOnly": True})
        for source, path in sorted(spec.secret_mounts.items()):
            volumes.append({"name": source, "secret": {"secretName": source}})
            mounts.append({"name": source, "mountPath": path, "readOnly": True})
        if spec.state_dir is not None:
            claim = f"{spec.name}-state"
            k8s.core.v1.PersistentVolumeClaim(
                f"{name}-{spec.name}-state",
                # Not awaited: a class that binds on first use (WaitForFirstConsumer) binds only
                # once the pod exists, and the Deployment's readiness is awaited anyway.
                metadata=kube.metadata(
                    claim, ns, "handler", annotations={"pulumi.com/skipAwait": "true"}
                ),
                spec=kube.volume_claim(claim, spec.state_size, args.storage_class)["spec"],
                opts=opts,
            )
            volumes.append({"name": "state", "persistentVolumeClaim": {"claimName": claim}})
            mounts.append({"name": "state", "mountPath": spec.state_dir})
        init_containers: list[dict[str, Any]] = []
        if spec.vault_agent is not None:
            agent_config, agent_volumes, agent = self._vault_agent(
                name, args, spec, spec.vault_agent, opts
            )
            depends_on = [*depends_on, agent_config]
            volumes += agent_volumes
            mounts.append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
            init_containers.append(agent)
        ports = {"http": spec.port, "metrics": spec.metrics_port}
        container = kube.container(
            spec.name,
            args.image,
            command=["cct", *spec.command],
            env=env,
            ports=[{"name": n, "containerPort": p} for n, p in ports.items() if p],
            resources=spec.resources,
            volume_mounts=mounts,
            # The shared shell (lambdas.common.httpshell): /healthz liveness, /readyz readiness.
            probe_path="/healthz" if spec.schedule is None else None,
            probe_port=spec.ops_port,
            ready_path=spec.ready_path,
        )
        pod_labels = {}
        if spec.internet:
            pod_labels[EGRESS_INTERNET_LABEL] = "true"
        if spec.kube_api:
            pod_labels[EGRESS_KUBE_API_LABEL] = "true"
        if spec.vault_agent is not None:
            pod_labels[VAULT_CLIENT_LABEL] = "true"
        ha = args.high_availability and spec.replicas > 1
        pod = kube.pod_spec(
            [container],
            service_account=spec.name,
            volumes=volumes,
            affinity=kube.anti_affinity(spec.name) if ha else None,
            automount_token=spec.kube_api,
            restart_policy="OnFailure" if spec.schedule else None,
        )
        if init_containers:
            pod["initContainers"] = init_containers
        annotations = kube.scrape_annotations(spec.ops_port) if spec.ops_port else {}
        if spec.schedule is not None:
            k8s.batch.v1.CronJob(
                f"{name}-{spec.name}",
                metadata=kube.metadata(spec.name, ns, "handler"),
                spec={
                    "schedule": spec.schedule,
                    "timeZone": "Etc/UTC",
                    # A slow load must finish before the next one starts on the same files.
                    "concurrencyPolicy": "Forbid",
                    "successfulJobsHistoryLimit": 3,
                    "failedJobsHistoryLimit": 5,
                    "jobTemplate": {
                        "spec": {
                            "backoffLimit": 2,
                            "activeDeadlineSeconds": 3600,
                            "template": {
                                "metadata": {
                                    "labels": {**kube.labels(spec.name, "handler"), **pod_labels},
                                    "annotations": annotations,
                                },
                                "spec": pod,
                            },
                        }
                    },
                },
                opts=pulumi.ResourceOptions.merge(
                    opts, pulumi.ResourceOptions(depends_on=list(depends_on))
                ),
            )
            return
        kube.workload(
            f"{name}-{spec.name}",
            spec.name,
            ns,
            "handler",
            spec=pod,
            replicas=spec.replicas,
            opts=opts,
            pod_labels=pod_labels,
            annotations=annotations,
            depends_on=depends_on,
            skip_await=args.vault_pending and spec.vault_agent is not None,
            # A rollout must not run a singleton twice, even for the minute both are up.
            recreate=spec.singleton,
        )
        assert spec.port is not None
        kube.service(
            f"{name}-{spec.name}-service",
            spec.name,
            ns,
            "handler",
            ports={n: p for n, p in ports.items() if p},
            opts=opts,
        )
        if spec.clients:
            kube.ingress_policy(
                f"{name}-{spec.name}-ingress",
                f"{spec.name}-ingress",
                ns,
                "handler",
                pod_selector=kube.selector(spec.name),
                ports=[spec.port],
                peers=list(spec.clients),
                opts=opts,
            )
        if ha:
            kube.pdb(f"{name}-{spec.name}-pdb", spec.name, ns, "handler", opts)

    @staticmethod
    def _migration(
        name: str, args: HandlersArgs, migration: MigrationSpec, opts: pulumi.ResourceOptions
    ) -> k8s.batch.v1.Job:
        ns = args.namespace
        kube.service_account(f"{name}-{migration.name}-sa", migration.name, ns, "migration", opts)
        container = kube.container(
            migration.name,
            args.image,
            command=["cct", "db", "migrate"],
            env=[migration.owner_dsn.to_k8s("CCT_PG_DSN")],
            resources=migration.resources,
            volume_mounts=[dict(kube.TMP_MOUNT)],
        )
        pod = kube.pod_spec(
            [container],
            service_account=migration.name,
            volumes=[kube.tmp_volume()],
            restart_policy="OnFailure",
        )
        return k8s.batch.v1.Job(
            f"{name}-{migration.name}",
            metadata=kube.metadata(migration.name, ns, "migration"),
            spec={
                # On the first deployment PostgreSQL may still be starting: the default six
                # retries back off over about ten minutes.
                "backoffLimit": 6,
                "activeDeadlineSeconds": 900,
                "template": {
                    "metadata": {"labels": kube.labels(migration.name, "migration")},
                    "spec": pod,
                },
            },
            # A Job's pod template cannot change in place; a new image means a new Job.
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(delete_before_replace=True)
            ),
        )

    @staticmethod
    def _vault_agent(
        name: str,
        args: HandlersArgs,
        spec: HandlerSpec,
        agent: VaultAgentSpec,
        opts: pulumi.ResourceOptions,
    ) -> tuple[k8s.core.v1.ConfigMap, list[dict[str, Any]], dict[str, Any]]:
        """The agent's ConfigMap, the pod volumes it needs and its sidecar container."""
        data = {
            "agent.hcl": agent.config(),
            **{f"{file}.ctmpl": text for file, text in sorted(agent.templates.items())},
        }
        # Named after its content and immutable, so a pod keeps the config it started with.
        # Updated in place, the kubelet would hand the running pods of the previous revision
        # the new config, which their agent reads at its next restart, with volumes those
        # pods lack (the upgrade to Vault's TLS added one).
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        config_map = f"{spec.name}-vault-agent-{digest}"
        config = k8s.core.v1.ConfigMap(
            f"{name}-{spec.name}-vault-agent",
            metadata=kube.metadata(config_map, args.namespace, "handler"),
            data=data,
            immutable=True,
            opts=opts,
        )
        volumes: list[dict[str, Any]] = [
            {"name": "vault-agent", "configMap": {"name": config_map}},
            {"name": "vault-ca", "configMap": {"name": agent.ca_config_map}},
            # The service account token only the agent sees: the handler container keeps no
            # Kubernetes credential.
            {
                "name": "vault-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": "token",
                                "expirationSeconds": _AGENT_TOKEN_SECONDS,
                            }
                        }
                    ]
                },
            },
            # Memory-backed: credentials never touch the node's disk.
            {"name": "credentials", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        ]
        container = kube.container(
            "vault-agent",
            agent.image,
            command=["vault", "agent", f"-config={_AGENT_CONFIG_DIR}/agent.hcl"],
            resources=agent.resources,
            volume_mounts=[
                dict(kube.TMP_MOUNT),
                {"name": "vault-agent", "mountPath": _AGENT_CONFIG_DIR, "readOnly": True},
                {"name": "vault-ca", "mountPath": _AGENT_CA_DIR, "readOnly": True},
                {"name": "vault-token", "mountPath": _AGENT_TOKEN_DIR, "readOnly": True},
                {"name": "credentials", "mountPath": CREDENTIALS_DIR},
            ],
        )
        # A native sidecar (Kubernetes 1.29+): started before the handler, kept running (and
        # restarted) beside it, stopped after it; the handler starts once every file exists.
        container["restartPolicy"] = "Always"
        rendered = " && ".join(f"test -s {CREDENTIALS_DIR}/{f}" for f in sorted(agent.templates))
        container["startupProbe"] = {
            "exec": {"command": ["sh", "-c", rendered]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        }
        return config, volumes, container

    def _admission(
        self,
        name: str,
        args: HandlersArgs,
        admission: AdmissionSpec,
        opts: pulumi.ResourceOptions,
        depends_on: Sequence[pulumi.Resource],
    ) -> None:
        ns, handler = args.namespace, admission.handler
        server_name = self.server_name(args)
        ca_key, ca = pki.generate_ca(f"{name}-ca", "cct-admission-ca", opts)
        key, cert = pki.signed_pair(
            f"{name}-webhook",
            (ca_key, ca),
            common_name=server_name,
            dns_names=[
                handler.name,
                f"{handler.name}.{ns}",
                server_name,
                f"{server_name}.cluster.local",
            ],
            usage="server_auth",
            opts=opts,
        )
        private_key: pulumi.Output[str] = pulumi.Output.secret(key.private_key_pem)
        client_ca = (
            admission.client_ca_pem
            if admission.client_ca_pem is not None
            else self._apiserver_client(name, admission, opts)
        )
        tls_secret = k8s.core.v1.Secret(
            f"{name}-webhook-tls",
            metadata=kube.metadata(f"{handler.name}-tls", ns, "handler"),
            type="kubernetes.io/tls",
            string_data={
                "tls.crt": cert.cert_pem,
                "tls.key": private_key,
                "ca.crt": ca.cert_pem,
                "client-ca.crt": client_ca,
            },
            opts=opts,
        )
        with_tls = dataclasses.replace(
            handler,
            env={
                **handler.env,
                "CCT_ADMISSION_CLIENT_CA": f"{TLS_DIR}/client-ca.crt",
                "CCT_ADMISSION_CLIENT_NAMES": ",".join(admission.client_names),
            },
            secret_mounts={**handler.secret_mounts, f"{handler.name}-tls": TLS_DIR},
        )
        self._handler(name, args, with_tls, opts, depends_on=[tls_secret, *depends_on])
        # Only the API server's addresses (cluster specific, so configured); the client
        # certificate is what authenticates it, this keeps everyone else off the port.
        kube.ingress_policy(
            f"{name}-webhook-apiserver",
            f"{handler.name}-apiserver",
            ns,
            "handler",
            pod_selector=kube.selector(handler.name),
            ports=[WEBHOOK_PORT],
            peers=[{"ipBlock": {"cidr": cidr}} for cidr in admission.apiserver_cidrs],
            opts=opts,
        )
        self._webhook_configuration(
            name,
            args,
            admission,
            {
                "service": {
                    "name": handler.name,
                    "namespace": ns,
                    "port": WEBHOOK_PORT,
                    "path": "/validate",
                },
                "caBundle": ca.cert_pem.apply(_b64),
            },
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[tls_secret])),
        )
        self.webhook_ca_pem = ca.cert_pem
        self.webhook_server_name = pulumi.Output.from_input(server_name)

    @staticmethod
    def _webhook_configuration(
        name: str,
        args: HandlersArgs,
        admission: AdmissionSpec,
        client_config: Mapping[str, Any],
        opts: pulumi.ResourceOptions,
    ) -> None:
        handler = admission.handler
        namespaces = sorted(admission.workflow_namespaces or [args.namespace])
        k8s.admissionregistration.v1.ValidatingWebhookConfiguration(
            f"{name}-webhook",
            metadata={
                "name": f"cct-{handler.name}",
                "labels": kube.labels(handler.name, "handler"),
            },
            webhooks=[
                {
                    "name": f"workflows.{handler.name}.cct.io",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": admission.failure_policy,
                    "timeoutSeconds": admission.timeout_seconds,
                    "matchPolicy": "Equivalent",
                    # The API server sets this label to the namespace's name; no Workflow
                    # author can set or remove it, unlike an object label.
                    "namespaceSelector": {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/metadata.name",
                                "operator": "In",
                                "values": namespaces,
                            }
                        ]
                    },
                    "rules": [
                        {
                            "apiGroups": ["argoproj.io"],
                            "apiVersions": ["v1alpha1"],
                            # UPDATE too: an admitted spec must not change afterwards.
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["workflows"],
                            "scope": "Namespaced",
                        }
                    ],
                    "clientConfig": dict(client_config),
                }
            ],
            opts=opts,
        )

    def _apiserver_client(
        self, name: str, admission: AdmissionSpec, opts: pulumi.ResourceOptions
    ) -> pulumi.Output[str]:
        """A CA only for the API server's webhook client certificate, and that certificate;
        returns the CA the webhook trusts. A separate CA from the serving one, so no serving
        certificate can ever authenticate as a client."""
        ca_key, ca = pki.generate_ca(f"{name}-client-ca", "cct-admission-client-ca", opts)
        client_name = admission.client_names[0]
        key, cert = pki.signed_pair(
            f"{name}-apiserver-client",
            (ca_key, ca),
            common_name=client_name,
            dns_names=[client_name],
            usage="client_auth",
            opts=opts,
        )
        self.webhook_client_cert_pem = cert.cert_pem
        self.webhook_client_key_pem = pulumi.Output.secret(key.private_key_pem)
        return ca.cert_pem


def _b64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()
