"""A small VictoriaMetrics HTTP client: import samples, run instant and range queries.

Used by the billing loader, the detector and the dashboard tests, so there is one place that
knows the wire formats (the collector writes the same import format from its async loop).

Writes and queries have separate base URLs because the cluster version serves them from
different services: imports go to vminsert (`.../insert/<tenant>/prometheus`), queries to
vmselect (`.../select/<tenant>/prometheus`) and series deletion to vmselect's
`.../delete/<tenant>/prometheus`. A single node serves all of them at its root, so one URL
is both bases. The single-node API paths are appended to either base.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lambdas.ingest.exposition import body


class VMError(RuntimeError):
    """VictoriaMetrics refused or failed a request. `retryable` says whether to try again."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Sample:
    metric: str
    labels: Mapping[str, str]
    value: float
    timestamp_ms: int


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_prometheus(samples: Iterable[Sample]) -> bytes:
    """Prometheus text exposition lines with explicit millisecond timestamps."""
    lines = []
    for s in samples:
        if not math.isfinite(s.value):
            raise ValueError(f"{s.metric}: refusing to write non-finite value {s.value}")
        labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(s.labels.items()))
        lines.append(f"{s.metric}{{{labels}}} {s.value!r} {s.timestamp_ms}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


# vmselect's query prefix; its deletion prefix differs only in the first segment.
_SELECT_PREFIX = re.compile(r"/select/([^/]+)/prometheus$")


def delete_url(read_url: str) -> str:
    """Base URL of series deletion: vmselect's `/delete/<tenant>/prometheus` next to a
    cluster read URL, the read URL itself for a single node."""
    return _SELECT_PREFIX.sub(r"/delete/\1/prometheus", read_url.rstrip("/"))


class VictoriaMetrics:
    """`write_url` receives imports, `read_url` (default: `write_url`) queries and
    deletions."""

    def __init__(self, write_url: str, read_url: str | None = None, timeout: float = 10.0) -> None:
        self.write_url = write_url.rstrip("/")
        self.read_url = (read_url or write_url).rstrip("/")
        self.delete_url = delete_url(self.read_url)
        self.timeout = timeout

    def _request(
        self,
        base: str,
        path: str,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        url = f"{base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        # The base URL comes from our own settings (http only); S310 does not apply.
        req = urllib.request.Request(  # noqa: S310
            url, data=data, method="POST" if data is not None else "GET"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()[:500].decode(errors="replace")
            raise VMError(f"{path}: HTTP {exc.code}: {body}", retryable=exc.code >= 500) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # HTTPException: a body cut short (IncompleteRead) or a garbled status line, from
            # VictoriaMetrics restarting mid-answer or a proxy in front of it.
            raise VMError(f"{path}: {type(exc).__name__}: {exc}", retryable=True) from exc

    def import_samples(self, samples: Iterable[Sample]) -> None:
        payload = format_prometheus(samples)
        if payload:
            self._request(self.write_url, "/api/v1/import/prometheus", data=payload)

    def import_lines(self, lines: Sequence[str]) -> None:
        """Exposition lines already rendered, with their timestamps (as the collector's
        `lambdas.ingest.exposition.line` makes them)."""
        if lines:
            self._request(self.write_url, "/api/v1/import/prometheus", data=body(list(lines)))

    def import_csv(self, payload: bytes, fmt: str) -> None:
        """CSV rows without a header; `fmt` is VictoriaMetrics' `format` column spec."""
        self._request(self.write_url, "/api/v1/import/csv", data=payload, params={"format": fmt})

    def delete_series(self, match: str) -> None:
        """Delete every sample of the series `match` selects (a series selector)."""
        self._request(
            self.delete_url,
            "/api/v1/admin/tsdb/delete_series",
            data=b"",
            params={"match[]": match},
        )

    def query(self, expr: str, time_s: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if time_s is not None:
            params["time"] = f"{time_s:.3f}"
        return self._result(self._request(self.read_url, "/api/v1/query", params=params))

    def query_range(
        self, expr: str, start_s: float, end_s: float, step: str
    ) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": step}
        return self._result(self._request(self.read_url, "/api/v1/query_range", params=params))

    @staticmethod
    def _result(raw: bytes) -> list[dict[str, Any]]:
        """The result rows. Label values are whatever bytes were written: one that is not
        UTF-8 is read with U+FFFD in place of the bad bytes, so one such series cannot fail
        every query that returns it. An answer that is not a query result (a proxy's HTML
        page) or only part of one (`isPartial`) is a retryable VMError."""
        try:
            doc = json.loads(raw.decode("utf-8", errors="replace"))
            status, error = doc.get("status"), doc.get("error")
            if status == "success":
                result = doc["data"]["result"]
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise VMError(f"not a query result: {raw[:200]!r}", retryable=True) from exc
        if status != "success":
            raise VMError(f"query failed: {error}", retryable=False)
        if doc.get("isPartial") is True:
            # The cluster version answers with the series of the vmstorage nodes that
            # answered: a sum too low, series missing. Read as the whole, that is a drop, then
            # a rise when the node is back; a retry gets the whole.
            raise VMError("partial answer: a vmstorage node did not answer", retryable=True)
        return list(result) if isinstance(result, list) else [result]
