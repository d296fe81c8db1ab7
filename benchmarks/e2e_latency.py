"""Latency from an alert posted to Alertmanager to its workflow submitted.

The whole path on real processes: a private Alertmanager 0.25 running the generated
configuration -> `cct serve bridge` -> the local Kafka broker -> `cct serve trigger` (policy
pre-check and run record in a fresh PostgreSQL database) -> the Argo backend creating the
Workflow on a fake Kubernetes API (Kubernetes cannot run here), which timestamps each create.
Two kinds of alert: one with new dimensions opens a new Alertmanager group (group_wait
applies); one with the dimensions of a firing group joins it (group_interval applies).
Prints p50/p90/p99/max of each and the Alertmanager timings used.

    .venv/bin/python -m benchmarks.e2e_latency [--alerts 60] [--interval 0.25]

The machine has 2 cores shared with other work: figures are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import yaml

from lambdas.alerting.config import AlertRoutingSettings, render_alertmanager_config
from lambdas.store.migrate import migrate
from tests.routing.helpers import (
    alertmanager_process,
    anomaly_alert,
    bridge_process,
    post_alerts,
    trigger_process,
    wait_until,
)
from tests.support.kafka import handler_env
from tests.support.services import load_settings
from tests.trigger.fake_kube import FakeKube


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between alerts")
    args = parser.parse_args()
    services = load_settings()
    bootstrap = services["kafka"]["bootstrap"]
    admin_dsn = services["postgres"]["dsn"]
    run = uuid.uuid4().hex[:8]
    database = f"cct_bench_{run}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{database}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
    try:
        migrate(dsn)
        measure(args.alerts, args.interval, bootstrap, dsn, run)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{database}" with (force)')


def measure(count: int, interval: float, bootstrap: str, dsn: str, run: str) -> None:
    topic = f"cct.test.bench.e2e.{run}"  # the handlers' local sandbox prefix
    with tempfile.TemporaryDirectory() as tmp, FakeKube("bench-token") as kube:
        work = Path(tmp)
        (work / "kube.token").write_text("bench-token")
        with bridge_process(work / "bridge", bootstrap, topic) as bridge:
            settings = AlertRoutingSettings(
                bridge_url=f"{bridge.url}/v1/alerts",
                zenduty_relay_url=f"{bridge.url}/v1/relay/zenduty",
                token_file=str(work / "bridge" / "bridge.token"),
            )
            config = render_alertmanager_config(settings)
            route = yaml.safe_load(config)["route"]
            env = {
                **handler_env(bootstrap, "trigger"),
                "CCT_PG_DSN": dsn,
                "CCT_TRIGGER_TOPIC": topic,
                "CCT_TRIGGER_DLQ_TOPIC": f"{topic}.dlq",
                "CCT_TRIGGER_GROUP": f"cct-trigger-bench-{run}",
                "CCT_TRIGGER_BACKEND": "argo",
                "CCT_TRIGGER_KUBE_API_URL": kube.url,
                "CCT_TRIGGER_KUBE_TOKEN_FILE": str(work / "kube.token"),
            }
            with (
                alertmanager_process(work / "am", config) as am,
                trigger_process(work / "trigger", env),
            ):
                # Warm-up: topic creation, group join, first connections on every hop.
                post_alerts(am, [anomaly_alert(f"{run}w")])
                wait_until(lambda: len(kube.created_at) == 1, 60, "the warm-up workflow")
                new_groups: dict[str, float] = {}
                for n in range(count):
                    resource = f"i-{run}-{n}"
                    new_groups[resource] = time.monotonic()
                    post_alerts(am, [anomaly_alert(f"{run}{n}", resource_id=resource)])
                    time.sleep(interval)
                wait_until(lambda: len(kube.created_at) == count + 1, 60, "every workflow")
                # Alerts joining a group that already exists (same dimensions, another rule
                # label) wait for the group's next group_interval tick. They share a resource,
                # so each carries its number in the delta annotation, which comes back as the
                # workflow's estimated-monthly-impact-usd parameter.
                joined: dict[str, float] = {}
                shared = f"i-{run}-shared"
                for n in range(count):
                    alert = anomaly_alert(f"{run}j{n}", resource_id=shared, rule=f"r{n}")
                    delta = 1 + n / 100
                    alert["annotations"]["delta_usd_per_hour"] = f"{delta:.2f}"
                    joined[f"{delta * 730:.2f}"] = time.monotonic()
                    post_alerts(am, [alert])
                    time.sleep(interval)
                wait_until(lambda: len(kube.created_at) == 2 * count + 1, 60, "every workflow")
    first: list[float] = []
    later: list[float] = []
    for (_, name), obj in kube.objects.items():
        params = {p["name"]: p["value"] for p in obj["spec"]["arguments"]["parameters"]}
        created = kube.created_at[name]
        if params["resource-id"] in new_groups:
            first.append((created - new_groups[params["resource-id"]]) * 1000)
        elif params["resource-id"] == shared:
            later.append((created - joined[params["estimated-monthly-impact-usd"]]) * 1000)
    print(f"alert posted to Alertmanager -> Workflow created (one alert every {interval}s)")
    print(
        f"  Alertmanager timings: group_wait={route['group_wait']} "
        f"group_interval={route['group_interval']} repeat_interval={route['repeat_interval']}"
    )
    report("alert opening a new group", first)
    report("alert joining an existing group", later)


def report(what: str, latencies: list[float]) -> None:
    print(
        f"  {what} ({len(latencies)}): p50 {percentile(latencies, 0.5):.1f} ms"
        f"  p90 {percentile(latencies, 0.9):.1f}  p99 {percentile(latencies, 0.99):.1f}"
        f"  max {max(latencies):.1f}  mean {statistics.fmean(latencies):.1f}"
    )


if __name__ == "__main__":
    main()
