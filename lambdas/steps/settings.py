"""Settings of the workflow steps, read once from CCT_* (and VAULT_ADDR) environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lambdas.common.kafka import KafkaAuth
from lambdas.common.settings import SettingsError, env_float, env_int, env_str


@dataclass(frozen=True)
class StepSettings:
    """Where credentials and clouds are, and the thresholds the pure core uses.

    vault_addr: Vault's URL (`VAULT_ADDR`). Every cloud credential comes from Vault.
    vault_ca_file: the CA Vault's certificate is verified against (`VAULT_CACERT`, as the
        Vault CLI reads it; in the cluster the ConfigMap `vault-ca`); empty: the system's
        trust store.
    vault_k8s_role / vault_k8s_mount: Kubernetes auth role and mount the pod logs in with.
    vault_jwt_path: the pod's service-account token, which Kubernetes auth verifies.
    vault_aws_mount / vault_aws_role / vault_aws_ttl: AWS secrets engine; credentials are an
        assumed role read from `<mount>/sts/<role>` with `vault_aws_ttl` (CCT_STEP_VAULT_AWS_TTL;
        short: 15m, the Vault token's own TTL; a credential that expires in a longer wait
        makes the step retryable, and the retry logs in again).
    vault_azure_mount / vault_azure_role, azure_tenant_id: Azure secrets engine; the
        issued service principal is exchanged for an ARM token at the tenant's login URL.
    vault_gcp_mount / vault_gcp_roleset: GCP secrets engine roleset of type access_token.
    aws_endpoint_url / azure_management_url / azure_login_url / gcp_api_url: the cloud API
        base URLs. Defaults are the public endpoints; tests point them at moto and at the
        replay server.
    backend: CCT_STEP_BACKEND, `local` or `argo`, written to optimization_runs.backend when a
        step creates the run row.
    rightsize_target_cpu_percent: a smaller size is chosen only while the CPU projected on
        it stays at or below this (60 %: headroom for peaks above the hourly averages).
    idle_cpu_percent: a VM whose hourly maximum CPU never exceeded this is idle (5 %).
    lookback_hours: how much metric history analyze reads (14 days: two weekly cycles).
    min_datapoints: hourly utilization points needed before CCT acts on them (24: a full
        day, so a VM is never judged idle from one quiet hour).
    tiering_after_days: objects older than this move to the colder class (30: S3's minimum
        for STANDARD_IA).
    http_timeout_s: per-request timeout for Vault, Azure and GCP calls.
    operation_timeout_s: how long to wait for a cloud operation (stop, resize) to finish.
    poll_initial_s / poll_max_s: CCT_STEP_POLL_INITIAL_S (0.25 s) and CCT_STEP_POLL_MAX_S
        (5 s): the first wait between polls of a running operation, doubled up to the
        largest (`lambdas.steps.polling`): quick operations end in a fraction of a second,
        slow ones are polled every few seconds.
    kafka: where `record` publishes the run's result event (`CCT_KAFKA_BOOTSTRAP`, with the
        steps' Kafka identity: `KafkaAuth`);
        unset, nothing is published.
    results_topic: the topic of those events (`cct.optimization.results`).
    publish_timeout_s: how long `record` waits for the broker's acknowledgement before it
        exits retryable (10 s).
    """

    vault_addr: str
    vault_ca_file: str
    vault_k8s_role: str
    vault_k8s_mount: str
    vault_jwt_path: str
    vault_aws_mount: str
    vault_aws_role: str
    vault_aws_ttl: str
    vault_azure_mount: str
    vault_azure_role: str
    azure_tenant_id: str
    vault_gcp_mount: str
    vault_gcp_roleset: str
    aws_endpoint_url: str | None
    azure_management_url: str
    azure_login_url: str
    gcp_api_url: str | None
    backend: str
    rightsize_target_cpu_percent: float
    idle_cpu_percent: float
    lookback_hours: int
    min_datapoints: int
    tiering_after_days: int
    http_timeout_s: float
    operation_timeout_s: float
    poll_initial_s: float
    poll_max_s: float
    kafka: KafkaAuth | None
    results_topic: str
    publish_timeout_s: float
    # CCT_PG_DSN: where `record` and the pre-checks read and write the results store (in the
    # cluster rendered by Vault Agent; unset, steps that need it fail retryable).
    pg_dsn: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> StepSettings:
        backend = env_str("CCT_STEP_BACKEND", "local")
        if backend not in {"local", "argo"}:
            raise SettingsError(f"CCT_STEP_BACKEND={backend!r} must be local or argo")
        poll_initial_s = env_float("CCT_STEP_POLL_INITIAL_S", 0.25)
        poll_max_s = env_float("CCT_STEP_POLL_MAX_S", 5.0)
        if not 0 < poll_initial_s <= poll_max_s:
            raise SettingsError(
                "CCT_STEP_POLL_INITIAL_S must be > 0 and at most CCT_STEP_POLL_MAX_S"
            )
        return cls(
            vault_addr=env_str("VAULT_ADDR", "https://vault.cct-platform.svc:8200").rstrip("/"),
            vault_ca_file=_ca_file(os.environ.get("VAULT_CACERT", "")),
            vault_k8s_role=env_str("CCT_STEP_VAULT_K8S_ROLE", "cct-remediation"),
            vault_k8s_mount=env_str("CCT_STEP_VAULT_K8S_MOUNT", "kubernetes"),
            vault_jwt_path=env_str(
                "CCT_STEP_VAULT_JWT_PATH", "/var/run/secrets/kubernetes.io/serviceaccount/token"
            ),
            vault_aws_mount=env_str("CCT_STEP_VAULT_AWS_MOUNT", "aws"),
            vault_aws_role=env_str("CCT_STEP_VAULT_AWS_ROLE", "cct-remediation"),
            vault_aws_ttl=env_str("CCT_STEP_VAULT_AWS_TTL", "15m"),
            vault_azure_mount=env_str("CCT_STEP_VAULT_AZURE_MOUNT", "azure"),
            vault_azure_role=env_str("CCT_STEP_VAULT_AZURE_ROLE", "cct-remediation"),
            azure_tenant_id=env_str("CCT_STEP_AZURE_TENANT_ID", "common"),
            vault_gcp_mount=env_str("CCT_STEP_VAULT_GCP_MOUNT", "gcp"),
            vault_gcp_roleset=env_str("CCT_STEP_VAULT_GCP_ROLESET", "cct-remediation"),
            aws_endpoint_url=os.environ.get("CCT_AWS_ENDPOINT_URL") or None,
            azure_management_url=env_str(
                "CCT_STEP_AZURE_MANAGEMENT_URL", "https://management.azure.com"
            ).rstrip("/"),
            azure_login_url=env_str(
                "CCT_STEP_AZURE_LOGIN_URL", "https://login.microsoftonline.com"
            ).rstrip("/"),
            gcp_api_url=(os.environ.get("CCT_STEP_GCP_API_URL") or "").rstrip("/") or None,
            backend=backend,
            rightsize_target_cpu_percent=env_float("CCT_STEP_RIGHTSIZE_TARGET_CPU_PERCENT", 60.0),
            idle_cpu_percent=env_float("CCT_STEP_IDLE_CPU_PERCENT", 5.0),
            lookback_hours=env_int("CCT_STEP_UTILIZATION_LOOKBACK_HOURS", 14 * 24),
            min_datapoints=env_int("CCT_STEP_UTILIZATION_MIN_DATAPOINTS", 24),
            tiering_after_days=env_int("CCT_STEP_TIERING_AFTER_DAYS", 30),
            http_timeout_s=env_float("CCT_STEP_HTTP_TIMEOUT_S", 30.0),
            operation_timeout_s=env_float("CCT_STEP_OPERATION_TIMEOUT_S", 900.0),
            poll_initial_s=poll_initial_s,
            poll_max_s=poll_max_s,
            kafka=(
                KafkaAuth.from_env(os.environ["CCT_KAFKA_BOOTSTRAP"])
                if os.environ.get("CCT_KAFKA_BOOTSTRAP")
                else None
            ),
            results_topic=env_str("CCT_STEP_RESULTS_TOPIC", "cct.optimization.results"),
            publish_timeout_s=env_float("CCT_STEP_RESULTS_PUBLISH_TIMEOUT_S", 10.0),
            pg_dsn=os.environ.get("CCT_PG_DSN", ""),
        )


def _ca_file(path: str) -> str:
    """A CA file named but missing fails at start, not at the first credential request."""
    if path and not os.path.isfile(path):
        raise SettingsError(f"VAULT_CACERT={path!r} is not a readable file")
    return path
