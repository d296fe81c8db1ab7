"""The detector's alerts reach every replica of a clustered Alertmanager.

Alertmanager replicas gossip silences and the notification log, not alerts: a client must send
every alert to every replica. Posted through one Service address, each post reached one random
replica, so a resolve or an escalation left the other replicas firing the old alert, and the
bridge saw resolved/firing flaps. Here two real Alertmanagers run clustered on loopback (each
one's `--cluster.peer` is the other), and the real detector, on the real VictoriaMetrics and
PostgreSQL, is given both URLs in CCT_ALERTMANAGER_URL's list form.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from lambdas.common import settings as env
from lambdas.detector.alerts import Alertmanager, AlertmanagerError
from lambdas.detector.service import Detector, DetectorSettings
from tests.detector.test_live import Account, am_alerts, wait_for, watching
from tests.support.procs import free_port, http_ready, running

CONFIG = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


class Cluster:
    """Two Alertmanagers gossiping with each other on loopback; either may be stopped and
    started again on the same ports."""

    def __init__(self, workdir: Path, size: int = 2) -> None:
        self.workdir = workdir
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(CONFIG)
        self.ports = [(free_port(), free_port()) for _ in range(size)]
        self.urls = [f"http://127.0.0.1:{web}" for web, _ in self.ports]
        self.replicas: dict[int, ExitStack] = {}

    def start(self, i: int) -> None:
        web, gossip = self.ports[i]
        peers = [f"--cluster.peer=127.0.0.1:{p}" for n, (_, p) in enumerate(self.ports) if n != i]
        stack = ExitStack()
        stack.enter_context(
            running(
                [
                    "prometheus-alertmanager",
                    f"--config.file={self.config}",
                    f"--storage.path={self.workdir / f'am{i}'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                    f"--cluster.listen-address=127.0.0.1:{gossip}",
                    f"--cluster.advertise-address=127.0.0.1:{gossip}",
                    *peers,
                    "--cluster.reconnect-interval=1s",
                    "--log.level=info",
                ],
                http_ready(f"{self.urls[i]}/-/ready"),
                self.workdir / f"am{i}.log",
                timeout=60,
            )
        )
        self.replicas[i] = stack

    def stop(self, i: int) -> None:
        self.replicas.pop(i).close()

    def peers(self, i: int) -> int:
        with urllib.request.urlopen(f"{self.urls[i]}/api/v2/status", timeout=5) as resp:
            status = json.loads(resp.read())
        return len(status["cluster"].get("peers") or [])

    def wait_clustered(self) -> None:
        def clustered() -> bool:
            return all(self.peers(i) == len(self.urls) for i in range(len(self.urls)))

        wait_for(clustered, "every replica to see its peers")

    def close(self) -> None:
        for i in list(self.replicas):
            self.stop(i)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for i in range(len(c.urls)):
            c.start(i)
        c.wait_clustered()
        yield c
    finally:
        c.close()


@pytest.fixture
def account(vm: Any, uid: str) -> Account:
    return Account(vm, uid)


@pytest.fixture
def detector(cluster: Cluster, account: Account, vm_url: str, pg_dsn: str) -> Iterator[Detector]:
    # No resend within a test: what reaches a replica is what the cycles post.
    urls = ",".join(cluster.urls)
    d = Detector(watching(account, vm_url, urls, pg_dsn, resend_s=3600.0, alert_ttl_s=7200.0))
    yield d
    d.close()


def _state(cluster: Cluster, account: Account) -> list[dict[str, str]]:
    """Per replica: the active alerts of the account's team, fingerprint -> severity."""
    return [
        {
            a["fingerprint"]: a["labels"]["severity"]
            for a in am_alerts(url, team=account.team, source="detector")
        }
        for url in cluster.urls
    ]


def _fingerprints(url: str, account: Account) -> set[str]:
    """The account's active alerts at one replica (a team-level one has no account label)."""
    alerts = am_alerts(url, billing_account_id=account.account) + am_alerts(url, team=account.team)
    return {a["fingerprint"] for a in alerts}


def test_an_escalation_and_a_resolve_reach_every_replica(
    cluster: Cluster, detector: Detector, account: Account
) -> None:
    account.write(100.0)
    # Series already there at a start are judged from their second value on.
    detector.cycle(time.time())
    detector.cycle(time.time())
    account.write(130.0)  # +30 $/h: a warning
    [opened] = [t for t in detector.cycle(time.time()) if t.key.level == "team"]
    assert opened.kind == "opened"
    first, second = _state(cluster, account)
    assert list(first.values()) == ["warning"] and first == second

    account.write(300.0)  # critical: the warning is resolved and the critical one posted
    [escalated] = [t for t in detector.cycle(time.time()) if t.key.level == "team"]
    assert (escalated.kind, escalated.severity) == ("escalated", "critical")
    first, second = _state(cluster, account)
    assert list(first.values()) == ["critical"] and first == second

    account.write(100.0)
    detector.cycle(time.time())
    resolved = [t for t in detector.cycle(time.time()) if t.key.level == "team"]
    assert [t.kind for t in resolved] == ["resolved"]
    assert _state(cluster, account) == [{}, {}]
    assert detector.metrics.replica_errors._metrics == {}  # no replica failed


def test_with_a_replica_down_alerts_are_delivered_and_it_catches_up(
    cluster: Cluster, detector: Detector, account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    up, down = cluster.urls
    cluster.stop(1)
    account.write(100.0)
    detector.cycle(time.time())
    detector.cycle(time.time())
    account.write(250.0)
    with caplog.at_level(logging.INFO, logger="cct.detector"):
        assert detector.cycle(time.time())
    posted = detector.metrics.posted._value.get()
    assert posted > 0 and len(detector.unsent) == 0  # delivered: one replica took them
    assert detector.metrics.errors.labels("alertmanager")._value.get() == 0
    assert detector.metrics.replica_errors.labels(down)._value.get() == 1
    assert detector.metrics.replica_errors._metrics.keys() == {(down,)}
    [failing] = [r for r in caplog.records if r.getMessage() == "alertmanager replica failing"]
    assert failing.__dict__["replica"] == down
    wanted = _fingerprints(up, account)
    assert len(wanted) == posted

    # Back (with nothing of the alerts: they are not gossiped), it gets what it missed with
    # the next cycle, though nothing new is posted then.
    cluster.start(1)
    cluster.wait_clustered()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cct.detector"):
        assert detector.cycle(time.time()) == []
    assert _fingerprints(down, account) == wanted
    assert [r.__dict__["replica"] for r in caplog.records if "recovered" in r.getMessage()] == [
        down
    ]
    assert detector.metrics.posted._value.get() == posted
    assert detector.metrics.replica_errors.labels(down)._value.get() == 1


# ------------------------------------------------------------- answers that are not answers
class _Canned(socketserver.ThreadingTCPServer):
    """Reads one request per connection and answers with `reply` (raw bytes), then closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


class _CannedHandler(socketserver.StreamRequestHandler):
    server: _Canned

    def handle(self) -> None:
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        self.rfile.read(length)
        self.wfile.write(self.server.reply)


def _answer(body: bytes, length: int | None = None) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body) if length is None else length}\r\n"
    return head.encode() + b"Content-Type: application/json\r\nConnection: close\r\n\r\n" + body


BROKEN = {
    # Fewer bytes than announced: http.client.IncompleteRead, which escaped and ended the
    # detector.
    "cut short": _answer(b"[]", length=100),
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n",
    "no answer": b"",
}
GARBLED = {
    "not JSON": _answer(b"<html>proxy error</html>"),
    "not UTF-8": _answer(b'["\xff\xfe"]'),
    "not a list": _answer(b'{"alerts": []}'),
}
ALERT = {"labels": {"alertname": "CostAnomaly", "test": "replicas"}, "annotations": {}}


@pytest.fixture
def canned() -> Iterator[Callable[[bytes], _Canned]]:
    servers: list[_Canned] = []

    def start(reply: bytes) -> _Canned:
        servers.append(_Canned(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("reply", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_answer_is_a_retryable_alertmanager_error(
    canned: Callable[[bytes], _Canned], reply: bytes
) -> None:
    url = canned(reply).url
    with pytest.raises(AlertmanagerError) as raised:
        Alertmanager(url, timeout=2).post([ALERT])
    assert raised.value.retryable and url in str(raised.value)
    with pytest.raises(AlertmanagerError):
        Alertmanager(url, timeout=2).alerts()


@pytest.mark.parametrize("reply", GARBLED.values(), ids=GARBLED.keys())
def test_a_garbled_list_of_alerts_is_an_alertmanager_error(
    canned: Callable[[bytes], _Canned], reply: bytes
) -> None:
    with pytest.raises(AlertmanagerError) as raised:
        Alertmanager(canned(reply).url, timeout=2).alerts()
    assert raised.value.retryable


def test_one_broken_replica_is_counted_and_the_others_answer(
    canned: Callable[[bytes], _Canned],
) -> None:
    good, broken = canned(_answer(b"[]")).url, canned(BROKEN["cut short"]).url
    failed: list[str] = []
    client = Alertmanager(
        [broken, good], timeout=2, on_replica_error=lambda url, _: failed.append(url)
    )
    client.post([ALERT])
    assert failed == [broken]
    assert list(client.missed[broken].values()) == [ALERT] and not client.missed[good]
    assert client.alerts() == []  # the first replica that answers


def test_nobody_took_it_is_a_refusal_when_one_replica_refused(
    canned: Callable[[bytes], _Canned],
) -> None:
    """A refusal makes the detector post the alerts one by one, so one bad alert cannot hold
    back the others while another replica is down; only failures alone are retried whole."""
    refused = canned(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").url
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AlertmanagerError) as raised:
        Alertmanager([refused, down], timeout=2).post([ALERT])
    assert not raised.value.retryable
    client = Alertmanager([down, f"http://127.0.0.1:{free_port()}"], timeout=2)
    with pytest.raises(AlertmanagerError) as raised:
        client.post([ALERT])
    assert raised.value.retryable
    assert all(not m for m in client.missed.values())  # the caller keeps the batch


# ------------------------------------------------------------------------------- the setting
def test_the_setting_takes_one_url_or_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCT_ALERTMANAGER_URL", "http://a:9093/")
    assert env.alertmanager_url() == "http://a:9093"
    monkeypatch.setenv("CCT_ALERTMANAGER_URL", " http://a-0.h:9093, http://a-1.h:9093/ ")
    assert env.alertmanager_urls(env.alertmanager_url()) == (
        "http://a-0.h:9093",
        "http://a-1.h:9093",
    )


@pytest.mark.parametrize(
    "value",
    ["", "http://a:9093,", "a:9093", "ftp://a", "http://a:99999", "http://a,http://a"],
)
def test_a_bad_url_list_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CCT_ALERTMANAGER_URL", value or ",")
    with pytest.raises(env.SettingsError, match="CCT_ALERTMANAGER_URL"):
        env.alertmanager_url()
    with pytest.raises(env.SettingsError, match="CCT_ALERTMANAGER_URL"):
        DetectorSettings(vm_url="http://vm", alertmanager_url=value, pg_dsn="postgresql://x")


def test_a_password_in_a_url_is_refused_and_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCT_ALERTMANAGER_URL", "http://am:hunter2@a:9093")
    with pytest.raises(env.SettingsError) as raised:
        env.alertmanager_url()
    assert "hunter2" not in str(raised.value)
