"""A small JSON REST client for the Azure Resource Manager and Google Cloud APIs.

CCT calls these REST APIs directly (the same requests the Azure and Google SDKs send) instead
of pulling both SDK families into the step image. Errors are matched narrowly: throttling and
server errors are retryable, 401/403 are reported as access denied with the permissions the
action needs, 404 is NotFound (each action decides what that means).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from lambdas.steps import polling
from lambdas.steps.errors import AccessDenied, NotFound, Permanent, Retryable

# Error codes the providers use for throttling and for a resource busy with another
# operation; both clear up on their own, so the step is retried.
_RETRY_CODES = frozenset(
    {
        "TooManyRequests",
        "RetryableError",
        "AnotherOperationInProgress",
        "OperationNotAllowedWhileUpdating",
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "RESOURCE_EXHAUSTED",
        "resourceNotReady",
        "operationInProgress",
    }
)


def _error_code(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            errors = err.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                return str(errors[0].get("reason") or err.get("status") or err.get("code") or "")
            return str(err.get("code") or err.get("status") or "")
    return ""


def _origin(url: str) -> str:
    """scheme://host:port with the scheme's default port spelled out: ARM's operation URLs
    name `:443`, the configured base URL usually does not."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class RestClient:
    def __init__(self, base_url: str, token: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"

    def url(self, path_or_url: str) -> str:
        """The URL of an API path (`/subscriptions/...`), or an absolute URL on the API's own
        host (the long-running operations' headers). The session carries the bearer token:
        any other host or form is refused, so no input can send the token elsewhere."""
        if path_or_url.startswith("/") and not path_or_url.startswith("//"):
            return f"{self.base_url}{path_or_url}"
        if "://" in path_or_url and _origin(path_or_url) == _origin(self.base_url):
            return path_or_url
        raise Permanent(
            f"refusing to send the API credential to {path_or_url[:80]!r}: not a path of "
            f"{_origin(self.base_url)}"
        )

    def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        *,
        needs: tuple[str, ...],
    ) -> requests.Response:
        """One request; `needs` names the permissions the calling action requires, so an
        access-denied error says what to grant."""
        try:
            resp = self._session.request(
                method, self.url(path), params=params, json=body, timeout=self.timeout_s
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Retryable(f"{method} {path}: {type(exc).__name__}") from None
        if resp.status_code < 400:
            return resp
        try:
            payload: Any = resp.json()
        except ValueError:
            payload = None
        code = _error_code(payload)
        what = f"{method} {path}: HTTP {resp.status_code} {code}".rstrip()
        # Before the 403 check: Google reports its rate limits as 403 with their reason.
        if resp.status_code in (429, 500, 502, 503, 504) or code in _RETRY_CODES:
            raise Retryable(what)
        if resp.status_code in (401, 403):
            wanted = ", ".join(needs)
            raise AccessDenied(f"{what}: access denied; the credential needs {wanted}")
        if resp.status_code == 404:
            raise NotFound(what)
        raise Permanent(what)

    def json(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        *,
        needs: tuple[str, ...],
    ) -> Any:
        resp = self.call(method, path, params, body, needs=needs)
        if not resp.content:
            return {}
        return resp.json()

    def poll(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        done: Callable[[Mapping[str, Any]], bool],
        timeout_s: float,
        what: str,
        *,
        interval_s: float = polling.POLL_MAX_S,
        initial_s: float = polling.POLL_INITIAL_S,
    ) -> Mapping[str, Any]:
        """Fetch until `done`, polling from `initial_s` up to every `interval_s`; a cloud
        operation still running at the deadline is retryable (the step runs again and finds
        the change done or still in progress)."""
        deadline = time.monotonic() + timeout_s
        for delay in polling.delays(min(initial_s, interval_s), interval_s):
            doc = fetch()
            if done(doc):
                return doc
            if time.monotonic() > deadline:
                break
            time.sleep(delay)
        raise Retryable(f"{what} still running after {timeout_s:.0f}s")
