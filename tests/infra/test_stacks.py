"""The dev and prod stacks build completely with every provider switch on and off, and
export what a newcomer needs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.derived import LENGTH
from lambdas.detector.service import DetectorSettings
from tests.infra.conftest import VARIANTS
from tests.infra.harness import ROOT, TEST_SECRETS, BuiltStack, project_config
from tests.infra.mocks import FUNCTION_KEY

PLATFORM_COMPONENTS = {
    "cct:platform:Namespace",
    "cct:ingest:FluentBit",
    "cct:metrics:VictoriaMetrics",
    "cct:alerting:Alertmanager",
    "cct:events:Kafka",
    "cct:workflows:ArgoWorkflows",
    "cct:secrets:Vault",
    "cct:data:Postgres",
    "cct:ui:Grafana",
    "cct:handlers:Handlers",
}
CLOUD_COMPONENTS = {
    "aws": "cct:cloud:AwsAccount",
    "azure": "cct:cloud:AzureSubscription",
    "gcp": "cct:cloud:GcpProject",
}
ALWAYS_EXPORTED = {
    "grafanaUrl",
    "fluentbitEndpoint",
    "fluentbitInternalEndpoint",
    "kafkaBootstrap",
    "kafkaTopics",
    "victoriaMetricsWriteUrl",
    "victoriaMetricsReadUrl",
    "vmalertUrl",
    "alertmanagerUrl",
    "postgresHost",
    "workflowTemplates",
    "vaultAddress",
    "vaultCaPem",
    "vaultPolicies",
    "handlerUrls",
}
CLOUD_OUTPUT_PREFIX = {"aws": "aws", "azure": "azure", "gcp": "gcp"}


def test_every_component_is_built(built: BuiltStack) -> None:
    types = {r.typ for r in built.resources}
    missing = PLATFORM_COMPONENTS - types
    assert not missing, f"{built.stack}: components not built: {missing}"
    for cloud, component in CLOUD_COMPONENTS.items():
        enabled = getattr(built.settings, cloud) is not None
        assert (component in types) == enabled, f"{component} built={not enabled}, switch={enabled}"
        cloud_package = {"aws": "aws:", "azure": "azure-native:", "gcp": "gcp:"}[cloud]
        assert any(t.startswith(cloud_package) for t in types) == enabled


def test_vault_is_configured_only_when_switched_on(built: BuiltStack) -> None:
    vault_resources = built.of_package("vault")
    if not built.settings.vault.configure:
        assert not vault_resources
        return
    types = {r.typ for r in vault_resources}
    assert {
        "vault:index/authBackend:AuthBackend",
        "vault:kubernetes/authBackendConfig:AuthBackendConfig",
        "vault:kubernetes/authBackendRole:AuthBackendRole",
        "vault:index/policy:Policy",
        "vault:database/secretBackendConnection:SecretBackendConnection",
        "vault:database/secretBackendRole:SecretBackendRole",
    } <= types
    engines = {
        "aws": "vault:aws/secretBackend:SecretBackend",
        "azure": "vault:azure/backend:Backend",
        "gcp": "vault:gcp/secretBackend:SecretBackend",
    }
    for cloud, engine in engines.items():
        assert (engine in types) == (getattr(built.settings, cloud) is not None), engine


def test_outputs(built: BuiltStack) -> None:
    outputs = built.outputs
    assert set(outputs) >= ALWAYS_EXPORTED, ALWAYS_EXPORTED - set(outputs)
    for cloud, prefix in CLOUD_OUTPUT_PREFIX.items():
        exported = {k for k in outputs if k.startswith(prefix)}
        assert bool(exported) == (getattr(built.settings, cloud) is not None), exported
    assert outputs["kafkaTopics"] == [
        "cct.cost.anomalies",
        "cct.cost.anomalies.dlq",
        "cct.cost.anomalies.unmapped",
        "cct.optimization.results",
    ]
    assert outputs["fluentbitEndpoint"].startswith("https://")
    assert set(outputs["handlerUrls"]) == {
        "collector",
        "detector",
        "bridge",
        "trigger",
        "admission",
    }
    empty = [k for k, v in outputs.items() if v in ("", None)]
    assert not empty, f"empty outputs: {empty}"


def test_kafka_topics_are_resources(built: BuiltStack) -> None:
    topics = {
        r.inputs["spec"]["topicName"]: r.inputs["spec"]
        for r in built.of_type("kubernetes:kafka.strimzi.io/v1beta2:KafkaTopic")
    }
    assert set(topics) == set(built.outputs["kafkaTopics"])
    insync = 2 if built.settings.high_availability else 1
    for name, spec in topics.items():
        assert spec["config"]["min.insync.replicas"] == insync, name
        assert spec["replicas"] == (3 if built.settings.high_availability else 1), name


def _workloads(built: BuiltStack) -> list[Any]:
    return [
        r
        for r in built.resources
        if r.typ in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet")
    ]


@pytest.mark.parametrize("variant", ["prod-off", "prod-all"])
def test_prod_is_highly_available(stacks: dict[str, BuiltStack], variant: str) -> None:
    built = stacks[variant]
    pdb_selectors = [
        r.inputs["spec"]["selector"]["matchLabels"]
        for r in built.of_type("kubernetes:policy/v1:PodDisruptionBudget")
    ]
    for workload in _workloads(built):
        spec = workload.inputs["spec"]
        name = workload.inputs["metadata"]["name"]
        if spec["replicas"] < 2:
            # The one documented singleton (the metrics store is the cluster version here):
            # a rollout stops the old detector before it starts the new one, or both would
            # evaluate and post every alert for a while.
            assert name == "detector", f"{workload.urn} runs one replica"
            assert spec["strategy"] == {"type": "Recreate"}
            continue
        assert "strategy" not in spec, f"{workload.urn}: a replicated workload rolls"
        assert spec["selector"]["matchLabels"] in pdb_selectors, f"{workload.urn}: no PDB"
        affinity = spec["template"]["spec"].get("affinity", {})
        assert "podAntiAffinity" in affinity, f"{workload.urn}: no anti-affinity"
    pool = built.of_type("kubernetes:kafka.strimzi.io/v1beta2:KafkaNodePool")[0]
    assert pool.inputs["spec"]["replicas"] == 3
    cluster = built.of_type("kubernetes:postgresql.cnpg.io/v1:Cluster")[0]
    assert cluster.inputs["spec"]["instances"] == 3
    vault = next(
        r for r in built.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "vault"
    )
    ha = vault.inputs["values"]["server"]["ha"]
    assert ha["enabled"] is True
    # Every node joins the Raft cluster by itself (the chart's default config does not).
    assert ha["raft"]["config"].count("retry_join") == ha["replicas"] == 3


def test_the_detector_s_spool_is_on_a_volume_that_outlives_its_pod(built: BuiltStack) -> None:
    """The detector keeps what it owes Alertmanager and PostgreSQL in a spool file
    (lambdas.detector.outbox.Spool): on a claim of its own, read by the detector's settings
    from the environment the bundle gives it."""
    [claim] = [
        r
        for r in built.of_type("kubernetes:core/v1:PersistentVolumeClaim")
        if r.inputs["metadata"]["name"] == "detector-state"
    ]
    spec = claim.inputs["spec"]
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert spec.get("storageClassName") == built.settings.storage_class
    assert claim.inputs["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
    [detector] = [w for w in _workloads(built) if w.inputs["metadata"]["name"] == "detector"]
    pod = detector.inputs["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "state"]
    assert volume == {"name": "state", "persistentVolumeClaim": {"claimName": "detector-state"}}
    [container] = [c for c in pod["containers"] if c["name"] == "detector"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "state"]
    assert not mount.get("readOnly")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("CCT_PG_DSN", "postgresql://unused@127.0.0.1/x")
        mp.delenv("CCT_PG_DSN_FILE", raising=False)
        spool = Path(DetectorSettings.from_env().spool_file)
    assert spool.parent == Path(mount["mountPath"])


@pytest.mark.parametrize("variant", ["dev-off", "dev-all"])
def test_dev_is_small(stacks: dict[str, BuiltStack], variant: str) -> None:
    built = stacks[variant]
    assert not built.of_type("kubernetes:policy/v1:PodDisruptionBudget")
    assert all(w.inputs["spec"]["replicas"] == 1 for w in _workloads(built))


def _secret_values() -> list[str]:
    configured = [
        json.loads(v)["private_key"] if v.startswith("{") else v for v in TEST_SECRETS.values()
    ]
    return [*configured, FUNCTION_KEY]


def test_no_secret_in_outputs(built: BuiltStack) -> None:
    dumped = json.dumps(built.outputs)
    leaked = [s for s in _secret_values() if s in dumped]
    assert not leaked, f"secret values exported: {leaked}"
    # Every value CCT derives for its own pieces (tokens, logins) lands in a Secret.
    derived = [
        value
        for r in built.of_type("kubernetes:core/v1:Secret")
        for value in (r.inputs.get("stringData") or {}).values()
        if isinstance(value, str) and len(value) == LENGTH
    ]
    assert derived, "no derived secret found"
    exported = [r for r in derived if r in dumped]
    assert not exported, f"a derived secret is exported: {exported}"


# Where a secret value may appear at all: Secrets and secret stores, provider credentials,
# and the two function platforms that take the forwarder token as an environment variable
# (Lambda and Function App settings are encrypted at rest).
SECRET_HOLDERS = {
    "kubernetes:core/v1:Secret",
    "gcp:secretmanager/secretVersion:SecretVersion",
    "pulumi:providers:vault",
    "vault:azure/backend:Backend",
    "vault:gcp/secretBackend:SecretBackend",
    "vault:database/secretBackendConnection:SecretBackendConnection",
    "aws:lambda/function:Function",
    "azure-native:web:WebApp",
    # Event Grid's delivery URL carries the forwarder's function key.
    "azure-native:eventgrid:SystemTopicEventSubscription",
}


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def test_secrets_are_sent_as_secrets_and_only_to_secret_holders(built: BuiltStack) -> None:
    values = _secret_values()
    for resource in built.resources:
        for path, leaf in _leaves(resource.inputs):
            if not any(v in str(leaf) for v in values):
                continue
            assert resource.typ in SECRET_HOLDERS, f"{resource.urn}.{path} holds a secret value"
            marked = any(
                path == p or path.startswith((f"{p}.", f"{p}[")) for p in resource.secret_paths
            )
            assert marked, f"{resource.urn}.{path} holds a secret value that is not marked secret"


def test_no_secret_in_plain_config() -> None:
    declared = project_config()
    secret_keys = {
        key
        for key, spec in declared.items()
        if spec.get("secret") or str(spec.get("description", "")).startswith("Secret")
    }
    assert {"fluentbitToken", "zendutyIntegrationKey", "vaultToken"} <= secret_keys
    for key in secret_keys:
        assert declared[key].get("default", "") == "", f"Pulumi.yaml gives secret {key} a value"
    for stack in sorted({s for s, _ in VARIANTS.values()}):
        config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        for key in secret_keys:
            value = config.get(f"cct:{key}")
            assert value is None or (isinstance(value, dict) and "secure" in value), (
                f"Pulumi.{stack}.yaml sets secret cct:{key} in plain text"
            )


def _pod_specs(built: BuiltStack) -> Iterator[tuple[str, dict[str, Any]]]:
    for r in built.of_type("kubernetes:apps/v1:Deployment"):
        yield r.name, r.inputs["spec"]["template"]["spec"]
    for r in built.of_type("kubernetes:batch/v1:CronJob"):
        yield r.name, r.inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_every_vault_client_verifies_vault_s_certificate(built: BuiltStack) -> None:
    """Vault serves TLS only, and nothing that talks to it skips the check: every Vault Agent
    (the handlers', the billing loader's) and every workflow step gets Vault's https address and
    the CA of its certificate, from the ConfigMap the Vault component publishes in their
    namespace; the provider that configures Vault verifies it against cct:vaultCaFile."""
    ns, platform = built.settings.namespace, built.settings.platform_namespace
    config_maps = {
        r.inputs["metadata"]["name"]: r for r in built.of_type("kubernetes:core/v1:ConfigMap")
    }
    ca = config_maps["vault-ca"]
    assert ca.inputs["metadata"]["namespace"] == ns
    assert "BEGIN CERTIFICATE" in ca.inputs["data"]["ca.crt"]
    agents = [name for name in config_maps if name.rsplit("-", 1)[0].endswith("-vault-agent")]
    assert agents
    for name in agents:
        hcl = config_maps[name].inputs["data"]["agent.hcl"]
        assert f'address = "https://vault.{platform}.svc:8200"' in hcl, name
        assert 'ca_cert = "/etc/vault-agent-ca/ca.crt"' in hcl, name
    with_agent = 0
    for name, pod in _pod_specs(built):
        [agent] = [c for c in pod.get("initContainers", []) if c["name"] == "vault-agent"] or [None]
        if agent is None:
            continue
        with_agent += 1
        assert {"name": "vault-ca", "configMap": {"name": "vault-ca"}} in pod["volumes"], name
        assert {
            "name": "vault-ca", "mountPath": "/etc/vault-agent-ca", "readOnly": True
        } in agent["volumeMounts"], name  # fmt: skip
    assert with_agent == len(agents)

    step_env = config_maps["cct-steps"].inputs["data"]
    assert step_env["VAULT_ADDR"] == f"https://vault.{platform}.svc:8200"
    assert step_env["VAULT_CACERT"] == "/etc/cct/vault-ca/ca.crt"
    templates = built.of_type("kubernetes:argoproj.io/v1alpha1:WorkflowTemplate")
    assert templates
    for template in templates:
        spec = template.inputs["spec"]
        assert {"name": "vault-ca", "configMap": {"name": "vault-ca"}} in spec["volumes"]
        for t in spec["templates"]:
            if "container" not in t:
                continue
            mounts = t["container"]["volumeMounts"]
            assert {"name": "vault-ca", "mountPath": "/etc/cct/vault-ca"} in mounts, t["name"]

    providers = built.of_type("pulumi:providers:vault")
    assert len(providers) == built.settings.vault.configure
    for provider in providers:
        assert provider.inputs["address"].startswith("https://")
        assert provider.inputs["caCertFile"] == built.settings.vault.ca_file


def test_a_vault_agent_config_is_named_after_its_content_and_never_changes_in_place(
    built: BuiltStack,
) -> None:
    """A pod keeps the agent config it started with: a new config is a new ConfigMap (its
    name carries a digest of its content) that only the new revision's pods mount. Updated in
    place, the running pods of the previous revision would read the new config at their
    agent's next restart, with volumes they lack."""
    mounted = set()
    for _, pod in _pod_specs(built):
        mounted |= {
            v["configMap"]["name"] for v in pod.get("volumes", []) if v["name"] == "vault-agent"
        }
    agents = [
        r
        for r in built.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"]["name"].rsplit("-", 1)[0].endswith("-vault-agent")
    ]
    assert agents and {r.inputs["metadata"]["name"] for r in agents} == mounted
    for agent in agents:
        data = agent.inputs["data"]
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        assert agent.inputs["metadata"]["name"].endswith(f"-vault-agent-{digest}")
        assert agent.inputs["immutable"] is True
