"""Bridge throughput: Alertmanager-shaped webhooks in, broker-acknowledged events out.

Runs the real `cct serve bridge` process against the local Kafka broker (a topic of its own)
and posts webhooks from concurrent clients, each answered only after the broker
acknowledged every event (acks=all, idempotent producer). Prints alerts/s for a few payload
shapes, the median of three rounds each, and checks every event arrived on the topic.

    .venv/bin/python -m benchmarks.bridge_throughput [--alerts 3000] [--concurrency 16]

The machine has 2 cores shared with other work: figures are noisy, compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from tests.routing.helpers import bridge_process, read_topic
from tests.support.services import load_settings


def webhook(prefix: str, start: int, count: int) -> bytes:
    alerts = [
        {
            "status": "firing",
            "labels": {
                "alertname": "CostAnomaly",
                "severity": "warning",
                "level": "resource",
                "resource_id": f"i-{prefix}-{n}",
            },
            "annotations": {"delta_usd_per_hour": "1.5", "summary": "step"},
            "startsAt": "2026-11-27T09:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"{prefix}{n:08d}",
        }
        for n in range(start, start + count)
    ]
    return json.dumps({"version": "4", "status": "firing", "alerts": alerts}).encode()


async def post_all(url: str, token: str, bodies: list[bytes], concurrency: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"bridge answered {resp.status}: {await resp.text()}")

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=3000, help="alerts per round")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    args = parser.parse_args()
    bootstrap = load_settings()["kafka"]["bootstrap"]
    run = uuid.uuid4().hex[:8]
    topic = f"cct.bench.bridge.{run}"
    total = 0
    print(
        f"bridge throughput: {args.alerts} alerts per round, {args.concurrency} clients, "
        f"Kafka {bootstrap} (acks=all, idempotent), median of 3 rounds"
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        bridge_process(Path(tmp), bootstrap, topic) as bridge,
    ):
        url = f"{bridge.url}/v1/alerts"
        # Warm-up: topic creation, connections, the producer's first metadata.
        asyncio.run(post_all(url, bridge.token, [webhook(f"w{run}", 0, 10)], 1))
        total += 10
        for per_request in (1, 10, 50):
            rates = []
            for round_no in range(3):
                prefix = f"{run}-{per_request}-{round_no}"
                bodies = [
                    webhook(prefix, start, per_request)
                    for start in range(0, args.alerts, per_request)
                ]
                elapsed = asyncio.run(post_all(url, bridge.token, bodies, args.concurrency))
                rates.append(args.alerts / elapsed)
                total += len(bodies) * per_request
            print(
                f"  {per_request:3d} alert(s)/webhook: median {statistics.median(rates):8.0f} "
                f"alerts/s  (rounds: {', '.join(f'{r:.0f}' for r in rates)})"
            )
        records = read_topic(bootstrap, topic, expected=total, timeout=60)
    unique = {r.key for r in records}
    print(f"  on the topic: {len(records)} records, {len(unique)} distinct keys, expected {total}")
    if len(unique) != total:
        raise SystemExit("events missing from the topic")


if __name__ == "__main__":
    main()
