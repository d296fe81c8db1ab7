"""The whole pipeline's latency on the local stack (`make up`), from a cloud change.

    .venv/bin/python -m benchmarks.pipeline_latency [--new 10] [--existing 5] [--interval 2]

Two kinds of change, made in the cloud simulator (moto) with their CloudTrail events posted
through the real AWS forwarder to the collector:
- new: a brand-new m5.xlarge in a dev environment (a series VictoriaMetrics has never seen;
  the playbook stops it: auto-approved, dry run off);
- existing: a small gp3 disk whose run-rate the detector has already seen is grown to 2 TB
  (the playbook snapshots and deletes it: auto-approved, dry run off).
A sample's clock starts when the simulator's API call that changed the cloud returned (before
its CloudTrail event goes through the forwarder), not when the benchmark began to make it.
Each sample comes from its own account, so the shipped blast-radius policy (5 automatic
actions per account and hour) never turns a sample into an approval.

Printed, per kind, the three figures of issue #15: change -> anomaly CloudEvent on Kafka (the
bridge's record timestamp), anomaly -> workflow started (the run row's created_at, written by
the trigger before it submits), change -> verified saving recorded (the run's finished_at with
a verified saving); then every hop in between, each from the previous one:
  stored      the change event's row in resource_events (received_at: the collector took it)
  opened      the detector's incident for the resource (anomalies.started_at: the cycle that
              saw it)
  on Kafka    the CloudEvent on cct.cost.anomalies (Alertmanager and the bridge in between)
  run row     the trigger's optimization_runs row
  admitted    the admission webhook's decision (policy_decisions.decided_at)
  runner      the workflow's runner began its first step (the local backend's outcome file)
  <step>      each step's duration, retries included (same file)
  recorded    the run's finished_at, written by the last step (which then publishes the
              run's result event)
p50, p99, max and how many samples reached each; then lost workflows (a resource anomaly with
no run) and duplicated ones (more than one run for one resource). Targets from issue #15:
p99 <= 5 s, <= 1 s and <= 15 s, zero lost and duplicated. Nothing is asserted.
The machine has 2 cores shared with other work: figures are noisy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambdas import contract
from lambdas.devstack.status import trigger_lag
from tests.e2e.stack import Stack, TopicWatch

TARGETS = {"anomaly": 5.0, "started": 1.0, "verified": 15.0}


@dataclass
class Sample:
    kind: str
    resource_id: str
    changed_at: float
    anomaly_at: float | None = None
    started_at: float | None = None
    verified_at: float | None = None
    runs: int = 0
    # Hop name -> epoch seconds, in pipeline order (see the module docstring).
    hops: dict[str, float] = field(default_factory=dict)
    steps: list[tuple[str, float]] = field(default_factory=list)


HOPS = ("changed", "stored", "opened", "on Kafka", "run row", "admitted", "runner")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def account() -> str:
    return f"{uuid.uuid4().int % 10**12:012d}"


def prepare_existing(stack: Stack, count: int, timeout: float) -> list[tuple[str, str]]:
    """Small disks whose series VictoriaMetrics serves and the detector has evaluated."""
    disks = []
    for _ in range(count):
        acct = account()
        sim = stack.simulator(acct)
        disks.append((acct, sim.create_volume(10, "gp3", {"env": "dev", "team": "bench"})))
    deadline = time.monotonic() + timeout
    for _, vol in disks:
        while not stack.vm_query(f'cct_cost_rate_usd_per_hour{{resource_id="{vol}"}}'):
            if time.monotonic() > deadline:
                raise SystemExit(f"disk {vol} never appeared in VictoriaMetrics")
            time.sleep(0.5)
    time.sleep(10)  # a few detector cycles on the established series
    return disks


def detected(resource_id: str) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        labels = event["data"]["labels"]
        return bool(event["type"] == contract.DETECTED and labels.get("resource_id") == resource_id)

    return match


def observe(
    stack: Stack, watch: TopicWatch, samples: list[Sample], timeout: float, workflows: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in samples:
            if s.anomaly_at is None:
                found = watch.find_timed(contract.TOPIC_ANOMALIES, detected(s.resource_id))
                if found:
                    s.anomaly_at = found[0][0]
            rows = stack.sql(
                "select extract(epoch from created_at)::float8,"
                " extract(epoch from finished_at)::float8, state, verified_monthly_saving_usd,"
                " run_id from optimization_runs where resource_id = %s order by created_at",
                s.resource_id,
            )
            s.runs = len(rows)
            if rows:
                s.started_at = rows[0][0]
                if rows[0][2] == "succeeded" and rows[0][3] is not None:
                    s.verified_at = rows[0][1]
                    if not s.steps:
                        hop_times(stack, s, rows[0][4], workflows)
        # A verified run's runner writes its outcome file just after the run's row.
        if all(
            s.steps if s.verified_at else (s.runs and s.started_at and _final(stack, s))
            for s in samples
        ):
            return
        time.sleep(0.5)


def hop_times(stack: Stack, s: Sample, run_id: str, workflows: Path) -> None:
    """The times of the hops between the change and the verified saving."""
    s.hops["changed"] = s.changed_at
    first = stack.sql(
        "select extract(epoch from min(received_at))::float8 from resource_events"
        " where resource_id = %s and received_at >= to_timestamp(%s)",
        s.resource_id,
        s.changed_at - 1,
    )
    opened = stack.sql(
        "select extract(epoch from min(started_at))::float8 from anomalies"
        " where level = 'resource' and dimensions->>'resource_id' = %s"
        " and started_at >= to_timestamp(%s)",
        s.resource_id,
        s.changed_at - 1,
    )
    admitted = stack.sql(
        "select extract(epoch from min(decided_at))::float8 from policy_decisions"
        " where run_id = %s and source = 'admission'",
        run_id,
    )
    for name, rows in (("stored", first), ("opened", opened)):
        if rows and rows[0][0] is not None:
            s.hops[name] = rows[0][0]
    if s.anomaly_at is not None:
        s.hops["on Kafka"] = s.anomaly_at
    if s.started_at is not None:
        s.hops["run row"] = s.started_at
    if admitted and admitted[0][0] is not None:
        s.hops["admitted"] = admitted[0][0]
    try:
        outcome = json.loads((workflows / f"{run_id}.done").read_text())
    except (OSError, ValueError):
        return
    if "started_at" in outcome:
        s.hops["runner"] = outcome["started_at"]
    s.steps = [(str(x["step"]), float(x["seconds"])) for x in outcome.get("steps", [])]


def _final(stack: Stack, s: Sample) -> bool:
    rows = stack.sql(
        "select 1 from optimization_runs where resource_id = %s"
        " and state in ('succeeded', 'failed', 'denied', 'awaiting_approval')",
        s.resource_id,
    )
    return bool(rows)


def wait_drained(stack: Stack, timeout: float) -> bool:
    """Whether the trigger's consumer lag reached 0 within the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if trigger_lag(stack.bootstrap) == 0:
            return True
        time.sleep(1)
    return False


def figure(what: str, values: list[float], of: int, target: float | None = None) -> None:
    if not values:
        print(f"  {what:40} reached by 0 of {of}")
        return
    goal = f"; target p99 <= {target:.0f} s" if target is not None else ""
    print(
        f"  {what:40} p50 {percentile(values, 0.5):6.2f} s  p99 "
        f"{percentile(values, 0.99):6.2f} s  max {max(values):6.2f} s  "
        f"({len(values)}/{of}{goal})"
    )


def report(kind: str, samples: list[Sample]) -> None:
    mine = [s for s in samples if s.kind == kind]
    print(f"{kind} resources ({len(mine)} changes)")
    hops = {
        "anomaly": ("change -> anomaly CloudEvent on Kafka", "changed_at", "anomaly_at"),
        "started": ("anomaly -> workflow started", "anomaly_at", "started_at"),
        "verified": ("change -> verified saving recorded", "changed_at", "verified_at"),
    }
    for key, (what, start, end) in hops.items():
        values = [
            getattr(s, end) - getattr(s, start)
            for s in mine
            if getattr(s, start) is not None and getattr(s, end) is not None
        ]
        figure(what, values, len(mine), TARGETS[key])
    print("  hop by hop:")
    for before, after in itertools.pairwise(HOPS):
        values = [s.hops[after] - s.hops[before] for s in mine if {before, after} <= s.hops.keys()]
        figure(f"  {before} -> {after}", values, len(mine))
    steps: dict[str, list[float]] = {}
    for s in mine:
        for step, seconds in s.steps:
            steps.setdefault(step, []).append(seconds)
    for step, values in steps.items():
        figure(f"  step {step}", values, len(mine))
    # The record step writes finished_at, then publishes the result event.
    total = [s.verified_at - s.hops["runner"] for s in mine if s.verified_at and "runner" in s.hops]
    figure("  runner -> recorded (all steps)", total, len(mine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=10, help="brand-new instances")
    parser.add_argument("--existing", type=int, default=5, help="grown disks")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between changes")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    stack = Stack.load()
    bad = stack.unhealthy()
    if bad:
        raise SystemExit(f"the local stack is not healthy: {bad}; run `make up`")
    samples: list[Sample] = []
    with TopicWatch(stack.bootstrap, (contract.TOPIC_ANOMALIES,)) as watch:
        disks = prepare_existing(stack, args.existing, args.timeout)
        for acct, vol in disks:
            sim = stack.simulator(acct)
            sim.modify_volume(vol, 2000)
            samples.append(Sample("existing", vol, sim.changed_at))
            time.sleep(args.interval)
        for _ in range(args.new):
            sim = stack.simulator(account())
            iid = sim.run_instance("m5.xlarge", {"env": "dev", "team": "bench"})
            samples.append(Sample("new", iid, sim.changed_at))
            sim.put_cpu("AWS/EC2", "InstanceId", iid, avg=1.0, peak=3.0)
            time.sleep(args.interval)
        workflows = Path(stack.doc["parts"]["trigger"]["workflows"])
        observe(stack, watch, samples, args.timeout, workflows)
        drained = wait_drained(stack, args.timeout)
    print(f"pipeline latency on the local stack (one change every {args.interval}s)")
    report("new", samples)
    report("existing", samples)
    mapped = [s for s in samples if s.anomaly_at is not None]
    # Lost: the trigger consumed everything and still no run exists for the anomaly.
    lost = sum(1 for s in mapped if s.runs == 0) if drained else -1
    duplicated = sum(s.runs - 1 for s in samples if s.runs > 1)
    missed = sum(1 for s in samples if s.anomaly_at is None)
    print(
        f"workflows: lost {lost}, duplicated {duplicated} (of {len(mapped)} anomalies); "
        f"changes without an anomaly: {missed}"
        + ("" if drained else " (the trigger had not drained its topic: lost unknown)")
    )


if __name__ == "__main__":
    main()
