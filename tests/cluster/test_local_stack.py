"""The local stack, deployed for real: every Kubernetes object of the bundle's cluster side
exists in the API server (which validated each custom resource against its operator's CRD),
a second `up` changes nothing, a policy edit previews as one small diff, and `destroy`
leaves nothing behind. This module runs after the admission tests: its last test destroys."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kubernetes import client
from kubernetes.dynamic import DynamicClient

from infra.stack import TOPICS
from lambdas.steps.playbooks import PLAYBOOKS
from tests.cluster.support import ROOT, Cluster, PulumiRun, pulumi

CRDS = (
    "kafkas.kafka.strimzi.io",
    "kafkatopics.kafka.strimzi.io",
    "kafkanodepools.kafka.strimzi.io",
    "clusters.postgresql.cnpg.io",
    "workflows.argoproj.io",
    "workflowtemplates.argoproj.io",
)
NAMESPACES = ("cct-system", "cct-platform")


def custom(cluster: Cluster, group: str, version: str, plural: str) -> list[str]:
    items = client.CustomObjectsApi(cluster.api()).list_namespaced_custom_object(
        group, version, "cct-system", plural
    )["items"]
    return sorted(i["metadata"]["name"] for i in items)


def test_operators_crds_and_cct_custom_resources_exist(
    deployed: PulumiRun, cluster: Cluster
) -> None:
    ext = client.ApiextensionsV1Api(cluster.api())
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    assert set(CRDS) <= names
    assert custom(cluster, "kafka.strimzi.io", "v1beta2", "kafkas") == ["cct"]
    topics = custom(cluster, "kafka.strimzi.io", "v1beta2", "kafkatopics")
    assert topics == sorted(t.name for t in TOPICS)
    assert custom(cluster, "postgresql.cnpg.io", "v1", "clusters") == ["cct-pg"]
    templates = custom(cluster, "argoproj.io", "v1alpha1", "workflowtemplates")
    assert templates == sorted(f"cct-{name}" for name in PLAYBOOKS)


def test_every_object_the_stack_manages_exists_in_the_api_server(
    deployed: PulumiRun, cluster: Cluster
) -> None:
    """Pulumi's state says what it created; the API server must hold each of those objects
    (read back by apiVersion, kind, namespace and name). Helm releases are checked by the
    objects of their charts' kinds that the API server lists, not one by one."""
    state = json.loads(pulumi("stack", "export").stdout)["deployment"]["resources"]
    dyn = DynamicClient(cluster.api())
    kinds: set[str] = set()
    releases = 0
    for res in state:
        kind_type = res["type"]
        if not kind_type.startswith("kubernetes:") or kind_type.startswith("pulumi:"):
            continue
        if kind_type == "kubernetes:helm.sh/v3:Release":
            releases += 1
            assert res["outputs"]["status"]["status"] == "deployed", res["urn"]
            continue
        out = res["outputs"]
        api = dyn.resources.get(api_version=out["apiVersion"], kind=out["kind"])
        meta = out["metadata"]
        got = api.get(name=meta["name"], namespace=meta.get("namespace"))
        assert got.metadata.uid == meta["uid"], res["urn"]
        kinds.add(out["kind"])
    assert releases == 5
    # CCT's own custom resources among them, validated by the operators' real CRDs.
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "Cluster"} <= kinds
    assert {"WorkflowTemplate", "ValidatingWebhookConfiguration", "Deployment"} <= kinds


def test_webhook_is_registered_by_url_at_the_host_handler(
    deployed: PulumiRun, cluster: Cluster
) -> None:
    api = client.AdmissionregistrationV1Api(cluster.api())
    hook = api.read_validating_webhook_configuration("cct-admission").webhooks[0]
    assert hook.client_config.url == "https://127.0.0.1:18443/validate"
    assert hook.client_config.service is None
    (only,) = hook.namespace_selector.match_expressions or []
    assert (only.key, only.operator, only.values) == (
        "kubernetes.io/metadata.name", "In", ["cct-system"]
    )  # fmt: skip


def test_vault_as_its_chart_rendered_it_serves_tls_and_its_clients_get_the_ca(
    deployed: PulumiRun, cluster: Cluster
) -> None:
    """The Vault chart as Helm rendered it from the bundle's values (docs/deployment.md, "Vault
    serves TLS only"): https in the pods' own address, the certificate's Secret mounted where
    the listener reads it, no `tls_disable` in the config, and the CA the clients verify Vault
    against in their namespace (here the operator's, cct:vaultCaFile: the cluster's CA)."""
    apps, core = client.AppsV1Api(cluster.api()), client.CoreV1Api(cluster.api())
    pod = apps.read_namespaced_stateful_set("vault", "cct-platform").spec.template.spec
    (server,) = [c for c in pod.containers if c.name == "vault"]
    env = {e.name: e.value for e in server.env}
    assert env["VAULT_ADDR"] == "https://127.0.0.1:8200"
    assert env["VAULT_CACERT"] == "/vault/userconfig/vault-tls/ca.crt"
    assert env["VAULT_API_ADDR"] == (
        "https://$(VAULT_K8S_POD_NAME).vault-internal.cct-platform.svc:8200"
    )
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["userconfig-vault-tls"].secret.secret_name == "vault-tls"
    mounts = {m.name: m.mount_path for m in server.volume_mounts}
    assert mounts["userconfig-vault-tls"] == "/vault/userconfig/vault-tls"
    config = "".join(core.read_namespaced_config_map("vault-config", "cct-platform").data.values())
    assert "tls_disable" not in config
    assert 'tls_cert_file = "/vault/userconfig/vault-tls/tls.crt"' in config
    ca = core.read_namespaced_config_map("vault-ca", "cct-system").data["ca.crt"]
    assert ca == Path(cluster.ca_file).read_text()


def test_second_up_changes_nothing(deployed: PulumiRun) -> None:
    pulumi("up", "--yes", "--skip-preview", "--expect-no-changes")


def test_policy_edit_previews_as_one_small_diff(deployed: PulumiRun) -> None:
    """The GitOps pull-request check (docs/gitops/): a changed policy file is one ConfigMap
    update, nothing else."""
    path = ROOT / "policies" / "optimization" / "critical-services.yaml"
    original = path.read_text()
    try:
        path.write_text(original + "\n# preview check\n")
        preview = pulumi("preview", "--json", "--diff")
    finally:
        path.write_text(original)
    steps = json.loads(preview.stdout)["steps"]
    changed = [(s["op"], s["urn"].rsplit("::", 1)[-1]) for s in steps if s["op"] != "same"]
    assert changed == [("update", "handlers-cct-policies")], changed


def test_destroy_leaves_nothing_behind(deployed: PulumiRun, cluster: Cluster) -> None:
    pulumi("destroy", "--yes", "--skip-preview")
    core = client.CoreV1Api(cluster.api())
    ext = client.ApiextensionsV1Api(cluster.api())

    def leftovers() -> tuple[set[str], set[str]]:
        namespaces = {str(n.metadata.name) for n in core.list_namespace().items}
        crds = {str(c.metadata.name) for c in ext.list_custom_resource_definition().items}
        return namespaces & set(NAMESPACES), crds

    # Deleting a namespace or a CRD is finished by controllers after the API call returns
    # (the namespace's contents, the CRD's instances), and the nodeless local stack does not
    # wait for it (skipAwait): poll, as `kubectl wait --for=delete` would.
    deadline = time.monotonic() + 180
    while any(leftovers()) and time.monotonic() < deadline:
        time.sleep(2)
    namespaces, crds = leftovers()
    assert not namespaces, f"namespaces left: {[core.read_namespace(n).status for n in namespaces]}"
    assert not crds, f"CRDs left: {crds}"
    admission = client.AdmissionregistrationV1Api(cluster.api())
    assert not admission.list_validating_webhook_configuration().items
    assert not admission.list_mutating_webhook_configuration().items
    cluster_roles = [
        r.metadata.name
        for r in client.RbacAuthorizationV1Api(cluster.api()).list_cluster_role().items
        if not r.metadata.name.startswith("system:")
        and r.metadata.name not in {"admin", "edit", "view", "cluster-admin"}
    ]
    assert not cluster_roles, f"cluster roles left: {cluster_roles}"
    # Redeploy so the cluster is left as `make deploy-local` leaves it.
    pulumi("up", "--yes", "--skip-preview")
