"""VictoriaMetrics in the built stacks: the cluster version, replicated and spread, in prod; a
single node in dev; and every reader and writer (handlers, vmalert, vmagent, Grafana) given
the base URL of its side."""

from __future__ import annotations

from typing import Any

import pytest

from components.victoriametrics import (
    REPLICATION_FACTOR,
    VERSION,
    VMINSERT_PORT,
    VMSELECT_PORT,
    VMSTORAGE_INSERT_PORT,
    VMSTORAGE_SELECT_PORT,
    VictoriaMetricsArgs,
)
from infra.policypack.checks import pod_spec_of
from tests.infra.harness import BuiltStack
from tests.infra.mocks import Registered

NS = "cct-system"
WRITE = f"http://vminsert.{NS}.svc:8480/insert/0/prometheus"
READ = f"http://vmselect.{NS}.svc:8481/select/0/prometheus"
SINGLE = f"http://victoria-metrics.{NS}.svc:8428"
CLUSTER_APPS = ("vmstorage", "vminsert", "vmselect", "vmagent")
VM_ENV = ("CCT_VM_URL", "CCT_VM_WRITE_URL", "CCT_VM_READ_URL")


def _workloads(built: BuiltStack) -> dict[str, Registered]:
    return {
        r.inputs["metadata"]["name"]: r
        for r in built.resources
        if pod_spec_of(r.typ, r.inputs) is not None
    }


def _container(resource: Registered) -> dict[str, Any]:
    pod = pod_spec_of(resource.typ, resource.inputs)
    assert pod is not None
    container: dict[str, Any] = pod["containers"][0]
    return container


def _flags(resource: Registered) -> dict[str, str]:
    flags = (arg.lstrip("-").partition("=") for arg in _container(resource).get("args", []))
    return {name: value for name, _, value in flags}


def _vm_env(resource: Registered) -> dict[str, str]:
    env = _container(resource).get("env", [])
    return {e["name"]: e["value"] for e in env if e["name"] in VM_ENV}


def _admitted(built: BuiltStack, app: str) -> dict[int, list[dict[str, Any]]]:
    """port -> peers admitted to `app`'s pods by the policies selecting them."""
    admitted: dict[int, list[dict[str, Any]]] = {}
    for policy in built.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        spec = policy.inputs["spec"]
        if spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != app:
            continue
        for rule in spec["ingress"]:
            for port in rule["ports"]:
                admitted.setdefault(port["port"], []).extend(rule["from"])
    return admitted


def _pods(peers: list[dict[str, Any]]) -> set[str]:
    return {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in peers
        if "podSelector" in p
    }


@pytest.mark.parametrize("variant", ["prod-off", "prod-all"])
def test_prod_runs_the_replicated_cluster_version(
    stacks: dict[str, BuiltStack], variant: str
) -> None:
    built = stacks[variant]
    workloads = _workloads(built)
    assert "victoria-metrics" not in workloads
    pdbs = [
        r.inputs["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for r in built.of_type("kubernetes:policy/v1:PodDisruptionBudget")
    ]
    for app in (*CLUSTER_APPS, "vmalert"):
        spec = workloads[app].inputs["spec"]
        assert spec["replicas"] >= 2, app
        assert app in pdbs, app
        assert "podAntiAffinity" in spec["template"]["spec"]["affinity"], app
        if app != "vmalert":
            image = f"victoriametrics/{app}:{VERSION}"
            assert _container(workloads[app])["image"] == (
                image if app == "vmagent" else f"{image}-cluster"
            )
    storage = workloads["vmstorage"]
    assert storage.typ == "kubernetes:apps/v1:StatefulSet"
    assert storage.inputs["spec"]["replicas"] >= 2 * REPLICATION_FACTOR - 1
    assert storage.inputs["spec"]["serviceName"] == "vmstorage-headless"
    [claim] = storage.inputs["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "storage"
    headless = next(
        s
        for s in built.of_type("kubernetes:core/v1:Service")
        if s.inputs["metadata"]["name"] == "vmstorage-headless"
    )
    assert headless.inputs["spec"]["clusterIP"] == "None"
    nodes = [
        f"vmstorage-{i}.vmstorage-headless.{NS}.svc"
        for i in range(int(storage.inputs["spec"]["replicas"]))
    ]
    vminsert, vmselect = _flags(workloads["vminsert"]), _flags(workloads["vmselect"])
    assert vminsert["replicationFactor"] == str(REPLICATION_FACTOR) == "2"
    assert vminsert["storageNode"] == ",".join(f"{n}:{VMSTORAGE_INSERT_PORT}" for n in nodes)
    assert vmselect["storageNode"] == ",".join(f"{n}:{VMSTORAGE_SELECT_PORT}" for n in nodes)
    assert vmselect["replicationFactor"] == "2"
    assert vmselect["dedup.minScrapeInterval"] == "1ms"
    assert _flags(storage)["dedup.minScrapeInterval"] == "1ms"
    vmagent = _flags(workloads["vmagent"])
    assert vmagent["remoteWrite.url"] == f"{WRITE}/api/v1/write"
    # Numbers cross the Pulumi mocks as floats.
    members = int(workloads["vmagent"].inputs["spec"]["replicas"])
    assert vmagent["promscrape.cluster.membersCount"] == str(members)


@pytest.mark.parametrize("variant", ["prod-off", "prod-all"])
def test_prod_network_flows_follow_the_sides(stacks: dict[str, BuiltStack], variant: str) -> None:
    built = stacks[variant]
    writers = _pods(_admitted(built, "vminsert")[VMINSERT_PORT])
    readers = _pods(_admitted(built, "vmselect")[VMSELECT_PORT])
    assert writers == {"collector", "billing-loader", "vmalert", "vmagent"}
    assert readers == {"detector", "billing-loader", "grafana", "vmalert"}
    storage = _admitted(built, "vmstorage")
    assert set(storage) == {VMSTORAGE_INSERT_PORT, VMSTORAGE_SELECT_PORT}
    assert _pods(storage[VMSTORAGE_INSERT_PORT]) == {"vminsert"}
    assert _pods(storage[VMSTORAGE_SELECT_PORT]) == {"vmselect"}
    scrape = next(
        p
        for p in built.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if p.inputs["metadata"]["name"] == "metrics-scrape"
    )
    assert _pods(scrape.inputs["spec"]["ingress"][0]["from"]) == {"vmagent"}


@pytest.mark.parametrize(
    ("variant", "write", "read"),
    [("prod-all", WRITE, READ), ("prod-off", WRITE, READ), ("dev-all", SINGLE, SINGLE)],
)
def test_every_reader_and_writer_gets_its_side(
    stacks: dict[str, BuiltStack], variant: str, write: str, read: str
) -> None:
    built = stacks[variant]
    workloads = _workloads(built)
    assert _vm_env(workloads["collector"]) == {"CCT_VM_WRITE_URL": write}
    assert _vm_env(workloads["detector"]) == {"CCT_VM_READ_URL": read}
    if built.settings.aws:
        assert _vm_env(workloads["billing-loader"]) == {
            "CCT_VM_WRITE_URL": write,
            "CCT_VM_READ_URL": read,
        }
    # Nothing else is handed a metrics URL, and no one the single-node variable.
    others = {n: _vm_env(r) for n, r in workloads.items()}
    assert {n for n, e in others.items() if e} <= {"collector", "detector", "billing-loader"}
    vmalert = _flags(workloads["vmalert"])
    assert vmalert["datasource.url"] == vmalert["remoteRead.url"] == read
    assert vmalert["remoteWrite.url"] == write
    grafana = next(
        r for r in built.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "grafana"
    )
    assert grafana.inputs["values"]["env"]["CCT_GRAFANA_VM_URL"] == read
    assert (built.outputs["victoriaMetricsWriteUrl"], built.outputs["victoriaMetricsReadUrl"]) == (
        write,
        read,
    )


@pytest.mark.parametrize("variant", ["dev-off", "dev-all"])
def test_dev_runs_one_node(stacks: dict[str, BuiltStack], variant: str) -> None:
    workloads = _workloads(stacks[variant])
    assert not set(CLUSTER_APPS) & set(workloads)
    node = workloads["victoria-metrics"]
    assert node.inputs["spec"]["replicas"] == 1
    assert "promscrape.config" in _flags(node)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"replicas": 1}, "high_availability needs at least 2 replicas"),
        ({"replicas": 2, "storage_replicas": 2}, "at least 3 vmstorage nodes"),
        ({"replicas": 2, "vminsert_image": "victoriametrics/vminsert:latest"}, "vminsert: image"),
    ],
)
def test_inconsistent_high_availability_is_rejected(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VictoriaMetricsArgs(
            namespace=NS,
            scrape_namespaces=[NS],
            scrape_ports=[8080],
            rules={"r.yaml": "groups: []"},
            alertmanager_urls=["http://am:9093"],
            writers=[],
            readers=[],
            high_availability=True,
            **overrides,
        )
