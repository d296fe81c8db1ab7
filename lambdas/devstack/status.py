"""`cct status`: each part of the local stack, its health and how far behind it is.

Reads `.local/stack.json` (written by `make up`). One line per part: ready or not (each
handler's /readyz, with the reason it gives when it is not), and the figure that says whether
it keeps up: the trigger's consumer lag, the newest alert in
Alertmanager, the pages at the Zenduty receiver, the newest resource event the collector
stored, the workflow runs by state. Exits 1 when any part is unhealthy.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from lambdas import contract
from lambdas.devstack.stack import LOGS, STACK_FILE, pid_of


def _get(url: str) -> tuple[bool, Any]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - loopback
            body = resp.read()
            ok = 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False, None
    try:
        return ok, json.loads(body)
    except ValueError:
        return ok, body.decode(errors="replace")


def _ago(ts: datetime | float | None) -> str:
    if ts is None:
        return "never"
    seconds = time.time() - (ts.timestamp() if isinstance(ts, datetime) else ts)
    return f"{seconds:.0f}s ago"


def trigger_lag(bootstrap: str, group: str = "cct-trigger") -> int | None:
    """Records of the anomalies topic the trigger's group has not committed yet."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from lambdas.devstack.stack import admin_kafka

    kwargs = {**admin_kafka(), "bootstrap_servers": bootstrap}

    async def lag() -> int:
        admin = AIOKafkaAdminClient(**kwargs)
        consumer = AIOKafkaConsumer(**kwargs)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            parts = consumer.partitions_for_topic(contract.TOPIC_ANOMALIES) or set()
            tps = [TopicPartition(contract.TOPIC_ANOMALIES, p) for p in parts]
            ends = await consumer.end_offsets(tps)
            total = 0
            for tp in tps:
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                total += max(0, ends[tp] - done)
            return total
        finally:
            await consumer.stop()
            await admin.close()

    try:
        return asyncio.run(asyncio.wait_for(lag(), 10))
    except Exception:  # any broker problem is shown as "unknown", never a crash
        return None


def _pg(dsn: str) -> dict[str, Any] | None:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            events = conn.execute(
                "select count(*), max(received_at) from resource_events"
            ).fetchone()
            runs = conn.execute(
                "select state, count(*) from optimization_runs group by state order by state"
            ).fetchall()
            open_anomalies = conn.execute(
                "select count(*) from anomalies where resolved_at is null"
            ).fetchone()
    except psycopg.Error:
        return None
    return {
        "events": events[0] if events else 0,
        "last_event": events[1] if events else None,
        "runs": dict(runs),
        "open_anomalies": open_anomalies[0] if open_anomalies else 0,
    }


def _readiness(answer: Any) -> str:
    """Why a part is not ready, from its /readyz body (lambdas.common.httpshell)."""
    if isinstance(answer, dict) and answer.get("reason"):
        return f"; not ready: {answer['reason']}"
    return "; not answering" if answer is None else ""


def lines(doc: dict[str, Any]) -> list[tuple[str, bool, str]]:
    svc = doc["services"]
    parts = doc["parts"]
    out: list[tuple[str, bool, str]] = []
    pg = _pg(svc["postgres"]["dsn"])
    out.append(
        (
            "postgres",
            pg is not None,
            f"{svc['postgres']['port']}; open anomalies {pg['open_anomalies']}" if pg else "",
        )
    )
    checks: dict[str, Callable[[], tuple[bool, str]]] = {
        "victoriametrics": lambda: (_get(f"{svc['victoriametrics']['url']}/health")[0], ""),
        "vmalert": lambda: (_get(f"{svc['vmalert']['url']}/health")[0], ""),
        "moto": lambda: (_get(f"{svc['moto']['url']}/moto-api/")[0], ""),
    }
    for name, check in checks.items():
        ok, extra = check()
        out.append((name, ok, f"{svc[name]['url']} {extra}".strip()))
    ok, alerts = _get(f"{svc['alertmanager']['url']}/api/v2/alerts")
    if ok and isinstance(alerts, list):
        newest = max((a["startsAt"] for a in alerts), default=None)
        started = datetime.fromisoformat(newest.replace("Z", "+00:00")) if newest else None
        detail = f"{len(alerts)} active alerts, newest started {_ago(started)}"
    else:
        detail = ""
    out.append(("alertmanager", ok, detail))
    lag = trigger_lag(svc["kafka"]["bootstrap"])
    out.append(("kafka", lag is not None, svc["kafka"]["bootstrap"]))
    for name, part in parts.items():
        healthy, answer = _get(part["health"])
        detail = f"pid {pid_of(name) or '-'}" + _readiness(answer)
        if name == "trigger":
            detail += f"; consumer lag {lag if lag is not None else 'unknown'}"
            if pg:
                detail += "; runs " + (
                    ", ".join(f"{k} {v}" for k, v in pg["runs"].items()) or "none"
                )
        elif name == "collector" and pg:
            detail += f"; {pg['events']} resource events, newest {_ago(pg['last_event'])}"
        elif name == "zenduty":
            _, pages = _get(part["pages"])
            if isinstance(pages, list):
                last = max((p["received_at"] for p in pages), default=None)
                detail += f"; {len(pages)} pages, newest {_ago(last)}"
        elif name in ("azure", "gcp"):
            detail += "; " + simulator_detail(part["metrics"])
        elif name == "billing":
            detail += "; " + billing_detail(part["status"])
        out.append((name, healthy, detail))
    return out


def simulator_detail(metrics_url: str) -> str:
    """How many provider events the simulator pushed to its forwarder, and how many wait."""
    ok, text = _get(metrics_url)
    if not ok or not isinstance(text, str):
        return "metrics unknown"
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if 'kind="delivery"' in line:
            counts[line.split('event="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    pending = counts.get("queued", 0) - counts.get("delivered", 0) - counts.get("rejected", 0)
    return (
        f"{counts.get('delivered', 0):.0f} events through the forwarder, {pending:.0f} pending,"
        f" {counts.get('retried', 0):.0f} retries, {counts.get('rejected', 0):.0f} rejected"
    )


def billing_detail(status_url: str) -> str:
    """The billing loader's last run: when, why, how each delivery went; the next one."""
    ok, doc = _get(status_url)
    if not ok or not isinstance(doc, dict):
        return "status unknown"
    last = doc.get("last_run")
    nxt = f"next scheduled run in {doc.get('next_scheduled_in_s', 0):.0f}s"
    if not last:
        return f"no run yet; drop exports in {doc.get('drop_dir')}/<format>/; {nxt}"
    outcomes = last.get("outcomes") or []
    failed = [o["delivery"] for o in outcomes if o.get("exit_code")]
    result = f"{len(outcomes)} deliveries" + (f", FAILED {', '.join(failed)}" if failed else " ok")
    return f"last run {_ago(last.get('finished_at'))} ({last.get('trigger')}): {result}; {nxt}"


@click.command("status")
def status() -> None:
    """Health and lag of every part of the local stack (`make up`)."""
    if not STACK_FILE.exists():
        raise click.ClickException(f"{STACK_FILE} is missing: run `make up` first")
    doc = json.loads(STACK_FILE.read_text())
    bad = 0
    for name, ok, detail in lines(doc):
        bad += not ok
        click.echo(f"{name:16} {'healthy' if ok else 'DOWN':8} {detail}")
    click.echo(f"logs in {LOGS}; stack in {STACK_FILE}")
    if bad:
        raise SystemExit(1)
