"""Invariants over every Kubernetes object of every stack variant: the CrossGuard pack's
checks, schema validation of the built-in kinds (kubernetes-validate, offline schemas), the
default-deny network policies and the one scrape convention."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.policypack.checks import RESOURCE_CHECKS, check_default_deny, pod_spec_of
from tests.infra.harness import BuiltStack
from tests.infra.mocks import Registered

# The oldest Kubernetes minor CCT supports; the schemas ship with kubernetes-validate.
KUBERNETES_VERSION = "1.31"
CUSTOM_GROUPS = ("kafka.strimzi.io", "postgresql.cnpg.io", "argoproj.io")


def _kubernetes_objects(built: BuiltStack) -> list[Registered]:
    return [
        r
        for r in built.resources
        if r.typ.startswith("kubernetes:") and not r.typ.startswith("kubernetes:helm.sh/")
    ]


def test_every_resource_passes_every_policy_check(built: BuiltStack) -> None:
    problems = [
        f"{r.urn} [{check.name}]: {problem}"
        for r in built.resources
        for check in RESOURCE_CHECKS
        for problem in check.function(r.typ, r.inputs)
    ]
    assert not problems, "\n".join(problems)


def test_every_namespace_denies_by_default(built: BuiltStack) -> None:
    assert not check_default_deny([(r.typ, r.inputs) for r in built.resources])


def _manifest(resource: Registered) -> dict[str, Any]:
    return {k: v for k, v in resource.inputs.items() if v is not None}


def test_built_in_kinds_validate_against_the_kubernetes_schema(
    stacks: dict[str, BuiltStack],
) -> None:
    # Variants share most objects; each distinct manifest is validated once.
    unique: dict[str, tuple[str, dict[str, Any]]] = {}
    for built in stacks.values():
        for resource in _kubernetes_objects(built):
            manifest = _manifest(resource)
            unique.setdefault(json.dumps(manifest, sort_keys=True), (resource.urn, manifest))
    validated = 0
    for urn, manifest in unique.values():
        group = manifest["apiVersion"].rpartition("/")[0]
        if group in CUSTOM_GROUPS:
            assert manifest["metadata"]["name"] and manifest.get("spec"), urn
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{urn}: {error.message} at {list(error.absolute_path)}")
        validated += 1
    assert validated > 40


def test_every_workload_is_scraped(built: BuiltStack) -> None:
    namespace = built.settings.namespace
    scrape_policy = next(
        r
        for r in built.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["metadata"]["name"] == "metrics-scrape"
    )
    admitted = {p["port"] for p in scrape_policy.inputs["spec"]["ingress"][0]["ports"]}
    scrape_config = next(
        r for r in built.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"]["name"] == "victoria-metrics-scrape"
    )  # fmt: skip
    jobs = yaml.safe_load(scrape_config.inputs["data"]["scrape.yaml"])["scrape_configs"]
    for job in jobs:
        assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [namespace]
    for resource in built.resources:
        pod = pod_spec_of(resource.typ, resource.inputs)
        # Batch pods (the billing loader, the migration) serve nothing to scrape.
        if pod is None or resource.typ.endswith(("CronJob", ":Job")):
            continue
        spec = resource.inputs["spec"]
        annotations = spec["template"]["metadata"].get("annotations") or {}
        ports = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        assert annotations.get("prometheus.io/scrape") == "true", f"{resource.urn} is not scraped"
        port = int(annotations["prometheus.io/port"])
        assert port in ports, f"{resource.urn}: scrape port {port} is not a container port"
        assert port in admitted, f"{resource.urn}: scrape port {port} blocked by network policy"


def test_workloads_with_clients_are_reachable_only_through_policies(built: BuiltStack) -> None:
    policies = built.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    selected = [p.inputs["spec"]["podSelector"].get("matchLabels", {}) for p in policies]
    for service in built.of_type("kubernetes:core/v1:Service"):
        target = service.inputs["spec"]["selector"]
        covered = any(s and all(target.get(k) == v for k, v in s.items()) for s in selected)
        # Scraping alone is admitted by the namespace-wide scrape policy.
        name = service.inputs["metadata"]["name"]
        if name in {"detector", "trigger", "vmalert"}:
            continue
        assert covered, f"{service.urn}: no ingress policy admits its clients"
