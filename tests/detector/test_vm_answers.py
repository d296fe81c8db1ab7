"""What VictoriaMetrics (or a proxy in front of it) may answer besides a query result: an
HTML error page with status 200, a body cut short of its Content-Length, label bytes that are
not UTF-8, rows of the wrong shape, a partial answer of the cluster version. Found in review:
each escaped the client as something other than VMError (or, the partial answer, was read as
the whole) and `cct serve detector` exited (status 1), losing its queued resolves and
reloading its history at every restart."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lambdas.common.vm import VictoriaMetrics, VMError
from lambdas.detector.service import Vector, parse_vector
from tests.support.procs import free_port, running

GOOD = b'{"status":"success","data":{"resultType":"vector","result":[]}}'


class FakeVM:
    """A stand-in that answers every request with the bytes of its current mode."""

    def __init__(self) -> None:
        self.mode = "html"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if fake.mode == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"status":"success","data":{"result')
                    self.close_connection = True
                    return
                body = {
                    "html": b"<html>upstream connect error</html>",
                    "latin1": (
                        b'{"status":"success","data":{"resultType":"vector","result":'
                        b'[{"metric":{"cct_key":"caf\xe9"},"value":[1,"2.5"]}]}}'
                    ),
                    "good": GOOD,
                    # vmselect's answer while a vmstorage node it needs does not answer:
                    # "success", with the series of the nodes that did.
                    "partial": (
                        b'{"status":"success","isPartial":true,"data":{"resultType":"vector",'
                        b'"result":[{"metric":{"cct_key":"team-a"},"value":[1,"2.5"]}]}}'
                    ),
                    "complete": (
                        b'{"status":"success","isPartial":false,"data":{"resultType":"vector",'
                        b'"result":[{"metric":{"cct_key":"team-a"},"value":[1,"2.5"]}]}}'
                    ),
                }[fake.mode]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return  # the tests read the detector's answers, not this server's access log

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_vm() -> Iterator[FakeVM]:
    fake = FakeVM()
    yield fake
    fake.close()


@pytest.mark.parametrize("mode", ["html", "truncated"])
def test_an_answer_that_is_not_a_query_result_is_a_retryable_vm_error(
    fake_vm: FakeVM, mode: str
) -> None:
    fake_vm.mode = mode
    with pytest.raises(VMError) as err:
        VictoriaMetrics(fake_vm.url, timeout=5).query("up")
    assert err.value.retryable is True


def test_a_partial_answer_of_the_cluster_version_is_a_retryable_vm_error(
    fake_vm: FakeVM,
) -> None:
    """Review finding: a partial answer (a vmstorage node down beyond the replication factor)
    was read as the whole: its aggregates looked like drops, its missing resources as gone
    (resolving their incidents), and their return as rises. The cycle now fails and retries."""
    fake_vm.mode = "partial"
    with pytest.raises(VMError, match="partial answer") as err:
        VictoriaMetrics(fake_vm.url, timeout=5).query("up")
    assert err.value.retryable is True
    fake_vm.mode = "complete"
    [row] = VictoriaMetrics(fake_vm.url, timeout=5).query("up")
    assert row["value"] == [1, "2.5"]


def test_a_label_value_that_is_not_utf8_does_not_fail_the_query(fake_vm: FakeVM) -> None:
    fake_vm.mode = "latin1"
    [row] = VictoriaMetrics(fake_vm.url, timeout=5).query("up")
    assert row["metric"]["cct_key"] == "caf\ufffd"


def test_rows_that_are_not_labels_and_a_value_are_skipped_and_counted() -> None:
    good = {"metric": {"cct_key": "team-a"}, "value": [1, "3"]}
    rows: list[dict[str, Any]] = [
        {"metric": {"cct_key": "team-b"}},
        {"metric": {"cct_key": "team-c"}, "value": [1]},
        {"metric": {"cct_key": "team-d"}, "value": [1, "many"]},
        {"metric": "team-e", "value": [1, "1"]},
        good,
    ]
    out = Vector()
    parse_vector("team", rows, {}, out)
    assert [k.as_dict()["team"] for k in out.keys] == ["team-a"] and out.values == [3.0]
    assert out.rejected == 4


def _ready(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def test_the_served_detector_outlives_bad_answers_and_says_why(
    fake_vm: FakeVM, alertmanager_url: str, pg_dsn: str, repo_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "CCT_VM_URL": fake_vm.url,
        "CCT_ALERTMANAGER_URL": alertmanager_url,
        "CCT_PG_DSN": pg_dsn,
        "CCT_DETECTOR_PORT": str(port),
        "CCT_DETECTOR_INTERVAL_S": "0.5",
        "CCT_DETECTOR_BOOTSTRAP_HOURS": "0",
    }
    fake_vm.mode = "good"
    cmd = [str(repo_root / ".venv/bin/cct"), "serve", "detector"]
    ready = f"http://127.0.0.1:{port}/readyz"

    def answers(status: int, text: str) -> bool:
        got = _ready(ready)
        return got[0] == status and text in got[1]

    with running(cmd, lambda: answers(200, ""), tmp_path / "detector.log", env=env) as proc:
        for mode, status, text in (
            ("html", 503, "last cycle failed: not a query result"),
            ("good", 200, ""),
            ("partial", 503, "partial answer"),
            ("complete", 200, ""),
            ("truncated", 503, "IncompleteRead"),
            ("latin1", 200, ""),
        ):
            fake_vm.mode = mode
            _wait(partial(answers, status, text), f"{status} on {mode}")
            assert proc.poll() is None, f"the detector exited on {mode}"
    logs = [json.loads(line) for line in (tmp_path / "detector.log").read_text().splitlines()]
    assert any(line.get("msg") == "cycle failed" for line in logs)


def _wait(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
