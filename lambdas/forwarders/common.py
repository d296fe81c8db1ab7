"""What every forwarder shares: the envelope, batching, bearer token, retries with backoff.

Forwarders run inside the cloud accounts (AWS Lambda, Azure Functions, GCP Cloud Functions)
and post to the central Fluent Bit HTTP input at `<endpoint>/cct.<provider>` (the URL path is
Fluent Bit's tag). They use only the standard library so the deployment packages stay small.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class ForwardError(RuntimeError):
    """Delivery failed after every retry; the platform should retry the invocation."""


class ForwarderConfigError(ValueError):
    """The forwarder is misconfigured (missing endpoint or token). Retrying will not help."""


@dataclass(frozen=True)
class ForwarderSettings:
    # Fluent Bit HTTP input base URL, e.g. https://ingest.cct.example.com:9880
    endpoint: str
    # Shared secret; read from the platform's secret store into CCT_FORWARDER_TOKEN.
    token: str
    # FOCUS BillingAccountId of this account (payer account, billing account id, ...).
    billing_account_id: str = ""
    # Records per POST. Fluent Bit's default buffer_max_size is 4 MiB; 500 events of a few
    # KiB each stay well below it.
    batch_size: int = 500
    # Attempts per batch and the first backoff; the backoff doubles with full jitter.
    max_attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> ForwarderSettings:
        # CCT_FORWARDER_ENDPOINT: the collector's ingest URL (http or https) events go to.
        endpoint = os.environ.get("CCT_FORWARDER_ENDPOINT", "").rstrip("/")
        token = os.environ.get("CCT_FORWARDER_TOKEN", "")
        if not endpoint.startswith(("https://", "http://")):
            raise ForwarderConfigError("CCT_FORWARDER_ENDPOINT must be an http(s) URL")
        if not token:
            raise ForwarderConfigError("CCT_FORWARDER_TOKEN is required")
        return cls(
            endpoint=endpoint,
            token=token,
            billing_account_id=os.environ.get("CCT_FORWARDER_BILLING_ACCOUNT_ID", ""),
            batch_size=int(os.environ.get("CCT_FORWARDER_BATCH_SIZE", "500")),
            max_attempts=int(os.environ.get("CCT_FORWARDER_MAX_ATTEMPTS", "5")),
        )


@dataclass
class ForwardResult:
    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


# (url, body, headers, timeout) -> HTTP status. Injected in tests.
Transport = Callable[[str, bytes, Mapping[str, str], float], int]


def urllib_transport(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


class Forwarder:
    def __init__(
        self,
        settings: ForwarderSettings,
        provider: str,
        transport: Transport = urllib_transport,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.transport = transport
        self.sleep = sleep

    def envelope(self, event: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        # `auth` carries the token inside the record as well: Fluent Bit's HTTP input cannot
        # check a static bearer token, so its grep filter does, then removes the field.
        record: dict[str, Any] = {
            "provider": self.provider,
            "auth": self.settings.token,
            "event": event,
            **extra,
        }
        if self.settings.billing_account_id:
            record["billing_account_id"] = self.settings.billing_account_id
        return record

    def send(self, records: Iterable[dict[str, Any]], result: ForwardResult) -> ForwardResult:
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= self.settings.batch_size:
                self._post(batch)
                result.sent += len(batch)
                batch = []
        if batch:
            self._post(batch)
            result.sent += len(batch)
        if result.dropped:
            log.warning("events dropped", extra={"dropped": dict(result.dropped)})
        return result

    def _post(self, batch: list[dict[str, Any]]) -> None:
        url = f"{self.settings.endpoint}/cct.{self.provider}"
        body = json.dumps(batch, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.settings.token}",
        }
        delay = self.settings.backoff_s
        last = "no attempt"
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                status = self.transport(url, body, headers, self.settings.timeout_s)
            except OSError as exc:  # connection refused, reset, timeout
                status, last = 0, str(exc)
            else:
                last = f"HTTP {status}"
                if 200 <= status < 300:
                    return
                if not _retryable(status):
                    raise ForwardError(f"{url}: {last}; not retried (check token and endpoint)")
            if attempt < self.settings.max_attempts:
                self.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not security
                delay *= 2
        raise ForwardError(f"{url}: {last} after {self.settings.max_attempts} attempts")
