"""The HTTP shell every long-running handler shares: `/healthz`, `/readyz`, `/metrics`, the bind
address, and a graceful shutdown on SIGTERM/SIGINT.

- `/healthz` (liveness): 200 while the process answers. A failing liveness probe restarts the
  pod, so it never depends on PostgreSQL, Kafka or VictoriaMetrics: a broker outage must not
  turn into a restart loop.
- `/readyz` (readiness): 200 when the handler can do its job now, else 503 with the reason in
  the body (`{"ready": false, "reason": "..."}`), so `cct status` and Kubernetes see why.
- `/metrics`: the handler's Prometheus registry.

These routes take no request body: one is refused at once (400, connection closed), so a slow
client cannot hold them. Endpoints that do read a body bound it with `edge.read_body`; every
connection's headers are bounded by the site's `header_timeout_s` (`edge.runner_options`).

Asyncio handlers add the routes to their application and run it with `serve_until_stopped`
(or inside `serving` next to their own loop); the detector, a synchronous loop, runs the same
application in a thread (`ThreadedShell`). SIGTERM stops accepting, lets in-flight requests
finish, then runs the apps' cleanup hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from lambdas.common.edge import runner_options

log = logging.getLogger("cct.http")

# Returns None when ready, else why not (a short sentence for operators).
NotReady = Callable[[], str | None]
# Extra fields of the /healthz and /readyz bodies (e.g. the admission webhook's policy set).
Details = Callable[[], dict[str, Any]]
# Kubernetes waits terminationGracePeriodSeconds (30 s by default) before SIGKILL; in-flight
# requests get most of it.
SHUTDOWN_TIMEOUT_S = 20.0


def always_ready() -> str | None:
    return None


def no_details() -> dict[str, Any]:
    return {}


def _refuse_body() -> web.Response:
    """These routes never read a body; not reading one that trickles in would leave the
    connection open for as long as the client likes."""
    response = web.json_response(
        {"error": "body_not_accepted", "message": "this endpoint takes no request body"},
        status=400,
        headers={"Connection": "close"},
    )
    response.force_close()
    return response


def add_ops_routes(
    app: web.Application,
    registry: CollectorRegistry,
    not_ready: NotReady = always_ready,
    details: Details = no_details,
) -> None:
    async def healthz(request: web.Request) -> web.Response:
        if request.body_exists:
            return _refuse_body()
        return web.json_response({"ok": True, "status": "ok", **details()})

    async def readyz(request: web.Request) -> web.Response:
        if request.body_exists:
            return _refuse_body()
        reason = not_ready()
        if reason is None:
            return web.json_response({"ready": True, **details()})
        return web.json_response({"ready": False, "reason": reason, **details()}, status=503)

    async def metrics(request: web.Request) -> web.Response:
        if request.body_exists:
            return _refuse_body()
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def ops_app(
    registry: CollectorRegistry,
    not_ready: NotReady = always_ready,
    details: Details = no_details,
) -> web.Application:
    app = web.Application()
    add_ops_routes(app, registry, not_ready, details)
    return app


@dataclass(frozen=True)
class Site:
    app: web.Application
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    # A connection that has not sent a request's headers by then is closed (slow clients).
    header_timeout_s: float = 10.0


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def signal_stop() -> asyncio.Event:
    """An event SIGTERM or SIGINT sets (call inside the running loop)."""
    stop = asyncio.Event()
    stop_on_signals(asyncio.get_running_loop(), stop)
    return stop


@contextlib.asynccontextmanager
async def serving(
    sites: Sequence[Site], *, shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S
) -> AsyncIterator[None]:
    """Bind every site for the duration of the block; on leaving it, stop accepting, let
    in-flight requests finish for up to `shutdown_timeout_s`, and run the apps' cleanup hooks.
    For handlers whose own loop (a Kafka consumer) runs inside the block."""
    runners: list[web.AppRunner] = []
    try:
        for site in sites:
            runner = web.AppRunner(
                site.app,
                access_log=None,
                shutdown_timeout=shutdown_timeout_s,
                **runner_options(site.header_timeout_s),
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, site.host, site.port, ssl_context=site.ssl_context).start()
            log.info("listening", extra={"host": site.host, "port": site.port})
        yield
        log.info("stopping")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def serve_until_stopped(
    sites: Sequence[Site],
    stop: asyncio.Event,
    *,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    on_started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Bind every site, run until `stop` is set, then shut down as `serving` does."""
    async with serving(sites, shutdown_timeout_s=shutdown_timeout_s):
        if on_started is not None:
            await on_started()
        await stop.wait()


class ThreadedShell:
    """The shell for a synchronous handler: the same routes, served from a thread with its own
    event loop, so the handler's main loop is never blocked by a scrape."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        not_ready: NotReady = always_ready,
        header_timeout_s: float = 10.0,
    ) -> None:
        self._app = ops_app(registry, not_ready)
        self._host, self._port = host, port
        self._header_timeout_s = header_timeout_s
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="http-shell", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()

            async def started() -> None:
                self._started.set()

            await serve_until_stopped(
                [Site(self._app, self._host, self._port, header_timeout_s=self._header_timeout_s)],
                self._stop,
                on_started=started,
            )

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to start(), which the main thread waits in
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError(f"HTTP shell did not bind {self._host}:{self._port}")
        if self._error is not None:
            raise RuntimeError(f"HTTP shell cannot bind {self._host}:{self._port}: {self._error}")

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=SHUTDOWN_TIMEOUT_S + 5)
