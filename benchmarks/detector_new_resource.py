"""Latency from a resource change to the detector's alert, for brand-new and existing
resources, with the inventory fast path on and off (the baseline, in the same run).

Real services: the change is written as the collector writes it (inventory row and event in
PostgreSQL, then the series in VictoriaMetrics, `tests.contract.capture.Writer`), the real
detector evaluates every `--interval` seconds in a thread and posts to the real
Alertmanager; the latency is from the write's return to the post of the resource's alert.
Three kinds of change: an existing resource resized, a new resource where its service,
region and team already have series, and a new resource in a new region and team (every
series that could show it is new).
A brand-new series becomes queryable in VictoriaMetrics only seconds after it is written:
without the fast path a new resource is found only through its aggregates' drill-down or
once its series is served.

    ip netns exec <ns> .venv/bin/python -m benchmarks.detector_new_resource [--trials 6]

The machine has 2 cores shared with other work: figures are noisy.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from lambdas.detector.config import DetectionConfig
from lambdas.detector.service import Detector, DetectorSettings
from tests.contract.capture import EC2, Step, Writer, fresh_database, wait_settled

KINDS = ("existing", "new", "new-group")


def trial(kind: str, fast: bool, dsn: str, services: dict[str, Any], interval: float) -> float:
    uid = uuid.uuid4().hex[:10]
    account = f"acct-{uid}"
    writer = Writer(dsn, services["victoriametrics"]["url"], account)
    detector = Detector(
        DetectorSettings(
            vm_url=services["victoriametrics"]["url"],
            alertmanager_url=services["alertmanager"]["url"],
            pg_dsn=dsn,
            selector=f'billing_account_id="{account}"',
            bootstrap_hours=0,
            interval_s=interval,
            new_resource_window_s=60.0 if fast else 0.0,
            detection=DetectionConfig(),
        )
    )
    base = Step(
        "aws",
        f"i-{uid}-base",
        EC2,
        "Instance",
        "us-east-1",
        {"team": "web", "env": "dev"},
        50.0,
        "RunInstances",
    )
    target = base.resource_id if kind == "existing" else f"i-{uid}-new"
    if kind == "existing":
        change = replace(base, usd_per_hour=120.0, action="ModifyInstanceAttribute")
    elif kind == "new":  # its service, region and team already cost something
        change = replace(base, resource_id=target, usd_per_hour=40.0)
    else:  # "new-group": a new region and team, so every series that shows it is new
        change = replace(
            base,
            resource_id=target,
            usd_per_hour=40.0,
            region_id="eu-west-3",
            tags={"team": f"ml-{uid}", "env": "dev"},
        )
    posted = threading.Event()
    real_post = detector.am.post

    def post(alerts: Sequence[Mapping[str, Any]]) -> None:
        real_post(alerts)
        if any(a["labels"].get("resource_id") == target for a in alerts):
            posted.set()

    detector.am.post = post  # type: ignore[method-assign]
    stop = threading.Event()
    try:
        writer.apply([base])
        wait_settled(detector, writer)
        detector.cycle(time.time())

        def loop() -> None:
            while not stop.is_set():
                tick = time.time()
                detector.cycle(tick)
                stop.wait(max(0.0, interval - (time.time() - tick)))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        time.sleep(random.uniform(interval, 2 * interval))  # a random phase of the cycle
        writer.apply([change])
        written = time.monotonic()
        found = posted.wait(60)
        latency = time.monotonic() - written
        stop.set()
        thread.join()
        return latency if found else float("inf")
    finally:
        detector.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--interval", type=float, default=3.0)
    args = parser.parse_args()
    results: dict[tuple[str, bool], list[float]] = {}
    with fresh_database() as (dsn, services):
        for n in range(args.trials):
            for kind in KINDS:
                for fast in (True, False):
                    results.setdefault((kind, fast), []).append(
                        trial(kind, fast, dsn, services, args.interval)
                    )
            print(f"trial {n + 1}/{args.trials} done", flush=True)
    print(f"change -> detector alert, interval {args.interval} s, {args.trials} trials each")
    print(f"{'resource':<10} {'fast path':<10} {'median s':>9} {'max s':>7}")
    for (kind, fast), values in sorted(results.items()):
        print(
            f"{kind:<10} {'on' if fast else 'off':<10} {statistics.median(values):>9.2f} "
            f"{max(values):>7.2f}"
        )
    for kind in KINDS:
        on = statistics.median(results[(kind, True)])
        off = statistics.median(results[(kind, False)])
        print(f"{kind}: median with the fast path / without = {on / off:.2f}")


if __name__ == "__main__":
    main()
