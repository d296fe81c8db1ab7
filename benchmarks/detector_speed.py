"""Detector cycle time and memory for 100,000 active series on one core.

    .venv/bin/python -m benchmarks.detector_speed [--series 100000] [--cycles 40]

The process pins itself to one CPU. The engine is seeded with three weeks and a day of
hourly history (what a restarted detector loads), then evaluated every 3 s of simulated time:
- steady cycle: one `Engine.observe` of every series (the target: at most 1 s per 3 s cycle);
- hour rollover: the first cycle of an hour, which also closes the hour and recomputes every
  baseline (once an hour);
- read + index: `Detector.read` of every per-resource series from a private, real
  VictoriaMetrics holding them (HTTP, JSON, keys, engine indices): the shell's share of a
  cycle with the resource level on. Compared in the same run with the previous read path
  (the raw selector with all ten labels per series, a label-tuple key cache, the collector
  running during the parse) as the baseline. CPU is this process's: VictoriaMetrics' own
  work is in its process.
Memory: peak resident set size of the process, and the engine's own arrays.
The machine is shared (2 cores, other engineers' tests running): figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lambdas.common.vm import Sample, VictoriaMetrics
from lambdas.detector.config import DetectionConfig, SeriesKey
from lambdas.detector.core import HOUR_S, WEEK_H, Engine
from lambdas.detector.service import RESOURCE_METRIC as METRIC
from lambdas.detector.service import Detector, DetectorSettings
from tests.support.procs import free_port, http_ready, running


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def med(xs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def private_vm(workdir: Path) -> Iterator[str]:
    port = free_port()
    cmd = [
        "victoria-metrics",
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={workdir / 'vm'}",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=WARN",
    ]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, http_ready(f"{url}/health"), workdir / "vm.log"):
        yield url


def read_all_labels(
    vm: VictoriaMetrics, engine: Engine, at: float, cache: dict[Any, SeriesKey]
) -> int:
    """The read path before this change, kept as the baseline: every label of every series,
    cached by the raw label tuple."""
    rows = vm.query(f'{METRIC}{{basis="list"}}', at)
    keys = []
    values = []
    for row in rows:
        metric = row["metric"]
        raw = tuple(metric.items())
        key = cache.get(raw)
        if key is None:
            key = cache[raw] = SeriesKey.of("resource", metric)
        keys.append(key)
        values.append(float(row["value"][1]))
    engine.index_of(keys)
    return len(keys)


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

    # The shell's read path, against a real VictoriaMetrics holding the same series.
    with tempfile.TemporaryDirectory() as tmp, private_vm(Path(tmp)) as url:
        vm = VictoriaMetrics(url, timeout=60)
        at_ms = int(now * 1000)
        extra = {"sub_account_id": "sub-1", "resource_type": "instance", "env": "prod"}
        for lo in range(0, n, 20_000):
            vm.import_samples(
                Sample(METRIC, {**labels[i], **extra, "basis": "list"}, float(current[i]), at_ms)
                for i in range(lo, min(n, lo + 20_000))
            )
        while len(vm.query(f"count({METRIC})", now)) == 0 or (
            int(vm.query(f"count({METRIC})", now)[0]["value"][1]) < n
        ):
            time.sleep(0.5)
        settings = DetectorSettings(
            url, "http://127.0.0.1:1", "", levels=("resource",), new_resource_window_s=0.0
        )
        detector = Detector(settings)
        detector.engine = engine
        old_cache: dict[Any, SeriesKey] = {}
        before: list[tuple[float, float]] = []
        after: list[tuple[float, float]] = []
        for _ in range(4):  # the first of each fills its key cache
            start = clock()
            assert read_all_labels(vm, engine, now, old_cache) == n
            before.append(since(start))
            start = clock()
            vector = detector.read(now)
            engine.index_of(vector.keys)
            after.append(since(start))
            assert len(vector.keys) == n

    arrays = sum(v.nbytes for v in vars(engine).values() if isinstance(v, np.ndarray))

    def line(name: str, wall_cpu: tuple[float, float]) -> None:
        print(f"{name:<44}{wall_cpu[0] * 1000:>11.1f} ms{wall_cpu[1] * 1000:>11.1f} ms")

    print(f"Detector core, {n:,} series, one core (noisy shared machine)")
    print(f"{'measure':<44}{'wall':>14}{'cpu':>14}")
    line(f"steady cycle, median of {len(steady)}", med(steady))
    line("steady cycle, slowest", max(steady))
    line("hour rollover cycle, median of 2", med(rollover))
    line("read + index, all labels (before), first", before[0])
    line("read + index, all labels (before), cached", med(before[1:]))
    line("read + index, joined key (after), first", after[0])
    line("read + index, joined key (after), cached", med(after[1:]))
    ratio = med(after[1:])[1] / med(before[1:])[1]
    print(f"{'read CPU after / before (cached)':<44}{ratio:>13.2f}")
    line(f"seeding {hours} h of history (at start)", seed_s)
    print(f"{'engine arrays':<44}{arrays / 2**20:>10.1f} MiB")
    print(f"{'peak RSS (process, incl. benchmark data)':<44}{rss_mib():>10.1f} MiB")
    print(f"{'RSS before building anything':<44}{base_rss:>10.1f} MiB")
    print("target: steady cycle <= 1000 ms per 3 s interval")


if __name__ == "__main__":
    main()
