"""The bridge's /readyz (the shared shell) says why it cannot produce: a `cct serve bridge`
whose brokers do not answer is alive (/healthz 200) but not ready, with the reason."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

from tests.routing.helpers import bridge_process
from tests.support.procs import free_port


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_names_an_unreachable_broker(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    env = {"CCT_BRIDGE_PRODUCE_TIMEOUT_S": "1"}
    with bridge_process(tmp_path, nobody, "cct.test.ready", extra_env=env) as bridge:
        assert _get(f"{bridge.url}/healthz")[0] == 200
        status, body = _get(f"{bridge.url}/readyz")
        assert status == 503
        assert body["ready"] is False
        assert str(body["reason"]).startswith("Kafka unreachable: ")


def test_readyz_is_ready_with_a_broker(tmp_path: Path, kafka_bootstrap: str) -> None:
    with bridge_process(tmp_path, kafka_bootstrap, "cct.test.ready") as bridge:
        assert _get(f"{bridge.url}/readyz") == (200, {"ready": True})


def test_sigterm_stops_the_bridge_cleanly(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The shell's graceful stop: SIGTERM closes the listener, runs the cleanup (the producer
    is flushed and closed) and the process exits 0."""
    with bridge_process(tmp_path, kafka_bootstrap, "cct.test.ready") as bridge:
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.proc.wait(timeout=30) == 0
    log = (tmp_path / "bridge.log").read_text()
    assert "stopping" in log
