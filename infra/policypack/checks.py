"""CCT's deployment invariants as plain functions over resource properties.

The CrossGuard pack (`__main__.py`) enforces them at `pulumi preview`/`pulumi up`; the
deployment tests run the very same functions over every resource of every stack built under
the Pulumi mocks. Properties use the engine's (camelCase) names, as policy packs see them.

This module imports nothing from the project: the pack runs in its own virtualenv.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PART_OF = ("app.kubernetes.io/part-of", "cct")
MANAGED_BY = ("app.kubernetes.io/managed-by", "pulumi")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
# Same rule as components.kube.is_pinned_image (a test keeps the two in agreement).
_IMAGE_TAG = re.compile(r"^v?\d+\.\d+(?:\.\d+)?(?:[\-+][\w.\-]+)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+(?:[\-+][\w.\-]+)?$")
_READ_ONLY_VERBS = ("Describe", "Get", "List")
VAULT_CAPABILITIES = frozenset({"create", "read", "update", "list"})

Props = Mapping[str, Any]


def is_pinned_image(image: str) -> bool:
    ref, _, digest = image.partition("@")
    if digest:
        return bool(_DIGEST.match(digest))
    last = ref.rsplit("/", 1)[-1]
    return ":" in last and bool(_IMAGE_TAG.match(last.rsplit(":", 1)[1]))


def _kind(resource_type: str) -> str:
    return resource_type.rsplit(":", 1)[-1]


def pod_spec_of(resource_type: str, props: Props) -> Mapping[str, Any] | None:
    """The pod template spec of a workload, or None for anything else."""
    if not resource_type.startswith("kubernetes:") or _kind(resource_type) not in WORKLOAD_KINDS:
        return None
    spec = props.get("spec") or {}
    kind = _kind(resource_type)
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def _containers(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def check_pod_security(resource_type: str, props: Props) -> list[str]:
    pod = pod_spec_of(resource_type, props)
    if pod is None:
        return []
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is enabled")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"volume {volume.get('name')} mounts a hostPath")
    for c in _containers(pod):
        ctx = c.get("securityContext") or {}
        name = c.get("name")
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            problems.append(f"container {name}: runAsNonRoot is not true")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation is not false")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {name}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
            problems.append(f"container {name}: capabilities do not drop ALL")
        if ctx.get("privileged"):
            problems.append(f"container {name}: privileged")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"container {name}: no RuntimeDefault seccomp profile")
    return problems


def check_resources(resource_type: str, props: Props) -> list[str]:
    pod = pod_spec_of(resource_type, props)
    if pod is None:
        return []
    problems = []
    for c in _containers(pod):
        resources = c.get("resources") or {}
        for section in ("requests", "limits"):
            for quantity in ("cpu", "memory"):
                if not (resources.get(section) or {}).get(quantity):
                    problems.append(f"container {c.get('name')}: no {quantity} {section[:-1]}")
    return problems


def check_pinned_images(resource_type: str, props: Props) -> list[str]:
    pod = pod_spec_of(resource_type, props)
    if pod is None:
        return []
    return [
        f"container {c.get('name')}: image {c.get('image')!r} is not pinned to an exact version"
        for c in _containers(pod)
        if not is_pinned_image(str(c.get("image") or ""))
    ]


def check_labels(resource_type: str, props: Props) -> list[str]:
    if not resource_type.startswith("kubernetes:") or resource_type.startswith(
        "kubernetes:helm.sh/"
    ):
        return []
    labels = (props.get("metadata") or {}).get("labels") or {}
    return [
        f"label {key}={value} is missing"
        for key, value in (PART_OF, MANAGED_BY)
        if labels.get(key) != value
    ]


def check_namespace_pod_security(resource_type: str, props: Props) -> list[str]:
    if resource_type != "kubernetes:core/v1:Namespace":
        return []
    labels = (props.get("metadata") or {}).get("labels") or {}
    level = labels.get("pod-security.kubernetes.io/enforce")
    return (
        [] if level == "restricted" else [f"enforces Pod Security level {level!r}, not restricted"]
    )


def check_helm_pinned(resource_type: str, props: Props) -> list[str]:
    if resource_type != "kubernetes:helm.sh/v3:Release":
        return []
    chart = str(props.get("chart") or "")
    if _VENDORED_CHART.match(chart):
        # Vendored in the repository (charts/, with its source, tag and sha256 in
        # charts/SOURCES.md): the file is the pin, and no repository is contacted.
        return []
    problems = []
    version = str(props.get("version") or "")
    if not _EXACT_VERSION.match(version):
        problems.append(f"chart {props.get('chart')} version {version!r} is not an exact version")
    repo = str((props.get("repositoryOpts") or {}).get("repo") or "")
    if not repo.startswith("https://"):
        problems.append(f"chart {props.get('chart')} repository {repo!r} is not https")
    return problems


_VENDORED_CHART = re.compile(r"^charts/[a-z0-9][a-z0-9-]*-\d+\.\d+\.\d+\.tgz$")


def _statements(document: Any) -> list[Mapping[str, Any]]:
    if isinstance(document, str):
        document = json.loads(document)
    statements = (document or {}).get("Statement") or []
    return [statements] if isinstance(statements, dict) else list(statements)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def check_iam_least_privilege(resource_type: str, props: Props) -> list[str]:
    """No wildcard action in an Allow; a mutating action on every resource ("*") must be
    limited by a resource-tag condition."""
    if resource_type != "aws:iam/rolePolicy:RolePolicy":
        return []
    problems = []
    for statement in _statements(props.get("policy")):
        if statement.get("Effect") != "Allow":
            continue
        sid = statement.get("Sid", "?")
        actions = _as_list(statement.get("Action"))
        if "NotAction" in statement:
            problems.append(f"statement {sid}: NotAction grants everything else")
        wild = [a for a in actions if "*" in a or "?" in a]
        if wild:
            problems.append(f"statement {sid}: wildcard actions {wild}")
        mutating = [a for a in actions if not a.split(":", 1)[-1].startswith(_READ_ONLY_VERBS)]
        condition = json.dumps(statement.get("Condition") or {})
        if (
            "*" in _as_list(statement.get("Resource"))
            and mutating
            and "aws:ResourceTag/" not in condition
        ):
            problems.append(
                f"statement {sid}: {mutating} on every resource without a resource-tag condition"
            )
    return problems


def check_cloud_custom_roles(resource_type: str, props: Props) -> list[str]:
    if resource_type == "gcp:projects/iAMCustomRole:IAMCustomRole":
        wild = [p for p in props.get("permissions") or [] if "*" in p]
        return [f"wildcard permissions {wild}"] if wild else []
    if resource_type == "azure-native:authorization:RoleDefinition":
        wild = [
            a
            for permission in props.get("permissions") or []
            for a in [*(permission.get("actions") or []), *(permission.get("dataActions") or [])]
            if "*" in a
        ]
        return [f"wildcard actions {wild}"] if wild else []
    return []


_VAULT_PATH = re.compile(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}')


def check_vault_policy(resource_type: str, props: Props) -> list[str]:
    if resource_type != "vault:index/policy:Policy":
        return []
    text = str(props.get("policy") or "")
    blocks = _VAULT_PATH.findall(text)
    if not blocks or text.count("path ") != len(blocks):
        return ['policy is not a list of `path "..." { capabilities = [...] }` blocks']
    problems = []
    for path, caps in blocks:
        if "*" in path or "+" in path:
            problems.append(f"path {path!r} uses a wildcard")
        capabilities = {c.strip().strip('"') for c in caps.split(",") if c.strip()}
        extra = capabilities - VAULT_CAPABILITIES
        if extra:
            problems.append(f"path {path!r} grants {sorted(extra)}")
    return problems


def check_webhook(resource_type: str, props: Props) -> list[str]:
    if resource_type != "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration":
        return []
    problems = []
    for hook in props.get("webhooks") or []:
        name = hook.get("name")
        if hook.get("failurePolicy") not in ("Fail", "Ignore"):
            problems.append(f"webhook {name}: failurePolicy is not set explicitly")
        if not 1 <= int(hook.get("timeoutSeconds") or 0) <= 10:
            problems.append(f"webhook {name}: timeoutSeconds must be set, at most 10")
        if not (hook.get("clientConfig") or {}).get("caBundle"):
            problems.append(f"webhook {name}: no caBundle")
        if hook.get("sideEffects") != "None":
            problems.append(f"webhook {name}: sideEffects must be None")
        if hook.get("objectSelector"):
            # A label the object's author sets (or leaves out) would choose whether the
            # object is reviewed at all.
            problems.append(f"webhook {name}: objectSelector lets an object's author skip it")
        if not hook.get("namespaceSelector"):
            problems.append(f"webhook {name}: no namespaceSelector (the managed namespaces)")
    return problems


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    function: Callable[[str, Props], list[str]]


RESOURCE_CHECKS: tuple[Check, ...] = (
    Check(
        "k8s-pod-security",
        "Pods run non-root, with a read-only root filesystem and no privileges.",
        check_pod_security,
    ),
    Check(
        "k8s-resources",
        "Every container sets CPU and memory requests and limits.",
        check_resources,
    ),
    Check(
        "k8s-pinned-images",
        "Every image is pinned to an exact version or digest.",
        check_pinned_images,
    ),
    Check(
        "k8s-labels",
        "Every Kubernetes object carries CCT's part-of and managed-by labels.",
        check_labels,
    ),
    Check(
        "k8s-namespace-restricted",
        "Namespaces enforce the restricted Pod Security Standard.",
        check_namespace_pod_security,
    ),
    Check(
        "helm-pinned-charts",
        "Helm charts are vendored archives or pinned to exact versions from https repositories.",
        check_helm_pinned,
    ),
    Check(
        "aws-iam-least-privilege",
        "No wildcard IAM actions; mutations on every resource need a resource-tag condition.",
        check_iam_least_privilege,
    ),
    Check(
        "cloud-custom-roles-exact",
        "Azure and GCP custom roles list exact permissions.",
        check_cloud_custom_roles,
    ),
    Check(
        "vault-policies-exact",
        "Vault policies grant exact paths with limited capabilities.",
        check_vault_policy,
    ),
    Check(
        "admission-webhook-explicit",
        "Admission webhooks set failure policy, timeout, CA bundle and side effects.",
        check_webhook,
    ),
)


def check_default_deny(resources: Sequence[tuple[str, Props]]) -> list[str]:
    """Stack-level: every Namespace has a NetworkPolicy denying all ingress and egress."""
    namespaces = {
        str((props.get("metadata") or {}).get("name"))
        for typ, props in resources
        if typ == "kubernetes:core/v1:Namespace"
    }
    denied: set[str] = set()
    for typ, props in resources:
        if typ != "kubernetes:networking.k8s.io/v1:NetworkPolicy":
            continue
        spec = props.get("spec") or {}
        if (
            not (spec.get("podSelector") or {})
            and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"}
            and not spec.get("ingress")
            and not spec.get("egress")
        ):
            denied.add(str((props.get("metadata") or {}).get("namespace")))
    return [
        f"namespace {ns} has no default-deny NetworkPolicy" for ns in sorted(namespaces - denied)
    ]
