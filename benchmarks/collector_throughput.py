"""Collector throughput and receipt-to-queryable latency, end to end into the real
VictoriaMetrics and PostgreSQL.

    .venv/bin/python -m benchmarks.collector_throughput [--events 200000] [--batch 1000]
        [--resources 20000] [--concurrency 4]

Starts ONE `cct serve collector` process (private database on the PostgreSQL of
.local/services.json, dropped at the end; the shared VictoriaMetrics, series labelled with a
unique billing account), then posts Fluent Bit-shaped JSON batches of AWS events (CloudTrail
RunInstances / ModifyInstanceAttribute / StopInstances and EC2 state-change notifications over
20,000 instances) from 4 concurrent connections as fast as the collector answers. Each 200
response means the batch is committed in PostgreSQL and handed to VictoriaMetrics.

While the load runs, a probe changes one instance's size every 0.5 s and polls VictoriaMetrics
(every 20 ms) for its rollup series `cct_cost_rate_rollup_usd_per_hour{team="probe"}` to show
the new value: receipt-to-queryable latency of an existing series. Once, it also measures how
long a brand-new per-resource series takes to appear (VictoriaMetrics' new-series delay).

With `--resources` equal to `--events` every event creates a resource (and its series): the
heaviest case for PostgreSQL and VictoriaMetrics.

Prints events/s (target >= 20,000 in one process), p50/p99 latency, and the PostgreSQL row
counts. The machine has 2 cores shared by the collector, PostgreSQL, VictoriaMetrics, this
client and other engineers' work, so the figures are noisy and pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from lambdas.common.vm import VictoriaMetrics
from lambdas.store.migrate import migrate
from tests.support.procs import free_port, http_ready, running
from tests.support.services import load_settings

TOKEN = "bench-token-0123456789abcdef"  # noqa: S105 - a throwaway local token
EC2 = "Amazon Elastic Compute Cloud"
PRICES = {"m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384}
SIZES = list(PRICES)


def cloudtrail(name: str, eid: str, t: str, instance: str, sku: str | None) -> dict[str, Any]:
    request: dict[str, Any] = {"instancesSet": {"items": [{"instanceId": instance}]}}
    response: dict[str, Any] = {"instancesSet": {"items": [{"instanceId": instance}]}}
    if name == "RunInstances":
        response = {
            "instancesSet": {
                "items": [
                    {
                        "instanceId": instance,
                        "instanceType": sku,
                        "placement": {"availabilityZone": "us-east-1a"},
                        "tagSet": {
                            "items": [
                                {"key": "team", "value": f"t{hash(instance) % 20}"},
                                {"key": "env", "value": "prod"},
                            ]
                        },
                    }
                ]
            }
        }
    elif name == "ModifyInstanceAttribute":
        request = {"instanceId": instance, "instanceType": {"value": sku}}
    return {
        "version": "0",
        "id": eid,
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.ec2",
        "account": "111122223333",
        "time": t,
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "eventVersion": "1.08",
            "eventTime": t,
            "eventSource": "ec2.amazonaws.com",
            "eventName": name,
            "awsRegion": "us-east-1",
            "eventID": eid,
            "userIdentity": {
                "type": "AssumedRole",
                "arn": "arn:aws:sts::111122223333:assumed-role/ci/bot",
            },
            "requestParameters": request,
            "responseElements": response,
        },
    }


def state_change(eid: str, t: str, instance: str, state: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": eid,
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "111122223333",
        "time": t,
        "region": "us-east-1",
        "resources": [],
        "detail": {"instance-id": instance, "state": state},
    }


def make_batches(n: int, batch: int, account: str, resources: int) -> list[bytes]:
    """n events: each instance is created first, then modified, stopped, started."""
    base = time.time() - 600
    records = []
    for i in range(n):
        inst = f"i-{i % resources:017x}"
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + i * 0.001)) + f".{i % 1000:03d}Z"
        eid = f"{account}-{i}"
        round_ = i // resources
        if round_ == 0:
            ev = cloudtrail("RunInstances", eid, t, inst, SIZES[i % 3])
        elif round_ % 3 == 1:
            ev = cloudtrail("ModifyInstanceAttribute", eid, t, inst, SIZES[(i + round_) % 3])
        elif round_ % 3 == 2:
            ev = state_change(eid, t, inst, "stopped")
        else:
            ev = state_change(eid, t, inst, "running")
        records.append({"provider": "aws", "billing_account_id": account, "event": ev})
    return [json.dumps(records[i : i + batch]).encode() for i in range(0, n, batch)]


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> dict[str, Any]:
    async with session.post(
        url,
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    ) as resp:
        payload: dict[str, Any] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {payload}")
        return payload


async def probe(url: str, vm_url: str, account: str, stop: asyncio.Event, out: list[float]) -> None:
    vm = VictoriaMetrics(vm_url)
    inst = "i-probe"
    sel = f'billing_account_id="{account}",team="probe",basis="list"'
    expr = f"cct_cost_rate_rollup_usd_per_hour{{{sel}}}"
    async with aiohttp.ClientSession() as session:
        i = 0
        while not stop.is_set():
            sku = SIZES[i % 2]
            t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{i % 1000:03d}Z"
            name = "RunInstances" if i == 0 else "ModifyInstanceAttribute"
            ev = cloudtrail(name, f"probe-{account}-{i}", t, inst, sku)
            if i == 0:
                ev["detail"]["responseElements"]["instancesSet"]["items"][0]["tagSet"]["items"][0][
                    "value"
                ] = "probe"
            body = json.dumps(
                [{"provider": "aws", "billing_account_id": account, "event": ev}]
            ).encode()
            t0 = time.perf_counter()
            await post(session, url, body)
            deadline = t0 + 30
            while time.perf_counter() < deadline:
                res = await asyncio.to_thread(vm.query, expr)
                if res and abs(float(res[0]["value"][1]) - PRICES[sku]) < 1e-9:
                    if i > 0:  # the first write creates the series (new-series delay)
                        out.append(time.perf_counter() - t0)
                    else:
                        print(f"new series queryable after {time.perf_counter() - t0:.2f} s")
                    break
                await asyncio.sleep(0.02)
            i += 1
            await asyncio.sleep(0.5)


async def load(url: str, batches: list[bytes], concurrency: int) -> tuple[float, int]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    accepted = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            result = await post(session, url, body)
            accepted += result["accepted"]

    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - t0, accepted


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace, url: str, vm_url: str, account: str, pid: int) -> None:
    batches = make_batches(args.events, args.batch, account, args.resources)
    warm = make_batches(2000, args.batch, f"{account}-warm", 500)
    await load(url, warm, 2)  # connections, caches, JIT-free but imports and plans warm
    stop = asyncio.Event()
    latencies: list[float] = []
    prober = asyncio.create_task(probe(url, vm_url, account, stop, latencies))
    await asyncio.sleep(12)  # the probe's rollup series exists before the measured run
    cpu0, own0 = cpu_seconds(pid), time.process_time()
    elapsed, accepted = await load(url, batches, args.concurrency)
    cpu, own = cpu_seconds(pid) - cpu0, time.process_time() - own0
    await asyncio.sleep(3)
    stop.set()
    await prober
    rate = accepted / elapsed
    print(
        f"events: {accepted} accepted in {elapsed:.2f} s -> {rate:,.0f} events/s (target >= 20,000)"
    )
    print(
        f"collector process CPU: {cpu:.1f} s for {accepted} events -> "
        f"{accepted / cpu:,.0f} events per CPU-second of the collector "
        f"(it got {cpu / elapsed:.0%} of a core; the rest went to PostgreSQL, VictoriaMetrics,"
        " this client and other work)"
    )
    print(f"load generator CPU during the run: {own:.1f} s")
    if rate < 20_000:
        print(f"TARGET MISSED: {rate:,.0f} events/s < 20,000")
    if latencies:
        lat = sorted(latencies)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(
            f"receipt -> queryable (existing rollup series, {len(lat)} probes during load): "
            f"p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
            f" max {lat[-1] * 1000:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    services = load_settings()
    admin_dsn, vm_url = services["postgres"]["dsn"], services["victoriametrics"]["url"]
    name = f"cct_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(dsn)
        with psycopg.connect(dsn) as conn:
            for sku, usd in PRICES.items():
                conn.execute(
                    "insert into price_catalog values"
                    " ('aws', %s, 'us-east-1', %s, 'hour', %s, 'bench', now())",
                    (EC2, sku, usd),
                )
        port = free_port()
        env = {
            "CCT_PG_DSN": dsn,
            "CCT_VM_URL": vm_url,
            "CCT_COLLECTOR_TOKEN": TOKEN,
            "CCT_COLLECTOR_HOST": "127.0.0.1",
            "CCT_COLLECTOR_PORT": str(port),
        }
        cct = str(Path(sys.executable).parent / "cct")
        log = Path(tempfile.gettempdir()) / f"{name}.log"
        account = f"bench-{uuid.uuid4().hex[:8]}"
        with running(
            [cct, "serve", "collector", "--log-level", "WARNING"],
            http_ready(f"http://127.0.0.1:{port}/healthz"),
            log,
            env=env,
        ) as proc:
            asyncio.run(run(args, f"http://127.0.0.1:{port}/ingest", vm_url, account, proc.pid))
        with psycopg.connect(dsn) as conn:
            events = conn.execute("select count(*) from resource_events").fetchone()
            inv = conn.execute("select count(*) from resource_inventory").fetchone()
        print(
            f"PostgreSQL: {events[0] if events else 0} resource_events rows,"
            f" {inv[0] if inv else 0} inventory rows"
        )
        print(
            f"machine: {os.cpu_count()} cores shared with PostgreSQL, VictoriaMetrics"
            " and other work"
        )
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


if __name__ == "__main__":
    main()
