"""Alerts in the contract's shape (lambdas.contract), their Alertmanager fingerprint, and a
small Alertmanager v2 client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from lambdas import contract as c
from lambdas.detector.config import SeriesKey
from lambdas.events.cloudevents import EventLimits

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
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(  # noqa: S310 - URL from our own settings
            f"{self.base_url}{path}",
            data=body,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()[:500].decode(errors="replace")
            raise AlertmanagerError(
                f"{path}: HTTP {exc.code}: {text}", retryable=exc.code >= 500
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AlertmanagerError(f"{path}: {exc}", retryable=True) from exc

    def post(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        if alerts:
            self._call("/api/v2/alerts", json.dumps(list(alerts)).encode())

    def alerts(self) -> list[dict[str, Any]]:
        result = json.loads(self._call("/api/v2/alerts"))
        return list(result)
