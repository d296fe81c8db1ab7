"""Faults on the live pipeline (the local stack `make up` started): does anything get lost or
duplicated while a part dies, restarts or stops answering under a steady load?

    .venv/bin/python -m benchmarks.faults [--faults "kill trigger,restart kafka"] [--events 6]

Load: one brand-new m5.xlarge (env=dev, so an anomaly and a stop-idle-compute workflow are
expected) every `--interval` seconds, each in its own account (the blast-radius policy never
turns one into an approval), launched in the cloud simulator (moto) with its CloudTrail event
posted through the real AWS forwarder to the collector's public endpoint. The forwarder
retries a failed delivery with the same event (more attempts than its default, as the
platform's invocation retries would), so a refused or reset connection is not a lost event.

Faults, each injected a third of the way into the load:
- kill NAME: SIGKILL of the handler's process (collector, detector, bridge, trigger,
  admission), then the same start `make up` does (lambdas.devstack.stack.Part.start);
- restart NAME: `scripts/services down NAME` then `up NAME` (kafka, postgres,
  victoriametrics): SIGTERM, wait, start;
- drop NAME: a real network drop for `--drop` seconds (benchmarks/netdrop.py: the kernel
  discards the packets on loopback; the process keeps running and its connections hang and
  retransmit, as on a partition). For a service, every packet to and from its port; for a
  handler, every packet of its own sockets (its listening port and its outgoing connections,
  including those it opens during the drop). Needs the network namespace of the helper
  (`ip netns exec NAME`) and CAP_NET_ADMIN; refused in the machine's initial namespace.

Counted per fault, per resource, once the pipeline settled (every resource has a run, or the
settle timeout passed, and the trigger's consumer lag is 0):
sent (events the forwarder delivered; `undelivered` if it gave up), stored (rows in
resource_events), alerted (resources with a CostAnomaly CloudEvent on the anomalies topic),
workflows (rows in optimization_runs). lost = sent-not-stored + stored-not-alerted +
alerted-without-workflow (named by hop); duplicated = stored rows beyond one per event plus
runs beyond one per resource. Target (issue #17): zero lost, zero duplicated.
Nothing is asserted here; tests/faults asserts it for the cheap faults.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import netdrop
from lambdas import contract
from lambdas.devstack import stack as devstack
from lambdas.devstack.cloud import AwsSimulator
from lambdas.devstack.status import trigger_lag
from tests.e2e.stack import Stack, TopicWatch

ROOT = Path(__file__).resolve().parents[1]
HANDLERS = ("collector", "detector", "bridge", "trigger", "admission")
SERVICES = ("kafka", "postgres", "victoriametrics")
ALL_FAULTS = (
    ["none"]
    + [f"kill {h}" for h in HANDLERS]
    + [f"restart {s}" for s in SERVICES]
    + [f"drop {p}" for p in (*HANDLERS, *SERVICES)]
)
FORWARD_ATTEMPTS = 12
WATCH_CATCH_UP_S = 60.0


@dataclass
class Result:
    fault: str
    sent: int = 0
    undelivered: int = 0
    stored: int = 0
    alerted: int = 0
    workflows: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    fault_s: float = 0.0
    settle_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    @property
    def duplicated_total(self) -> int:
        return sum(self.duplicated.values())


def account() -> str:
    return f"{uuid.uuid4().int % 10**12:012d}"


# ---------------------------------------------------------------------- fault injection
def _pid(name: str) -> int:
    pid = devstack.pid_of(name)
    if pid is None:
        raise RuntimeError(f"{name} is not running (no live pid in .local/run)")
    return pid


def _services(*args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services"), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    )


def kill_and_restart(name: str) -> None:
    """SIGKILL of one handler (not its group: the trigger's detached runners live on, as Argo
    workflows outlive the trigger pod), then the start `make up` does."""
    pid = _pid(name)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while devstack.pid_of(name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    part = next(p for p in devstack.parts() if p.name == name)
    part.start()


def restart_service(name: str) -> None:
    _services("down", name)
    _services("up", name)


def drop(name: str, seconds: float) -> None:
    """The network to `name` goes dark for `seconds`, then comes back."""
    if name in SERVICES:
        with netdrop.dropped_ports([int(devstack.services()[name]["port"])]):
            time.sleep(seconds)
    else:
        netdrop.drop_process(_pid(name), seconds)


def inject(fault: str, drop_s: float) -> None:
    if fault == "none":
        return
    kind, name = fault.split(" ", 1)
    if kind == "kill" and name in HANDLERS:
        kill_and_restart(name)
    elif kind == "restart" and name in SERVICES:
        restart_service(name)
    elif kind == "drop" and name in (*HANDLERS, *SERVICES):
        drop(name, drop_s)
    else:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(ALL_FAULTS)}")


# ---------------------------------------------------------------------- load and counting
def drive(
    stack: Stack, count: int, interval: float, out: dict[str, bool], errors: list[str]
) -> None:
    """Launch `count` instances; out: instance id -> whether its event was delivered."""
    for _ in range(count):
        started = time.monotonic()
        sim = stack.simulator(account())
        sim.forward_attempts = FORWARD_ATTEMPTS
        before = set(out)
        try:
            iid = sim.run_instance("m5.xlarge", {"env": "dev", "team": "faults"})
            out[iid] = True
        except Exception as exc:
            errors.append(f"delivery: {exc}")
            launched = _newest_instance(sim, before)
            if launched:
                out[launched] = False
            continue
        try:
            sim.put_cpu("AWS/EC2", "InstanceId", iid, avg=1.0, peak=3.0)
        except Exception as exc:
            errors.append(f"cloudwatch: {exc}")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _newest_instance(sim: AwsSimulator, known: set[str]) -> str | None:
    client = sim.client("ec2")
    ids = {
        i["InstanceId"]
        for r in client.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["InstanceId"] not in known
    }
    return sorted(ids)[-1] if len(ids) == 1 else None


def counts(stack: Stack, table: str, ids: list[str]) -> dict[str, int]:
    rows = stack.sql(
        f"select resource_id, count(*) from {table} where resource_id = any(%s)"
        " group by resource_id",
        ids,
    )
    return {str(r): int(n) for r, n in rows}


def alerted_ids(watch: TopicWatch, ids: list[str]) -> set[str]:
    wanted = set(ids)

    def mine(event: dict[str, Any]) -> bool:
        labels = event["data"]["labels"]
        return bool(event["type"] == contract.DETECTED and labels.get("resource_id") in wanted)

    events = watch.find(contract.TOPIC_ANOMALIES, mine)
    return {e["data"]["labels"]["resource_id"] for e in events}


def watch_caught_up(
    watch: TopicWatch, ids: list[str], with_run: set[str], timeout: float
) -> set[str]:
    """The resources the watch saw alerted, once it has seen every one that has a run (the
    trigger read its event from the topic, so the record is there) or `timeout` passed. The
    watch is a Kafka client too: after a fault on the broker its own connection may still be
    in TCP back-off when the pipeline has already settled."""
    deadline = time.monotonic() + timeout
    while True:
        alerted = alerted_ids(watch, ids)
        if with_run <= alerted or time.monotonic() > deadline:
            return alerted
        time.sleep(0.5)


def settle(stack: Stack, ids: list[str], timeout: float) -> bool:
    """Every resource has a run (or the timeout passed); then the trigger's lag is 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(counts(stack, "optimization_runs", ids)) == len(ids):
            break
        time.sleep(1)
    while time.monotonic() < deadline:
        # Kafka may still be coming back after its own fault.
        with contextlib.suppress(Exception):
            if trigger_lag(stack.bootstrap) == 0:
                return True
        time.sleep(1)
    return False


def run_fault(
    stack: Stack,
    watch: TopicWatch,
    fault: str,
    *,
    events: int = 6,
    interval: float = 1.5,
    drop_s: float = 8.0,
    settle_s: float = 150.0,
) -> Result:
    result = Result(fault)
    launched: dict[str, bool] = {}
    load = threading.Thread(
        target=drive, args=(stack, events, interval, launched, result.errors), daemon=True
    )
    load.start()
    time.sleep(events * interval / 3)
    t0 = time.monotonic()
    try:
        inject(fault, drop_s)
    except Exception as exc:
        result.errors.append(f"inject: {exc}")
    result.fault_s = time.monotonic() - t0
    load.join(timeout=events * interval + FORWARD_ATTEMPTS * 60)
    ids = sorted(launched)
    t1 = time.monotonic()
    drained = settle(stack, ids, settle_s)
    result.settle_s = time.monotonic() - t1
    if not drained:
        result.errors.append("the trigger had not drained its topic at the settle timeout")
    delivered = [i for i in ids if launched[i]]
    stored = counts(stack, "resource_events", ids)
    runs = counts(stack, "optimization_runs", ids)
    alerted = watch_caught_up(watch, ids, set(runs), WATCH_CATCH_UP_S)
    result.sent = len(delivered)
    result.undelivered = len(ids) - len(delivered)
    result.stored = sum(1 for i in ids if stored.get(i))
    result.alerted = len(alerted)
    result.workflows = sum(runs.values())
    result.lost = {
        "forwarder": result.undelivered,
        "collector": sum(1 for i in delivered if not stored.get(i)),
        "detector/bridge": sum(1 for i in ids if stored.get(i) and i not in alerted),
        "trigger": sum(1 for i in alerted if not runs.get(i)),
    }
    result.duplicated = {
        "resource_events": sum(n - 1 for n in stored.values() if n > 1),
        "optimization_runs": sum(n - 1 for n in runs.values() if n > 1),
    }
    return result


def _hops(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v) or "-"


HEAD = (
    f"{'fault':24} {'sent':>5} {'stored':>6} {'alerted':>7} {'workflows':>9} "
    f"{'lost':>4} {'dup':>4} {'fault s':>7} {'settle s':>8}  where"
)


def row(r: Result) -> str:
    where = "; ".join(
        x
        for x in (
            f"lost: {_hops(r.lost)}" if r.lost_total else "",
            f"dup: {_hops(r.duplicated)}" if r.duplicated_total else "",
            *r.errors[:2],
        )
        if x
    )
    return (
        f"{r.fault:24} {r.sent:5d} {r.stored:6d} {r.alerted:7d} {r.workflows:9d} "
        f"{r.lost_total:4d} {r.duplicated_total:4d} {r.fault_s:7.1f} {r.settle_s:8.1f}  {where}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", default=",".join(ALL_FAULTS), help="comma-separated")
    parser.add_argument("--events", type=int, default=6, help="instances launched per fault")
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between launches")
    parser.add_argument("--drop", type=float, default=8.0, help="seconds a part's network is down")
    parser.add_argument("--settle", type=float, default=150.0, help="seconds to wait per fault")
    args = parser.parse_args()
    stack = Stack.load()
    bad = stack.unhealthy()
    if bad:
        raise SystemExit(f"the local stack is not healthy: {bad}; run `make up`")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    # A timeout's SIGTERM must still undo a drop (the context managers' exits).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[Result] = []
    print(
        f"faults on the local stack ({args.events} new instances per fault, one every "
        f"{args.interval}s; drop = packets discarded for {args.drop}s)"
    )
    print(HEAD)
    print("-" * len(HEAD), flush=True)
    with TopicWatch(stack.bootstrap, (contract.TOPIC_ANOMALIES,)) as watch:
        for fault in faults:
            r = run_fault(
                stack,
                watch,
                fault,
                events=args.events,
                interval=args.interval,
                drop_s=args.drop,
                settle_s=args.settle,
            )
            results.append(r)
            print(row(r), flush=True)
    print(
        f"total: lost {sum(r.lost_total for r in results)}, "
        f"duplicated {sum(r.duplicated_total for r in results)} over {len(results)} fault runs"
    )


if __name__ == "__main__":
    main()
