"""A small stand-in for the Kubernetes API server, for the Argo backend's tests.

It serves the real paths of the `argoproj.io/v1alpha1` `workflows` resource and answers with
the API server's real status bodies (`kind: Status`), including the ones the trigger must
tell apart: 409 AlreadyExists, an admission webhook's denial (403, message
`admission webhook "..." denied the request: ...`), 422 Invalid, 401 Unauthorized and
503 ServiceUnavailable. Kubernetes itself cannot run on this machine.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/apis/argoproj.io/v1alpha1/namespaces/"
WEBHOOK = "validate.workflows.cct.io"


def status_body(code: int, reason: str, message: str, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name is not None:
        body["details"] = {"name": name, "group": "argoproj.io", "kind": "workflows"}
    return body


class FakeKube:
    """`deny(workflow) -> message | None` plays the admission webhook; `fail_next` answers
    that many creates with 503; with `hold_after` = N, creates after the N-th wait (counted
    in `held`) until `release` is set, so a test can kill the client mid-submission."""

    def __init__(self, token: str, deny: Callable[[dict[str, Any]], str | None] | None = None):
        self.token = token
        self.deny = deny
        self.fail_next = 0
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.attempts: list[tuple[str, int]] = []  # (name, answered status) per create
        self.created_at: dict[str, float] = {}  # name -> time.monotonic() of the 201
        self.hold_after: int | None = None
        self.held = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed while we held its request

            def _namespace(self) -> str | None:
                if not self.path.startswith(PREFIX):
                    return None
                ns, _, rest = self.path[len(PREFIX) :].partition("/")
                return ns if rest.split("?")[0] == "workflows" else None

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {fake.token}":
                    return True
                self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
                return False

            def do_GET(self) -> None:
                ns = self._namespace()
                if not self._authorized():
                    return
                if ns is None:
                    self._send(404, status_body(404, "NotFound", "the server could not find it"))
                    return
                with fake.lock:
                    items = [o for (n, _), o in fake.objects.items() if n == ns]
                self._send(
                    200,
                    {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowList", "items": items},
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                ns = self._namespace()
                if not self._authorized():
                    return
                if ns is None:
                    self._send(404, status_body(404, "NotFound", "the server could not find it"))
                    return
                fake.hold()
                code, answer = fake.create(ns, body)
                self._send(code, answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def create(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = str(body.get("metadata", {}).get("name", ""))
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.attempts.append((name, 503))
                return 503, status_body(503, "ServiceUnavailable", "etcdserver: request timed out")
            if body.get("kind") != "Workflow" or "workflowTemplateRef" not in body.get("spec", {}):
                self.attempts.append((name, 422))
                message = (
                    f'Workflow.argoproj.io "{name}" is invalid: '
                    "spec.workflowTemplateRef: Required value"
                )
                return 422, status_body(422, "Invalid", message, name)
            if (ns, name) in self.objects:
                self.attempts.append((name, 409))
                message = f'workflows.argoproj.io "{name}" already exists'
                return 409, status_body(409, "AlreadyExists", message, name)
            denial = self.deny(body) if self.deny else None
            if denial is not None:
                self.attempts.append((name, 403))
                message = f'admission webhook "{WEBHOOK}" denied the request: {denial}'
                return 403, status_body(403, "Forbidden", message)
            created = json.loads(json.dumps(body))
            created["metadata"].update(
                uid=str(uuid.uuid4()),
                resourceVersion=str(len(self.objects) + 1),
                creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            self.objects[(ns, name)] = created
            self.created_at[name] = time.monotonic()
            self.attempts.append((name, 201))
            return 201, created

    def hold(self) -> None:
        with self.lock:
            holding = self.hold_after is not None and len(self.objects) >= self.hold_after
            if holding:
                self.held += 1
        if holding:
            self.release.wait()

    def created_names(self) -> list[str]:
        with self.lock:
            return [name for name, code in self.attempts if code == 201]

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
