"""Builds a whole stack under the Pulumi mocks, the way the CLI would run it.

The CLI fills in Pulumi.yaml's defaults and the stack file's values before the program
starts; `stack_config` does the same, so the tests exercise the real config path
(`pulumi.Config` -> `infra.config.load`) with the committed stack files.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import _sync_await, run_pulumi_func

from infra.config import PulumiConfigSource, Settings, load
from infra.content import Content
from tests.infra.mocks import ACCOUNT, FAKE_PEM, SUBSCRIPTION, CctMocks, Registered

ROOT = Path(__file__).resolve().parents[2]

# Secret values only tests know; a test fails if any of them shows up in plain sight.
TEST_SECRETS = {
    "fluentbitToken": "test-fluentbit-token-6f1c2e",
    "zendutyIntegrationKey": "test-zenduty-key-91ab44",
    "secretSeed": "test-secret-seed-4d2a9e",
    "vaultToken": "test-vault-token-77de09",
    "azureVaultClientSecret": "test-azure-secret-0c3b81",
    "gcpVaultCredentials": '{"type": "service_account", "private_key": "test-gcp-key-5511aa"}',
}
ALL_CLOUDS_ON = {
    "vaultConfigure": "true",
    "awsEnabled": "true",
    "awsAccountId": ACCOUNT,
    "awsVaultPrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/vault",
    "azureEnabled": "true",
    "azureSubscriptionId": SUBSCRIPTION,
    "azureTenantId": "00000000-0000-4000-8000-000000000002",
    "azureVaultClientId": "00000000-0000-4000-8000-000000000003",
    "azureRemediationAppObjectId": "00000000-0000-4000-8000-000000000004",
    "azureRemediationPrincipalId": "00000000-0000-4000-8000-000000000005",
    "gcpEnabled": "true",
    "gcpProject": "cct-test-project",
}


# The CA file of Vault's certificate a configured Vault needs (cct:vaultCaFile): the mocks'
# placeholder certificate text (tests.infra.mocks.FAKE_PEM), written for this run only, so
# nothing shaped like key material is kept in the repository.
_CA_DIR = Path(tempfile.mkdtemp(prefix="cct-test-vault-ca-"))
atexit.register(shutil.rmtree, _CA_DIR, True)
VAULT_CA_FILE = _CA_DIR / "vault-ca.pem"
VAULT_CA_FILE.write_text(FAKE_PEM)


def project_config() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    return dict(data["config"])


def stack_config(stack: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Config as the CLI hands it to the program: defaults, then the stack file, then the
    secrets (set with --secret in real stacks), then the test's overrides."""
    values: dict[str, str] = {}
    for key, spec in project_config().items():
        if "default" in spec:
            default = spec["default"]
            values[key] = str(default).lower() if isinstance(default, bool) else str(default)
    stack_file = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    for full_key, value in (stack_file.get("config") or {}).items():
        values[full_key.removeprefix("cct:")] = str(value)
    values.update(TEST_SECRETS)
    values.update(overrides or {})
    if values.get("vaultConfigure") == "true" and "vaultCaFile" not in (overrides or {}):
        values["vaultCaFile"] = str(VAULT_CA_FILE)
    return values


def set_config(values: Mapping[str, str]) -> None:
    pulumi.runtime.set_all_config(
        {f"cct:{k}": v for k, v in values.items()},
        [f"cct:{k}" for k in TEST_SECRETS if k in values],
    )


@dataclass
class BuiltStack:
    stack: str
    settings: Settings
    resources: list[Registered]
    outputs: dict[str, Any]

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def of_package(self, package: str) -> list[Registered]:
        return [r for r in self.resources if r.typ.startswith(f"{package}:")]

    def named(self, name: str) -> Registered:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, found {len(matches)}"
        return matches[0]


def run(program: Callable[[], Any], stack: str = "test") -> CctMocks:
    """Run `program` under fresh mocks until every registration has finished."""
    mocks = CctMocks()
    pulumi.runtime.set_mocks(mocks, project="cct", stack=stack, preview=False)
    _sync_await(run_pulumi_func(program))
    return mocks


def build_stack(
    stack: str,
    content: Callable[[Settings], Content],
    overrides: Mapping[str, str] | None = None,
) -> BuiltStack:
    """Build `stack` with `overrides` the way `infra/__main__.py` does, from `content`."""
    from infra.stack import build

    set_config(stack_config(stack, overrides))
    captured: dict[str, Any] = {}
    settings_box: list[Settings] = []

    def program() -> None:
        settings = load(PulumiConfigSource())
        settings_box.append(settings)
        outputs = build(settings, content(settings))
        pulumi.Output.all(**{k: pulumi.Output.from_input(v) for k, v in outputs.items()}).apply(
            captured.update
        )

    mocks = run(program, stack)
    return BuiltStack(stack, settings_box[0], mocks.resources, captured)
