"""Backtest throughput in FOCUS rows per second, Parquet and CSV.

    .venv/bin/python -m benchmarks.backtest_throughput [--resources-per-account 150] [--weeks 8]

Generates a sample (about 4,000 rows per resource over 8 weeks), then times reading it into
the cost matrix and running detection and attribution over every level, three times each,
reporting medians of wall and CPU time. The machine is shared (2 cores, other engineers'
tests running): figures are noisy, CPU time is the steadier one (yet it grows with the load
too: caches and cores are shared), so the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lambdas.backtest import focus
from lambdas.backtest.run import backtest
from lambdas.backtest.sample import SampleSpec, write
from lambdas.detector.config import DetectionConfig


def timed(fn: object) -> tuple[float, float, object]:
    assert callable(fn)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resources-per-account", type=int, default=150)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    cfg = DetectionConfig()
    with tempfile.TemporaryDirectory() as tmp:
        spec = SampleSpec(
            seed=11, weeks=args.weeks, resources_per_account=args.resources_per_account
        )
        parquet, _, rows = write(spec, Path(tmp))
        csv_path = Path(tmp) / "focus.csv"
        pacsv.write_csv(pq.read_table(parquet), csv_path)
        print(
            f"Backtest throughput: {rows:,} FOCUS rows, {args.weeks} weeks hourly "
            "(noisy shared machine; medians of "
            f"{args.repeat}; load average {os.getloadavg()[0]:.2f})"
        )
        print(f"{'stage':<34}{'wall s':>9}{'cpu s':>9}{'rows/s (wall)':>16}{'rows/s (cpu)':>15}")
        for name, path in (("parquet", parquet), ("csv", csv_path)):
            loads = [timed(lambda p=path: focus.load([p])) for _ in range(args.repeat)]
            matrix = loads[0][2]
            assert isinstance(matrix, focus.CostMatrix)
            runs = [timed(lambda m=matrix: backtest(m, cfg)) for _ in range(args.repeat)]
            for stage, results in ((f"read {name}", loads), ("detect + attribute", runs)):
                wall = statistics.median(r[0] for r in results)
                cpu = statistics.median(r[1] for r in results)
                print(
                    f"{stage:<34}{wall:>9.2f}{cpu:>9.2f}{rows / wall:>16,.0f}{rows / cpu:>15,.0f}"
                )
            total_wall = statistics.median(r[0] for r in loads) + statistics.median(
                r[0] for r in runs
            )
            total_cpu = statistics.median(r[1] for r in loads) + statistics.median(
                r[1] for r in runs
            )
            print(
                f"{'end to end (' + name + ')':<34}{total_wall:>9.2f}{total_cpu:>9.2f}"
                f"{rows / total_wall:>16,.0f}{rows / total_cpu:>15,.0f}"
            )
            print(f"  ({len(matrix.resources):,} resources, {matrix.rates.shape[1]:,} intervals)")
        print(f"(load average at the end {os.getloadavg()[0]:.2f}; target 300,000 rows/s)")


if __name__ == "__main__":
    main()
