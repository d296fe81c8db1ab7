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
        return {k: unwrap_secrets(v, f"{path}.{k}" if path else k, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v, f"{path}[{i}]", secrets) for i, v in enumerate(value)]
    return value


def _suffix(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


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
        typ, name = args.typ, args.name
        package = typ.split(":", 1)[0]
        resource_id = f"{name}-{_suffix(name)}"
        if package == "kubernetes" and "metadata" in state:
            meta = dict(state["metadata"] or {})
            meta.setdefault("name", resource_id)
            state["metadata"] = meta
            namespace = meta.get("namespace")
            resource_id = f"{namespace}/{meta['name']}" if namespace else meta["name"]
        elif package == "aws":
            physical = state.get("name") or state.get("bucket") or resource_id
            service = typ.split(":")[1].split("/")[0]
            state.setdefault("arn", f"arn:aws:{service}:{REGION}:{ACCOUNT}:{physical}")
            if typ.startswith("aws:iam/role"):
                state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{physical}"
            if typ.startswith("aws:s3/bucket:"):
                state["bucket"] = physical
                state["arn"] = f"arn:aws:s3:::{physical}"
            if typ.startswith("aws:cloudwatch/logGroup"):
                state["arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{physical}"
            if typ.startswith("aws:lambda/function"):
                state["arn"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{physical}"
            resource_id = physical
        elif package == "azure-native":
            kind = typ.rsplit(":", 1)[-1]
            resource_id = (
                f"/subscriptions/{SUBSCRIPTION}/resourceGroups/cct-cost/providers/"
                f"Microsoft.{typ.split(':')[1].capitalize()}/{kind}/{name}"
            )
            state.setdefault("name", name.replace("-", "")[:24])
            if kind == "WebApp":
                state["identity"] = {"type": "SystemAssigned", "principalId": SUBSCRIPTION}
        elif package == "gcp":
            if typ.startswith("gcp:serviceaccount/account"):
                state["email"] = f"{state['accountId']}@{PROJECT}.iam.gserviceaccount.com"
            if typ.startswith("gcp:logging/projectSink"):
                state["writerIdentity"] = f"serviceAccount:sink-{_suffix(name)}@gcp-sa-logging.iam.gserviceaccount.com"
            if typ.startswith("gcp:projects/iAMCustomRole"):
                state["name"] = f"projects/{PROJECT}/roles/{state['roleId']}"
            if typ.startswith("gcp:cloudfunctionsv2/function"):
                state["url"] = f"https://{state['name']}-{_suffix(name)}-uc.a.run.app"
            resource_id = f"projects/{PROJECT}/{name}"
        elif typ.startswith("tls:"):
            state.update(
                privateKeyPem=FAKE_KEY,
                publicKeyPem=FAKE_PEM,
                certPem=FAKE_PEM,
                certRequestPem=FAKE_PEM,
            )
        elif typ.startswith("random:"):
            state["result"] = (
                f"{_suffix(name)}-0000-4000-8000-{_suffix(name)}0000"
                if typ.endswith("RandomUuid")
                else f"generated-{_suffix(name)}"
            )
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "azure-native:web:listWebAppHostKeys":
            return {"functionKeys": {"default": FUNCTION_KEY}, "masterKey": "master"}
        raise AssertionError(f"unexpected provider call {args.token}")
