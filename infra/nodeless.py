"""Deploying to a cluster without nodes (the `local` stack, `cct:nodeless`).

A bare control plane (etcd, kube-apiserver, kube-controller-manager) creates, validates,
admits and reconciles every object, but no pod ever starts. The Kubernetes provider would
wait for Deployments, StatefulSets, Jobs, Services and Helm releases to become ready, which
never happens; this stack transform tells it not to wait, for every Kubernetes resource of
the stack at once, so no component needs a special case.
"""

from __future__ import annotations

from typing import Any

import pulumi

SKIP_AWAIT = "pulumi.com/skipAwait"
RELEASE = "kubernetes:helm.sh/v3:Release"


def skip_await(props: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The properties of a Kubernetes resource with readiness waits turned off (pure)."""
    if not type_.startswith("kubernetes:") or type_.startswith("pulumi:providers"):
        return None
    out = dict(props)
    if type_ == RELEASE:
        # `atomic` implies waiting; a release that never becomes ready would be rolled back.
        camel = "cleanupOnFail" in out or "skipCrds" in out
        out["skipAwait" if camel else "skip_await"] = True
        out["atomic"] = False
        return out
    metadata = out.get("metadata")
    if not isinstance(metadata, dict):
        return None
    annotations = metadata.get("annotations")
    annotations = dict(annotations) if isinstance(annotations, dict) else {}
    annotations[SKIP_AWAIT] = "true"
    out["metadata"] = {**metadata, "annotations": annotations}
    return out


def transform(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
    props = skip_await(dict(args.props), args.type_)
    return None if props is None else pulumi.ResourceTransformResult(props, args.opts)


def register() -> None:
    pulumi.runtime.register_resource_transform(transform)
