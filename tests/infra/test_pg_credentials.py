"""Every PostgreSQL handler logs in as a short-lived user of its own Vault database role: a
Vault Agent sidecar renders that role's credentials as a DSN file, the handler reads the file
(CCT_PG_DSN_FILE), and no handler sees the application owner's Secret. Only the migration Job
does, because only the schema owner may run DDL."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from components.handlers import CREDENTIALS_DIR
from components.vault import TOKEN_MAX_TTL_SECONDS
from infra.generated import collect
from infra.policypack.checks import pod_spec_of
from infra.stack import pg_dsn_template
from tests.infra.conftest import ensure_event_loop
from tests.infra.harness import BuiltStack, build_stack
from tests.infra.mocks import Registered

LONG_RUNNING = ("collector", "detector", "trigger", "admission")
DSN_FILE = f"{CREDENTIALS_DIR}/pg-dsn"
OWNER_SECRET = "cct-pg-app"


def _pod(built: BuiltStack, name: str) -> dict[str, Any]:
    (found,) = [
        r
        for r in built.resources
        if pod_spec_of(r.typ, r.inputs) is not None and r.inputs["metadata"]["name"] == name
    ]
    pod = pod_spec_of(found.typ, found.inputs)
    assert pod is not None
    return dict(pod)


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def _pg_handlers(built: BuiltStack) -> tuple[str, ...]:
    return (*LONG_RUNNING, *(("billing-loader",) if built.settings.aws else ()))


def _agent_config(built: BuiltStack, handler: str) -> dict[str, str]:
    (config,) = [
        r
        for r in built.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"]["name"].startswith(f"{handler}-vault-agent-")
    ]
    data: dict[str, str] = config.inputs["data"]
    return data


def test_each_pg_handler_runs_a_vault_agent_sidecar(built: BuiltStack) -> None:
    for handler in _pg_handlers(built):
        pod = _pod(built, handler)
        (agent,) = pod["initContainers"]
        (main,) = pod["containers"]
        # A native sidecar: runs beside the handler for the pod's lifetime, so it renews the
        # lease and renders the next one; the handler starts once the file exists.
        assert agent["name"] == "vault-agent"
        assert agent["restartPolicy"] == "Always"
        probe = agent["startupProbe"]["exec"]["command"]
        assert probe[:2] == ["sh", "-c"] and f"test -s {DSN_FILE}" in probe[2]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["credentials"]["emptyDir"]["medium"] == "Memory"
        assert _mounts(agent)["credentials"]["mountPath"] == CREDENTIALS_DIR
        assert "readOnly" not in _mounts(agent)["credentials"]
        assert _mounts(main)["credentials"] == {
            "name": "credentials",
            "mountPath": CREDENTIALS_DIR,
            "readOnly": True,
        }
        # Only the agent holds the token it logs in to Vault with.
        assert "vault-token" in _mounts(agent) and "vault-token" not in _mounts(main)
        env = {e["name"]: e for e in main["env"]}
        assert env["CCT_PG_DSN_FILE"] == {"name": "CCT_PG_DSN_FILE", "value": DSN_FILE}
        assert "CCT_PG_DSN" not in env

        hcl = _agent_config(built, handler)["agent.hcl"]
        assert f'role = "{handler}"' in hcl
        assert "exit_after_auth" not in hcl  # keeps running: renews and re-renders
        assert f'destination = "{DSN_FILE}"' in hcl


def test_each_dsn_template_reads_only_its_own_database_role(built: BuiltStack) -> None:
    for handler in _pg_handlers(built):
        templates = _agent_config(built, handler)
        dsn = templates["pg-dsn.ctmpl"]
        assert dsn == pg_dsn_template(handler, "cct-pg-rw.cct-system.svc")
        assert set(re.findall(r'secret "([^"]+)"', dsn)) == {f"database/creds/cct-{handler}"}
        assert "sslmode=require" in dsn
        # Every path any of its templates reads is one its Vault policy grants, and the policy
        # grants nothing else beyond renewing the agent's own token and leases.
        read = {p for text in templates.values() for p in re.findall(r'secret "([^"]+)"', text)}
        if built.settings.vault.configure:
            policy = _policy(built, f"cct-{handler}")
            assert set(policy) - read == {"sys/leases/renew", "auth/token/renew-self"}, handler
            assert read <= set(policy), handler


def _policy(built: BuiltStack, name: str) -> dict[str, str]:
    (found,) = [p for p in built.of_type("vault:index/policy:Policy") if p.inputs["name"] == name]
    return dict(
        re.findall(r'path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]', found.inputs["policy"])
    )


def _references_owner_secret(resource: Registered) -> bool:
    return f'"{OWNER_SECRET}"' in json.dumps(resource.inputs)


def test_only_the_migration_job_sees_the_owner_login(built: BuiltStack) -> None:
    users = [
        r
        for r in built.resources
        if r.typ.startswith("kubernetes:") and _references_owner_secret(r)
    ]
    assert [(r.typ, r.inputs["metadata"]["name"]) for r in users] == [
        ("kubernetes:batch/v1:Job", "db-migrate")
    ]
    pod = _pod(built, "db-migrate")
    (container,) = pod["containers"]
    assert container["command"] == ["cct", "db", "migrate"]
    assert container["env"] == [
        {"name": "CCT_PG_DSN", "valueFrom": {"secretKeyRef": {"name": OWNER_SECRET, "key": "uri"}}}
    ]
    assert pod["automountServiceAccountToken"] is False


def test_postgres_admits_the_handlers_and_the_migration(built: BuiltStack) -> None:
    (policy,) = [
        r
        for r in built.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["metadata"]["name"] == "cct-pg-clients"
    ]
    peers = {
        p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for p in policy.inputs["spec"]["ingress"][0]["from"]
        if "podSelector" in p
    }
    assert {*_pg_handlers(built), "db-migrate"} <= peers
    (job,) = built.of_type("kubernetes:batch/v1:Job")
    pod_labels = job.inputs["spec"]["template"]["metadata"]["labels"]
    (peer,) = [
        p["podSelector"]["matchLabels"]
        for p in policy.inputs["spec"]["ingress"][0]["from"]
        if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        == "db-migrate"
    ]
    assert peer.items() <= pod_labels.items()


@pytest.mark.parametrize("handler", LONG_RUNNING)
def test_database_role_leases_are_short(everything: BuiltStack, handler: str) -> None:
    (role,) = [
        r
        for r in everything.of_type("vault:database/secretBackendRole:SecretBackendRole")
        if r.inputs["name"] == f"cct-{handler}"
    ]
    # The agent renews up to the maximum, then takes a new user; the old one is revoked.
    assert role.inputs["maxTtl"] <= TOKEN_MAX_TTL_SECONDS
    assert role.inputs["revocationStatements"]


@pytest.fixture
def everything(stacks: dict[str, BuiltStack]) -> BuiltStack:
    return stacks["dev-all"]


def test_the_first_deployment_does_not_wait_for_handlers_vault_cannot_serve_yet(
    built: BuiltStack,
) -> None:
    """Vault starts sealed and unconfigured: until `cct:vaultConfigure` is on, no handler can
    get its PostgreSQL login, so `pulumi up` must not wait for those Deployments."""
    pending = not built.settings.vault.configure
    for deployment in built.of_type("kubernetes:apps/v1:Deployment"):
        name = deployment.inputs["metadata"]["name"]
        annotations = deployment.inputs["metadata"].get("annotations") or {}
        skipped = annotations.get("pulumi.com/skipAwait") == "true"
        assert skipped == (pending and name in LONG_RUNNING), name


def test_the_upgrade_to_tls_does_not_wait_for_handlers_vault_cannot_serve_yet() -> None:
    """The one `up` that upgrades a stack whose Vault predates TLS (docs/deployment.md): the
    servers keep their plain listener until deleted, so the new agents, which speak https,
    cannot log in yet, and `pulumi up` must not wait for their handlers; the provider still
    reaches the old listener through the port-forward."""
    ensure_event_loop()
    built = build_stack(
        "dev",
        collect,
        {"vaultConfigure": "true", "vaultAddress": "http://127.0.0.1:8200", "vaultCaFile": ""},
    )
    assert built.settings.vault.plain_http and built.settings.vault.ca_file is None
    for deployment in built.of_type("kubernetes:apps/v1:Deployment"):
        name = deployment.inputs["metadata"]["name"]
        annotations = deployment.inputs["metadata"].get("annotations") or {}
        skipped = annotations.get("pulumi.com/skipAwait") == "true"
        assert skipped == (name in LONG_RUNNING), name
    [provider] = built.of_type("pulumi:providers:vault")
    assert provider.inputs["address"] == "http://127.0.0.1:8200"
    assert "caCertFile" not in provider.inputs
