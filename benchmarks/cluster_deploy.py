"""The real deployment path: build time of the toolchain, `pulumi up` of the local stack into
the real API server, a no-op `up`, and admission latency through that API server.

    .venv/bin/python -m benchmarks.cluster_deploy [--requests 200]

Needs `make cluster` (the running control plane) and the services' PostgreSQL. Prints:
- the toolchain build time from empty caches, as recorded by the first build of this checkout
  (.local/cluster/log/build-times.json: wall time and each part's time, built side by side);
- `pulumi destroy` then `pulumi up` of the local stack: seconds and the number of Kubernetes
  objects it manages; then a second, no-op `up`;
- Workflow creation latency through the API server (create call to response) in the
  namespace the webhook governs, with the API server calling `cct serve admission` on the
  host, p50/p99; and the same for the same Workflows in a namespace the webhook does not
  select (a scratch namespace, deleted afterwards), interleaved in the same run, as the
  baseline: the difference is what admission adds. A denied create counts like an
  admitted one (the answer is what is timed).
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


def build_figures() -> None:
    """The last build of each part (its log's `# built in` line) and the last build run's
    wall time (build-times.json): parts built one at a time add up; side by side they overlap."""
    logs = ROOT / ".local" / "cluster" / "log"
    parts = {}
    for log in sorted(logs.glob("build-*.log")):
        lines = [x for x in log.read_text().splitlines() if x.startswith("# built in ")]
        if lines:
            parts[log.stem.removeprefix("build-")] = float(lines[-1].split()[-1].rstrip("s"))
    if parts:
        shown = ", ".join(f"{k} {v:.0f}s" for k, v in sorted(parts.items()))
        print(
            f"toolchain build, last build of each part: {sum(parts.values()):.0f}s summed ({shown})"
        )
    if BUILD_TIMES.exists():
        build = json.loads(BUILD_TIMES.read_text())
        print(f"last build run: {build['wall_seconds']:.0f}s wall for {', '.join(build['parts'])}")


def deploy_figures() -> None:
    build_figures()
    pulumi("destroy", "--yes", "--skip-preview")
    up = pulumi("up", "--yes", "--skip-preview")
    print(f"pulumi up (local stack, from nothing): {up.seconds:.1f}s, "
          f"{managed_objects()} Kubernetes objects")  # fmt: skip
    noop = pulumi("up", "--yes", "--skip-preview", "--expect-no-changes")
    print(f"pulumi up, no changes: {noop.seconds:.1f}s")


BASELINE_NAMESPACE = "cct-bench-unselected"


def latency_figures(requests: int) -> None:
    cluster = load_cluster()
    admin = cluster.api()
    core = client.CoreV1Api(admin)
    objects = client.CustomObjectsApi(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=BASELINE_NAMESPACE)))
    tls = cluster_tls(cluster.ca_file)
    results: dict[str, list[float]] = {NAMESPACE: [], BASELINE_NAMESPACE: []}
    denied = 0
    created: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, private_database() as dsn:
            policy_dir = policies_for_now(Path(tmp) / "policies")
            with serve_admission(
                Path(tmp), dsn, policy_dir, tls, CCT_ADMISSION_PORT=str(WEBHOOK_PORT),
                CCT_ADMISSION_CLIENT_NAMES=APISERVER_CLIENT_NAME,
            ):  # fmt: skip
                for i in range(requests):
                    for ns, samples in results.items():
                        wf = build_workflow_for(ns, i)
                        t0 = time.perf_counter()
                        try:
                            objects.create_namespaced_custom_object(
                                "argoproj.io", "v1alpha1", ns, "workflows", wf
                            )
                            if ns == NAMESPACE:
                                created.append(str(wf["metadata"]["name"]))  # type: ignore[index]
                        except client.ApiException as exc:
                            if exc.status != 403:
                                raise
                            denied += 1
                        samples.append((time.perf_counter() - t0) * 1000)
    finally:
        core.delete_namespace(BASELINE_NAMESPACE)
        for name in created:
            objects.delete_namespaced_custom_object(
                "argoproj.io", "v1alpha1", NAMESPACE, "workflows", name
            )
    for ns, samples in results.items():
        p50, p99 = quantiles(samples[5:])  # the first calls warm connections and caches
        what = "reviewed by CCT's webhook" if ns == NAMESPACE else "not selected (baseline)"
        print(f"workflow create via the API server, {what}: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"({len(samples) - 5} requests)")  # fmt: skip
    (p50r, _), (p50b, _) = (
        quantiles(results[NAMESPACE][5:]),
        quantiles(results[BASELINE_NAMESPACE][5:]),
    )
    print(f"admission adds (median): {p50r - p50b:.1f} ms; denied by policy: {denied}")


def build_workflow_for(namespace: str, i: int) -> dict[str, object]:
    from lambdas.trigger.core import WorkflowRun

    run = WorkflowRun(
        run_id=f"bench-{uuid.uuid4().hex[:12]}",
        event_id=f"bench-{i}",
        playbook="rightsize-compute",
        rule_id="bench",
        parameters=params(),
    )
    return build_workflow(run, namespace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--skip-deploy", action="store_true", help="only the build and latency figures"
    )
    args = parser.parse_args()
    if args.skip_deploy:
        build_figures()
    else:
        deploy_figures()
    latency_figures(args.requests)


if __name__ == "__main__":
    main()
