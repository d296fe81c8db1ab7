"""Cost of the collector's edge limits (`check_change`) next to normalising the same record.

    .venv/bin/python -m benchmarks.collector_edge_checks [--repeat 7] [--number 20000]

For one real event fixture per provider, times `normalize(record)` alone (the baseline) and
`normalize` plus `check_change` of each change, in the same process and minutes, and prints
the medians of `--repeat` runs in microseconds per record and their ratio. No I/O; the
machine's cores are shared with other work, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lambdas.collector.normalize import ChangeLimits, check_change, normalize

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "ingest" / "fixtures" / "events"
CASES = {
    "aws RunInstances": ("aws", "aws_run_instances", None),
    "aws CreateVolume": ("aws", "aws_create_volume", None),
    "azure VM write": ("azure", "azure_vm_write", "arm_vm"),
    "gcp instances.insert": ("gcp", "gcp_instances_insert", None),
}


def record(provider: str, name: str, resource: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "provider": provider,
        "billing_account_id": "111122223333",
        "event": json.loads((FIXTURES / f"{name}.json").read_text()),
    }
    if resource:
        rec["resource"] = json.loads((FIXTURES / f"{resource}.json").read_text())
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    limits, now = ChangeLimits(), datetime.now(UTC)
    print(f"{'case':24} {'normalize µs':>13} {'+ checks µs':>12} {'ratio':>6}")
    for label, (provider, name, resource) in CASES.items():
        rec = record(provider, name, resource)

        def baseline(rec: dict[str, Any] = rec) -> None:
            normalize(rec)

        def checked(rec: dict[str, Any] = rec) -> None:
            for change in normalize(rec):
                check_change(change, limits, now)

        base = timeit.repeat(baseline, repeat=args.repeat, number=args.number)
        with_checks = timeit.repeat(checked, repeat=args.repeat, number=args.number)
        b = statistics.median(base) / args.number * 1e6
        c = statistics.median(with_checks) / args.number * 1e6
        print(f"{label:24} {b:13.2f} {c:12.2f} {c / b:6.2f}")


if __name__ == "__main__":
    main()
