"""A fault-injecting proxy in front of the moto server: forwards every AWS request to moto
unchanged, except the API actions a test names, which get the error AWS would return. This
is how the tests make a real boto3 call fail (access denied, throttling) at a chosen point of
a playbook while everything else runs against moto.

It speaks the EC2/CloudWatch query protocol (form bodies with Content-Length); S3's chunked
uploads are not proxied, so tests route only EC2-style services through it."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.http import serving_http


@dataclass
class Fault:
    action: str  # e.g. ModifyInstanceAttribute (EC2 query protocol)
    status: int
    code: str
    times: int = 1_000_000  # how many matching requests fail before it passes through

    def xml(self) -> bytes:
        return (
            "<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error>"
            f"<Code>{self.code}</Code><Message>injected by the test</Message></Error></Errors>"
            "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
        ).encode()


@dataclass
class Proxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    url: str = ""
    hits: dict[str, int] = field(default_factory=dict)
    authorizations: list[str] = field(default_factory=list)


def _handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            proxy.authorizations.append(self.headers.get("Authorization", ""))
            action = dict(urllib.parse.parse_qsl(body.decode(errors="replace"))).get("Action", "")
            for fault in proxy.faults:
                if fault.action == action and fault.times > 0:
                    fault.times -= 1
                    proxy.hits[action] = proxy.hits.get(action, 0) + 1
                    payload = fault.xml()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
            # Hop-by-hop headers belong to this connection, not to the one to moto.
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "expect", "connection", "transfer-encoding")
            }
            req = urllib.request.Request(
                proxy.upstream + self.path,
                data=body or None,
                method=self.command,
                headers=headers,
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    status, rheaders, payload = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as exc:
                status, rheaders, payload = exc.code, exc.headers, exc.read()
            self.send_response(status)
            for key, value in rheaders.items():
                if key.lower() not in (
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "server",
                    "date",
                ):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    return Handler


@contextmanager
def fault_proxy(upstream: str, *faults: Fault) -> Iterator[Proxy]:
    proxy = Proxy(upstream.rstrip("/"), list(faults))
    with serving_http(_handler(proxy)) as url:
        proxy.url = url
        yield proxy
