"""`infra.config.load`: the committed stacks load, every declared key is read, and every bad
value fails with an error naming its key."""

from __future__ import annotations

import os
from collections.abc import Mapping

import pulumi
import pytest

from infra.config import REMOVED_KEYS, ConfigError, Settings, load
from infra.stack import warn_if_vault_ca_is_stale
from tests.infra.harness import (
    ALL_CLOUDS_ON,
    ROOT,
    TEST_SECRETS,
    VAULT_CA_FILE,
    project_config,
    stack_config,
)


class RecordingSource:
    """A ConfigSource over plain values that records which keys were asked for."""

    def __init__(self, values: Mapping[str, str], plain: frozenset[str] = frozenset()) -> None:
        self.values = dict(values)
        self.asked: set[str] = set()
        # Keys whose value is stored unencrypted; every other key of TEST_SECRETS is a secret.
        self.plain = plain

    def get(self, key: str) -> str | None:
        self.asked.add(key)
        return self.values.get(key)

    def get_secret(self, key: str) -> pulumi.Output[str] | None:
        self.asked.add(key)
        value = self.values.get(key)
        return None if value is None else pulumi.Output.secret(value)

    def is_secret(self, key: str) -> bool:
        return key in TEST_SECRETS and key not in self.plain


def _load(stack: str, **overrides: str) -> Settings:
    return load(RecordingSource(stack_config(stack, overrides)))


def test_committed_stacks_load() -> None:
    dev, prod = _load("dev"), _load("prod")
    assert (dev.environment, dev.high_availability, dev.replicas) == ("dev", False, 1)
    assert (prod.environment, prod.high_availability, prod.replicas) == ("prod", True, 3)
    assert prod.grafana_hostname == "grafana.cct.example.com"
    assert dev.aws is dev.azure is dev.gcp is None
    assert dev.storage_class is None and dev.kube_context is None


def test_every_declared_key_is_read_and_every_read_key_declared() -> None:
    source = RecordingSource(stack_config("dev", ALL_CLOUDS_ON))
    load(source)
    assert source.asked == set(project_config()) | set(REMOVED_KEYS)


def test_declared_types_match_the_stack_files() -> None:
    for key, spec in project_config().items():
        assert spec["type"] in {"string", "integer", "boolean"}, key
        assert spec.get("description"), f"{key} has no description"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"image": "ghcr.io/cct-project/cct:latest"},
            "cct:image='ghcr.io/cct-project/cct:latest' must be pinned",
        ),
        ({"replicas": "two"}, "cct:replicas='two' is not an integer"),
        ({"replicas": "0"}, "cct:replicas=0 must be between 1 and 20"),
        ({"highAvailability": "maybe"}, "cct:highAvailability='maybe' is not a boolean"),
        ({"highAvailability": "true", "replicas": "1"}, "cct:replicas=1 must be at least 2"),
        ({"namespace": "CCT"}, "cct:namespace='CCT' is not a valid Kubernetes name"),
        ({"platformNamespace": "cct-system"}, "cct:platformNamespace must differ"),
        (
            {"fluentbitPublicUrl": "http://ingest"},
            "cct:fluentbitPublicUrl='http://ingest' is not an https://host:port URL",
        ),
        # The forwarders append the Fluent Bit tag to it: a path changes the tag.
        (
            {"fluentbitPublicUrl": "https://ingest.example.com:9880/x"},
            "cct:fluentbitPublicUrl='https://ingest.example.com:9880/x' is not an https://host",
        ),
        (
            {"fluentbitPublicUrl": "https://ingest.example.com"},
            "cct:fluentbitPublicUrl='https://ingest.example.com' is not an https://host:port",
        ),
        # Fluent Bit matches the token as a regular expression: "+" would match nothing.
        (
            {"fluentbitToken": "abc+/==abcdefghijklm"},
            "cct:fluentbitToken must be 16 or more letters, digits, - or _",
        ),
        (
            {"grafanaHostname": "https://grafana.example.com/"},
            "cct:grafanaHostname='https://grafana.example.com/' is not a host name",
        ),
        (
            {"budgetsFile": "policies/no-such-budgets.yaml"},
            "cct:budgetsFile='policies/no-such-budgets.yaml': ",
        ),
        (
            {"fluentbitToken": ""},
            "cct:fluentbitToken is required: set it with `pulumi config set --secret",
        ),
        (
            {"webhookFailurePolicy": "Open"},
            "cct:webhookFailurePolicy='Open' must be one of Fail, Ignore",
        ),
        ({"apiServerCidrs": "0.0.0.0/0"}, "cct:apiServerCidrs: 0.0.0.0/0 admits anyone"),
        ({"apiServerCidrs": "10.0.0.1/32,api"}, "cct:apiServerCidrs: 'api' is not a CIDR"),
        ({"vaultConfigure": "true", "vaultToken": ""}, "cct:vaultToken is required"),
        (
            {"vaultAddress": "http://vault.example.com:8200"},
            "cct:vaultAddress='http://vault.example.com:8200' is not an https:// URL (Vault"
            " serves TLS only; http only on loopback, to upgrade a stack)",
        ),
        (
            {"vaultTlsSecret": "v" * 53, "vaultCaFile": str(VAULT_CA_FILE)},
            f"cct:vaultTlsSecret={'v' * 53!r} is not a Kubernetes Secret name of at most 52"
            " characters",
        ),
        (
            {"vaultConfigure": "true", "vaultCaFile": ""},
            "cct:vaultCaFile is required when cct:vaultConfigure is true: the CA of Vault's"
            " certificate (`pulumi stack output vaultCaPem > vault-ca.pem`)",
        ),
        (
            {"vaultTlsSecret": "vault-tls"},
            "cct:vaultCaFile is required with cct:vaultTlsSecret: the CA of that certificate,"
            " which the clients verify Vault against",
        ),
        (
            {"vaultTlsSecret": "Vault_TLS", "vaultCaFile": str(VAULT_CA_FILE)},
            "cct:vaultTlsSecret='Vault_TLS' is not a Kubernetes Secret name of at most 52"
            " characters",
        ),
        ({"vaultCaFile": "/no/such/ca.pem"}, "cct:vaultCaFile='/no/such/ca.pem' cannot be read: "),
        ({"vaultCaFile": __file__}, f"cct:vaultCaFile={__file__!r} holds no PEM certificate"),
        ({"awsEnabled": "true"}, "cct:awsAccountId is required but not set"),
        (
            {**ALL_CLOUDS_ON, "awsAccountId": "12345"},
            "cct:awsAccountId='12345' is not a 12-digit AWS account id",
        ),
        (
            {**ALL_CLOUDS_ON, "awsVaultPrincipalArn": "vault"},
            "cct:awsVaultPrincipalArn='vault' is not an IAM role ARN",
        ),
        (
            # Vault runs as a role (IRSA); a user would need static keys it never gets.
            {**ALL_CLOUDS_ON, "awsVaultPrincipalArn": "arn:aws:iam::123456789012:user/v"},
            "cct:awsVaultPrincipalArn='arn:aws:iam::123456789012:user/v' is not an IAM role ARN",
        ),
        (
            {**ALL_CLOUDS_ON, "azureTenantId": "tenant"},
            "cct:azureTenantId='tenant' is not a tenant id (UUID)",
        ),
        ({**ALL_CLOUDS_ON, "azureVaultClientSecret": ""}, "cct:azureVaultClientSecret is required"),
        ({**ALL_CLOUDS_ON, "gcpProject": "X"}, "cct:gcpProject='X' is not a GCP project id"),
        ({**ALL_CLOUDS_ON, "gcpVaultCredentials": ""}, "cct:gcpVaultCredentials is required"),
        (
            {**ALL_CLOUDS_ON, "azureCostReadAppObjectId": "00000000-0000-4000-8000-000000000006"},
            "cct:azureCostReadAppObjectId is no longer used: the cost-read identity was removed"
            " (no handler used it); remove it with `pulumi config rm cct:azureCostReadAppObjectId`",
        ),
    ],
)
def test_bad_value_names_its_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _load("dev", **overrides)
    assert message in str(raised.value)


def test_a_missing_required_key_names_it() -> None:
    values = stack_config("dev")
    del values["fluentbitPublicUrl"]
    with pytest.raises(ConfigError, match=r"^cct:fluentbitPublicUrl is required but not set$"):
        load(RecordingSource(values))


def test_secrets_stay_secret_outputs() -> None:
    settings = _load("dev", **ALL_CLOUDS_ON)
    assert settings.azure is not None and settings.gcp is not None
    for value in (
        settings.fluentbit_token,
        settings.zenduty_integration_key,
        settings.vault.token,
        settings.azure.vault_client_secret,
        settings.gcp.vault_credentials,
    ):
        assert isinstance(value, pulumi.Output)
    assert TEST_SECRETS["fluentbitToken"] not in repr(settings)


@pytest.mark.parametrize("key", sorted(TEST_SECRETS))
def test_a_secret_stored_in_plain_text_is_refused(key: str) -> None:
    """A forgotten `--secret` writes the value into Pulumi.<stack>.yaml, which is committed;
    the CLI only refuses that for keys declared `secret: true`."""
    values = stack_config("dev", {**ALL_CLOUDS_ON})
    with pytest.raises(ConfigError) as raised:
        load(RecordingSource(values, plain=frozenset({key})))
    assert str(raised.value).startswith(f"cct:{key} is stored in plain text")
    assert TEST_SECRETS[key] not in str(raised.value)


def test_vault_settings_read_the_operator_s_certificate_and_a_ca_file_relative_to_the_project() -> (
    None
):
    """`pulumi config set cct:vaultCaFile vault-ca.pem` runs in the project directory while the
    program runs in infra/: a relative path is the project's, and the provider gets it whole."""
    relative = os.path.relpath(VAULT_CA_FILE, ROOT)
    vault = _load(
        "dev", vaultConfigure="true", vaultCaFile=relative, vaultTlsSecret="vault-cert"
    ).vault
    assert vault.ca_file == str(VAULT_CA_FILE)
    assert vault.ca_pem == VAULT_CA_FILE.read_text()
    assert vault.tls_secret == "vault-cert"


def test_a_stack_whose_vault_still_serves_http_upgrades_through_a_loopback_port_forward() -> None:
    """The one `up` that upgrades a stack deployed before Vault served TLS: the provider still
    reaches the old listener through a port-forward, and needs no CA for it."""
    vault = _load(
        "dev", vaultConfigure="true", vaultAddress="http://127.0.0.1:8200", vaultCaFile=""
    ).vault
    assert (vault.address, vault.ca_file) == ("http://127.0.0.1:8200", None)


def test_a_stale_vault_ca_file_is_named_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", warned.append)
    vault = _load("dev", vaultConfigure="true").vault
    assert vault.ca_pem is not None
    warn_if_vault_ca_is_stale(vault.ca_pem, vault)
    assert warned == []
    warn_if_vault_ca_is_stale(vault.ca_pem.replace("TUlJ", "T1RI"), vault)
    assert warned == [
        f"cct:vaultCaFile={vault.ca_file!r} is not the CA of Vault's certificate: refresh it"
        " with `pulumi stack output vaultCaPem > <that file>`"
    ]
