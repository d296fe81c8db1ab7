"""The shared HTTP shell on real sockets: liveness, readiness with its reason, metrics, and a
graceful stop, for both the asyncio handlers and the threaded detector."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from lambdas.common.httpshell import Site, ThreadedShell, ops_app, serve_until_stopped
from tests.support.procs import free_port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return 0, b""


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("cct_test_things", "Things.", registry=registry).inc(3)
    return registry


def test_threaded_shell_answers_and_stops() -> None:
    state: dict[str, str | None] = {"why": "history not loaded yet"}
    port = free_port()
    shell = ThreadedShell(_registry(), "127.0.0.1", port, lambda: state["why"])
    shell.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert _get(f"{base}/healthz")[0] == 200
        status, body = _get(f"{base}/readyz")
        assert status == 503
        assert json.loads(body) == {"ready": False, "reason": "history not loaded yet"}
        state["why"] = None
        assert _get(f"{base}/readyz")[0] == 200
        status, body = _get(f"{base}/metrics")
        assert status == 200 and b"cct_test_things_total 3.0" in body
        assert _get(f"{base}/nope")[0] == 404
    finally:
        shell.stop()
    assert _get(f"{base}/healthz")[0] == 0  # nothing listens any more


def test_threaded_shell_names_a_port_it_cannot_bind() -> None:
    port = free_port()
    first = ThreadedShell(_registry(), "127.0.0.1", port)
    first.start()
    try:
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}"):
            ThreadedShell(_registry(), "127.0.0.1", port).start()
    finally:
        first.stop()


async def test_serve_until_stopped_runs_cleanup_hooks() -> None:
    port = free_port()
    app = ops_app(_registry())
    cleaned: list[str] = []

    async def cleanup(_: object) -> None:
        cleaned.append("done")

    app.on_cleanup.append(cleanup)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_until_stopped([Site(app, "127.0.0.1", port)], stop))
    for _ in range(100):
        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    stop.set()
    await asyncio.wait_for(task, 30)
    assert cleaned == ["done"]
