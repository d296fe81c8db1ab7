"""A stand-in for the VictoriaMetrics cluster's URL layout in front of the real single node.

The cluster binaries (vminsert, vmselect, vmstorage) are not packaged for this machine (Debian
ships the single-node `victoria-metrics` 1.79 with vmagent, vmalert and vmauth only), and that
vmauth cannot strip a path prefix. So this proxy serves exactly the routes CCT uses, under the
cluster's prefixes for tenant 0, and forwards each to the single node's root:

- vminsert: `/insert/0/prometheus/api/v1/import[/prometheus|/csv|/native]`, `.../api/v1/write`
- vmselect: `/select/0/prometheus/api/v1/{query,query_range,series,labels,label/<n>/values,
  export}` and `/delete/0/prometheus/api/v1/admin/tsdb/delete_series`

Everything else answers 404, as the cluster would (e.g. a query sent to the write URL), and
every request is recorded so tests can tell which side a handler used.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.http import serving_http

TENANT = "0"
ROUTES = {
    "insert": re.compile(
        rf"^/insert/{TENANT}/prometheus(/api/v1/(?:import(?:/prometheus|/csv|/native)?|write))$"
    ),
    "select": re.compile(
        rf"^/select/{TENANT}/prometheus"
        r"(/api/v1/(?:query|query_range|series|labels|label/[^/]+/values|export))$"
    ),
    "delete": re.compile(rf"^/delete/{TENANT}/prometheus(/api/v1/admin/tsdb/delete_series)$"),
}


@dataclass(frozen=True)
class Seen:
    method: str
    # "insert", "select", "delete", or None for a path the cluster would not serve.
    side: str | None
    path: str
    status: int


@dataclass
class ClusterProxy:
    url: str
    seen: list[Seen] = field(default_factory=list)

    @property
    def write_url(self) -> str:
        return f"{self.url}/insert/{TENANT}/prometheus"

    @property
    def read_url(self) -> str:
        return f"{self.url}/select/{TENANT}/prometheus"

    def paths(self, side: str) -> set[str]:
        """Single-node API paths requested on `side`."""
        return {s.path for s in self.seen if s.side == side}


def _handler(upstream: str, proxy: ClusterProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            path, _, query = self.path.partition("?")
            side, api_path = next(
                ((s, m.group(1)) for s, r in ROUTES.items() if (m := r.match(path))),
                (None, path),
            )
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if side is None:
                status, payload, ctype = 404, b"unsupported path\n", "text/plain"
            else:
                url = f"{upstream}{api_path}" + (f"?{query}" if query else "")
                headers = {"Content-Type": self.headers.get("Content-Type", "text/plain")}
                # Loopback URL built from the test's own services file.
                req = urllib.request.Request(url, data=body, method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        status, payload = resp.status, resp.read()
                        ctype = resp.headers.get("Content-Type", "application/json")
                except urllib.error.HTTPError as exc:
                    status, payload, ctype = exc.code, exc.read(), "text/plain"
            proxy.seen.append(Seen(self.command, side, api_path, status))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _forward

        def log_message(self, format: str, *args: object) -> None:
            """Requests are recorded in `proxy.seen`; stderr stays quiet."""

    return Handler


@contextmanager
def cluster_proxy(upstream: str) -> Iterator[ClusterProxy]:
    """The proxy on a free loopback port, forwarding to the single node at `upstream`."""
    proxy = ClusterProxy(url="")
    with serving_http(_handler(upstream.rstrip("/"), proxy)) as url:
        proxy.url = url
        yield proxy
