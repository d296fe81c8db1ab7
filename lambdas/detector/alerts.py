"""Alerts in the contract's shape (lambdas.contract), their Alertmanager fingerprint, and a
small Alertmanager v2 client."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from lambdas import contract as c
from lambdas.detector.config import SeriesKey
from lambdas.events.cloudevents import EventLimits

log = logging.getLogger("cct.detector")
ALERTNAME = c.ALERTNAME
FNV64_OFFSET = 14695981039346656037
FNV64_PRIME = 1099511628211
SEPARATOR = 0xFF


class AlertmanagerError(RuntimeError):
    """Alertmanager refused or failed a request. `retryable` says whether to try again."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set (FNV-1a 64 over the sorted names and values,
    each followed by a 0xFF separator), so the anomalies table and Kafka share one key."""
    h = FNV64_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ SEPARATOR) * FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def alert_labels(key: SeriesKey, rule: str, severity: str) -> dict[str, str]:
    labels = {
        "alertname": ALERTNAME,
        "severity": severity,
        "level": key.level,
        "rule": rule,
        "source": c.SOURCE_DETECTOR,
    }
    # Alertmanager treats an empty label as absent; leaving it out keeps fingerprints equal.
    labels.update({k: v for k, v in key.labels if v})
    return labels


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_alert(
    labels: Mapping[str, str],
    *,
    started_at: float,
    ends_at: float,
    expected: float,
    observed: float,
    deviation: float,
    baseline: str,
    contributors: Sequence[Mapping[str, Any]],
    change_events: Sequence[Mapping[str, Any]],
    ancestors: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One alert for POST /api/v2/alerts. `ends_at` in the past resolves it. Contributors,
    change events and ancestors in their JSON shape (`as_json()`)."""
    delta = observed - expected
    top = contributors[0] if contributors else None
    who = ""
    if top is not None:
        name = SeriesKey.of(top["level"], top["labels"]).describe()
        who = f"; top contributor {top['level']} {name} ({top['share']:.0%})"
    if ancestors:
        who += "; explains " + ", ".join(
            f"{a['level']} {SeriesKey.of(a['level'], a['labels']).describe()}" for a in ancestors
        )
    summary = (
        f"{labels.get('level')} cost run-rate +{delta:,.2f} $/h above expected "
        f"({expected:,.2f} -> {observed:,.2f} $/h, {labels.get('rule')}){who}"
    )
    return {
        "labels": dict(labels),
        "annotations": {
            c.A_EXPECTED: f"{expected:.4f}",
            c.A_OBSERVED: f"{observed:.4f}",
            c.A_DELTA: f"{delta:.4f}",
            c.A_DEVIATION: f"{deviation:.4f}",
            c.A_BASELINE: baseline,
            c.A_CONTRIBUTORS: json_within(contributors),
            c.A_ANCESTORS: json_within(ancestors),
            c.A_CHANGE_EVENTS: json_within(change_events),
            c.A_SUMMARY: _within(summary, EventLimits().max_value_chars),
        },
        "startsAt": _iso(started_at),
        "endsAt": _iso(ends_at),
    }


def _within(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked: the summary names the top contributor and
    every ancestor, and a long resource id must not make the bridge drop the alert."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_within(items: Sequence[Mapping[str, Any]], limit: int | None = None) -> str:
    """The items as a JSON list of at most `limit` characters (the bridge's per-value limit,
    `EventLimits.max_value_chars`), keeping the first ones: lists are ranked (contributors by
    share), so a diffuse increase over many resources reports its largest ones instead of an
    annotation the bridge would drop with the whole alert."""
    limit = EventLimits().max_value_chars if limit is None else limit
    kept = list(items)
    text = json.dumps(kept, sort_keys=True)
    while len(text) > limit and kept:
        # Cut in proportion to the excess first, then one by one near the limit.
        drop = max(1, len(kept) * (len(text) - limit) // len(text))
        kept = kept[: len(kept) - drop]
        text = json.dumps(kept, sort_keys=True)
    return text


class Alertmanager:
    """Alertmanager's v2 API at one or more replicas of one cluster.

    Replicas gossip silences and the notification log but not alerts, so every alert goes to
    every replica (as Prometheus does, one target per replica): a resolve or an escalation
    that reaches only one leaves the others firing the old alert until its endsAt, and a
    replica the resends miss resolves and re-fires it. A post is delivered once one replica
    took it (the gossiped notification log keeps the others from notifying it again); what a
    replica missed is sent to it again, ahead of the next post, so it catches up within a
    cycle of coming back. `on_replica_error(url, error)` hears of every failed replica."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        timeout: float = 5.0,
        on_replica_error: Callable[[str, AlertmanagerError], None] | None = None,
        max_missed: int = 1000,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.base_urls = tuple(u.rstrip("/") for u in urls)
        if not self.base_urls:
            raise ValueError("Alertmanager needs at least one base URL")
        self.timeout = timeout
        self.on_replica_error = on_replica_error
        self.max_missed = max_missed
        # Per replica, the newest version of each alert it missed while another took it.
        self.missed: dict[str, dict[tuple[tuple[str, str], ...], Mapping[str, Any]]] = {
            u: {} for u in self.base_urls
        }
        self.failing: set[str] = set()

    def _call(self, base_url: str, path: str, body: bytes | None = None) -> bytes:
        where = f"{base_url}{path}"
        try:
            req = urllib.request.Request(  # noqa: S310 - URL from our own settings
                where,
                data=body,
                method="POST" if body is not None else "GET",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                text = exc.read()[:500].decode(errors="replace")
            except (http.client.HTTPException, OSError, ValueError):
                text = ""
            raise AlertmanagerError(
                f"{where}: HTTP {exc.code}: {text}", retryable=exc.code >= 500
            ) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            # A connection cut mid-answer (IncompleteRead, RemoteDisconnected) or a garbled
            # one is this replica's failure; raised as it was, IncompleteRead ended the
            # detector.
            raise AlertmanagerError(
                f"{where}: {type(exc).__name__}: {exc}", retryable=True
            ) from exc

    def post(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Post to every replica; raise AlertmanagerError only when none took the alerts
        (retryable unless one of them refused them). With no alerts, only what a replica
        missed is sent again."""
        batch = list(alerts)
        targets = [u for u in self.base_urls if batch or self.missed[u]]
        if not targets:
            return
        errors = self._each(targets, batch)
        for url in targets:
            exc = errors.get(url)
            if exc is None:
                self.missed[url].clear()
                if url in self.failing:
                    self.failing.discard(url)
                    log.info("alertmanager replica recovered", extra={"replica": url})
                continue
            if self.on_replica_error is not None:
                self.on_replica_error(url, exc)
            if not exc.retryable:
                # Refused: sending the same alerts again would be refused again.
                self.missed[url].clear()
                log.error(
                    "alertmanager replica refused alerts",
                    extra={"replica": url, "error": str(exc), "alerts": len(batch)},
                )
            elif url not in self.failing:
                self.failing.add(url)
                log.warning(
                    "alertmanager replica failing", extra={"replica": url, "error": str(exc)}
                )
        delivered = len(errors) < len(targets)
        if delivered or not batch:
            for url, exc in errors.items():
                if exc.retryable:
                    self._remember(url, batch)
            return
        # Nobody took the batch: it stays the caller's to send again, to every replica. A
        # refusal by one makes it a refusal, so the caller posts the alerts one by one and
        # only the refused ones are dropped, instead of one bad alert holding back every page
        # for as long as another replica is down.
        raise AlertmanagerError(
            "; ".join(str(e) for e in errors.values()),
            retryable=all(e.retryable for e in errors.values()),
        )

    def _each(
        self, targets: Sequence[str], batch: Sequence[Mapping[str, Any]]
    ) -> dict[str, AlertmanagerError]:
        def one(url: str) -> AlertmanagerError | None:
            body = [*self.missed[url].values(), *batch]
            try:
                self._call(url, "/api/v2/alerts", json.dumps(body).encode())
            except AlertmanagerError as exc:
                return exc
            return None

        if len(targets) == 1:
            results = [one(targets[0])]
        else:
            # In parallel: a replica that hangs costs the cycle one timeout, not one each.
            with ThreadPoolExecutor(max_workers=len(targets)) as pool:
                results = list(pool.map(one, targets))
        return {url: exc for url, exc in zip(targets, results, strict=True) if exc is not None}

    def _remember(self, url: str, batch: Sequence[Mapping[str, Any]]) -> None:
        missed = self.missed[url]
        for alert in batch:
            key = tuple(sorted(alert.get("labels", {}).items()))
            missed.pop(key, None)  # the newest version last, as it was posted
            missed[key] = alert
        while len(missed) > self.max_missed:
            del missed[next(iter(missed))]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts of the first replica that answers."""
        errors = []
        for url in self.base_urls:
            try:
                result = json.loads(self._call(url, "/api/v2/alerts"))
            except AlertmanagerError as exc:
                errors.append(exc)
                continue
            except ValueError as exc:  # not JSON, or not UTF-8
                errors.append(AlertmanagerError(f"{url}/api/v2/alerts: {exc}", retryable=True))
                continue
            if isinstance(result, list):
                return result
            errors.append(AlertmanagerError(f"{url}/api/v2/alerts: not a list", retryable=True))
        raise AlertmanagerError("; ".join(str(e) for e in errors), retryable=True)
