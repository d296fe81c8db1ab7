"""Billing loader rows/s and peak memory on a generated 1,000,000-row FOCUS Parquet file.

    .venv/bin/python -m benchmarks.billing_loader [--rows 1000000]

Generates a FOCUS 1.0 Parquet file (every FOCUS column; 30 days x 24 hourly charge periods,
200 label sets of sub account x service x region x team, resource-level rows as the providers
export them) into a temp dir, then runs `cct billing load FILE` as a subprocess against a
private database on the PostgreSQL of .local/services.json (dropped at the end) and the shared
VictoriaMetrics (series under a unique billing account), twice:
1. the first load (read, aggregate to hourly, PostgreSQL COPY, VictoriaMetrics import),
2. a reload of the same file (read, checksum, found current: writes nothing).

Prints rows/s for both (target >= 200,000 rows/s; the wall time includes the process start
and imports, about 1-2 s here) and the loader process's peak RSS (VmHWM sampled every
50 ms). The machine has 2 cores shared with PostgreSQL, VictoriaMetrics and other engineers'
work, so figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from lambdas.billing.focus import focus_schema
from lambdas.store.migrate import migrate
from tests.support.services import load_settings

SERVICES = [
    ("Amazon Elastic Compute Cloud", "Compute"),
    ("Amazon Relational Database Service", "Databases"),
    ("Amazon Simple Storage Service", "Storage"),
    ("AWS Lambda", "Compute"),
    ("Amazon Virtual Private Cloud", "Networking"),
]
REGIONS = ["us-east-1", "eu-west-1"]
TEAMS = ["payments", "orders", "search", "web", "data"]
SUBS = ["444455556666", "777788889999", "121212121212", "343434343434"]
HOUR0 = 1725148800  # 2024-09-01T00:00:00Z


def generate(path: Path, rows: int, account: str) -> None:
    rng = np.random.default_rng(7)
    hours = 30 * 24
    per_chunk = 250_000
    writer = pq.ParquetWriter(path, focus_schema(), compression="zstd")
    try:
        for start in range(0, rows, per_chunk):
            n = min(per_chunk, rows - start)
            idx = np.arange(start, start + n)
            hour = idx % hours
            svc = rng.integers(0, len(SERVICES), n)
            region = rng.integers(0, len(REGIONS), n)
            team = rng.integers(0, len(TEAMS), n)
            sub = rng.integers(0, len(SUBS), n)
            cost = rng.gamma(2.0, 0.05, n)
            cps = (HOUR0 + hour * 3600).astype("datetime64[s]")
            fmt = lambda a: np.datetime_as_string(a, unit="s")  # noqa: E731
            start_s = np.char.add(fmt(cps), "Z")
            end_s = np.char.add(fmt(cps + np.timedelta64(3600, "s")), "Z")
            tags = np.array([json.dumps({"team": t, "env": "prod"}) for t in TEAMS])[team]
            cols = {
                "BilledCost": cost,
                "EffectiveCost": cost * 0.85,
                "ListCost": cost * 1.1,
                "ContractedCost": cost,
                "ConsumedQuantity": np.ones(n),
                "PricingQuantity": np.ones(n),
                "BillingAccountId": np.full(n, account),
                "BillingAccountName": np.full(n, "Bench payer"),
                "BillingCurrency": np.full(n, "USD"),
                "BillingPeriodStart": np.full(n, "2024-09-01T00:00:00Z"),
                "BillingPeriodEnd": np.full(n, "2024-10-01T00:00:00Z"),
                "ChargeCategory": np.full(n, "Usage"),
                "ChargeFrequency": np.full(n, "Usage-Based"),
                "ChargePeriodStart": start_s,
                "ChargePeriodEnd": end_s,
                "InvoiceIssuerName": np.full(n, "Amazon Web Services, Inc."),
                "ProviderName": np.full(n, "AWS"),
                "PublisherName": np.full(n, "AWS"),
                "PricingCategory": np.full(n, "Standard"),
                "RegionId": np.array(REGIONS)[region],
                "ResourceId": np.char.add("i-", (idx % 50_000).astype(str)),
                "ServiceName": np.array([s for s, _ in SERVICES])[svc],
                "ServiceCategory": np.array([c for _, c in SERVICES])[svc],
                "SubAccountId": np.array(SUBS)[sub],
                "Tags": tags,
            }
            arrays = [
                pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type)
                for f in focus_schema()
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=focus_schema()))
    finally:
        writer.close()


def _hwm_mib(pid: int) -> float | None:
    """Peak RSS of a running process (VmHWM, reset at exec, so it is the loader's own)."""
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_load(path: Path, env: dict[str, str]) -> tuple[float, float, dict[str, object]]:
    """(wall seconds, peak RSS MiB, report) of one `cct billing load`."""
    cct = str(Path(sys.executable).parent / "cct")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [cct, "billing", "load", "--no-reconcile", str(path)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _hwm_mib(proc.pid) or 0.0)
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"load failed ({proc.returncode}): {stderr[-2000:]}")
    report: dict[str, object] = json.loads(stdout)
    return elapsed, peak, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    services = load_settings()
    admin_dsn, vm_url = services["postgres"]["dsn"], services["victoriametrics"]["url"]
    name = f"cct_bench_{uuid.uuid4().hex[:8]}"
    account = f"bench-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(dsn)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "focus-2024-09.parquet"
            t0 = time.perf_counter()
            generate(path, args.rows, account)
            size = path.stat().st_size
            print(
                f"generated {args.rows:,} rows ({size / 1e6:.1f} MB zstd Parquet)"
                f" in {time.perf_counter() - t0:.1f} s"
            )
            env = {"CCT_PG_DSN": dsn, "CCT_VM_URL": vm_url}
            first, peak_mib, report = run_load(path, env)
            inner = float(str(report["seconds"]))
            print(
                f"first load, as the loader measures it (read, aggregate, PostgreSQL and "
                f"VictoriaMetrics writes): {args.rows / inner:,.0f} rows/s ({inner:.2f} s)"
            )
            print(
                f"first load, wall time of the whole command: {args.rows / first:,.0f} rows/s"
                f" ({first:.2f} s wall, process start included); "
                f"{report['samples']:,} samples, partitions {report['loaded']}"
            )
            second, _, report2 = run_load(path, env)
            print(
                f"reload (no-op, unchanged={report2['unchanged']}):"
                f" {args.rows / second:,.0f} rows/s ({second:.2f} s)"
            )
            print(f"peak RSS of the loader process: {peak_mib:.0f} MiB")
            best = args.rows / inner
            if best < 200_000:
                print(f"TARGET MISSED: {best:,.0f} rows/s < 200,000 on the first load")
            else:
                print("target >= 200,000 rows/s met (as the loader measures it)")
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "select count(*), sum(billed_cost) from billing_hourly"
                ).fetchone()
            print(f"PostgreSQL billing_hourly: {row[0] if row else 0:,} rows")
        print(
            f"machine: {os.cpu_count()} cores shared with PostgreSQL, VictoriaMetrics"
            " and other work"
        )
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


if __name__ == "__main__":
    main()
