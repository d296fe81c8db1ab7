"""Every pod that must reach the Kubernetes API (and Vault's and the workflow steps', which also
call the clouds' APIs, the internet) is selected by an egress NetworkPolicy of its namespace
that allows exactly that, and no egress rule opens the API ports wider than the API server.

components/namespace.py denies all egress but DNS and the two namespaces. A pod reaches the API
server (443/6443 at `cct:apiServerCidrs`) or the internet (443 outside the cluster's ranges)
only by carrying the opt-in label (EGRESS_KUBE_API_LABEL, EGRESS_INTERNET_LABEL). The bundle's
own workloads set it themselves; the charts' pods get it through each chart's own values,
which Helm silently ignores when misspelt (and Helm cannot render here), so each values key is
checked against the template of the vendored chart that consumes it, which must put it into a
pod template's labels; the operators' pods get it through the custom resources, whose fields
are checked against the vendored CRDs.

Which pods need what is listed explicitly below: every pod template of every vendored chart,
and every kind of pod the operators start for the stack's custom resources, each with why it
needs the API (or why it needs nothing, which is checked too). Everything else (the release
values, the resources, the policies) is read from the stack as built, for every stack file,
the `local` one `make test-cluster` deploys for real included.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import re
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from components import kube
from components.namespace import (
    EGRESS_INTERNET_LABEL,
    EGRESS_KUBE_API_LABEL,
    KUBE_API_PORTS,
    NamespaceArgs,
)
from infra.config import Settings
from infra.generated import collect
from tests.infra.conftest import VARIANTS, ensure_event_loop
from tests.infra.harness import BuiltStack, Registered, build_stack
from tests.infra.mocks import FAKE_PEM

API, INTERNET = "kube-api", "internet"
LABEL = {API: EGRESS_KUBE_API_LABEL, INTERNET: EGRESS_INTERNET_LABEL}
RELEASE = "kubernetes:helm.sh/v3:Release"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
# What components.namespace.Namespace keeps out of "internet".
CLUSTER_CIDRS = NamespaceArgs(name="defaults", apiserver_cidrs=["192.0.2.1/32"]).cluster_cidrs
# The label Argo puts on every pod of a Workflow.
WORKFLOW_POD_LABEL = "workflows.argoproj.io/workflow"
GRAFANA_SIDECARS = ("alerts", "dashboards", "datasources", "plugins", "notifiers")


def _off(value: Any) -> bool:
    return str(value).lower() in ("false", "none", "")


@dataclass(frozen=True)
class ChartPods:
    """One pod template of a vendored chart: what its pods need, and how they get it."""

    template: str  # inside the chart's directory of the archive
    reason: str
    # Where the bundle sets the pods' labels in the release's values; () = it sets none.
    values_path: tuple[str, ...] = ()
    egress: frozenset[str] = frozenset()
    # For pods that need no egress label: the fact (release values over the chart's
    # values.yaml, and the template's text) that makes it so.
    holds: Callable[[Mapping[str, Any], str], bool] | None = None


def _helm_test_hook(_values: Mapping[str, Any], text: str) -> bool:
    return '"helm.sh/hook"' in text


CHART_PODS: dict[str, tuple[ChartPods, ...]] = {
    "strimzi-kafka-operator": (
        ChartPods(
            "templates/060-Deployment-strimzi-cluster-operator.yaml",
            "the cluster operator reconciles Kafka, KafkaNodePool, KafkaTopic and KafkaUser and"
            " creates the brokers' pods, Services, Secrets and certificates",
            ("labels",),  # line 34: `{{- with .Values.labels }}` under template.metadata.labels
            frozenset({API}),
        ),
    ),
    "cloudnative-pg": (
        ChartPods(
            "templates/deployment.yaml",
            "the operator reconciles the Cluster: instance pods, Jobs, Services, Secrets,"
            " managed roles, status; and serves the webhooks",
            ("podLabels",),  # line 48: `{{- with .Values.podLabels }}`
            frozenset({API}),
        ),
    ),
    "argo-workflows": (
        ChartPods(
            "templates/controller/workflow-controller-deployment.yaml",
            "the controller watches Workflows, creates their pods and writes their status",
            ("controller", "podLabels"),  # line 24: `{{- with.Values.controller.podLabels }}`
            frozenset({API}),
        ),
        ChartPods(
            "templates/server/server-deployment.yaml",
            "the server's API and UI read and write Workflows in the API server, with the"
            " caller's token (authModes: client)",
            ("server", "podLabels"),  # line 27: `{{- with .Values.server.podLabels }}`
            frozenset({API}),
        ),
    ),
    "vault": (
        ChartPods(
            "templates/server-statefulset.yaml",
            "Kubernetes auth reviews every login's token (TokenReview: without it no Vault"
            " Agent, step or handler logs in), HA registers each pod's role through the API;"
            " the AWS, Azure and GCP secrets engines call the clouds' APIs (internet)",
            ("server", "extraLabels"),  # lines 42-43: `toYaml .Values.server.extraLabels`
            frozenset({API, INTERNET}),
        ),
        ChartPods(
            "templates/injector-deployment.yaml",
            "not rendered: injector.enabled is false (pods log in themselves)",
            holds=lambda v, _t: _off(v["injector"]["enabled"]),
        ),
        ChartPods(
            "templates/csi-daemonset.yaml",
            "not rendered: csi.enabled is false",
            holds=lambda v, _t: _off(v["csi"]["enabled"]),
        ),
        ChartPods(
            "templates/tests/server-test.yaml",
            "a `helm test` hook, which the release never runs",
            holds=_helm_test_hook,
        ),
    ),
    "grafana": (
        ChartPods(
            "templates/deployment.yaml",
            "Grafana reads its datasources and dashboards from files the chart mounts; the"
            " chart's only Kubernetes API client, the k8s-sidecar, is off, and nothing is"
            " downloaded (no plugins, no dashboards by URL)",
            holds=lambda v, _t: (
                all(_off(v["sidecar"][s]["enabled"]) for s in GRAFANA_SIDECARS)
                and not v.get("plugins")
                and not v.get("dashboards")
            ),
        ),
        ChartPods(
            "templates/statefulset.yaml",
            "not rendered: no persistence and no useStatefulSet",
            holds=lambda v, _t: not v["useStatefulSet"] and not v["persistence"]["enabled"],
        ),
        ChartPods(
            "templates/image-renderer-deployment.yaml",
            "not rendered: imageRenderer.enabled is false",
            holds=lambda v, _t: _off(v["imageRenderer"]["enabled"]),
        ),
        ChartPods(
            "templates/tests/test.yaml",
            "a `helm test` hook, which the release never runs",
            holds=_helm_test_hook,
        ),
    ),
}


@dataclass(frozen=True)
class OperatorPods:
    """Pods an operator starts for one of the stack's custom resources."""

    typ: str  # the custom resource's type token
    chart: str  # the vendored chart whose CRD defines it
    pods: str
    reason: str
    # Where the resource sets the pods' labels (checked against the CRD); () = it sets none.
    labels_path: tuple[str, ...] = ()
    egress: frozenset[str] = frozenset()
    holds: Callable[[Mapping[str, Any]], bool] | None = None


def _kafka_brokers_need_no_api(inputs: Mapping[str, Any]) -> bool:
    # Strimzi gives the brokers their API-reading init container (the node's zone, the
    # node port's address) only for `rack` or a nodeport listener (KafkaCluster
    # createInitContainer); in KRaft they read everything else from files. No Kafka Exporter
    # or Cruise Control (their own pods) is asked for.
    spec = inputs["spec"]
    return (
        "rack" not in spec["kafka"]
        and all(listener["type"] != "nodeport" for listener in spec["kafka"]["listeners"])
        and set(spec) <= {"kafka", "entityOperator"}
    )


OPERATOR_PODS: tuple[OperatorPods, ...] = (
    OperatorPods(
        "kubernetes:kafka.strimzi.io/v1beta2:Kafka",
        "strimzi-kafka-operator",
        "entity operator (topic and user operators)",
        "they watch KafkaTopics and KafkaUsers, write their status and the users' Secrets",
        ("spec", "entityOperator", "template", "pod", "metadata", "labels"),
        frozenset({API}),
    ),
    OperatorPods(
        "kubernetes:kafka.strimzi.io/v1beta2:Kafka",
        "strimzi-kafka-operator",
        "Kafka brokers/controllers (the KafkaNodePool's pods)",
        "KRaft nodes read their configuration from files; no rack, no nodeport listener",
        holds=_kafka_brokers_need_no_api,
    ),
    OperatorPods(
        "kubernetes:postgresql.cnpg.io/v1:Cluster",
        "cloudnative-pg",
        "PostgreSQL instances and their initdb/join Jobs",
        "the instance manager reads the Cluster and its Secrets and writes status through the"
        " API server (CloudNativePG puts inheritedMetadata on the instance pods and on the Jobs'"
        " pod templates)",
        ("spec", "inheritedMetadata", "labels"),
        frozenset({API}),
    ),
)
# Argo's workflow step pods: the executor reports results through the API server, the steps
# call the clouds' APIs. Their labels: the controller's workflowDefaults (consumed by
# templates/controller/workflow-controller-config-map.yaml, lines 147-148: `workflowDefaults:`
# then `toYaml .Values.controller.workflowDefaults`), whose spec.podMetadata.labels the
# controller copies onto every pod of every Workflow (workflow/controller/workflowpod.go,
# addMetadata), plus the label Argo itself puts on each.
STEP_PODS_PATH = ("controller", "workflowDefaults", "spec", "podMetadata", "labels")
STEP_PODS_EGRESS = frozenset({API, INTERNET})


# ------------------------------------------------------------------------------ charts


def _chart_version(release: Registered) -> str:
    name = str(release.inputs["name"])
    archive = PurePosixPath(str(release.inputs["chart"])).name
    return archive.removeprefix(f"{name}-").removesuffix(".tgz")


def _chart_files(chart: str, version: str) -> dict[str, str]:
    """The chart's own files (not its subcharts'), by path inside its directory."""
    files: dict[str, str] = {}
    with tarfile.open(kube.chart_archive(chart, version)) as tar:
        for member in tar.getmembers():
            path = member.name.removeprefix(f"{chart}/")
            if member.isfile() and not path.startswith("charts/"):
                handle = tar.extractfile(member)
                assert handle is not None
                files[path] = handle.read().decode()
    return files


def _pod_templates(files: Mapping[str, str]) -> set[str]:
    """The templates that create pods (a top-level workload `kind:`)."""
    kinds = re.compile(r"^kind: (Deployment|StatefulSet|DaemonSet|Job|CronJob|Pod)\s*$", re.M)
    return {p for p, text in files.items() if p.startswith("templates/") and kinds.search(text)}


_KEY_ONLY = re.compile(r"^(\s*)([A-Za-z][\w.-]*):\s*$")


def _consuming_line(text: str, key_path: Sequence[str]) -> tuple[int, list[str]]:
    """The first line reading `.Values.<key_path>` and the YAML keys enclosing it, innermost
    first (template directives and `key: value` lines skipped)."""
    expression = ".Values." + ".".join(key_path)
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not re.search(re.escape(expression) + r"(?![\w.])", line):
            continue
        indent = len(line) - len(line.lstrip())
        parents: list[str] = []
        for above in reversed(lines[: number - 1]):
            match = _KEY_ONLY.match(above)
            if match and len(match.group(1)) < indent:
                parents.append(match.group(2))
                indent = len(match.group(1))
        return number, parents
    return 0, []


def _merged(defaults: Any, values: Any) -> Any:
    """The release's values over the chart's values.yaml, as Helm coalesces them."""
    if isinstance(defaults, dict) and isinstance(values, dict):
        return {**defaults, **{k: _merged(defaults.get(k), v) for k, v in values.items()}}
    return values


def _dig(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


# ---------------------------------------------------------------------------- policies


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        found = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": key in labels and labels[key] in (values or []),
            "NotIn": key not in labels or labels[key] not in (values or []),
        }[operator]
        if not found:
            return False
    return True


def _ports(rule: Mapping[str, Any]) -> set[int] | None:
    """The TCP ports an egress rule allows; None: every port."""
    if not rule.get("ports"):
        return None
    return {int(p["port"]) for p in rule["ports"] if p.get("protocol", "TCP") == "TCP"}


def _egress_rules(
    resources: Sequence[Registered], namespace: str, labels: Mapping[str, str]
) -> Iterator[tuple[Registered, Mapping[str, Any]]]:
    """Every egress rule of every NetworkPolicy in `namespace` that selects `labels`."""
    for policy in resources:
        if policy.typ != NETWORK_POLICY or policy.inputs["metadata"]["namespace"] != namespace:
            continue
        spec = policy.inputs["spec"]
        if "Egress" in spec.get("policyTypes", []) and _selects(spec["podSelector"], labels):
            for rule in spec.get("egress") or []:
                yield policy, rule


def _is_internet_policy(policy: Registered, rule: Mapping[str, Any]) -> bool:
    """The namespace's explicit, opt-in internet policy: 443 outside the cluster's ranges."""
    return (
        policy.inputs["spec"]["podSelector"] == {"matchLabels": {EGRESS_INTERNET_LABEL: "true"}}
        and rule.get("to") == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(CLUSTER_CIDRS)}}]
        and _ports(rule) == {443}
    )


def _api_peers(settings: Settings) -> list[dict[str, Any]]:
    return [{"ipBlock": {"cidr": cidr}} for cidr in settings.apiserver_cidrs]


def egress_problems(
    resources: Sequence[Registered],
    settings: Settings,
    *,
    what: str,
    namespace: str,
    labels: Mapping[str, str],
    egress: frozenset[str],
) -> list[str]:
    """Why pods labelled `labels` in `namespace` cannot reach what `egress` names."""
    rules = list(_egress_rules(resources, namespace, labels))
    problems = []
    if API in egress and not any(
        rule.get("to") == _api_peers(settings) and set(KUBE_API_PORTS) <= (_ports(rule) or set())
        for _, rule in rules
    ):
        problems.append(
            f"{what} ({namespace}, labels {dict(labels)}): no egress policy allows"
            f" {KUBE_API_PORTS} to the API server {settings.apiserver_cidrs} only"
        )
    if INTERNET in egress and not any(_is_internet_policy(p, r) for p, r in rules):
        problems.append(
            f"{what} ({namespace}, labels {dict(labels)}): the internet egress policy does not"
            " select it"
        )
    return problems


def wide_egress_problems(resources: Sequence[Registered], settings: Settings) -> list[str]:
    """Egress rules that allow 443 or 6443 to everywhere, except the internet policy."""
    problems = []
    for policy in resources:
        if policy.typ != NETWORK_POLICY:
            continue
        for rule in policy.inputs["spec"].get("egress") or []:
            ports = _ports(rule)
            if ports is not None and not ports & set(KUBE_API_PORTS):
                continue
            peers = rule.get("to") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
            wide = [
                p
                for p in peers
                if "ipBlock" in p
                and ipaddress.ip_network(p["ipBlock"]["cidr"], strict=False).prefixlen == 0
            ]
            if wide and not _is_internet_policy(policy, rule):
                name = policy.inputs["metadata"]["name"]
                problems.append(
                    f"NetworkPolicy {name}: egress {rule} allows the API ports anywhere"
                )
    return problems


# ----------------------------------------------------------------------------- checks


def _releases(resources: Sequence[Registered]) -> dict[str, Registered]:
    return {str(r.inputs["name"]): r for r in resources if r.typ == RELEASE}


def chart_pod_problems(resources: Sequence[Registered], settings: Settings) -> list[str]:
    """The charts' pods: each labelled through a key its chart really consumes, and selected."""
    releases = _releases(resources)
    problems = []
    if set(releases) != set(CHART_PODS):
        problems.append(f"charts installed {sorted(releases)}, listed {sorted(CHART_PODS)}")
    for chart, release in sorted(releases.items()):
        version = _chart_version(release)
        files = _chart_files(chart, version)
        values = release.inputs["values"]
        merged = _merged(yaml.safe_load(files["values.yaml"]), values)
        listed = {p.template for p in CHART_PODS.get(chart, ())}
        if listed != _pod_templates(files):
            problems.append(
                f"{chart} {version}: pod templates {sorted(_pod_templates(files))}, listed"
                f" {sorted(listed)}: say what each new one needs"
            )
        for pods in CHART_PODS.get(chart, ()):
            what = f"{chart} {pods.template}"
            if not pods.values_path:
                assert pods.holds is not None, what
                if not pods.holds(merged, files[pods.template]):
                    problems.append(f"{what}: no longer true: {pods.reason}")
                continue
            line, parents = _consuming_line(files[pods.template], pods.values_path)
            if parents[:3] != ["labels", "metadata", "template"]:
                problems.append(
                    f"{what}: .Values.{'.'.join(pods.values_path)} is not read into the pod"
                    f" template's labels (line {line}, under {parents[:3]})"
                )
            labels = _dig(values, pods.values_path) or {}
            opted_in = {k for k, v in labels.items() if v == "true"}
            missing = {LABEL[e] for e in pods.egress} - opted_in
            if missing:
                problems.append(f"{what}: values {pods.values_path} lack {sorted(missing)}")
            problems += egress_problems(
                resources,
                settings,
                what=what,
                namespace=release.inputs["namespace"],
                labels=labels,
                egress=pods.egress,
            )
    return problems


def _crd_field(chart: str, version: str, typ: str, path: Sequence[str]) -> dict[str, Any] | None:
    """The schema of `path` in the vendored CRD of `typ` (kubernetes:<group>/<version>:<Kind>)."""
    group_version, kind = typ.removeprefix("kubernetes:").rsplit(":", 1)
    group, api_version = group_version.split("/")
    for crd in kube.chart_crds(chart, version):
        if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
            continue
        for served in crd["spec"]["versions"]:
            if served["name"] == api_version:
                schema: dict[str, Any] | None = served["schema"]["openAPIV3Schema"]
                for key in path:
                    schema = (schema or {}).get("properties", {}).get(key)
                return schema
    return None


def operator_pod_problems(resources: Sequence[Registered], settings: Settings) -> list[str]:
    """The pods the operators start for the stack's custom resources."""
    problems = []
    releases = _releases(resources)
    kinds = {r.typ for r in resources}
    for pods in OPERATOR_PODS:
        assert pods.typ in kinds, f"{pods.typ} is no longer built: update OPERATOR_PODS"
    for resource in resources:
        for pods in (p for p in OPERATOR_PODS if p.typ == resource.typ):
            what = f"{pods.pods} of {resource.typ.rsplit(':', 1)[1]} {resource.name}"
            if not pods.labels_path:
                assert pods.holds is not None, what
                if not pods.holds(resource.inputs):
                    problems.append(f"{what}: no longer true: {pods.reason}")
                continue
            version = _chart_version(releases[pods.chart])
            schema = _crd_field(pods.chart, version, pods.typ, pods.labels_path)
            if not schema or schema.get("additionalProperties", {}).get("type") != "string":
                problems.append(f"{what}: {pods.labels_path} is not a labels map in the CRD")
            labels = _dig(resource.inputs, pods.labels_path) or {}
            problems += egress_problems(
                resources,
                settings,
                what=what,
                namespace=resource.inputs["metadata"]["namespace"],
                labels=labels,
                egress=pods.egress,
            )
    return problems


def step_pod_problems(resources: Sequence[Registered], settings: Settings) -> list[str]:
    argo = _releases(resources)["argo-workflows"]
    files = _chart_files("argo-workflows", _chart_version(argo))
    config_map = files["templates/controller/workflow-controller-config-map.yaml"]
    problems = []
    # `workflowDefaults:` in the controller's configuration, then the values under it.
    if not re.search(
        r"^\s*workflowDefaults:\n.*toYaml \.Values\.controller\.workflowDefaults\b",
        config_map,
        re.M,
    ):
        problems.append("argo-workflows: .Values.controller.workflowDefaults is not read")
    controller = argo.inputs["values"]["controller"]
    labels = {**(_dig(argo.inputs["values"], STEP_PODS_PATH) or {}), WORKFLOW_POD_LABEL: "run"}
    for namespace in controller["workflowNamespaces"]:
        problems += egress_problems(
            resources,
            settings,
            what="workflow step pods",
            namespace=namespace,
            labels=labels,
            egress=STEP_PODS_EGRESS,
        )
    return problems


WORKLOADS = (
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:batch/v1:Job",
    "kubernetes:batch/v1:CronJob",
)


def bundle_pod_problems(resources: Sequence[Registered], settings: Settings) -> list[str]:
    """The bundle's own workloads: a pod mounts its service account token only when it calls
    the API (kube.pod_spec), so every one that does must be allowed to reach the API server."""
    problems = []
    for workload in (r for r in resources if r.typ in WORKLOADS):
        spec = workload.inputs["spec"]
        if workload.typ.endswith(":CronJob"):
            spec = spec["jobTemplate"]["spec"]
        template = spec["template"]
        if template["spec"].get("automountServiceAccountToken") is True:
            problems += egress_problems(
                resources,
                settings,
                what=f"{workload.typ.rsplit(':', 1)[1]} {workload.inputs['metadata']['name']}",
                namespace=workload.inputs["metadata"]["namespace"],
                labels=template["metadata"]["labels"],
                egress=frozenset({API}),
            )
    return problems


def all_problems(stack: BuiltStack) -> list[str]:
    r, s = stack.resources, stack.settings
    return [
        *chart_pod_problems(r, s),
        *operator_pod_problems(r, s),
        *step_pod_problems(r, s),
        *bundle_pod_problems(r, s),
        *wide_egress_problems(r, s),
    ]


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> BuiltStack:
    """The `local` stack as scripts/cluster deploys it into the real API server: its stack
    file, generated secrets and the webhook's CA file."""
    ca = tmp_path_factory.mktemp("local-stack") / "ca.crt"
    ca.write_text(FAKE_PEM)
    ensure_event_loop()
    return build_stack("local", collect, {"webhookCaFile": str(ca), "vaultCaFile": str(ca)})


@pytest.fixture(params=[*sorted(VARIANTS), "local"])
def stack(request: pytest.FixtureRequest, stacks: dict[str, BuiltStack]) -> BuiltStack:
    if request.param == "local":
        built: BuiltStack = request.getfixturevalue("local_stack")
        return built
    return stacks[request.param]


def test_every_pod_reaches_exactly_the_api_and_internet_it_needs(stack: BuiltStack) -> None:
    assert all_problems(stack) == []


def test_every_vendored_chart_is_listed() -> None:
    """Every vendored chart has its pod templates listed (the check above compares them with
    the archive), and only the five charts the bundle installs are vendored."""
    vendored = {p.name.rsplit("-", 1)[0] for p in kube.CHARTS_DIR.glob("*.tgz")}
    assert vendored == set(CHART_PODS)


def _without(stack: BuiltStack, change: Callable[[Registered, dict[str, Any]], None]) -> list[str]:
    """all_problems of a copy of `stack` whose resources' inputs `change` edited in place."""
    resources = []
    for resource in stack.resources:
        inputs = copy.deepcopy(resource.inputs)
        change(resource, inputs)
        resources.append(dataclasses.replace(resource, inputs=inputs))
    return all_problems(dataclasses.replace(stack, resources=resources))


def _drop(inputs: Any, path: Sequence[str]) -> None:
    parent = _dig(inputs, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def test_the_check_catches_the_defects_it_guards_against(stacks: dict[str, BuiltStack]) -> None:
    """Fed the stack as it was before the fix (no labels on the charts' and operators' pods,
    the API rule open to anywhere), the check reports every affected pod."""
    prod = stacks["prod-all"]
    cidrs = prod.settings.apiserver_cidrs

    def unlabelled(resource: Registered, inputs: dict[str, Any]) -> None:
        if resource.typ == RELEASE:
            for pods in CHART_PODS.get(str(inputs["name"]), ()):
                if pods.values_path:
                    _drop(inputs["values"], pods.values_path)
            if inputs["name"] == "argo-workflows":
                _drop(inputs["values"], STEP_PODS_PATH[:-1])
        for operator in OPERATOR_PODS:
            labels = _dig(inputs, operator.labels_path) if operator.labels_path else None
            if resource.typ == operator.typ and isinstance(labels, dict):
                for label in LABEL.values():
                    labels.pop(label, None)

    found = "\n".join(_without(prod, unlabelled))
    for chart, pods_list in CHART_PODS.items():
        for pods in pods_list:
            if pods.values_path:
                assert f"{chart} {pods.template}: values" in found
    for operator in OPERATOR_PODS:
        if operator.labels_path:
            assert f"{operator.pods} of" in found
    assert "workflow step pods" in found and "internet egress policy does not select" in found

    def open_api_rule(resource: Registered, inputs: dict[str, Any]) -> None:
        if resource.typ != NETWORK_POLICY:
            return
        for rule in inputs["spec"].get("egress") or []:
            if rule.get("to") == [{"ipBlock": {"cidr": c}} for c in cidrs]:
                rule["to"] = [kube.ANYWHERE]

    found = "\n".join(_without(prod, open_api_rule))
    assert "NetworkPolicy egress-kube-api: egress" in found
    assert "NetworkPolicy workflow-steps-egress: egress" in found
    assert "no egress policy allows" in found

    def misspelt(resource: Registered, inputs: dict[str, Any]) -> None:
        if resource.typ == RELEASE and inputs["name"] == "cloudnative-pg":
            inputs["values"]["podLabel"] = inputs["values"].pop("podLabels")

    found = "\n".join(_without(prod, misspelt))
    assert "cloudnative-pg templates/deployment.yaml: values ('podLabels',) lack" in found
    # ... and a key the chart does not read is refused even where the values carry it.
    files = _chart_files(
        "cloudnative-pg", _chart_version(_releases(prod.resources)["cloudnative-pg"])
    )
    assert _consuming_line(files["templates/deployment.yaml"], ("podLabel",)) == (0, [])
    # ... and so is one read elsewhere than into the pod template's labels.
    line, parents = _consuming_line(files["templates/deployment.yaml"], ("podAnnotations",))
    assert line and parents[:3] != ["labels", "metadata", "template"]
