"""The CCT stack: namespaces, the platform services, the handlers and the cloud accounts,
wired together from `Settings` and the generated `Content`.

Flows between the pieces are declared here once: who may call whom (network peers), which
handler reads which Vault path, and which URLs each handler is given.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_azure_native as azure_native
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import pulumi_vault as vault_provider

from components import kube
from components.alertmanager import WEB_PORT as ALERTMANAGER_PORT
from components.alertmanager import Alertmanager, AlertmanagerArgs
from components.argo import ArgoWorkflows, ArgoWorkflowsArgs, controller_user
from components.aws_account import AwsAccount, AwsAccountArgs, export_bucket_name
from components.azure_subscription import AzureSubscription, AzureSubscriptionArgs
from components.derived import derived_secret
from components.fluentbit import FluentBit, FluentBitArgs
from components.gcp_project import GcpProject, GcpProjectArgs
from components.grafana import Grafana, GrafanaArgs
from components.handlers import (
    CREDENTIALS_DIR,
    HTTP_PORT,
    TLS_DIR,
    WEBHOOK_PORT,
    AdmissionSpec,
    Handlers,
    HandlersArgs,
    HandlerSpec,
    MigrationSpec,
    VaultAgentSpec,
)
from components.kafka import METRICS_PORT as KAFKA_METRICS_PORT
from components.kafka import TLS_PORT as KAFKA_TLS_PORT
from components.kafka import Kafka, KafkaArgs, TopicSpec, ca_secret, user_secret
from components.kube import SecretEnv
from components.namespace import VAULT_CLIENT_LABEL, Namespace, NamespaceArgs
from components.postgres import METRICS_PORT as PG_METRICS_PORT
from components.postgres import Postgres, PostgresArgs
from components.vault import CA_CONFIG_MAP as VAULT_CA_CONFIG_MAP
from components.vault import CA_FILE as VAULT_CA_FILE
from components.vault import IMAGE as VAULT_IMAGE
from components.vault import SERVER_PODS as VAULT_SERVER_PODS
from components.vault import (
    Vault,
    VaultArgs,
    VaultAwsEngine,
    VaultAzureEngine,
    VaultDatabaseEngine,
    VaultGcpEngine,
    VaultGrant,
    VaultTls,
)
from components.victoriametrics import VictoriaMetrics, VictoriaMetricsArgs, base_urls
from infra.config import Settings, VaultSettings
from infra.content import Content
from lambdas.common.kafka import HANDLER_GRANTS, KafkaGrant
from lambdas.steps.templates import KAFKA_CA_DIR, KAFKA_USER_DIR, VAULT_CA_DIR
from lambdas.store.grants import READER_SCHEMAS, group_role

DAY_MS = 24 * 3600 * 1000
# docs/architecture.md section 5.
TOPICS = (
    TopicSpec("cct.cost.anomalies", partitions=6, retention_ms=7 * DAY_MS),
    TopicSpec("cct.cost.anomalies.dlq", partitions=1, retention_ms=30 * DAY_MS),
    TopicSpec("cct.cost.anomalies.unmapped", partitions=1, retention_ms=30 * DAY_MS),
    TopicSpec("cct.optimization.results", partitions=3, retention_ms=30 * DAY_MS),
)
STEPS_SERVICE_ACCOUNT = "cct-steps"
PREFIX = "cct"
EXPORT_PREFIX = "focus"
CNPG_WEBHOOK_PORT = 9443
FLUENTBIT_METRICS_PORT = 2020
ADMISSION_METRICS_PORT = 8080
POLICIES_DIR = "/etc/cct/policies"
PLAYBOOKS_DIR = "/etc/cct/playbooks"
SECRETS_DIR = "/etc/cct/secrets"
DETECTOR_STATE_DIR = "/var/lib/cct/detector"
# The steps' database login (a member of the application owner role).
STEPS_DB_ROLE = "cct_steps"
# The application owner role (CloudNativePG's `cct` database owner).
APP_DB_ROLE = "cct"
# Handlers that use PostgreSQL (their pods are the database's network clients too).
PG_HANDLERS = ("collector", "billing-loader", "detector", "trigger", "admission")
# Each of them logs in as a short-lived user of its own Vault database role: its Vault Agent
# sidecar renders the DSN into this file (CCT_PG_DSN_FILE) and again for every new lease.
PG_DSN_FILE = "pg-dsn"
# The schema migration Job: the one pod that gets the application owner's login.
MIGRATION_JOB = "db-migrate"
# The billing loader's AWS identity: reads the FOCUS export, nothing else.
BILLING_READ_ROLE = f"{PREFIX}-billing-read"
# Vault Agent renders the billing loader's STS credentials as a shared credentials file, which
# boto3 reads through AWS_SHARED_CREDENTIALS_FILE. An hour: the CronJob's run deadline.
AWS_CREDENTIALS_FILE = "aws-credentials"
AWS_CREDENTIALS_TEMPLATE = f"""{{{{ with secret "aws/sts/{BILLING_READ_ROLE}" "ttl=1h" }}}}[default]
aws_access_key_id = {{{{ .Data.access_key }}}}
aws_secret_access_key = {{{{ .Data.secret_key }}}}
aws_session_token = {{{{ .Data.security_token }}}}
{{{{ end }}}}
"""
ZENDUTY_URL = "https://www.zenduty.com/api/integration/alertmanager/"
# Argo labels every step pod with its workflow's name.
WORKFLOW_PODS = {
    "matchExpressions": [{"key": "workflows.argoproj.io/workflow", "operator": "Exists"}]
}


def pg_dsn_template(handler: str, host: str) -> str:
    """Vault Agent template of a handler's DSN: a user of its own database role. Username and
    password are URL-escaped so any generated character is safe in the URI."""
    return (
        f'{{{{ with secret "database/creds/{PREFIX}-{handler}" }}}}'
        "postgresql://{{ .Data.username | urlquery }}:{{ .Data.password | urlquery }}"
        f"@{host}:5432/cct?sslmode=require"
        "{{ end }}\n"
    )


def pg_handlers(settings: Settings) -> list[str]:
    """The handlers that use PostgreSQL; all of them write (inventory, billing, anomalies,
    workflow runs, admission decisions). The billing loader exists only with AWS."""
    return [h for h in PG_HANDLERS if h != "billing-loader" or settings.aws]


def database_roles(settings: Settings) -> dict[str, str]:
    """Vault database role per PostgreSQL handler -> the PostgreSQL role its users join: the
    handler's own group role, which holds exactly its table privileges
    (lambdas.store.grants), never the application owner."""
    return {f"{PREFIX}-{h}": group_role(h) for h in pg_handlers(settings)}


def vault_access(settings: Settings) -> dict[str, list[VaultGrant]]:
    """Which Vault paths each service account may use; one Kubernetes auth role and one
    policy each. The steps call exactly what lambdas.steps.credentials calls: AWS
    assumed-role credentials by POST to `aws/sts/<role>`, Azure by GET `azure/creds/<role>`,
    GCP roleset tokens by GET `gcp/token/<roleset>`, then the lease and the token are revoked.
    Each PostgreSQL handler may read only its own database role's credentials (and renew its
    own token and leases, which Vault Agent does); the billing
    loader also gets the export-read AWS role. The bridge needs nothing from Vault and gets no
    role at all: a login that grants nothing is attack surface without a use."""
    steps = [
        VaultGrant("sys/leases/revoke", ("update",)),
        VaultGrant("auth/token/revoke-self", ("update",)),
    ]
    if settings.aws:
        steps.append(VaultGrant("aws/sts/cct-remediation", ("update",)))
    if settings.azure:
        steps.append(VaultGrant("azure/creds/cct-remediation"))
    if settings.gcp:
        steps.append(VaultGrant("gcp/token/cct-remediation"))
    access = {STEPS_SERVICE_ACCOUNT: steps}
    # Vault Agent renews its token and the database lease up to their max TTL; the roles
    # carry no default policy, so those two paths are granted here or every renewal fails.
    renew = [
        VaultGrant("sys/leases/renew", ("update",)),
        VaultGrant("auth/token/renew-self", ("update",)),
    ]
    for handler in pg_handlers(settings):
        access[handler] = [VaultGrant(f"database/creds/{PREFIX}-{handler}"), *renew]
    if settings.aws:
        access["billing-loader"].append(VaultGrant(f"aws/sts/{BILLING_READ_ROLE}", ("update",)))
    return access


def _kafka_mounts(handler: str) -> dict[str, str]:
    return {user_secret(handler): KAFKA_USER_DIR, ca_secret(): KAFKA_CA_DIR}


def _strimzi_acls(grants: tuple[KafkaGrant, ...]) -> list[dict[str, Any]]:
    """HANDLER_GRANTS in the KafkaUser's `spec.authorization.acls` form."""
    return [
        {
            "resource": {
                "type": g.resource,
                "name": g.name,
                "patternType": "prefix" if g.pattern == "prefixed" else "literal",
            },
            "operations": list(g.operations),
            "host": "*",
        }
        for g in grants
    ]


def build(settings: Settings, content: Content) -> dict[str, pulumi.Input[Any]]:
    """Declare every resource of one stack; returns the stack outputs."""
    ns, platform = settings.namespace, settings.platform_namespace
    ha = settings.high_availability
    replicas = max(settings.replicas, 2) if ha else settings.replicas
    # ConfigMaps are updated in place: by default the provider replaces (deletes, then
    # creates) a named ConfigMap whose data changes, so a policy edit would leave a window
    # with no policy ConfigMap (found by the first real `pulumi preview`). The handlers
    # reload mounted files when the kubelet updates them.
    k8s_provider = k8s.Provider(
        "kubernetes",
        context=settings.kube_context,
        enable_server_side_apply=True,
        enable_config_map_mutable=True,
    )
    app_ns = Namespace(
        "namespace-app",
        NamespaceArgs(
            name=ns, internal_namespaces=[platform], apiserver_cidrs=settings.apiserver_cidrs
        ),
        opts=pulumi.ResourceOptions(providers=[k8s_provider]),
    )
    platform_ns = Namespace(
        "namespace-platform",
        NamespaceArgs(
            name=platform,
            apiserver_cidrs=settings.apiserver_cidrs,
            internal_namespaces=[ns],
            webhook_ports=[CNPG_WEBHOOK_PORT],
        ),
        opts=pulumi.ResourceOptions(providers=[k8s_provider]),
    )
    in_cluster = pulumi.ResourceOptions(providers=[k8s_provider], depends_on=[app_ns, platform_ns])
    vault_address = f"https://vault.{platform}.svc:8200"

    def pod(name: str) -> dict[str, Any]:
        return kube.pod_peer(ns, kube.selector(name))

    workflow_pods = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "podSelector": WORKFLOW_PODS,
    }
    grafana_pods = kube.pod_peer(ns, {"app.kubernetes.io/name": "grafana"})

    postgres = Postgres(
        "postgres",
        PostgresArgs(
            namespace=ns,
            operator_namespace=platform,
            clients=[
                *(pod(h) for h in (*PG_HANDLERS, MIGRATION_JOB)),
                grafana_pods,
                workflow_pods,
                # Vault's database engine creates and drops the handlers' users.
                kube.pod_peer(platform, VAULT_SERVER_PODS),
            ],
            secret_seed=settings.secret_seed,
            operator_webhooks_fail_closed=not settings.nodeless,
            instances=3 if ha else 1,
            # Grafana reads the reporting views only (READER_SCHEMAS); pg_read_all_data let it
            # read every table, decisions and dead-lettered payloads included.
            logins={"grafana": [group_role("grafana")], STEPS_DB_ROLE: [APP_DB_ROLE]},
            group_roles=[group_role(h) for h in (*PG_HANDLERS, *READER_SCHEMAS)],
            storage_class=settings.storage_class,
            high_availability=ha,
        ),
        opts=in_cluster,
    )
    kafka = Kafka(
        "kafka",
        KafkaArgs(
            namespace=ns,
            operator_namespace=platform,
            topics=TOPICS,
            # The steps publish results from the workflow's pods.
            clients=[pod("bridge"), pod("trigger"), workflow_pods],
            users={user_secret(h): _strimzi_acls(g) for h, g in HANDLER_GRANTS.items()},
            replicas=3 if ha else 1,
            storage_class=settings.storage_class,
            high_availability=ha,
        ),
        opts=in_cluster,
    )
    # Where samples are written and where queries go (one URL for a single node).
    vm_write_url, vm_read_url = base_urls(ns, ha)
    kafka_bootstrap = f"cct-kafka-bootstrap.{ns}.svc:{KAFKA_TLS_PORT}"

    def kafka_env(handler: str) -> dict[str, str]:
        """A handler's Kafka identity: its KafkaUser over TLS (lambdas.common.kafka)."""
        return {
            "CCT_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CCT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CCT_KAFKA_USERNAME": user_secret(handler),
            "CCT_KAFKA_PASSWORD_FILE": f"{KAFKA_USER_DIR}/password",
            "CCT_KAFKA_CA_FILE": f"{KAFKA_CA_DIR}/ca.crt",
        }

    pg_dsn_env = {"CCT_PG_DSN_FILE": f"{CREDENTIALS_DIR}/{PG_DSN_FILE}"}

    def vault_agent(handler: str, **templates: str) -> VaultAgentSpec:
        """The handler's Vault Agent sidecar: its PostgreSQL DSN file, plus `templates`."""
        return VaultAgentSpec(
            address=vault_address,
            role=handler,
            image=VAULT_IMAGE,
            templates={PG_DSN_FILE: pg_dsn_template(handler, f"cct-pg-rw.{ns}.svc"), **templates},
            ca_config_map=VAULT_CA_CONFIG_MAP,
        )

    # Tokens between CCT's own pieces are generated, never configured.
    bridge_token = derived_secret(settings.secret_seed, "bridge-token")
    collector_token = derived_secret(settings.secret_seed, "collector-token")
    k8s.core.v1.Secret(
        "handler-secrets",
        metadata=kube.metadata("cct-handler-secrets", ns, "handler"),
        string_data={
            "collector-token": collector_token,
            "ingest-token": settings.fluentbit_token,
        },
        opts=in_cluster,
    )
    k8s.core.v1.Secret(
        "bridge-files",
        metadata=kube.metadata("bridge-files", ns, "handler"),
        string_data={
            "bridge-token": bridge_token,
            "zenduty-url": pulumi.Output.concat(ZENDUTY_URL, settings.zenduty_integration_key, "/"),
        },
        opts=in_cluster,
    )
    alertmanager_args = AlertmanagerArgs(
        namespace=ns,
        config_yaml=content.alertmanager_config,
        secret_files={PurePosixPath(content.alertmanager_token_file).name: bridge_token},
        clients=[pod("vmalert"), pod("detector"), grafana_pods],
        replicas=3 if ha else 1,
        high_availability=ha,
        storage_class=settings.storage_class,
    )
    # Replicas gossip silences and notifications, not alerts: the detector and vmalert post
    # every alert to every replica, not to the Service (which picks one).
    alertmanager_urls = alertmanager_args.replica_urls()
    # The billing loader reads the AWS FOCUS export (the only export it reads from object
    # storage); without AWS there is nothing for it to load.
    billing_loader = (
        [
            HandlerSpec(
                "billing-loader",
                (
                    "billing",
                    "load",
                    f"s3://{export_bucket_name(PREFIX, settings.aws.account_id)}/{EXPORT_PREFIX}/",
                ),
                port=None,
                schedule="15 * * * *",
                env={
                    "CCT_VM_WRITE_URL": vm_write_url,
                    "CCT_VM_READ_URL": vm_read_url,
                    "AWS_REGION": settings.aws.region,
                    "AWS_SHARED_CREDENTIALS_FILE": f"{CREDENTIALS_DIR}/{AWS_CREDENTIALS_FILE}",
                    **pg_dsn_env,
                },
                internet=True,
                resources=kube.Resources("250m", "512Mi", "2", "2Gi"),
                vault_agent=vault_agent(
                    "billing-loader", **{AWS_CREDENTIALS_FILE: AWS_CREDENTIALS_TEMPLATE}
                ),
            )
        ]
        if settings.aws
        else []
    )
    handlers = Handlers(
        "handlers",
        HandlersArgs(
            namespace=ns,
            image=settings.image,
            high_availability=ha,
            storage_class=settings.storage_class,
            config_maps={"cct-policies": content.policies, "cct-playbooks": content.playbooks},
            migration=MigrationSpec(owner_dsn=SecretEnv("cct-pg-app", "uri"), name=MIGRATION_JOB),
            # Not configured yet, or still on its plain listener during the upgrade to TLS
            # (docs/deployment.md): the agents cannot log in until Vault serves TLS.
            vault_pending=not settings.vault.configure or settings.vault.plain_http,
            handlers=[
                *billing_loader,
                HandlerSpec(
                    "collector",
                    ("serve", "collector"),
                    replicas=replicas,
                    env={"CCT_VM_WRITE_URL": vm_write_url, **pg_dsn_env},
                    secret_env={
                        "CCT_COLLECTOR_TOKEN": SecretEnv("cct-handler-secrets", "collector-token"),
                    },
                    clients=[pod("fluent-bit")],
                    # No internet egress: it talks to PostgreSQL, VictoriaMetrics and Vault
                    # only. Its AWS inventory sync (CCT_COLLECTOR_SYNC_*, off by default)
                    # is not switched on by the bundle, which gives it no AWS identity.
                    resources=kube.Resources("250m", "256Mi", "2", "1Gi"),
                    vault_agent=vault_agent("collector"),
                ),
                HandlerSpec(
                    "detector",
                    ("serve", "detector"),
                    # One detector: a second would evaluate the same series twice per cycle
                    # and post every alert twice.
                    singleton=True,
                    env={
                        "CCT_VM_READ_URL": vm_read_url,
                        "CCT_ALERTMANAGER_URL": ",".join(alertmanager_urls),
                        # What it owes Alertmanager and PostgreSQL outlives a crash.
                        "CCT_DETECTOR_SPOOL_FILE": f"{DETECTOR_STATE_DIR}/spool.json",
                        **pg_dsn_env,
                    },
                    state_dir=DETECTOR_STATE_DIR,
                    resources=kube.Resources("500m", "512Mi", "2", "2Gi"),
                    vault_agent=vault_agent("detector"),
                ),
                HandlerSpec(
                    "bridge",
                    ("serve", "bridge"),
                    replicas=replicas,
                    env={
                        **kafka_env("bridge"),
                        "CCT_BRIDGE_TOKEN_FILE": f"{SECRETS_DIR}/bridge-token",
                        "CCT_BRIDGE_ZENDUTY_URL_FILE": f"{SECRETS_DIR}/zenduty-url",
                    },
                    secret_mounts={"bridge-files": SECRETS_DIR, **_kafka_mounts("bridge")},
                    clients=[pod("alertmanager")],
                    # Relays critical alerts to Zenduty.
                    internet=True,
                    # Paging must not wait for Kafka: through a broker outage the bridge stays
                    # in its Service, relays critical alerts to Zenduty, and answers /v1/alerts
                    # with 503 itself (Alertmanager retries); /readyz still says why.
                    ready_path="/healthz",
                ),
                HandlerSpec(
                    "trigger",
                    ("serve", "trigger"),
                    replicas=replicas,
                    env={
                        **kafka_env("trigger"),
                        "CCT_TRIGGER_BACKEND": "argo",
                        "CCT_TRIGGER_ARGO_NAMESPACE": ns,
                        "CCT_PLAYBOOKS_FILE": f"{PLAYBOOKS_DIR}/playbooks.yaml",
                        "CCT_POLICY_DIR": POLICIES_DIR,
                        **pg_dsn_env,
                    },
                    config_mounts={"cct-policies": POLICIES_DIR, "cct-playbooks": PLAYBOOKS_DIR},
                    secret_mounts=_kafka_mounts("trigger"),
                    kube_api=True,
                    vault_agent=vault_agent("trigger"),
                ),
            ],
            admission=AdmissionSpec(
                handler=HandlerSpec(
                    "admission",
                    ("serve", "admission"),
                    port=WEBHOOK_PORT,
                    metrics_port=ADMISSION_METRICS_PORT,
                    replicas=replicas,
                    env={
                        "CCT_POLICY_DIR": POLICIES_DIR,
                        "CCT_ADMISSION_TLS_CERT": f"{TLS_DIR}/tls.crt",
                        "CCT_ADMISSION_TLS_KEY": f"{TLS_DIR}/tls.key",
                        "CCT_ADMISSION_PORT": str(WEBHOOK_PORT),
                        "CCT_ADMISSION_METRICS_PORT": str(ADMISSION_METRICS_PORT),
                        "CCT_ADMISSION_CONTROLLER_USERS": controller_user(platform),
                        # The server's own failure mode follows the webhook's failure policy.
                        "CCT_ADMISSION_FAILURE_MODE": (
                            "closed" if settings.webhook_failure_policy == "Fail" else "open"
                        ),
                        **pg_dsn_env,
                    },
                    config_mounts={"cct-policies": POLICIES_DIR},
                    vault_agent=vault_agent("admission"),
                ),
                apiserver_cidrs=settings.apiserver_cidrs,
                # The trigger creates its Workflows in the handlers' namespace.
                workflow_namespaces=[ns],
                failure_policy=settings.webhook_failure_policy,
                url=settings.webhook_url,
                url_ca_pem=settings.webhook_ca_pem,
            ),
        ),
        opts=in_cluster,
    )
    fluentbit = FluentBit(
        "fluent-bit",
        FluentBitArgs(
            namespace=ns,
            config_files=content.fluentbit_files,
            main_file=content.fluentbit_main,
            secret_env={
                "CCT_INGEST_TOKEN": SecretEnv("cct-handler-secrets", "ingest-token"),
                "CCT_COLLECTOR_TOKEN": SecretEnv("cct-handler-secrets", "collector-token"),
            },
            tls_secret_name=settings.fluentbit_tls_secret,
            replicas=replicas,
            high_availability=ha,
        ),
        opts=in_cluster,
    )
    metrics = VictoriaMetrics(
        "victoria-metrics",
        VictoriaMetricsArgs(
            namespace=ns,
            scrape_namespaces=[ns],
            scrape_ports=[
                HTTP_PORT, ADMISSION_METRICS_PORT, FLUENTBIT_METRICS_PORT,
                ALERTMANAGER_PORT, KAFKA_METRICS_PORT, PG_METRICS_PORT,
            ],
            rules=content.vmalert_rules,
            alertmanager_urls=alertmanager_urls,
            writers=[pod("collector"), pod("billing-loader")],
            readers=[pod("detector"), pod("billing-loader"), grafana_pods],
            storage_class=settings.storage_class,
            replicas=replicas,
            high_availability=ha,
        ),
        opts=in_cluster,
    )  # fmt: skip
    alertmanager = Alertmanager("alertmanager", alertmanager_args, opts=in_cluster)
    step_env = {
        "VAULT_ADDR": vault_address,
        "VAULT_CACERT": f"{VAULT_CA_DIR}/{VAULT_CA_FILE}",
        "CCT_STEP_VAULT_K8S_ROLE": STEPS_SERVICE_ACCOUNT,
        **kafka_env("steps"),
    }
    if settings.azure:
        step_env["CCT_STEP_AZURE_TENANT_ID"] = settings.azure.tenant_id
    argo = ArgoWorkflows(
        "argo-workflows",
        ArgoWorkflowsArgs(
            namespace=ns,
            operator_namespace=platform,
            workflow_templates=content.workflow_templates,
            trigger_service_account="trigger",
            workflow_service_account=STEPS_SERVICE_ACCOUNT,
            apiserver_cidrs=settings.apiserver_cidrs,
            step_env=step_env,
            step_secret_env={
                "CCT_PG_DSN": pulumi.Output.concat(
                    f"postgresql://{STEPS_DB_ROLE}:",
                    postgres.passwords[STEPS_DB_ROLE],
                    f"@cct-pg-rw.{ns}.svc:5432/cct?sslmode=require",
                )
            },
            high_availability=ha,
        ),
        opts=in_cluster,
    )

    if settings.vault.plain_http:
        pulumi.log.warn(
            f"cct:vaultAddress={settings.vault.address} is Vault's old plain listener: only for"
            " the upgrade to TLS (docs/deployment.md); set it to https once the servers serve TLS"
        )
    # Only a configured Vault (initialised, unsealed, token set) gets a provider.
    vault_providers: list[pulumi.ProviderResource] = []
    if settings.vault.configure:
        vault_providers.append(
            vault_provider.Provider(
                "vault",
                address=settings.vault.address,
                token=settings.vault.token,
                ca_cert_file=settings.vault.ca_file,
            )
        )
    vault = Vault(
        "vault",
        VaultArgs(
            namespace=platform,
            clients_namespace=ns,
            clients=[kube.pod_peer(ns, {VAULT_CLIENT_LABEL: "true"}), workflow_pods],
            access=vault_access(settings),
            configure=settings.vault.configure,
            # Vault runs as the role the CCT roles trust (IRSA), with no static key.
            aws=VaultAwsEngine(
                region=settings.aws.region, role_arn=settings.aws.vault_principal_arn
            )
            if settings.aws
            else None,
            azure=VaultAzureEngine(
                subscription_id=settings.azure.subscription_id,
                tenant_id=settings.azure.tenant_id,
                client_id=settings.azure.vault_client_id,
                client_secret=settings.azure.vault_client_secret,
            )
            if settings.azure
            else None,
            gcp=VaultGcpEngine(credentials=settings.gcp.vault_credentials)
            if settings.gcp
            else None,
            database=VaultDatabaseEngine(
                host=postgres.host,
                database="cct",
                username=postgres.vault_username,
                password=postgres.vault_password,
                roles=database_roles(settings),
            ),
            high_availability=ha,
            # The operator's certificate (cct:vaultTlsSecret), else a generated one.
            tls=(
                VaultTls(settings.vault.tls_secret, settings.vault.ca_pem)
                if settings.vault.tls_secret and settings.vault.ca_pem
                else None
            ),
            storage_class=settings.storage_class,
        ),
        opts=pulumi.ResourceOptions(
            providers=[k8s_provider, *vault_providers], depends_on=[app_ns, platform_ns]
        ),
    )
    if settings.vault.ca_pem is not None and settings.vault.tls_secret is None:
        vault.ca_pem.apply(lambda pem: warn_if_vault_ca_is_stale(pem, settings.vault))
    grafana = Grafana(
        "grafana",
        GrafanaArgs(
            namespace=ns,
            datasources=content.grafana_datasources,
            dashboard_providers=content.grafana_dashboard_providers,
            dashboards=content.dashboards,
            secret_seed=settings.secret_seed,
            env={
                "CCT_GRAFANA_VM_URL": vm_read_url,
                "CCT_GRAFANA_PG_HOST": f"cct-pg-rw.{ns}.svc:5432",
                "CCT_GRAFANA_PG_USER": "grafana",
                "CCT_GRAFANA_PG_DATABASE": "cct",
                "CCT_GRAFANA_PG_SSLMODE": "require",
            },
            secret_env={"CCT_GRAFANA_PG_PASSWORD": SecretEnv("cct-pg-grafana", "password")},
            hostname=settings.grafana_hostname,
            replicas=replicas,
            high_availability=ha,
        ),
        opts=in_cluster,
    )

    outputs: dict[str, pulumi.Input[Any]] = {
        "grafanaUrl": grafana.url,
        "fluentbitEndpoint": settings.fluentbit_public_url,
        "fluentbitInternalEndpoint": fluentbit.endpoint,
        "kafkaBootstrap": kafka.bootstrap,
        "kafkaTopics": kafka.topic_names,
        "victoriaMetricsWriteUrl": metrics.write_url,
        "victoriaMetricsReadUrl": metrics.read_url,
        "vmalertUrl": metrics.vmalert_url,
        "alertmanagerUrl": alertmanager.url,
        "postgresHost": postgres.host,
        "workflowTemplates": argo.template_names,
        "vaultAddress": vault.address,
        # The CA of Vault's certificate, for cct:vaultCaFile and the operator's CLI.
        "vaultCaPem": vault.ca_pem,
        "vaultPolicies": vault.policy_names,
        "handlerUrls": handlers.urls,
        # For kube-apiserver's AdmissionConfiguration (docs/admission.md): the webhook only
        # hears a caller presenting this certificate.
        "admissionClientCertPem": handlers.webhook_client_cert_pem,
        "admissionClientKeyPem": handlers.webhook_client_key_pem,
    }
    outputs.update(_clouds(settings, content, vault, vault_providers))
    return outputs


def warn_if_vault_ca_is_stale(generated: str, vault: VaultSettings) -> None:
    """A stale cct:vaultCaFile (the CA was renewed, or the file is another stack's) makes the
    provider refuse Vault's certificate: say which file and how to refresh it."""
    if vault.ca_pem is not None and generated.strip() != vault.ca_pem.strip():
        pulumi.log.warn(
            f"cct:vaultCaFile={vault.ca_file!r} is not the CA of Vault's certificate: refresh it"
            " with `pulumi stack output vaultCaPem > <that file>`"
        )


def _clouds(
    settings: Settings,
    content: Content,
    vault: Vault,
    vault_providers: list[pulumi.ProviderResource],
) -> dict[str, pulumi.Input[Any]]:
    outputs: dict[str, pulumi.Input[Any]] = {}
    tags = {"cct.io/environment": settings.environment}
    if settings.aws:
        provider = aws.Provider("aws", region=settings.aws.region)
        forwarder = content.forwarders["aws"]
        account = AwsAccount(
            "aws",
            AwsAccountArgs(
                account_id=settings.aws.account_id,
                region=settings.aws.region,
                vault_principal_arn=settings.aws.vault_principal_arn,
                fluentbit_url=settings.fluentbit_public_url,
                fluentbit_token=settings.fluentbit_token,
                forwarder_code=forwarder.archive,
                forwarder_handler=forwarder.entry_point,
                event_pattern=content.aws_event_pattern,
                name_prefix=PREFIX,
                export_prefix=EXPORT_PREFIX,
                remediation_actions=content.remediation.aws,
                vault_backend=vault.aws_path,
                tags=tags,
            ),
            opts=pulumi.ResourceOptions(providers=[provider, *vault_providers]),
        )
        outputs |= {
            "awsExportBucket": account.export_bucket,
            "awsRemediationRoleArn": account.remediation_role_arn,
            "awsForwarderArn": account.forwarder_arn,
        }
    if settings.azure:
        provider = azure_native.Provider(
            "azure",
            subscription_id=settings.azure.subscription_id,
            tenant_id=settings.azure.tenant_id,
            location=settings.azure.location,
        )
        forwarder = content.forwarders["azure"]
        subscription = AzureSubscription(
            "azure",
            AzureSubscriptionArgs(
                subscription_id=settings.azure.subscription_id,
                location=settings.azure.location,
                fluentbit_url=settings.fluentbit_public_url,
                fluentbit_token=settings.fluentbit_token,
                forwarder_package=forwarder.archive,
                remediation_actions=content.remediation.azure,
                remediation_application_object_id=settings.azure.remediation_app_object_id,
                remediation_principal_id=settings.azure.remediation_principal_id,
                vault_backend=vault.azure_path,
                tags=tags,
            ),
            opts=pulumi.ResourceOptions(providers=[provider, *vault_providers]),
        )
        outputs |= {
            "azureExportContainer": subscription.export_container,
            "azureStorageAccount": subscription.storage_account,
            "azureFunctionApp": subscription.function_app,
        }
    if settings.gcp:
        provider = gcp.Provider("gcp", project=settings.gcp.project, region=settings.gcp.region)
        forwarder = content.forwarders["gcp"]
        project = GcpProject(
            "gcp",
            GcpProjectArgs(
                project=settings.gcp.project,
                region=settings.gcp.region,
                fluentbit_url=settings.fluentbit_public_url,
                fluentbit_token=settings.fluentbit_token,
                forwarder_source=forwarder.archive,
                forwarder_entry_point=forwarder.entry_point,
                log_filter=content.gcp_log_filter,
                remediation_permissions=content.remediation.gcp,
                vault_backend=vault.gcp_path,
                labels={"cct-io-environment": settings.environment},
            ),
            opts=pulumi.ResourceOptions(providers=[provider, *vault_providers]),
        )
        outputs |= {
            "gcpBillingDataset": project.billing_dataset,
            "gcpAuditTopic": project.audit_topic,
            "gcpVaultServiceAccount": project.vault_service_account,
        }
    return outputs
