"""A Zenduty-compatible receiver for the local stack: it plays Zenduty's Alertmanager
integration endpoint and records every page instead of calling a person.

Zenduty's Alertmanager integration is a webhook URL that carries the integration key in its
path (`/api/integration/alertmanager/<key>/`) and takes Alertmanager's webhook payload
(version 4: `status`, `alerts[]` with `labels`, `annotations`, `startsAt`, `fingerprint`).
The bridge relays critical groups there unchanged (lambdas/alerting/config.py). This receiver
answers like the integration does: 200 for a known key and a well-formed payload, 404 for an
unknown key, 400 for a body that is not an Alertmanager payload. Each accepted alert is one
JSON line in the pages file; `GET /pages` lists them for `cct status` and the system test.

    python -m lambdas.devstack.zenduty --port 18086 --key-file K --pages-file P
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web

PATH_PREFIX = "/api/integration/alertmanager/"
MAX_BODY_BYTES = 4 * 1024 * 1024


def integration_url(base: str, key: str) -> str:
    """The URL Zenduty shows for an Alertmanager integration, on `base`."""
    return f"{base.rstrip('/')}{PATH_PREFIX}{key}/"


def payload_problem(doc: Any) -> str | None:
    """Why a body is not an Alertmanager webhook payload (None: it is one)."""
    if not isinstance(doc, dict):
        return "body is not a JSON object"
    alerts = doc.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        return "alerts must be a non-empty list"
    for alert in alerts:
        if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
            return "every alert needs a labels object"
        if alert.get("status") not in ("firing", "resolved"):
            return "every alert needs status firing or resolved"
    return None


class Receiver:
    def __init__(self, key: str, pages_file: Path) -> None:
        self.key = key
        self.pages_file = pages_file
        self.rejected = 0

    async def integration(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if not hmac.compare_digest(key.encode(), self.key.encode()):
            self.rejected += 1
            return web.json_response({"detail": "integration not found"}, status=404)
        body = await request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            self.rejected += 1
            return web.json_response({"detail": "payload too large"}, status=413)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        problem = payload_problem(doc)
        if problem:
            self.rejected += 1
            return web.json_response({"detail": problem}, status=400)
        received = time.time()
        with self.pages_file.open("a") as fh:
            for alert in doc["alerts"]:
                page = {
                    "received_at": received,
                    "status": alert["status"],
                    "alert_type": alert["labels"].get("severity", "info"),
                    "message": alert.get("annotations", {}).get("summary", ""),
                    "entity_id": alert.get("fingerprint", ""),
                    "labels": alert["labels"],
                }
                fh.write(json.dumps(page, sort_keys=True) + "\n")
        return web.json_response({"message": "alerts received", "count": len(doc["alerts"])})

    async def pages(self, _: web.Request) -> web.Response:
        lines = self.pages_file.read_text().splitlines() if self.pages_file.exists() else []
        return web.json_response([json.loads(line) for line in lines if line.strip()])

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "rejected": self.rejected})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(PATH_PREFIX + "{key}/", self.integration)
        app.router.add_get("/pages", self.pages)
        app.router.add_get("/healthz", self.healthz)
        return app


async def _serve(receiver: Receiver, host: str, port: int) -> None:
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--pages-file", type=Path, required=True)
    args = parser.parse_args(argv)
    key = args.key_file.read_text().strip()
    if not key:
        raise SystemExit(f"--key-file {args.key_file} is empty")
    args.pages_file.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(Receiver(key, args.pages_file), args.host, args.port))


if __name__ == "__main__":
    main()
