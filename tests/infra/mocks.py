"""One type-aware Pulumi mock for the deployment tests.

It returns realistic ids and computed outputs per type token (ARNs, emails, Azure resource
ids, PEM blocks) and records every registered resource, so a test can walk the whole stack.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import rpc

ACCOUNT = "123456789012"
REGION = "eu-west-1"
SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
PROJECT = "cct-test-project"
FUNCTION_KEY = "test-function-key-a1b2"
# The principal id of the Azure forwarder Function's system-assigned identity.
FUNCTION_PRINCIPAL = "00000000-0000-4000-8000-0000000000f1"
FAKE_PEM = "-----BEGIN CERTIFICATE-----\nTUlJQm9rZQ==\n-----END CERTIFICATE-----\n"
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nTUlJQmtleQ==\n-----END PRIVATE KEY-----\n"


@dataclass(frozen=True)
class Registered:
    """One resource as the engine saw it: inputs as sent (camelCase keys), and its URN."""

    typ: str
    name: str
    inputs: dict[str, Any]
    custom: bool
    # Dotted paths of the inputs that were sent as secrets.
    secret_paths: frozenset[str] = frozenset()

    @property
    def urn(self) -> str:
        return f"urn:pulumi:test::cct::{self.typ}::{self.name}"


def unwrap_secrets(value: Any, path: str, secrets: set[str]) -> Any:
    """Plain values with the secret markers removed; the marked paths go into `secrets`."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            secrets.add(path)
            return unwrap_secrets(value["value"], path, secrets)
        return {
            k: unwrap_secrets(v, f"{path}.{k}" if path else k, secrets) for k, v in value.items()
        }
    if isinstance(value, list):
        return [unwrap_secrets(v, f"{path}[{i}]", secrets) for i, v in enumerate(value)]
    return value


def _suffix(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _kubernetes(typ: str, name: str, state: dict[str, Any]) -> str:
    meta = dict(state.get("metadata") or {})
    meta.setdefault("name", f"{name}-{_suffix(name)}")
    state["metadata"] = meta
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def _aws(typ: str, name: str, state: dict[str, Any]) -> str:
    physical = str(state.get("name") or state.get("bucket") or f"{name}-{_suffix(name)}")
    service = typ.split(":")[1].split("/", maxsplit=1)[0]
    arns = {
        "aws:iam/role:Role": f"arn:aws:iam::{ACCOUNT}:role/{physical}",
        "aws:s3/bucket:Bucket": f"arn:aws:s3:::{physical}",
        "aws:cloudwatch/logGroup:LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{physical}",
        "aws:lambda/function:Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{physical}",
    }
    state["arn"] = arns.get(typ, f"arn:aws:{service}:{REGION}:{ACCOUNT}:{physical}")
    if typ == "aws:s3/bucket:Bucket":
        state["bucket"] = physical
    return physical


def deployment_output(name: str, key: str) -> str:
    """The value the mocked ARM deployment `name` gives its template output `key`."""
    return f"{_suffix(name)}-0000-4000-8000-{_suffix(key)}"


def azure_name(name: str) -> str:
    """The `name` the mock gives an Azure resource declared without one (a storage
    account's, say)."""
    return name.replace("-", "")[:24]


def _azure(typ: str, name: str, state: dict[str, Any]) -> str:
    kind = typ.rsplit(":", 1)[-1]
    state.setdefault("name", azure_name(name))
    if kind == "WebApp":
        state["identity"] = {"type": "SystemAssigned", "principalId": FUNCTION_PRINCIPAL}
        state["defaultHostName"] = f"{state['name']}.azurewebsites.net"
    if kind == "DeploymentAtSubscriptionScope":
        # ARM evaluates the template's outputs; every output here is an identity's principal.
        properties = dict(state.get("properties") or {})
        outputs = properties.get("template", {}).get("outputs", {})
        properties["outputs"] = {
            key: {"type": spec["type"], "value": deployment_output(name, key)}
            for key, spec in outputs.items()
        }
        state["properties"] = properties
        return f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Resources/deployments/{name}"
    return azure_resource_id(typ, name)


def azure_resource_id(typ: str, name: str) -> str:
    """The id the mock gives the Azure resource of type token `typ` named `name`."""
    module, kind = typ.split(":")[1], typ.rsplit(":", 1)[-1]
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/cct-cost/providers/"
        f"Microsoft.{module.capitalize()}/{kind}/{name}"
    )


def _gcp(typ: str, name: str, state: dict[str, Any]) -> str:
    if typ == "gcp:serviceaccount/account:Account":
        state["email"] = f"{state['accountId']}@{PROJECT}.iam.gserviceaccount.com"
    elif typ == "gcp:logging/projectSink:ProjectSink":
        state["writerIdentity"] = (
            f"serviceAccount:sink-{_suffix(name)}@gcp-sa-logging.iam.gserviceaccount.com"
        )
    elif typ == "gcp:projects/iAMCustomRole:IAMCustomRole":
        state["name"] = f"projects/{PROJECT}/roles/{state['roleId']}"
    elif typ == "gcp:cloudfunctionsv2/function:Function":
        state["url"] = f"https://{state['name']}-{_suffix(name)}-uc.a.run.app"
    return f"projects/{PROJECT}/{name}"


def _tls(typ: str, name: str, state: dict[str, Any]) -> str:
    state.update(
        privateKeyPem=FAKE_KEY, publicKeyPem=FAKE_PEM, certPem=FAKE_PEM, certRequestPem=FAKE_PEM
    )
    return f"{name}-{_suffix(name)}"


def _random(typ: str, name: str, state: dict[str, Any]) -> str:
    suffix = _suffix(name)
    uuid = f"{suffix}-0000-4000-8000-{suffix}0000"
    state["result"] = uuid if typ.endswith("RandomUuid") else f"generated-{suffix}"
    return f"{name}-{suffix}"


_BY_PACKAGE = {
    "kubernetes": _kubernetes,
    "aws": _aws,
    "azure-native": _azure,
    "gcp": _gcp,
    "tls": _tls,
    "random": _random,
}


class CctMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Registered] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        secrets: set[str] = set()
        inputs = unwrap_secrets(dict(args.inputs), "", secrets)
        self.resources.append(
            Registered(args.typ, args.name, inputs, bool(args.custom), frozenset(secrets))
        )
        state = dict(inputs)
        make_id = _BY_PACKAGE.get(args.typ.split(":", 1)[0])
        resource_id = make_id(args.typ, args.name, state) if make_id else f"{args.name}-id"
        return resource_id, state

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "azure-native:web:listWebAppHostKeys":
            return {"functionKeys": {"default": FUNCTION_KEY}, "masterKey": "master"}, []
        raise AssertionError(f"unexpected provider call {args.token}")
