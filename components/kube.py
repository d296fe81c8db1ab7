"""Building blocks shared by the Kubernetes components: labels, the restricted security
context, resource sizing, scrape annotations, network policies and disruption budgets.

Every workload CCT creates itself goes through these helpers, so the invariants the tests and
the CrossGuard pack check (non-root, read-only root filesystem, limits, labels) hold by
construction rather than by per-component care.

Manifests are written as the Kubernetes API spells them (camelCase dicts, as the policy pack
and kubernetes-validate see them); the SDK's TypedDicts use snake_case keys, so manifest
values are typed `Manifest` (Any).
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

Manifest = Any

PART_OF = "cct"
MANAGED_BY = "pulumi"

# The vendored Helm charts (charts/SOURCES.md).
CHARTS_DIR = Path(__file__).resolve().parent.parent / "charts"

# UID/GID of the distroless "nonroot" user; any non-zero id works, one id keeps volumes simple.
NONROOT_UID = 65532

# An image is pinned when it names a digest or an exact version tag (major.minor at least:
# PostgreSQL's exact versions have two parts). "latest" and bare majors are rejected: a
# redeploy must never change what runs.
_IMAGE_TAG = re.compile(r"^v?\d+\.\d+(?:\.\d+)?(?:[\-+][\w.\-]+)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+(?:[\-+][\w.\-]+)?$")


def is_pinned_image(image: str) -> bool:
    """True when `image` names an exact version tag or a sha256 digest."""
    ref, _, digest = image.partition("@")
    if digest:
        return bool(_DIGEST.match(digest))
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return bool(_IMAGE_TAG.match(last.rsplit(":", 1)[1]))


def is_exact_version(version: str) -> bool:
    """True for an exact semantic version (a Helm chart pin), never a range."""
    return bool(_EXACT_VERSION.match(version))


def require_pinned_image(image: str, what: str) -> str:
    if not is_pinned_image(image):
        raise ValueError(f"{what}: image {image!r} must be pinned to an exact tag or digest")
    return image


def child_opts(
    parent: pulumi.Resource, opts: pulumi.ResourceOptions | None
) -> pulumi.ResourceOptions:
    """Options for a component's children: parented to it, and waiting for what the component
    waits for. Pulumi does not pass a component's depends_on to its children, and a namespace
    must exist before anything is created in it; no other caller option is copied."""
    return pulumi.ResourceOptions(parent=parent, depends_on=opts.depends_on if opts else None)


def labels(name: str, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels, used as selectors too."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable filled from one key of a Secret in the pod's namespace."""

    secret_name: str
    key: str

    def to_k8s(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": self.secret_name, "key": self.key}},
        }


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container. CPU in Kubernetes quantities (e.g. "100m"),
    memory in bytes quantities (e.g. "256Mi"). Limits are always set: an unbounded container
    can starve the detector, whose 3 s cycle is the latency budget."""

    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "256Mi"

    def to_k8s(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


def pod_security_context() -> dict[str, Any]:
    """Pod-level settings that satisfy the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "fsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    """The one scrape convention of the bundle: VictoriaMetrics discovers pods through the
    Kubernetes API and keeps those carrying these annotations (see VictoriaMetrics)."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": path,
    }


def anti_affinity(name: str) -> dict[str, Any]:
    """Spread replicas over nodes; preferred (not required) so a drained node never blocks
    a rollout, while the PodDisruptionBudget keeps a quorum up."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector(name)},
                    },
                }
            ]
        }
    }


def container(
    name: str,
    image: str,
    *,
    args: Sequence[str] = (),
    command: Sequence[str] = (),
    env: Sequence[Mapping[str, Any]] = (),
    ports: Sequence[Mapping[str, Any]] = (),
    resources: Resources,
    volume_mounts: Sequence[Mapping[str, Any]] = (),
    probe_path: str | None = None,
    probe_port: int | None = None,
    ready_path: str | None = None,
) -> dict[str, Any]:
    """A container spec with the restricted security context and limits always present."""
    spec: dict[str, Any] = {
        "name": name,
        "image": require_pinned_image(image, name),
        "imagePullPolicy": "IfNotPresent",
        "resources": resources.to_k8s(),
        "securityContext": container_security_context(),
    }
    if command:
        spec["command"] = list(command)
    if args:
        spec["args"] = list(args)
    if env:
        spec["env"] = [dict(e) for e in env]
    if ports:
        spec["ports"] = [dict(p) for p in ports]
    if volume_mounts:
        spec["volumeMounts"] = [dict(v) for v in volume_mounts]
    if probe_path is not None and probe_port is not None:
        probe = {"httpGet": {"path": probe_path, "port": probe_port, "scheme": "HTTP"}}
        # Readiness may depend on the handler's backends (its /readyz); liveness never does,
        # so a broker outage takes a pod out of its Service instead of restarting it.
        ready = {
            "httpGet": {"path": ready_path or probe_path, "port": probe_port, "scheme": "HTTP"}
        }
        spec["readinessProbe"] = {**ready, "periodSeconds": 5}
        spec["livenessProbe"] = {**probe, "periodSeconds": 20, "failureThreshold": 3}
    return spec


def pod_spec(
    containers: Sequence[Mapping[str, Any]],
    *,
    service_account: str,
    volumes: Sequence[Mapping[str, Any]] = (),
    affinity: Mapping[str, Any] | None = None,
    automount_token: bool = False,
    restart_policy: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        # Only workloads that talk to the Kubernetes API get a token mounted.
        "automountServiceAccountToken": automount_token,
        "securityContext": pod_security_context(),
        "containers": [dict(c) for c in containers],
    }
    if volumes:
        spec["volumes"] = [dict(v) for v in volumes]
    if affinity:
        spec["affinity"] = dict(affinity)
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return spec


def tmp_volume() -> dict[str, Any]:
    """Writable scratch space, mounted with TMP_MOUNT: the root filesystem is read-only."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}


# A pod-private emptyDir (tmp_volume), not the node's shared /tmp.
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108


def metadata(name: str, namespace: str, component: str, **extra: Any) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": labels(name, component), **extra}


def pdb(
    resource_name: str,
    name: str,
    namespace: str,
    component: str,
    opts: pulumi.ResourceOptions,
) -> k8s.policy.v1.PodDisruptionBudget:
    """At most one replica down at a time during voluntary disruptions."""
    spec: Manifest = {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}}
    return k8s.policy.v1.PodDisruptionBudget(
        resource_name, metadata=metadata(name, namespace, component), spec=manifest(spec), opts=opts
    )


def ingress_policy(
    resource_name: str,
    name: str,
    namespace: str,
    component: str,
    *,
    pod_selector: Mapping[str, str],
    ports: Sequence[int],
    peers: Sequence[Mapping[str, Any]],
    opts: pulumi.ResourceOptions,
    protocols: Sequence[str] = ("TCP",),
) -> k8s.networking.v1.NetworkPolicy:
    """Admit `peers` on `ports` to the selected pods; everything else stays denied by the
    namespace's default-deny policy."""
    spec: Manifest = {
        "podSelector": {"matchLabels": dict(pod_selector)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [dict(p) for p in peers],
                "ports": [
                    {"protocol": protocol, "port": port} for port in ports for protocol in protocols
                ],
            }
        ],
    }
    return k8s.networking.v1.NetworkPolicy(
        resource_name, metadata=metadata(name, namespace, component), spec=manifest(spec), opts=opts
    )


def pod_peer(namespace: str, match_labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": dict(match_labels)},
    }


def namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def workload(
    resource_name: str,
    name: str,
    namespace: pulumi.Input[str],
    component: str,
    *,
    spec: Mapping[str, Any],
    replicas: int,
    opts: pulumi.ResourceOptions,
    pod_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    stateful_volume_claims: Sequence[Mapping[str, Any]] = (),
    depends_on: Sequence[pulumi.Resource] = (),
    skip_await: bool = False,
    recreate: bool = False,
) -> k8s.apps.v1.Deployment | k8s.apps.v1.StatefulSet:
    """A Deployment, or a StatefulSet when it owns volume claims, labelled and selected by
    `name`. `skip_await`: Pulumi does not wait for it to become ready (it cannot yet).
    `recreate`: a Deployment whose old pod stops before the new one starts (a rolling update
    runs both for a while)."""
    template: Manifest = {
        "metadata": {
            "labels": {**labels(name, component), **(pod_labels or {})},
            "annotations": dict(annotations or {}),
        },
        "spec": dict(spec),
    }
    meta: Manifest = {"name": name, "namespace": namespace, "labels": labels(name, component)}
    if skip_await:
        meta["annotations"] = {"pulumi.com/skipAwait": "true"}
    if depends_on:
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(depends_on=list(depends_on))
        )
    common: Manifest = {"replicas": replicas, "selector": {"matchLabels": selector(name)}}
    if stateful_volume_claims:
        return k8s.apps.v1.StatefulSet(
            resource_name,
            metadata=meta,
            spec=manifest(
                {
                    **common,
                    "serviceName": f"{name}-headless",
                    "template": template,
                    "volumeClaimTemplates": [dict(c) for c in stateful_volume_claims],
                }
            ),
            opts=opts,
        )
    if recreate:
        common["strategy"] = {"type": "Recreate"}
    return k8s.apps.v1.Deployment(
        resource_name, metadata=meta, spec=manifest({**common, "template": template}), opts=opts
    )


def service(
    resource_name: str,
    name: str,
    namespace: pulumi.Input[str],
    component: str,
    *,
    ports: Mapping[str, int],
    opts: pulumi.ResourceOptions,
    service_type: str = "ClusterIP",
    headless: bool = False,
) -> k8s.core.v1.Service:
    """A Service selecting `name`'s pods; the headless variant (named `<name>-headless`) gives
    StatefulSet pods stable DNS names."""
    extra: Manifest = {"clusterIP": "None", "publishNotReadyAddresses": True} if headless else {}
    service_name = f"{name}-headless" if headless else name
    meta: Manifest = {
        "name": service_name,
        "namespace": namespace,
        "labels": labels(name, component),
    }
    return k8s.core.v1.Service(
        resource_name,
        metadata=meta,
        spec=manifest(
            {
                **extra,
                "type": service_type,
                "selector": selector(name),
                "ports": [
                    {"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}
                    for port_name, port in ports.items()
                ],
            }
        ),
        opts=opts,
    )


def volume_claim(name: str, size: str, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name}, "spec": spec}


def service_account(
    resource_name: str,
    name: str,
    namespace: pulumi.Input[str],
    component: str,
    opts: pulumi.ResourceOptions,
    *,
    automount: bool = False,
) -> k8s.core.v1.ServiceAccount:
    """A service account whose token is mounted only where a pod opts in (`automount`)."""
    return k8s.core.v1.ServiceAccount(
        resource_name,
        metadata={"name": name, "namespace": namespace, "labels": labels(name, component)},
        automount_service_account_token=automount,
        opts=opts,
    )


# The API server's address is cluster specific; webhooks must admit it from anywhere.
ANYWHERE = {"ipBlock": {"cidr": "0.0.0.0/0"}}


def chart_archive(chart: str, version: str) -> Path:
    """The vendored archive of `chart` at `version` (charts/SOURCES.md says where each comes
    from). Installing from the repository's own copy means no chart repository is contacted
    and upgrading a chart is a reviewed change."""
    if not is_exact_version(version):
        raise ValueError(f"chart {chart}: version {version!r} must be an exact version")
    archive = CHARTS_DIR / f"{chart}-{version}.tgz"
    if not archive.is_file():
        raise ValueError(f"chart {chart} {version} is not vendored: {archive} is missing")
    return archive


# Charts that render their CRDs from a template guarded by one value, with a hard-coded
# `helm.sh/resource-policy: keep` (so `helm uninstall` and `pulumi destroy` leave them):
# chart -> (template, the guard line, the value that turns the template off).
TEMPLATED_CRDS: dict[str, tuple[str, str, str]] = {
    "cloudnative-pg": ("templates/crds/crds.yaml", "{{- if .Values.crds.create }}", "create"),
}


def chart_crds(chart: str, version: str) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in a vendored chart's `crds/` directory, or in its CRD
    template (TEMPLATED_CRDS). Helm installs `crds/` once and never upgrades or deletes them,
    and keeps the templated ones on uninstall; declared as resources instead, they follow the
    chart's version and the stack's lifecycle like everything else."""
    docs: list[dict[str, Any]] = []
    templated = TEMPLATED_CRDS.get(chart)
    with tarfile.open(chart_archive(chart, version)) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file
            if member.name.startswith(f"{chart}/crds/"):
                docs += [d for d in yaml.safe_load_all(handle) if d]
            elif templated and member.name == f"{chart}/{templated[0]}":
                docs += [
                    d for d in yaml.safe_load_all(_untemplate(handle.read(), templated[1])) if d
                ]
    for doc in docs:
        doc.get("metadata", {}).get("annotations", {}).pop("helm.sh/resource-policy", None)
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


def _untemplate(text: bytes, guard: str) -> str:
    """A CRD template that is plain YAML inside one `if` guard; anything else is refused
    (re-vendoring a chart whose template grew must be looked at, not guessed)."""
    lines = text.decode().splitlines()
    if not lines or lines[0].strip() != guard or lines[-1].strip() != "{{- end }}":
        raise ValueError(f"CRD template is not one guarded block: {lines[:1]}")
    body = lines[1:-1]
    if any("{{" in line for line in body):
        raise ValueError("CRD template has template expressions besides its guard")
    return "\n".join(body)


def _as_stored(crd_spec: dict[str, Any]) -> dict[str, Any]:
    """A CRD spec as the API server stores it. The server drops `deprecated: false` from a
    version (false is the default), so declaring it makes every `pulumi up` propose an update
    of the CRD (found by the first real deployment: Strimzi's CRDs declare it)."""
    versions = [
        {k: v for k, v in ver.items() if not (k == "deprecated" and v is False)}
        for ver in crd_spec.get("versions", [])
    ]
    return {**crd_spec, "versions": versions}


def helm_release(
    resource_name: str,
    *,
    chart: str,
    version: str,
    namespace: str,
    values: Mapping[str, Any],
    opts: pulumi.ResourceOptions,
) -> k8s.helm.v3.Release:
    """A Helm release of a vendored chart pinned to an exact version. `atomic` rolls a failed
    upgrade back instead of leaving half of a chart applied. A chart that ships CRDs in
    `crds/` gets them as CustomResourceDefinition resources (see chart_crds), which the
    release waits for."""
    archive = chart_archive(chart, version)
    crds = [
        k8s.apiextensions.v1.CustomResourceDefinition(
            f"{resource_name}-crd-{doc['metadata']['name']}",
            metadata={
                "name": doc["metadata"]["name"],
                # The chart's own labels, plus the ones every CCT object carries.
                "labels": {
                    **(doc["metadata"].get("labels") or {}),
                    "app.kubernetes.io/part-of": PART_OF,
                    "app.kubernetes.io/managed-by": MANAGED_BY,
                },
                # A stack deployed before these CRDs were its own has them from Helm: take
                # their fields over from Helm's field manager instead of failing on the
                # server-side-apply conflict (found upgrading the real local stack).
                **(
                    {"annotations": {"pulumi.com/patchForce": "true"}}
                    if chart in TEMPLATED_CRDS
                    else {}
                ),
            },
            spec=manifest(_as_stored(doc["spec"])),
            opts=opts,
        )
        for doc in chart_crds(chart, version)
    ]
    if crds:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=crds))
    return k8s.helm.v3.Release(
        resource_name,
        name=chart,
        # Relative to the working directory the engine gives the program and the provider
        # (Pulumi.yaml's `main`, infra/), so the state does not depend on where the repository
        # is checked out. Helm reads a name without a leading "." as repo/chart: the first
        # real `pulumi up` failed with "repo charts not found" on "charts/<chart>.tgz".
        chart=os.path.relpath(archive, Path.cwd()),
        namespace=namespace,
        values={
            **values,
            **({"crds": {TEMPLATED_CRDS[chart][2]: False}} if chart in TEMPLATED_CRDS else {}),
        },
        skip_crds=bool(crds),
        atomic=True,
        cleanup_on_fail=True,
        timeout=600,
        opts=opts,
    )


def manifest(value: Any) -> Manifest:
    """A manifest fragment spelled as the Kubernetes API spells it (camelCase), handed to the
    SDK unchanged. The SDK's TypedDicts use snake_case keys, so the type checker is told not
    to match the fragment against them; the CrossGuard checks and kubernetes-validate check
    these fragments instead."""
    return value
