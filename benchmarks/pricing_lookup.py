"""Cost of pricing one resource on the collector's hot path (`usd_per_hour`), per kind.

    .venv/bin/python -m benchmarks.pricing_lookup [--repeat 7] [--number 200000]

Builds a price book with the shape of the real catalog (every kind of key the loaders
write, for 20 regions, so dict lookups are at realistic size), then times `usd_per_hour`
for one resource of each kind with `timeit`. Prints the median of `--repeat` runs in
nanoseconds per call. One process, no I/O; the machine's 2 cores are shared with other
work, so figures are noisy: compare runs made in the same minutes.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import timeit

from lambdas.collector.normalize import AWS_EC2, AWS_RDS, AZURE_DISK, AZURE_VM, GCP_COMPUTE
from lambdas.pricing.catalog import PriceKey, Shape, usd_per_hour

REGIONS = ["us-east-1", "eastus", "us-central1"] + [f"region-{i}" for i in range(17)]


def book() -> dict[PriceKey, float]:
    out: dict[PriceKey, float] = {}
    for region in REGIONS:
        for i in range(200):
            out[PriceKey("aws", AWS_EC2, region, f"m{i}.large", "hour")] = 0.1
            out[PriceKey("aws", AWS_EC2, region, f"m{i}.large/RunInstances:0002", "hour")] = 0.2
            out[PriceKey("azure", AZURE_VM, region, f"Standard_D{i}s_v3", "hour")] = 0.1
            out[PriceKey("azure", AZURE_VM, region, f"Standard_D{i}s_v3/Windows", "hour")] = 0.2
        out[PriceKey("aws", AWS_EC2, region, "m5.large", "hour")] = 0.096
        out[PriceKey("aws", AWS_EC2, region, "m5.large/RunInstances:0002", "hour")] = 0.188
        for vol in ("gp2", "gp3", "io1", "io2"):
            out[PriceKey("aws", AWS_EC2, region, vol, "gib_month")] = 0.1
        for sku in ("io1/iops", "io2/iops", "io2/iops.tier2", "io2/iops.tier3", "gp3/iops"):
            out[PriceKey("aws", AWS_EC2, region, sku, "iops_month")] = 0.065
        out[PriceKey("aws", AWS_EC2, region, "gp3/throughput", "mibps_month")] = 0.04
        for dep in ("Single-AZ", "Multi-AZ"):
            out[PriceKey("aws", AWS_RDS, region, f"db.m5.large/postgres/{dep}", "hour")] = 0.178
            for st in ("gp2", "gp3", "io1", "io2"):
                out[PriceKey("aws", AWS_RDS, region, f"{st}/postgres/{dep}", "gib_month")] = 0.115
                out[PriceKey("aws", AWS_RDS, region, f"{st}/postgres/{dep}", "iops_month")] = 0.1
            out[PriceKey("aws", AWS_RDS, region, f"gp3/postgres/{dep}", "mibps_month")] = 0.08
        out[PriceKey("azure", AZURE_VM, region, "Standard_D2s_v3", "hour")] = 0.096
        out[PriceKey("azure", AZURE_DISK, region, "Premium_LRS/P10", "hour")] = 0.027
        for fam in ("e2", "n2", "n1"):
            out[PriceKey("gcp", GCP_COMPUTE, region, f"{fam}/core", "hour")] = 0.0218
            out[PriceKey("gcp", GCP_COMPUTE, region, f"{fam}/ram", "hour")] = 0.0029
        out[PriceKey("gcp", GCP_COMPUTE, region, "f1-micro", "hour")] = 0.0076
        out[PriceKey("gcp", GCP_COMPUTE, region, "pd-ssd", "gib_month")] = 0.17
    out[PriceKey("gcp", GCP_COMPUTE, "global", "license/windows-server", "hour")] = 0.046
    return out


CASES = {
    "aws instance (Linux)": Shape(
        "aws", AWS_EC2, "Instance", "us-east-1", "m5.large", {}, "running"
    ),
    "aws instance (Windows)": Shape(
        "aws",
        AWS_EC2,
        "Instance",
        "us-east-1",
        "m5.large",
        {"platform_details": "Windows"},
        "running",
    ),
    "aws instance (stopped)": Shape(
        "aws", AWS_EC2, "Instance", "us-east-1", "m5.large", {}, "stopped"
    ),
    "ebs gp3 100 GiB": Shape(
        "aws", AWS_EC2, "Volume", "us-east-1", "gp3", {"gib": 100.0}, "available"
    ),
    "ebs gp3 + iops + throughput": Shape(
        "aws",
        AWS_EC2,
        "Volume",
        "us-east-1",
        "gp3",
        {"gib": 100.0, "iops": 6000.0, "throughput": 250.0},
        "available",
    ),
    "ebs io2 70k iops": Shape(
        "aws", AWS_EC2, "Volume", "us-east-1", "io2", {"gib": 500.0, "iops": 70000.0}, "available"
    ),
    "rds postgres (instance only)": Shape(
        "aws",
        AWS_RDS,
        "DBInstance",
        "us-east-1",
        "db.m5.large",
        {"engine": "postgres"},
        "running",
    ),
    "rds postgres gp3 + storage": Shape(
        "aws",
        AWS_RDS,
        "DBInstance",
        "us-east-1",
        "db.m5.large",
        {"engine": "postgres", "gib": 100.0, "storage_type": "gp3"},
        "running",
    ),
    "azure vm (Windows)": Shape(
        "azure",
        AZURE_VM,
        "Microsoft.Compute/virtualMachines",
        "eastus",
        "Standard_D2s_v3",
        {"os_type": "Windows"},
        "running",
    ),
    "gcp e2-standard-4": Shape(
        "gcp",
        GCP_COMPUTE,
        "compute.googleapis.com/Instance",
        "us-central1",
        "e2-standard-4",
        {},
        "running",
    ),
    "gcp e2-micro (shared core)": Shape(
        "gcp",
        GCP_COMPUTE,
        "compute.googleapis.com/Instance",
        "us-central1",
        "e2-micro",
        {},
        "running",
    ),
    "gcp n2-standard-4 Windows": Shape(
        "gcp",
        GCP_COMPUTE,
        "compute.googleapis.com/Instance",
        "us-central1",
        "n2-standard-4",
        {"image_project": "windows-cloud"},
        "running",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    prices = book()
    print(f"price book: {len(prices):,} keys; median of {args.repeat} x {args.number:,} calls")
    for name, shape in CASES.items():
        call = functools.partial(usd_per_hour, prices, shape)
        runs = timeit.repeat(call, repeat=args.repeat, number=args.number)
        ns = statistics.median(runs) / args.number * 1e9
        print(f"  {name:32s} {ns:7.0f} ns/call  -> {usd_per_hour(prices, shape)}")


if __name__ == "__main__":
    main()
