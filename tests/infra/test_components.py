"""Components in isolation: their args reject inconsistent input without Pulumi, and their
outputs (checked through Output.all(urn, ...) so a failure names the resource) are real."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pulumi
import pytest

from components import kube
from components.alertmanager import AlertmanagerArgs
from components.argo import ArgoWorkflowsArgs
from components.aws_account import remediation_policy
from components.fluentbit import FluentBitArgs
from components.grafana import GrafanaArgs
from components.handlers import (
    WEBHOOK_PORT,
    AdmissionSpec,
    Handlers,
    HandlersArgs,
    HandlerSpec,
    VaultAgentSpec,
)
from components.kafka import Kafka, KafkaArgs, TopicSpec
from components.namespace import NamespaceArgs
from components.vault import (
    Vault,
    VaultArgs,
    VaultGrant,
    VaultTls,
    raft_config,
    render_policy,
    server_names,
)
from tests.infra.harness import run
from tests.infra.mocks import FAKE_PEM

NS = "cct-system"

INVALID_ARGS: list[tuple[Callable[[], Any], str]] = [
    (lambda: kube.require_pinned_image("busybox", "x"), "x: image 'busybox' must be pinned"),
    (
        lambda: kube.helm_release(
            "r", chart="c", version="^1.0", namespace="n", values={},
            opts=pulumi.ResourceOptions(),
        ),
        "chart c: version '^1.0' must be an exact version",
    ),
    (
        lambda: kube.helm_release(
            "r", chart="c", version="1.0.0", namespace="n", values={},
            opts=pulumi.ResourceOptions(),
        ),
        "chart c 1.0.0 is not vendored",
    ),
    (
        lambda: NamespaceArgs(name="n", apiserver_cidrs=["10.0.0.1/32"], pod_security="open"),
        "pod_security must be one of",
    ),
    (lambda: NamespaceArgs(name="n", apiserver_cidrs=[]), "name the API server's addresses"),
    (
        lambda: NamespaceArgs(name="n", apiserver_cidrs=["10.0.0.1/32", "0.0.0.0/0"]),
        "apiserver_cidrs: 0.0.0.0/0 is anywhere, not the API server",
    ),
    (
        lambda: FluentBitArgs(
            namespace=NS, config_files={"a.yaml": ""}, main_file="b.yaml", secret_env={},
            tls_secret_name="t",
        ),
        "main_file 'b.yaml' is not among the config files",
    ),
    (
        lambda: AlertmanagerArgs(
            namespace=NS, config_yaml="", secret_files={}, clients=[], replicas=2,
            high_availability=True,
        ),
        "high_availability needs at least 3 Alertmanager replicas",
    ),
    (
        lambda: KafkaArgs(
            namespace=NS, operator_namespace="p", clients=[],
            topics=[TopicSpec("t", 1, 1), TopicSpec("t", 1, 1)],
        ),
        "duplicate topic names",
    ),
    (lambda: VaultGrant("aws/creds/*"), "must be exact (no wildcards)"),
    (lambda: VaultGrant("aws/creds/x", ("read", "sudo")), "capabilities ['sudo'] are not allowed"),
    (
        lambda: ArgoWorkflowsArgs(
            namespace=NS, operator_namespace="p", trigger_service_account="t", step_env={},
            step_secret_env={}, workflow_templates=[{"apiVersion": "v1", "kind": "ConfigMap"}],
            apiserver_cidrs=["10.0.0.1/32"],
        ),
        "workflow_templates holds v1/ConfigMap",
    ),
    (
        lambda: ArgoWorkflowsArgs(
            namespace=NS, operator_namespace="p", trigger_service_account="t", step_env={},
            step_secret_env={}, workflow_templates=[], apiserver_cidrs=["::/0"],
        ),
        "apiserver_cidrs: ::/0 is anywhere, not the API server",
    ),
    (
        lambda: GrafanaArgs(
            namespace=NS, dashboards={"a.json": "{}"}, secret_seed="seed",
            datasources={"datasources": [{"uid": "x"}, {"uid": "x"}]},
            dashboard_providers={"providers": [{"name": "cct", "options": {"path": "/x"}}]},
        ),
        "every datasource needs a unique uid",
    ),
    (
        lambda: HandlersArgs(
            namespace=NS, image="ghcr.io/cct-project/cct:0.1.0",
            handlers=[HandlerSpec("a", ("serve", "a"), config_mounts={"missing": "/x"})],
        ),
        "handler a mounts unknown ConfigMaps ['missing']",
    ),
    (
        lambda: HandlersArgs(
            namespace=NS, image="ghcr.io/cct-project/cct:0.1.0", high_availability=True,
            handlers=[HandlerSpec("a", ("serve", "a"))],
        ),
        "high_availability needs at least 2 replicas for ['a']",
    ),
    (
        lambda: AdmissionSpec(
            handler=HandlerSpec("admission", ("serve", "admission"), port=WEBHOOK_PORT,
                                metrics_port=8080),
            apiserver_cidrs=["10.0.0.1/32"], failure_policy="Open",
        ),
        "failure_policy must be one of",
    ),
    (
        lambda: AdmissionSpec(
            handler=HandlerSpec("admission", ("serve", "admission"), port=WEBHOOK_PORT,
                                metrics_port=8080),
            apiserver_cidrs=["0.0.0.0/0"],
        ),
        "apiserver_cidrs: 0.0.0.0/0 admits anyone, not the API server",
    ),
    (
        lambda: HandlerSpec(
            "a", ("serve", "a"),
            secret_env={"CCT_PG_DSN": kube.SecretEnv("cct-pg-app", "uri")},
            vault_agent=VaultAgentSpec(
                "https://v", "a", "hashicorp/vault:1.20.4", {"f": "x"}, "vault-ca"
            ),
        ),
        "its PostgreSQL login comes from Vault Agent",
    ),
    (
        lambda: HandlerSpec("a", ("serve", "a"), replicas=2, state_dir="/var/lib/a"),
        "handler a: a state volume is ReadWriteOnce: a singleton's only",
    ),
    (
        lambda: HandlerSpec("a", ("serve", "a"), singleton=True, schedule="0 * * * *",
                            state_dir="/var/lib/a"),
        "handler a: a state volume is ReadWriteOnce: a singleton's only",
    ),
    (
        lambda: VaultAgentSpec("https://v", "a", "hashicorp/vault:1.20.4", {}, "vault-ca"),
        "Vault Agent for role 'a' renders no templates",
    ),
    (
        lambda: VaultAgentSpec("http://v", "a", "hashicorp/vault:1.20.4", {"f": "x"}, "vault-ca"),
        "Vault Agent for role 'a': address 'http://v' is not https:// (Vault serves TLS only)",
    ),
    (lambda: VaultTls("vault-tls", "not a certificate"), "VaultTls.ca_pem holds no PEM"),
    (lambda: remediation_policy(["ec2:*"]), "remediation action 'ec2:*' must be one exact"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), INVALID_ARGS)
def test_invalid_args_are_rejected(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        make()
    assert message in str(raised.value)


def test_remediation_policy_splits_reads_from_fenced_writes() -> None:
    policy = remediation_policy(["ec2:StopInstances", "ec2:DescribeInstances", "ec2:StopInstances"])
    read, change, deny = policy["Statement"]
    assert read["Action"] == ["ec2:DescribeInstances"] and "Condition" not in read
    assert change["Action"] == deny["Action"] == ["ec2:StopInstances"]
    assert (change["Effect"], deny["Effect"]) == ("Allow", "Deny")


def test_vault_policy_is_rendered_in_a_stable_order() -> None:
    grants = [VaultGrant("sys/leases/revoke", ("update",)), VaultGrant("aws/sts/x", ("update",))]
    assert render_policy(grants) == (
        'path "aws/sts/x" {\n  capabilities = ["update"]\n}\n\n'
        'path "sys/leases/revoke" {\n  capabilities = ["update"]\n}\n'
    )


def test_kafka_outputs_and_children() -> None:
    topics = [
        TopicSpec("cct.cost.anomalies", 6, 1000),
        TopicSpec("cct.optimization.results", 3, 1000),
    ]
    acl = {
        "resource": {"type": "topic", "name": "cct.cost.anomalies", "patternType": "literal"},
        "operations": ["Write", "Describe"],
        "host": "*",
    }

    def program() -> None:
        kafka = Kafka(
            "kafka",
            KafkaArgs(
                namespace=NS,
                operator_namespace="p",
                clients=[],
                topics=topics,
                users={"kafka-bridge": [acl]},
            ),
        )

        def check(args: list[Any]) -> None:
            urn, bootstrap, names = args
            assert bootstrap == f"cct-kafka-bootstrap.{NS}.svc:9093", urn
            assert names == ["cct.cost.anomalies", "cct.optimization.results"], urn

        pulumi.Output.all(kafka.urn, kafka.bootstrap, kafka.topic_names).apply(check)

    mocks = run(program)
    children = [r for r in mocks.resources if r.typ != "cct:events:Kafka"]
    crds = [r for r in children if r.typ.endswith(":CustomResourceDefinition")]
    # The Strimzi chart's crds/ directory, as resources (components.kube.chart_crds).
    assert len(crds) == len(kube.chart_crds("strimzi-kafka-operator", "0.48.0")) == 10
    assert len(children) - len(crds) == 7
    assert all(r.name.startswith("kafka-") for r in children), [r.name for r in children]
    (cluster,) = [r for r in children if r.name == "kafka-cluster"]
    # One listener, TLS with SCRAM, and ACLs enforced: no plaintext, no anonymous client.
    (listener,) = cluster.inputs["spec"]["kafka"]["listeners"]
    assert (listener["tls"], listener["authentication"]) == (True, {"type": "scram-sha-512"})
    assert cluster.inputs["spec"]["kafka"]["authorization"] == {"type": "simple"}
    (user,) = [r for r in children if r.name == "kafka-user-kafka-bridge"]
    assert user.inputs["spec"]["authorization"] == {"type": "simple", "acls": [acl]}


def test_webhook_trusts_the_generated_ca() -> None:
    handler = HandlerSpec("admission", ("serve", "admission"), port=WEBHOOK_PORT, metrics_port=8080)

    def program() -> None:
        handlers = Handlers(
            "handlers",
            HandlersArgs(
                namespace=NS,
                image="ghcr.io/cct-project/cct:0.1.0",
                handlers=[],
                admission=AdmissionSpec(
                    handler=handler,
                    apiserver_cidrs=["10.0.0.1/32"],
                    workflow_namespaces=["cct-workflows", NS],
                ),
            ),
        )

        def check(args: list[Any]) -> None:
            urn, ca, server_name, urls = args
            assert ca == FAKE_PEM, urn
            assert server_name == f"admission.{NS}.svc", urn
            assert urls == {"admission": f"https://admission.{NS}.svc:{WEBHOOK_PORT}"}, urn

        pulumi.Output.all(
            handlers.urn, handlers.webhook_ca_pem, handlers.webhook_server_name, handlers.urls
        ).apply(check)

    mocks = run(program)
    (config,) = [r for r in mocks.resources if r.typ.endswith("ValidatingWebhookConfiguration")]
    (hook,) = config.inputs["webhooks"]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]).decode() == FAKE_PEM
    assert hook["failurePolicy"] == "Fail"
    # Every Workflow of the managed namespaces, whatever labels its author set.
    assert "objectSelector" not in hook
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": sorted(["cct-workflows", NS]),
            }
        ]
    }
    (tls_secret,) = [r for r in mocks.resources if r.name == "handlers-webhook-tls"]
    assert "stringData" in tls_secret.secret_paths
    assert set(tls_secret.inputs["stringData"]) == {"tls.crt", "tls.key", "ca.crt", "client-ca.crt"}
    (policy,) = [r for r in mocks.resources if r.name == "handlers-webhook-apiserver"]
    assert policy.inputs["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    (deployment,) = [r for r in mocks.resources if r.typ == "kubernetes:apps/v1:Deployment"]
    container = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CCT_ADMISSION_CLIENT_CA"] == "/etc/cct/tls/client-ca.crt"
    assert env["CCT_ADMISSION_CLIENT_NAMES"] == "cct-admission-apiserver-client"
    (client_cert,) = [r for r in mocks.resources if r.name == "handlers-apiserver-client-cert"]
    assert client_cert.inputs["allowedUses"] == [
        "digital_signature",
        "key_encipherment",
        "client_auth",
    ]


TLS_TYPES = {
    "tls:index/privateKey:PrivateKey",
    "tls:index/selfSignedCert:SelfSignedCert",
    "tls:index/certRequest:CertRequest",
    "tls:index/locallySignedCert:LocallySignedCert",
}


def _vault(**extra: Any) -> Callable[[], None]:
    def program() -> None:
        vault = Vault(
            "vault",
            VaultArgs(
                namespace="p",
                clients_namespace=NS,
                access={"a": [VaultGrant("x/y")]},
                configure=False,
                **extra,
            ),
        )
        assert vault.aws_path is None and vault.database_path is None

        def check(args: list[Any]) -> None:
            urn, policies, address = args
            assert policies == [] and address == "https://vault.p.svc:8200", urn

        pulumi.Output.all(vault.urn, vault.policy_names, vault.address).apply(check)

    return program


def test_unconfigured_vault_is_the_chart_its_certificate_and_the_clients_ca() -> None:
    mocks = run(_vault())
    assert {r.typ for r in mocks.resources} == {
        "cct:secrets:Vault",
        "kubernetes:helm.sh/v3:Release",
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
        "kubernetes:core/v1:Secret",
        "kubernetes:core/v1:ConfigMap",
        *TLS_TYPES,
    }
    # Only the servers' own traffic is admitted: no clients were named.
    policies = [r for r in mocks.resources if r.typ.endswith("NetworkPolicy")]
    assert [p.inputs["metadata"]["name"] for p in policies] == ["vault-peers"]


def test_vault_serves_tls_only_with_a_generated_certificate_for_its_names() -> None:
    """Tokens and issued credentials never cross the network in clear: the listener has a
    certificate for every name Vault is reached by, its key is a secret, and the clients get
    its CA in their own namespace."""
    mocks = run(_vault())
    [release] = [r for r in mocks.resources if r.typ == "kubernetes:helm.sh/v3:Release"]
    values = release.inputs["values"]
    assert values["global"] == {"tlsDisable": False}
    server = values["server"]
    config = server["standalone"]["config"]
    assert "tls_disable" not in config
    assert 'tls_cert_file = "/vault/userconfig/vault-tls/tls.crt"' in config
    assert 'tls_key_file = "/vault/userconfig/vault-tls/tls.key"' in config
    assert server["extraVolumes"] == [{"type": "secret", "name": "vault-tls", "defaultMode": 0o440}]
    assert server["extraEnvironmentVars"] == {"VAULT_CACERT": "/vault/userconfig/vault-tls/ca.crt"}
    # Each server names itself by a name its certificate holds, not by its pod IP.
    assert server["ha"]["apiAddr"] == "https://$(VAULT_K8S_POD_NAME).vault-internal.p.svc:8200"

    [secret] = [r for r in mocks.resources if r.typ == "kubernetes:core/v1:Secret"]
    assert secret.inputs["metadata"]["name"] == "vault-tls"
    assert secret.inputs["metadata"]["namespace"] == "p"
    assert secret.inputs["type"] == "kubernetes.io/tls"
    assert set(secret.inputs["stringData"]) == {"tls.crt", "tls.key", "ca.crt"}
    # (The Kubernetes SDK marks a Secret's whole stringData secret.)
    assert {"stringData", "stringData.tls.key"} & secret.secret_paths
    [request] = [r for r in mocks.resources if r.typ == "tls:index/certRequest:CertRequest"]
    assert request.inputs["dnsNames"] == server_names("p")
    assert {"vault.p.svc", "vault-active.p.svc", "*.vault-internal.p.svc"} <= set(
        request.inputs["dnsNames"]
    )
    assert request.inputs["ipAddresses"] == ["127.0.0.1", "::1"]
    [cert] = [r for r in mocks.resources if r.typ.endswith(":LocallySignedCert")]
    assert "server_auth" in cert.inputs["allowedUses"]

    [ca] = [r for r in mocks.resources if r.typ == "kubernetes:core/v1:ConfigMap"]
    assert ca.inputs["metadata"]["name"] == "vault-ca"
    assert ca.inputs["metadata"]["namespace"] == NS
    assert ca.inputs["data"] == {"ca.crt": FAKE_PEM}


def test_vault_serves_the_operator_s_certificate_when_given_one() -> None:
    operator_ca = FAKE_PEM.replace("TUlJ", "T1BF")
    mocks = run(_vault(tls=VaultTls("vault-cert", operator_ca)))
    assert not {r.typ for r in mocks.resources} & TLS_TYPES
    assert not [r for r in mocks.resources if r.typ == "kubernetes:core/v1:Secret"]
    [release] = [r for r in mocks.resources if r.typ == "kubernetes:helm.sh/v3:Release"]
    server = release.inputs["values"]["server"]
    assert server["extraVolumes"] == [
        {"type": "secret", "name": "vault-cert", "defaultMode": 0o440}
    ]
    config = server["standalone"]["config"]
    assert 'tls_cert_file = "/vault/userconfig/vault-cert/tls.crt"' in config
    [ca] = [r for r in mocks.resources if r.typ == "kubernetes:core/v1:ConfigMap"]
    assert ca.inputs["data"] == {"ca.crt": operator_ca}


def test_raft_peers_join_each_other_over_tls() -> None:
    config = raft_config(3, "p", "/vault/userconfig/vault-tls")
    assert "tls_disable" not in config
    for i in range(3):
        assert f'leader_api_addr = "https://vault-{i}.vault-internal.p.svc:8200"' in config
    assert config.count('leader_ca_cert_file = "/vault/userconfig/vault-tls/ca.crt"') == 3
    assert 'tls_cert_file = "/vault/userconfig/vault-tls/tls.crt"' in config
