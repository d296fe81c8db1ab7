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

`Spool` keeps both queues on disk between cycles, so a detector that dies while PostgreSQL or
Alertmanager is unavailable (a crash, an OOM kill, a node lost) leaves what it owed to the
next one. Replaying a spool is safe even when part of it was delivered before the crash:
every row write is idempotent (an upsert by primary key that does nothing once the incident
is under another fingerprint, an escalation that moves a row only from its old fingerprint, a
resolve only of an open row) and Alertmanager keeps one alert per label set and start.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from lambdas.detector.alerts import fingerprint
from lambdas.detector.config import LEVEL_LABELS
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

    def peek(self) -> list[dict[str, Any]]:
        """Everything queued, in order, left queued."""
        return list(self._alerts.values())

    def take(self) -> list[dict[str, Any]]:
        """Everything queued, in order; the queue is empty afterwards."""
        batch = self.peek()
        self._alerts = {}
        return batch


SPOOL_VERSION = 1


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


class SpoolError(Exception):
    """The spool cannot be read or written (the message says which file and why)."""


def _row_doc(row: store.AnomalyRow) -> dict[str, Any]:
    doc = {f.name: getattr(row, f.name) for f in fields(row)}
    doc["started_at"] = row.started_at.isoformat()
    doc["dimensions"] = dict(row.dimensions)
    for name in ("contributors", "change_events", "ancestors"):
        doc[name] = [dict(item) for item in doc[name]]
    return doc


def _row_of(doc: Mapping[str, Any]) -> store.AnomalyRow:
    started = datetime.fromisoformat(doc["started_at"])
    if started.tzinfo is None:
        raise ValueError("started_at has no zone")
    if doc["level"] not in LEVEL_LABELS or not _string_map(doc["dimensions"]):
        raise ValueError(f"a row of level {doc['level']!r} and dimensions {doc['dimensions']!r}")
    if not all(isinstance(doc[k], str) for k in ("fingerprint", "rule", "severity")):
        raise ValueError("a row whose fingerprint, rule or severity is not text")
    return store.AnomalyRow(**{**doc, "started_at": started})


def apply_ops(conn: psycopg.Connection[Any], ops: Sequence[RowOp]) -> None:
    """The ops' SQL, in order, in the connection's transaction (the caller commits)."""
    for op in ops:
        if isinstance(op, Upsert):
            store.upsert(conn, op.row)
        elif isinstance(op, Escalate):
            store.escalate(conn, op.old_fingerprint, op.row)
        else:
            at = datetime.fromtimestamp(op.at, tz=UTC)
            store.resolve(conn, op.row.fingerprint, op.row.started_at, at)


def still_open(ops: Sequence[RowOp]) -> list[store.AnomalyRow]:
    """The incidents the ops leave open, each with its last row: an escalation moves an
    incident to its new fingerprint, a resolve closes it."""
    rows: dict[RowKey, store.AnomalyRow] = {}
    for op in ops:
        if isinstance(op, Escalate):
            rows.pop((op.old_fingerprint, op.row.started_at), None)
        if isinstance(op, Resolve):
            rows.pop(_key(op), None)
        else:
            rows[_key(op)] = op.row
    return list(rows.values())


def op_doc(op: RowOp) -> dict[str, Any]:
    if isinstance(op, Upsert):
        return {"op": "upsert", "row": _row_doc(op.row)}
    if isinstance(op, Escalate):
        return {"op": "escalate", "row": _row_doc(op.row), "old_fingerprint": op.old_fingerprint}
    return {"op": "resolve", "row": _row_doc(op.row), "at": op.at}


def op_of(doc: Mapping[str, Any]) -> RowOp:
    row = _row_of(doc["row"])
    kind = doc["op"]
    if kind == "upsert":
        return Upsert(row)
    if kind == "escalate":
        return Escalate(row, str(doc["old_fingerprint"]))
    if kind == "resolve":
        return Resolve(row, float(doc["at"]))
    raise ValueError(f"unknown op {kind!r}")


@dataclass
class Spooled:
    rows: list[RowOp]
    alerts: list[dict[str, Any]]
    saved_at: float = 0.0  # epoch seconds of the last save

    def resolves(self) -> list[dict[str, Any]]:
        """The spooled alerts that end an alert (a resolve, an escalation's old severity):
        their endsAt was not after the save. A firing one is not replayed, being older than
        what the detector re-sends for the incidents it takes over: posted again, a firing
        alert of an incident resolved since would page until it expired."""
        out = []
        for alert in self.alerts:
            try:
                ends = datetime.fromisoformat(str(alert.get("endsAt", ""))).timestamp()
            except ValueError:
                continue
            if ends <= self.saved_at:
                out.append(alert)
        return out


class Spool:
    """One JSON file holding what the queues owe, replaced atomically (write, fsync, rename)
    at the end of each cycle that leaves something queued, and removed once nothing is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: bytes | None = None  # what the file holds now (None: no file)
        self._content: bytes | None = None  # its rows and alerts, to skip unchanged saves

    def load(self) -> Spooled:
        """What the last run left; empty when it left nothing. A file that cannot be read as
        a spool is renamed to `<name>.unreadable` (kept for a person) and SpoolError raised."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Spooled([], [], 0.0)
        except OSError as exc:
            raise SpoolError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != SPOOL_VERSION:
                raise ValueError(f"not a version {SPOOL_VERSION} spool")
            rows = [op_of(item) for item in doc["rows"]]
            alerts = [dict(a) for a in doc["alerts"]]
            if not all(_string_map(a.get("labels")) for a in alerts):
                raise ValueError("an alert without labels")
            saved_at = float(doc["saved_at"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            aside = self.path.with_name(self.path.name + ".unreadable")
            try:
                os.replace(self.path, aside)
            except OSError as moved:
                raise SpoolError(
                    f"{self.path}: unreadable ({exc}); not moved aside: {moved.strerror or moved}"
                ) from None
            raise SpoolError(f"{self.path}: unreadable ({exc}); moved to {aside.name}") from None
        self._saved = data
        return Spooled(rows, alerts, saved_at)

    def save(self, rows: RowQueue, alerts: AlertQueue) -> bool:
        """Write the queues if they changed since the last save; True when the file changed."""
        if not len(rows) and not len(alerts):
            if self._saved is None:
                return False
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise SpoolError(f"{self.path}: {exc.strerror or exc}") from None
            self._saved = self._content = None
            return True
        content = json.dumps(
            {"rows": [op_doc(op) for op in rows], "alerts": alerts.peek()}, separators=(",", ":")
        ).encode()
        if content == self._content:
            return False
        # The same bytes with the version and the time of the save in front.
        head = json.dumps({"version": SPOOL_VERSION, "saved_at": time.time()})
        data = head[:-1].encode() + b"," + content[1:]
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            # The rename itself must survive a crash of the node, not only of the process.
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise SpoolError(f"{self.path}: {exc.strerror or exc}") from None
        self._saved, self._content = data, content
        return True
