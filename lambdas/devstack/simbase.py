"""What the Azure and GCP simulators share: a small threaded JSON HTTP server, bearer tokens
they issue and check, and the event delivery queue that plays Event Grid's and Pub/Sub's
retrying push to the forwarder.

The simulators serve the providers' documented request and response shapes for the calls CCT
makes (the forwarders' resource reads, the steps' actions, the credential source's identity
calls) and nothing else; an unknown route answers 404 in the provider's error format.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class HttpError(Exception):
    """An answer other than success: status and the provider-shaped JSON body."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = dict(body)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: Any

    def header(self, name: str) -> str:
        """A request header by name, any case (HTTP header names are case-insensitive)."""
        return self.headers.get(name.lower(), "")

    def bearer(self) -> str | None:
        value = self.header("Authorization")
        return value[7:] if value.startswith("Bearer ") else None


class Rejected(Exception):
    """The forwarder refused the event (it is not one it forwards): counted, never retried."""


def obj(value: Any, *keys: str) -> dict[str, Any]:
    """The JSON object at `keys` under `value`; {} where a caller sent anything else, so a
    hostile body gets the provider's validation error, never a crash."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


# (status, extra headers, JSON body or None for an empty body)
Response = tuple[int, dict[str, str], Any]
App = Callable[[Request], Response]


@dataclass
class Grant:
    principal: str
    audience: str
    role: str
    expires: float


@dataclass
class Tokens:
    """Opaque bearer tokens this simulator issued: each names its principal, the audience it
    was issued for and the role it may act in; an unknown or expired token is refused."""

    ttl_s: int = 3600
    grants: dict[str, Grant] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(
        self, principal: str, audience: str, role: str, prefix: str = ""
    ) -> tuple[str, Grant]:
        token = prefix + secrets.token_urlsafe(32)
        grant = Grant(principal, audience, role, time.time() + self.ttl_s)
        with self.lock:
            now = time.time()
            for t in [t for t, g in self.grants.items() if g.expires < now]:
                del self.grants[t]
            self.grants[token] = grant
        return token, grant

    def revoke(self, principal: str) -> None:
        """End every token of a principal (its credential was deleted)."""
        with self.lock:
            for token in [t for t, g in self.grants.items() if g.principal == principal]:
                del self.grants[token]

    def check(self, token: str | None, audience: str) -> Grant | None:
        if not token:
            return None
        with self.lock:
            grant = self.grants.get(token)
        if grant is None or grant.expires < time.time() or grant.audience != audience:
            return None
        return grant


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Delivery:
    """Pushes events to the forwarder in order, retrying a failed delivery with backoff as
    Event Grid and Pub/Sub push do (they retry for a day; here until the process stops).
    Counts what was delivered and retried for /metrics."""

    deliver: Callable[[Any], None]
    name: str
    max_backoff_s: float = 10.0
    counts: Counter[str] = field(default_factory=Counter)
    pending: queue.Queue[Any] = field(default_factory=queue.Queue)

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"{self.name}-delivery", daemon=True).start()

    def put(self, event: Any) -> None:
        self.counts["queued"] += 1
        self.pending.put(event)

    def _run(self) -> None:
        while True:
            event = self.pending.get()
            delay = 0.5
            while True:
                try:
                    self.deliver(event)
                except Rejected as exc:
                    self.counts["rejected"] += 1
                    log.warning("%s: %s", self.name, exc)
                    break
                except Exception as exc:  # any failure is retried, as the platform does
                    self.counts["retried"] += 1
                    log.warning("%s delivery failed, retrying: %s", self.name, exc)
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
                    continue
                self.counts["delivered"] += 1
                break


def metrics_text(prefix: str, counts: Mapping[str, Counter[str]]) -> str:
    lines = [f"# TYPE {prefix}_total counter"]
    for kind, counter in sorted(counts.items()):
        for event, n in sorted(counter.items()):
            lines.append(f'{prefix}_total{{kind="{kind}",event="{event}"}} {n}')
    return "\n".join(lines) + "\n"


def make_server(
    app: App, host: str, port: int, metrics: Callable[[], str], name: str
) -> ThreadingHTTPServer:
    """An HTTP server for `app`; /healthz and /metrics are the simulator's own."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

        def _answer(self, status: int, headers: Mapping[str, str], body: Any) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if body is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            split = urlsplit(self.path)
            if split.path == "/healthz":
                self._answer(200, {}, {"status": "ok"})
                return
            if split.path == "/metrics":
                data = metrics().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._answer(400, {}, {"error": {"code": "BadRequest", "message": "bad length"}})
                return
            if length > MAX_BODY_BYTES or length < 0:
                self.close_connection = True
                self._answer(413, {}, {"error": {"code": "RequestTooLarge", "message": "body"}})
                return
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type") or ""
            body: Any = None
            if raw and "application/x-www-form-urlencoded" in ctype:
                body = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            elif raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._answer(400, {}, {"error": {"code": "InvalidJson", "message": "body"}})
                    return
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Request(self.command, split.path, query, headers, body)
            try:
                status, headers, out = app(req)
            except HttpError as exc:
                status, headers, out = exc.status, {}, exc.body
            except Exception:  # a bug answers 500; the server keeps serving
                log.exception("%s: %s %s failed", name, self.command, split.path)
                status, headers, out = 500, {}, {"error": {"code": "InternalError"}}
            self._answer(status, headers, out)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(app: App, host: str, port: int, metrics: Callable[[], str], name: str) -> None:
    """Serve `app` until SIGTERM/SIGINT."""
    import signal

    server = make_server(app, host, port, metrics, name)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.warning("%s listening on http://%s:%d", name, host, port)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
