"""Replay recorded HTTP exchanges from a local server on loopback.

A recording is a JSON file: `{"description", "source", "exchanges": [...]}`; each exchange is
`{"request": {"method", "path", "query"?, "body"?, "form"?}, "permissions"?, "response":
{"status", "headers"?, "body"?}, "when_state"?, "sets_state"?}`. `permissions` are what the
provider checks for that call (Azure RBAC operations, GCP IAM permissions), so tests compare
the calls a step made with what its registry entry declares. A request matches an exchange when the
method and path are equal and the recorded query, JSON body or form fields are a subset of
what was sent. `when_state`/`sets_state` give a scenario its order (a VM's size before and
after the resize), like WireMock's scenarios. `{base}` in a response is replaced by the
server's URL, so Azure-AsyncOperation and operation links point back at it. Other names in
braces are placeholders for what a run decides (the names of the snapshots it takes, from its
run id): `serving(..., values={name: value})` fills them in before anything is matched.

Every request is kept (`requests`) so tests check exactly which calls a client made; a
request with no recording gets HTTP 501 and is listed in `unmatched`.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.http import serving_http

RECORDINGS = Path(__file__).with_name("recordings")


def _subset(want: Any, got: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(
            k in got and _subset(v, got[k]) for k, v in want.items()
        )
    return bool(want == got)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: str
    permissions: tuple[str, ...] = ()


@dataclass
class Replay:
    exchanges: list[dict[str, Any]]
    state: str = "start"
    requests: list[Seen] = field(default_factory=list)
    unmatched: list[Seen] = field(default_factory=list)
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, path_contains: str) -> list[Seen]:
        return [r for r in self.requests if r.method == method and path_contains in r.path]

    def all_text(self) -> str:
        return "\n".join(r.raw for r in self.requests)

    def match(self, seen: Seen) -> dict[str, Any] | None:
        with self.lock:
            self.requests.append(seen)
            candidates = []
            for ex in self.exchanges:
                req = ex["request"]
                if req["method"] != seen.method or req["path"] != seen.path:
                    continue
                if not _subset(req.get("query", {}), seen.query):
                    continue
                if "body" in req and not _subset(req["body"], seen.body):
                    continue
                if "form" in req and not _subset(req["form"], seen.body):
                    continue
                when = ex.get("when_state")
                if when is not None and when != self.state:
                    continue
                candidates.append(ex)
            if not candidates:
                self.unmatched.append(seen)
                return None
            # A state-specific recording beats a state-free one.
            ex = next((c for c in candidates if c.get("when_state") is not None), candidates[0])
            if ex.get("sets_state"):
                self.state = ex["sets_state"]
            seen.permissions = tuple(ex.get("permissions", ()))
            return dict(ex["response"])


def load(*names: str, values: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    exchanges: list[dict[str, Any]] = []
    for name in names:
        text = (RECORDINGS / name).read_text()
        for key, value in (values or {}).items():
            text = text.replace("{" + key + "}", value)
        exchanges.extend(json.loads(text)["exchanges"])
    return exchanges


def _handler(replay: Replay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            ctype = self.headers.get("Content-Type", "")
            body: Any = None
            if raw and "json" in ctype:
                body = json.loads(raw)
            elif raw and "form" in ctype:
                body = dict(urllib.parse.parse_qsl(raw))
            seen = Seen(
                method=self.command,
                path=urllib.parse.unquote(url.path),
                query=dict(urllib.parse.parse_qsl(url.query)),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                raw=f"{self.command} {self.path}\n{self.headers}\n{raw}",
            )
            resp = replay.match(seen)
            if resp is None:
                resp = {
                    "status": 501,
                    "body": {
                        "error": {"code": "NoRecording", "message": f"{seen.method} {seen.path}"}
                    },
                }
            payload = b""
            if resp.get("body") is not None:
                text = json.dumps(resp["body"]).replace("{base}", replay.base_url)
                payload = text.encode()
            self.send_response(int(resp["status"]))
            for key, value in resp.get("headers", {}).items():
                self.send_header(key, str(value).replace("{base}", replay.base_url))
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


@contextmanager
def serving(*recordings: str, values: Mapping[str, str] | None = None) -> Iterator[Replay]:
    with serving_exchanges(load(*recordings, values=values)) as replay:
        yield replay


@contextmanager
def serving_exchanges(
    exchanges: list[dict[str, Any]], tls: ssl.SSLContext | None = None
) -> Iterator[Replay]:
    """Serve exchanges a test put together (a recording's, changed for its scenario); over
    https with a server TLS context."""
    replay = Replay(exchanges)
    with serving_http(_handler(replay), tls) as url:
        replay.base_url = url
        yield replay
