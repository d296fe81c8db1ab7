"""The real deployment path: build time of the toolchain, `pulumi up` of the local stack into
the real API server, a no-op `up`, and admission latency through that API server.

    .venv/bin/python -m benchmarks.cluster_deploy [--requests 200]

Needs `make cluster` (the running control plane) and the services' PostgreSQL. Prints:
- the toolchain build time from empty caches, as recorded by the first build of this checkout
  (.local/cluster/log/build-times.json: wall time and each part's time, built side by side);
- `pulumi destroy` then `pulumi up` of the local stack: seconds and the number of Kubernetes
  objects it manages; then a second, no-op `up`;
- Workflow creation latency through the API server (create call to response, the trigger's
  token, the Argo backend's client) with the API server calling `cct serve admission` on the
  host, p50/p99; and the same for Workflows the webhook does not select (no trigger label) in
  the same run, as the baseline: the difference is what admission adds.
Figures only; nothing is asserted. The machine's 2 cores are shared, so read medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kubernetes import client

from benchmarks.admission_latency import private_database
from lambdas.trigger.argo import build_workflow
from tests.admission.support import params, policies_for_now, serve_admission
from tests.cluster.support import (
    APISERVER_CLIENT_NAME,
    ROOT,
    WEBHOOK_PORT,
    cluster_tls,
    load_cluster,
    pulumi,
)  # fmt: skip

NAMESPACE = "cct-system"
BUILD_TIMES = ROOT / ".local" / "cluster" / "log" / "build-times.json"


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


def managed_objects() -> int:
    state = json.loads(pulumi("stack", "export").stdout)
    return sum(
        1
        for r in state["deployment"].get("resources", [])
        if r["type"].startswith("kubernetes:") and not r["type"].startswith("pulumi:providers")
    )


def deploy_figures() -> None:
    if BUILD_TIMES.exists():
        build = json.loads(BUILD_TIMES.read_text())
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in sorted(build["parts"].items()))
        print(f"toolchain build from empty caches: {build['wall_seconds']:.0f}s wall ({parts})")
    else:
        print("toolchain build: no build-times.json (built before this benchmark existed)")
    pulumi("destroy", "--yes", "--skip-preview")
    up = pulumi("up", "--yes", "--skip-preview")
    print(f"pulumi up (local stack, from nothing): {up.seconds:.1f}s, "
          f"{managed_objects()} Kubernetes objects")  # fmt: skip
    noop = pulumi("up", "--yes", "--skip-preview", "--expect-no-changes")
    print(f"pulumi up, no changes: {noop.seconds:.1f}s")


def latency_figures(requests: int) -> None:
    cluster = load_cluster()
    core = client.CoreV1Api(cluster.api())
    token = core.create_namespaced_service_account_token(
        "trigger",
        NAMESPACE,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    objects = client.CustomObjectsApi(cluster.api(token))
    tls = cluster_tls(cluster.ca_file)
    with tempfile.TemporaryDirectory() as tmp, private_database() as dsn:
        policy_dir = policies_for_now(Path(tmp) / "policies")
        with serve_admission(
            Path(tmp), dsn, policy_dir, tls, CCT_ADMISSION_PORT=str(WEBHOOK_PORT),
            CCT_ADMISSION_CLIENT_NAMES=APISERVER_CLIENT_NAME,
        ):  # fmt: skip
            results: dict[str, list[float]] = {"reviewed": [], "not selected": []}
            for i in range(requests):
                for kind, samples in results.items():
                    wf = build_workflow_for(kind, i)
                    t0 = time.perf_counter()
                    objects.create_namespaced_custom_object(
                        "argoproj.io", "v1alpha1", NAMESPACE, "workflows", wf
                    )
                    samples.append((time.perf_counter() - t0) * 1000)
    for kind, samples in results.items():
        p50, p99 = quantiles(samples[5:])  # the first calls warm connections and caches
        print(f"workflow create via the API server, {kind}: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"({len(samples) - 5} requests)")  # fmt: skip
    (p50r, _), (p50b, _) = (
        quantiles(results["reviewed"][5:]),
        quantiles(results["not selected"][5:]),
    )
    print(f"admission adds (median): {p50r - p50b:.1f} ms")


def build_workflow_for(kind: str, i: int) -> dict[str, object]:
    from lambdas.trigger.core import WorkflowRun

    run = WorkflowRun(
        run_id=f"bench-{uuid.uuid4().hex[:12]}",
        event_id=f"bench-{i}",
        playbook="rightsize-compute",
        rule_id="bench",
        parameters=params(),
    )
    wf = build_workflow(run, NAMESPACE)
    if kind == "not selected":
        wf["metadata"]["labels"].pop("app.kubernetes.io/managed-by")  # type: ignore[index]
    return wf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    deploy_figures()
    latency_figures(args.requests)


if __name__ == "__main__":
    main()
