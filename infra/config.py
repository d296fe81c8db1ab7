"""Stack configuration, read once into a frozen, validated `Settings`.

Keys, types, defaults and descriptions are declared in `Pulumi.yaml` (the CLI fills in the
defaults), so this module has no defaults of its own: a key declared with a default is always
present under the CLI. Every error names the full key (`cct:<key>`) and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pulumi

from components.kube import is_pinned_image
from lambdas.common.settings import SettingsError
from lambdas.detector.rules import load_budgets

NAMESPACE = "cct"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
WEBHOOK_FAILURE_POLICIES = ("Fail", "Ignore")
ROOT = Path(__file__).resolve().parents[1]
# A DNS name (RFC 1123): what an Ingress host accepts.
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_HOSTNAME = rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*"


# Keys of earlier versions that no longer do anything. Set, they are refused with what to do
# rather than ignored: ignored, the user would believe they still apply.
_NO_CLOUD_COST_READ = "the cost-read identity was removed (no handler used it)"
REMOVED_KEYS = {
    "azureCostReadAppObjectId": _NO_CLOUD_COST_READ,
    "azureCostReadPrincipalId": _NO_CLOUD_COST_READ,
}


class ConfigError(ValueError):
    """A configuration key is missing or invalid. Fix the stack's config and run again."""


class ConfigSource(Protocol):
    """What `load` needs of `pulumi.Config`: plain values as strings and secret values."""

    def get(self, key: str) -> str | None: ...

    def get_secret(self, key: str) -> pulumi.Output[str] | None: ...

    def is_secret(self, key: str) -> bool: ...


class PulumiConfigSource:
    """`pulumi.Config` as a ConfigSource: it cannot say whether a value is encrypted."""

    def __init__(self, namespace: str = "cct") -> None:
        self.config = pulumi.Config(namespace)
        self.namespace = namespace

    def get(self, key: str) -> str | None:
        return self.config.get(key)

    def get_secret(self, key: str) -> pulumi.Output[str] | None:
        return self.config.get_secret(key)

    def is_secret(self, key: str) -> bool:
        return pulumi.runtime.is_config_secret(f"{self.namespace}:{key}")


@dataclass(frozen=True)
class AwsSettings:
    account_id: str
    region: str
    vault_principal_arn: str


@dataclass(frozen=True)
class AzureSettings:
    subscription_id: str
    tenant_id: str
    location: str
    vault_client_id: str
    vault_client_secret: pulumi.Output[str]
    remediation_app_object_id: str
    remediation_principal_id: str


@dataclass(frozen=True)
class GcpSettings:
    project: str
    region: str
    vault_credentials: pulumi.Output[str]


@dataclass(frozen=True)
class VaultSettings:
    # False until Vault has been initialised and unsealed (first deployment).
    configure: bool
    # https, or plain http on loopback for the upgrade to TLS (`plain_http`).
    address: str
    token: pulumi.Output[str] | None
    # The CA Vault's certificate is verified against (cct:vaultCaFile) and its PEM text.
    ca_file: str | None = None
    ca_pem: str | None = None
    # The operator's own certificate Secret in the platform namespace (cct:vaultTlsSecret);
    # None: the bundle generates one.
    tls_secret: str | None = None

    @property
    def plain_http(self) -> bool:
        """The address is the old plain listener (loopback only): the upgrade to TLS."""
        return self.address.startswith("http://")


@dataclass(frozen=True)
class Settings:
    environment: str
    namespace: str
    platform_namespace: str
    image: str
    high_availability: bool
    # Replicas of each long-running handler (and of Fluent Bit, vmalert, Grafana).
    replicas: int
    storage_class: str | None
    kube_context: str | None
    fluentbit_public_url: str
    fluentbit_tls_secret: str
    fluentbit_token: pulumi.Output[str]
    zenduty_integration_key: pulumi.Output[str]
    grafana_hostname: str | None
    webhook_failure_policy: str
    # Where the API server calls the admission webhook when it runs outside the cluster, and
    # the PEM text of the CA of its certificate; None: the in-cluster handler.
    webhook_url: str | None
    webhook_ca_pem: str | None
    # The cluster has no nodes (the local stack): nothing waits for readiness.
    nodeless: bool
    # Root of the secrets CCT derives for its own pieces (components.derived).
    secret_seed: pulumi.Output[str]
    # The API server's addresses: the only peers the webhook's NetworkPolicy admits, and the
    # only destinations of Kubernetes API egress (its endpoints, `kubectl get endpoints
    # kubernetes`: NetworkPolicy sees a connection to the Service's ClusterIP after DNAT).
    apiserver_cidrs: tuple[str, ...]
    # Budgets YAML (relative to the project root) rendered into vmalert rules; None: none.
    budgets_file: str | None
    vault: VaultSettings
    aws: AwsSettings | None
    azure: AzureSettings | None
    gcp: GcpSettings | None


class _Reader:
    def __init__(self, source: ConfigSource) -> None:
        self.source = source

    def _name(self, key: str) -> str:
        return f"{NAMESPACE}:{key}"

    def optional(self, key: str) -> str | None:
        value = self.source.get(key)
        return value.strip() if value is not None and value.strip() else None

    def string(self, key: str) -> str:
        value = self.optional(key)
        if value is None:
            raise ConfigError(f"{self._name(key)} is required but not set")
        return value

    def boolean(self, key: str) -> bool:
        value = self.string(key).lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(f"{self._name(key)}={value!r} is not a boolean (use true or false)")

    def integer(self, key: str, minimum: int, maximum: int) -> int:
        raw = self.string(key)
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{self._name(key)}={raw!r} is not an integer") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{self._name(key)}={value} must be between {minimum} and {maximum}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in choices:
            raise ConfigError(f"{self._name(key)}={value!r} must be one of {', '.join(choices)}")
        return value

    def cidrs(self, key: str) -> tuple[str, ...]:
        """Comma-separated CIDRs, none of them 0.0.0.0/0 or ::/0."""
        found: list[str] = []
        for text in self.string(key).split(","):
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"{self._name(key)}: {text.strip()!r} is not a CIDR") from None
            if network.prefixlen == 0:
                raise ConfigError(f"{self._name(key)}: {network} admits anyone")
            found.append(str(network))
        return tuple(found)

    def dns_label(self, key: str) -> str:
        value = self.string(key)
        if not _DNS_LABEL.match(value):
            raise ConfigError(f"{self._name(key)}={value!r} is not a valid Kubernetes name")
        return value

    def matching(self, key: str, pattern: str, what: str) -> str:
        value = self.string(key)
        if not re.fullmatch(pattern, value):
            raise ConfigError(f"{self._name(key)}={value!r} is not {what}")
        return value

    def secret(self, key: str, pattern: str | None = None, what: str = "") -> pulumi.Output[str]:
        # Presence (and `pattern`) is checked on the plain value (an empty default means
        # unset); the value itself only ever leaves as a secret Output, and is never in a
        # message.
        plain = self.optional(key)
        value = self.source.get_secret(key) if plain is not None else None
        if value is None:
            raise ConfigError(
                f"{self._name(key)} is required: set it with `pulumi config set --secret {key}`"
            )
        if not self.source.is_secret(key):
            # A forgotten --secret writes the value into Pulumi.<stack>.yaml, which is
            # committed.
            raise ConfigError(
                f"{self._name(key)} is stored in plain text: set it again with "
                f"`pulumi config set --secret {key}` (and rotate it if the stack file was "
                "committed)"
            )
        if pattern is not None and plain is not None and not re.fullmatch(pattern, plain):
            raise ConfigError(f"{self._name(key)} must be {what}")
        return value


_VAULT_ADDRESS = r"https://\S+|http://(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?/?"
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _grafana_hostname(r: _Reader) -> str | None:
    if r.optional("grafanaHostname") is None:
        return None
    return r.matching("grafanaHostname", _HOSTNAME, "a host name (no scheme, port or path)")


def _budgets_file(r: _Reader) -> str | None:
    """The budgets file, read now: a bad one is a config error naming the key, not a
    detector setting's error at render time."""
    budgets_file = r.optional("budgetsFile")
    if budgets_file is not None:
        try:
            load_budgets(ROOT / budgets_file)
        except SettingsError as exc:
            raise ConfigError(f"{NAMESPACE}:budgetsFile={budgets_file!r}: {exc}") from None
    return budgets_file


def _pem_file(r: _Reader, key: str) -> tuple[str, str] | None:
    """A PEM certificate file's absolute path and text, read now (None when the key is
    unset). A relative path is the project directory's, where `pulumi config set` runs (the
    program and its providers run in infra/)."""
    path = r.optional(key)
    if path is None:
        return None
    full = os.path.normpath(ROOT / path)
    try:
        pem = Path(full).read_text()
    except OSError as exc:
        raise ConfigError(f"{NAMESPACE}:{key}={path!r} cannot be read: {exc}") from None
    if "BEGIN CERTIFICATE" not in pem:
        raise ConfigError(f"{NAMESPACE}:{key}={path!r} holds no PEM certificate")
    return full, pem


def _vault(r: _Reader) -> VaultSettings:
    """Vault serves TLS only. Its certificate is generated by the bundle unless
    cct:vaultTlsSecret names the operator's; Pulumi verifies it against cct:vaultCaFile, which
    configuring Vault needs (the generated CA is the stack output vaultCaPem). Plain http is
    accepted on loopback only, a port-forward (tunnelled through the API server), for the one
    `up` that upgrades a stack whose Vault still serves http (docs/deployment.md)."""
    configure = r.boolean("vaultConfigure")
    address = r.matching(
        "vaultAddress",
        _VAULT_ADDRESS,
        "an https:// URL (Vault serves TLS only; http only on loopback, to upgrade a stack)",
    )
    tls_secret = r.optional("vaultTlsSecret")
    if tls_secret is not None:
        tls_secret = r.matching(
            "vaultTlsSecret",
            # The chart names its volume userconfig-<name>, a DNS label itself (63 at most).
            r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?",
            "a Kubernetes Secret name of at most 52 characters",
        )
    ca = _pem_file(r, "vaultCaFile")
    if ca is None and tls_secret is not None:
        raise ConfigError(
            f"{NAMESPACE}:vaultCaFile is required with {NAMESPACE}:vaultTlsSecret: the CA of"
            " that certificate, which the clients verify Vault against"
        )
    if ca is None and configure and address.startswith("https://"):
        raise ConfigError(
            f"{NAMESPACE}:vaultCaFile is required when {NAMESPACE}:vaultConfigure is true: the"
            " CA of Vault's certificate (`pulumi stack output vaultCaPem > vault-ca.pem`)"
        )
    return VaultSettings(
        configure=configure,
        address=address,
        token=r.secret("vaultToken") if configure else None,
        ca_file=ca[0] if ca else None,
        ca_pem=ca[1] if ca else None,
        tls_secret=tls_secret,
    )


def load(source: ConfigSource) -> Settings:
    """Read and validate every key; the first problem raises ConfigError naming its key."""
    r = _Reader(source)
    for key, why in REMOVED_KEYS.items():
        if r.optional(key) is not None:
            raise ConfigError(
                f"{NAMESPACE}:{key} is no longer used: {why}; remove it with"
                f" `pulumi config rm {NAMESPACE}:{key}`"
            )
    image = r.string("image")
    if not is_pinned_image(image):
        raise ConfigError(
            f"{NAMESPACE}:image={image!r} must be pinned to an exact version tag or a digest"
        )
    high_availability = r.boolean("highAvailability")
    replicas = r.integer("replicas", 1, 20)
    if high_availability and replicas < 2:
        raise ConfigError(
            f"{NAMESPACE}:replicas={replicas} must be at least 2 when highAvailability is true"
        )
    namespace = r.dns_label("namespace")
    platform_namespace = r.dns_label("platformNamespace")
    if namespace == platform_namespace:
        raise ConfigError(f"{NAMESPACE}:platformNamespace must differ from {NAMESPACE}:namespace")
    # The forwarders append `/cct.<provider>` (the Fluent Bit tag) to it, so a path would
    # change the tag; the port is the LoadBalancer's (9880 unless fronted elsewhere).
    public_url = r.matching(
        "fluentbitPublicUrl",
        r"https://[^\s/:@]+:\d{1,5}",
        "an https://host:port URL without a path (the ingest LoadBalancer's port, e.g. 9880)",
    )

    vault = _vault(r)
    aws = azure = gcp = None
    if r.boolean("awsEnabled"):
        aws = AwsSettings(
            account_id=r.matching("awsAccountId", r"\d{12}", "a 12-digit AWS account id"),
            region=r.matching("awsRegion", r"[a-z]{2}(-[a-z]+)+-\d", "an AWS region"),
            vault_principal_arn=r.matching(
                "awsVaultPrincipalArn",
                # A role: Vault runs as it through IRSA (its service account's annotation);
                # a user would need static keys, which the stack never gives Vault.
                r"arn:aws:iam::\d{12}:role/\S+",
                "an IAM role ARN",
            ),
        )
    if r.boolean("azureEnabled"):
        azure = AzureSettings(
            subscription_id=r.matching("azureSubscriptionId", _UUID, "a subscription id (UUID)"),
            tenant_id=r.matching("azureTenantId", _UUID, "a tenant id (UUID)"),
            location=r.string("azureLocation"),
            vault_client_id=r.matching("azureVaultClientId", _UUID, "a client id (UUID)"),
            vault_client_secret=r.secret("azureVaultClientSecret"),
            remediation_app_object_id=r.matching(
                "azureRemediationAppObjectId", _UUID, "an object id"
            ),
            remediation_principal_id=r.matching(
                "azureRemediationPrincipalId", _UUID, "an object id"
            ),
        )
    if r.boolean("gcpEnabled"):
        gcp = GcpSettings(
            project=r.matching("gcpProject", r"[a-z][-a-z0-9]{4,28}[a-z0-9]", "a GCP project id"),
            region=r.string("gcpRegion"),
            vault_credentials=r.secret("gcpVaultCredentials"),
        )
    grafana_hostname = _grafana_hostname(r)
    budgets_file = _budgets_file(r)
    webhook_url = r.optional("webhookUrl")
    webhook_ca = _pem_file(r, "webhookCaFile")
    if (webhook_url is None) != (webhook_ca is None):
        raise ConfigError(f"{NAMESPACE}:webhookUrl and {NAMESPACE}:webhookCaFile go together")
    if webhook_url is not None:
        r.matching("webhookUrl", r"https://[^\s/]+(/\S*)?", "an https:// URL")
    webhook_ca_pem = webhook_ca[1] if webhook_ca else None
    return Settings(
        environment=r.dns_label("environment"),
        namespace=namespace,
        platform_namespace=platform_namespace,
        image=image,
        high_availability=high_availability,
        replicas=replicas,
        storage_class=r.optional("storageClass"),
        kube_context=r.optional("kubeContext"),
        fluentbit_public_url=public_url,
        fluentbit_tls_secret=r.dns_label("fluentbitTlsSecret"),
        # Fluent Bit matches it as a regular expression (lambdas/ingest/fluentbit.py).
        fluentbit_token=r.secret(
            "fluentbitToken", r"[A-Za-z0-9_-]{16,}", "16 or more letters, digits, - or _"
        ),
        zenduty_integration_key=r.secret("zendutyIntegrationKey"),
        grafana_hostname=grafana_hostname,
        webhook_failure_policy=r.choice("webhookFailurePolicy", WEBHOOK_FAILURE_POLICIES),
        webhook_url=webhook_url,
        webhook_ca_pem=webhook_ca_pem,
        nodeless=r.boolean("nodeless"),
        secret_seed=r.secret("secretSeed"),
        apiserver_cidrs=r.cidrs("apiServerCidrs"),
        budgets_file=budgets_file,
        vault=vault,
        aws=aws,
        azure=azure,
        gcp=gcp,
    )
