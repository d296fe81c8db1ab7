"""What the detector still owes PostgreSQL and Alertmanager while either is unavailable.

Each cycle queues the rows of the incidents it touched and the alerts it posts; the resend
re-queues every open incident every `resend_s`. During an outage of an hour that used to fill
the queue with copies of the same incidents' figures, and the cap then dropped the oldest
entries first: an incident's insert, or a resolve. Both queues keep one entry per incident
instead: a newer state of the same incident replaces the queued one in place, so the queues
grow with the number of incidents, not with the length of the outage, and the cap is reached
only by that many distinct incidents (then the oldest go, counted and logged by the caller).

Rows are keyed by (fingerprint, started_at), the `anomalies` primary key; alerts by
(fingerprint, startsAt), which is what Alertmanager keeps. Order across incidents, and the
order of an incident's escalation and resolution, are kept: only a queued refresh (an upsert,
or a firing alert) is replaced, and only by a later state of the same incident.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from lambdas.detector.alerts import fingerprint
from lambdas.store import anomalies as store


@dataclass(frozen=True)
class Upsert:
    """Insert the incident's row or refresh its figures."""

    row: store.AnomalyRow


@dataclass(frozen=True)
class Escalate:
    """Move the incident's row to its new severity (and fingerprint), then refresh it."""

    row: store.AnomalyRow
    old_fingerprint: str


@dataclass(frozen=True)
class Resolve:
    row: store.AnomalyRow
    at: float


RowOp = Upsert | Escalate | Resolve
RowKey = tuple[str, datetime]


def _key(op: RowOp) -> RowKey:
    return (op.row.fingerprint, op.row.started_at)


class RowQueue:
    """The pending `anomalies` writes, applied in order; one refresh per incident."""

    def __init__(self, cap: int = 10_000) -> None:
        self.cap = cap
        self._ops: list[RowOp] = []
        # Row key -> index of the last queued op touching it (an escalation touches both).
        self._last: dict[RowKey, int] = {}

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[RowOp]:
        return iter(list(self._ops))

    def add(self, op: RowOp) -> int:
        """Queue `op`; returns how many of the oldest ops the cap dropped (0 normally)."""
        n = self._last.get(_key(op))
        if isinstance(op, Upsert) and n is not None:
            queued = self._ops[n]
            # Nothing later touches the incident: its newer figures can take that place.
            if isinstance(queued, Upsert):
                self._ops[n] = op
                return 0
            if isinstance(queued, Escalate):
                self._ops[n] = replace(queued, row=op.row)
                return 0
        self._ops.append(op)
        self._index(len(self._ops) - 1)
        if len(self._ops) <= self.cap:
            return 0
        dropped = len(self._ops) - self.cap
        self.done(dropped)
        return dropped

    def done(self, n: int) -> None:
        """The first `n` ops are written (or dropped)."""
        del self._ops[:n]
        self._last = {}
        for i in range(len(self._ops)):
            self._index(i)

    def _index(self, i: int) -> None:
        op = self._ops[i]
        self._last[_key(op)] = i
        if isinstance(op, Escalate):
            self._last[(op.old_fingerprint, op.row.started_at)] = i


def _alert_key(alert: Mapping[str, Any]) -> tuple[str, str]:
    return (fingerprint(alert.get("labels") or {}), str(alert.get("startsAt", "")))


class AlertQueue:
    """The alerts Alertmanager has not taken yet, posted in order; one per incident's alert.

    A later alert of the same label set and start replaces the queued one: Alertmanager would
    keep the later one anyway. Alerts of the same labels but another start (a new incident
    after a resolve) are both kept, in order: the resolve must reach Alertmanager before the
    new incident, or Alertmanager merges the new one into the old (overlapping times) and it
    keeps the old start."""

    def __init__(self, cap: int = 1000) -> None:
        self.cap = cap
        self._alerts: dict[tuple[str, str], dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._alerts)

    def add(self, alerts: list[dict[str, Any]]) -> int:
        """Queue `alerts` after the queued ones; returns how many of the oldest the cap
        dropped."""
        for alert in alerts:
            # A replaced alert keeps its place: a dict keeps its keys' first insertion order.
            self._alerts[_alert_key(alert)] = alert
        dropped = max(0, len(self._alerts) - self.cap)
        for key in list(self._alerts)[:dropped]:
            del self._alerts[key]
        return dropped

    def take(self) -> list[dict[str, Any]]:
        """Everything queued, in order; the queue is empty afterwards."""
        batch = list(self._alerts.values())
        self._alerts = {}
        return batch
