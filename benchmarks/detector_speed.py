"""Detector cycle time and memory for 100,000 active series on one core.

    .venv/bin/python -m benchmarks.detector_speed [--series 100000] [--cycles 40]

The process pins itself to one CPU. The engine is seeded with three weeks and a day of
hourly history (what a restarted detector loads), then evaluated every 3 s of simulated time:
- steady cycle: one `Engine.observe` of every series (the target: at most 1 s per 3 s cycle);
- hour rollover: the first cycle of an hour, which also closes the hour and recomputes every
  baseline (once an hour);
- read + index: turning an Alertmanager-sized VictoriaMetrics instant-query response for all
  series (JSON) into keys and engine indices, the shell's share of a cycle that reads every
  series (resource level on).
Memory: peak resident set size of the process, and the engine's own arrays.
The machine is shared (2 cores, other engineers' tests running): figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Sequence

import numpy as np

from lambdas.detector.config import DetectionConfig, SeriesKey
from lambdas.detector.core import HOUR_S, WEEK_H, Engine
from lambdas.detector.service import KeyCache, parse_vector


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def med(xs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--cycles", type=int, default=40)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    n = args.series
    rng = np.random.default_rng(1)
    base_rss = rss_mib()

    labels = [
        {
            "provider": "aws",
            "billing_account_id": f"acct-{i % 300}",
            "region_id": "us-east-1",
            "service_name": f"svc-{i % 40}",
            "team": f"team-{i % 60}",
            "resource_id": f"i-{i:08x}",
        }
        for i in range(n)
    ]
    keys = [SeriesKey.of("resource", lb) for lb in labels]
    engine = Engine(DetectionConfig(), capacity=n)
    idx = engine.index_of(keys)

    hours = engine.hours
    t0_hour = 1_790_000_000 // (WEEK_H * HOUR_S) * WEEK_H + WEEK_H * 10
    level = rng.lognormal(0, 1, n)
    daily = 1 + 0.3 * np.sin(np.arange(hours) / 24 * 2 * np.pi)
    history = level[:, None] * daily[None, :] * (1 + rng.normal(0, 0.02, (n, hours)))
    seed_start = clock()
    engine.seed_history(idx, t0_hour - hours, history)
    seed_s = since(seed_start)

    now = float(t0_hour * HOUR_S)
    current = level * daily[-1]
    rollover: list[tuple[float, float]] = []
    steady: list[tuple[float, float]] = []
    for cycle in range(args.cycles):
        values = current * (1 + rng.normal(0, 0.01, n))
        start = clock()
        engine.observe(now, idx, values)
        took = since(start)
        (rollover if cycle == 0 else steady).append(took)
        now += 3.0
    # A second rollover, now with a full hour's buckets to close.
    now = float((t0_hour + 1) * HOUR_S)
    start = clock()
    engine.observe(now, idx, current)
    rollover.append(since(start))

    # The shell's read path for the same number of series: JSON in, keys and indices out.
    response = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": {**lb, "basis": "list"}, "value": [now, f"{v:.6f}"]}
                    for lb, v in zip(labels, current, strict=True)
                ],
            },
        }
    ).encode()
    cache: KeyCache = {}
    reads: list[tuple[float, float]] = []
    for _ in range(3):  # the first read fills the key cache, later ones hit it
        start = clock()
        rows = json.loads(response)["data"]["result"]
        read_keys, read_values = parse_vector("resource", rows, cache)
        engine.index_of(read_keys)
        reads.append(since(start))
    assert len(read_values) == n

    arrays = sum(v.nbytes for v in vars(engine).values() if isinstance(v, np.ndarray))

    def line(name: str, wall_cpu: tuple[float, float]) -> None:
        print(f"{name:<44}{wall_cpu[0] * 1000:>11.1f} ms{wall_cpu[1] * 1000:>11.1f} ms")

    print(f"Detector core, {n:,} series, one core (noisy shared machine)")
    print(f"{'measure':<44}{'wall':>14}{'cpu':>14}")
    line(f"steady cycle, median of {len(steady)}", med(steady))
    line("steady cycle, slowest", max(steady))
    line("hour rollover cycle, median of 2", med(rollover))
    line("read + index of a JSON response, first", reads[0])
    line("read + index of a JSON response, cached", med(reads[1:]))
    line(f"seeding {hours} h of history (at start)", seed_s)
    print(f"{'engine arrays':<44}{arrays / 2**20:>10.1f} MiB")
    print(f"{'peak RSS (process, incl. benchmark data)':<44}{rss_mib():>10.1f} MiB")
    print(f"{'RSS before building anything':<44}{base_rss:>10.1f} MiB")
    print("target: steady cycle <= 1000 ms per 3 s interval")


if __name__ == "__main__":
    main()
