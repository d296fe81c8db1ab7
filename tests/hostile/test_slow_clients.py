"""Slow clients against every HTTP endpoint, each a real `cct serve` process: a client that
sends its headers or its body one byte at a time has its connection closed by the server
long before it finishes. An endpoint that reads a body answers a slow one with a 408; the
shared shell's /healthz, /readyz and /metrics take no body and refuse one at once (400). The
time each took is printed; nothing here asserts a timing beyond "before the client
finished"."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.admission.support import (
    Tls,
    client_context,
    make_tls,
    policies_for_now,
    serve_admission,
)
from tests.ingest.conftest import TOKEN
from tests.routing.helpers import bridge_process
from tests.support.procs import free_port, http_ready, running
from tests.support.slow import post_head, slow_request

# Short limits so the tests are quick; the client would need minutes to finish.
TIMEOUT_S = "2"
INTERVAL_S = 0.5
BODY = json.dumps([{"provider": "aws", "event": {"x": "y" * 300}}]).encode()


@contextmanager
def collector(tmp_path: Path, pg_dsn: str, vm_url: str) -> Iterator[int]:
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {
        "CCT_PG_DSN": pg_dsn,
        "CCT_VM_URL": vm_url,
        "CCT_COLLECTOR_TOKEN_FILE": str(token_file),
        "CCT_COLLECTOR_HOST": "127.0.0.1",
        "CCT_COLLECTOR_PORT": str(port),
        "CCT_COLLECTOR_HEADER_TIMEOUT_S": TIMEOUT_S,
        "CCT_COLLECTOR_BODY_TIMEOUT_S": TIMEOUT_S,
    }
    cct = str(Path(sys.executable).parent / "cct")
    with running(
        [cct, "serve", "collector"],
        http_ready(f"http://127.0.0.1:{port}/healthz"),
        tmp_path / "collector.log",
        env=env,
    ):
        yield port


OPS = ("/healthz", "/readyz", "/metrics")


def get_head(path: str, length: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n".encode()


def check_ops(name: str, port: int, tls: object = None) -> None:
    """Every shell route, with slow headers and with a (slow) body it does not take."""
    for path in OPS:
        check(f"{name} {path}", "headers", port, get_head(path, len(BODY)), tls=tls)
        check(f"{name} {path}", "body", port, get_head(path, len(BODY)), tls=tls, answer=b"400")


def check(
    name: str,
    slow: str,
    port: int,
    head: bytes,
    *,
    tls: object = None,
    answer: bytes = b"408",
) -> None:
    result = slow_request(
        port,
        head,
        BODY,
        slow=slow,
        interval_s=INTERVAL_S,
        tls=tls,  # type: ignore[arg-type]
    )
    total = len(head) + len(BODY)
    print(
        f"{name}: slow {slow} closed by the server after {result.seconds:.1f} s, "
        f"{result.sent} of {total} bytes sent"
    )
    assert result.closed, f"{name}: the server kept a slow {slow} client for {result.seconds} s"
    assert result.sent < total
    if slow == "body":
        assert result.answer.startswith(b"HTTP/1.1 " + answer), result.answer[:200]


@pytest.mark.parametrize("slow", ["headers", "body"])
def test_collector_closes_slow_clients(tmp_path: Path, pg_dsn: str, vm_url: str, slow: str) -> None:
    with collector(tmp_path, pg_dsn, vm_url) as port:
        # Slow headers are closed before authentication could even be checked.
        head = post_head("/ingest", len(BODY), TOKEN if slow == "body" else None)
        check("collector", slow, port, head)
        check("collector /ingest/{tag}", slow, port, post_head("/ingest/cct.aws", len(BODY), TOKEN))


def test_collector_shell_closes_slow_clients(tmp_path: Path, pg_dsn: str, vm_url: str) -> None:
    with collector(tmp_path, pg_dsn, vm_url) as port:
        check_ops("collector", port)


@pytest.mark.parametrize("slow", ["headers", "body"])
def test_bridge_closes_slow_clients(tmp_path: Path, kafka_bootstrap: str, slow: str) -> None:
    env = {"CCT_BRIDGE_HEADER_TIMEOUT_S": TIMEOUT_S, "CCT_BRIDGE_BODY_TIMEOUT_S": TIMEOUT_S}
    with bridge_process(tmp_path, kafka_bootstrap, "cct.test.slow", extra_env=env) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        for path in ("/v1/alerts", "/v1/relay/zenduty"):
            check(f"bridge {path}", slow, port, post_head(path, len(BODY), bridge.token))
        if slow == "body":
            check_ops("bridge", port)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("slow", ["headers", "body"])
def test_admission_closes_slow_clients(tmp_path: Path, pg_dsn: str, tls: Tls, slow: str) -> None:
    policy_dir = policies_for_now(tmp_path / "policies")
    env = {"CCT_ADMISSION_HEADER_TIMEOUT_S": TIMEOUT_S, "CCT_ADMISSION_REQUEST_TIMEOUT_S": "2"}
    with serve_admission(tmp_path, pg_dsn, policy_dir, tls, **env) as hook:
        # Slow after a completed mutual-TLS handshake (only the API server's certificate
        # gets that far).
        context = client_context(tls, tls.apiserver)
        check("admission", slow, hook.port, post_head("/validate", len(BODY)), tls=context)
        if slow == "body":
            check_ops("admission ops", hook.metrics_port)


def test_trigger_closes_slow_clients(
    tmp_path: Path, kafka_bootstrap: str, pg_dsn: str, uid: str
) -> None:
    from tests.trigger.fake_kube import FakeKube
    from tests.trigger.test_service import TOKEN as KUBE_TOKEN
    from tests.trigger.test_service import trigger_env, trigger_process

    with FakeKube(KUBE_TOKEN) as kube:
        env = trigger_env(tmp_path, kube, kafka_bootstrap, pg_dsn, uid)
        env["CCT_TRIGGER_HEADER_TIMEOUT_S"] = TIMEOUT_S
        with trigger_process(tmp_path, env) as trigger:
            port = int(trigger.metrics_url.rsplit(":", 1)[1].split("/")[0])
            check_ops("trigger", port)


def test_detector_closes_slow_clients(
    tmp_path: Path, vm_url: str, alertmanager_url: str, pg_dsn: str
) -> None:
    port = free_port()
    env = {
        "CCT_VM_URL": vm_url,
        "CCT_ALERTMANAGER_URL": alertmanager_url,
        "CCT_PG_DSN": pg_dsn,
        "CCT_DETECTOR_PORT": str(port),
        # Nothing matches: the process only serves its shell here.
        "CCT_DETECTOR_SELECTOR": 'billing_account_id="no-such-account"',
        "CCT_DETECTOR_BOOTSTRAP_HOURS": "0",
        "CCT_DETECTOR_HEADER_TIMEOUT_S": TIMEOUT_S,
    }
    cct = str(Path(sys.executable).parent / "cct")
    with running(
        [cct, "serve", "detector"],
        http_ready(f"http://127.0.0.1:{port}/healthz"),
        tmp_path / "detector.log",
        env=env,
    ):
        check_ops("detector", port)


@pytest.mark.parametrize("slow", ["headers", "body"])
def test_vault_dev_closes_slow_clients(
    tmp_path: Path, pg_dsn: str, moto_url: str, slow: str
) -> None:
    from tests.vaultdev.test_server import _start

    env = {"CCT_VAULTDEV_HEADER_TIMEOUT_S": TIMEOUT_S, "CCT_VAULTDEV_BODY_TIMEOUT_S": TIMEOUT_S}
    for stand in _start(tmp_path, pg_dsn, moto_url, **env):
        port = int(stand.url.rsplit(":", 1)[1])
        for path in ("/v1/auth/kubernetes/login", "/v1/sys/leases/renew"):
            check(f"vault-dev {path}", slow, port, post_head(path, len(BODY)))
        if slow == "body":
            check_ops("vault-dev", port)
