"""The detector's queues of undelivered rows and alerts (lambdas.detector.outbox): one entry
per incident, order kept where it matters; the spool that keeps them across a crash. The
live outage and crash tests are in test_live.py."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.detector.alerts import alert_labels, build_alert, fingerprint
from lambdas.detector.config import SeriesKey
from lambdas.detector.outbox import (
    AlertQueue,
    Escalate,
    Resolve,
    RowOp,
    RowQueue,
    Spool,
    SpoolError,
    Upsert,
    op_doc,
    still_open,
)
from lambdas.store.anomalies import AnomalyRow

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)
KEY = SeriesKey("team", (("team", "web"),))


def row(severity: str = "warning", observed: float = 130.0, start: datetime = T0) -> AnomalyRow:
    labels = alert_labels(KEY, "seasonal", severity)
    return AnomalyRow(
        fingerprint=fingerprint(labels),
        started_at=start,
        rule="seasonal",
        level="team",
        severity=severity,
        dimensions={"team": "web"},
        expected_usd_per_hour=100.0,
        observed_usd_per_hour=observed,
        deviation=observed / 100.0 - 1,
        contributors=[],
        change_events=[],
    )


def alert(severity: str, observed: float, *, start: datetime = T0, ended: bool = False) -> Any:
    at = start.timestamp()
    return build_alert(
        alert_labels(KEY, "seasonal", severity),
        started_at=at,
        ends_at=at + (60 if ended else 3600),
        expected=100.0,
        observed=observed,
        deviation=observed / 100.0 - 1,
        baseline="seasonal",
        contributors=[],
        change_events=[],
        ancestors=[],
    )


def test_a_refresh_replaces_the_incident_s_queued_row() -> None:
    queue = RowQueue()
    for observed in (130.0, 140.0, 150.0):
        queue.add(Upsert(row(observed=observed)))
    assert [op.row.observed_usd_per_hour for op in queue] == [150.0]


def test_an_escalation_and_a_resolve_keep_their_order_and_absorb_later_refreshes() -> None:
    queue = RowQueue()
    warning, critical = row("warning"), row("critical", 300.0)
    queue.add(Upsert(warning))
    queue.add(Escalate(critical, warning.fingerprint))
    queue.add(Upsert(row("critical", 310.0)))
    queue.add(Resolve(row("critical", 310.0), T0.timestamp() + 600))
    # A new incident of the same labels after the resolve: a row of its own.
    later = T0 + timedelta(hours=1)
    queue.add(Upsert(row("warning", 130.0, later)))
    queue.add(Upsert(row("warning", 135.0, later)))
    kinds = [(type(op).__name__, op.row.severity, op.row.observed_usd_per_hour) for op in queue]
    assert kinds == [
        ("Upsert", "warning", 130.0),
        ("Escalate", "critical", 310.0),
        ("Resolve", "critical", 310.0),
        ("Upsert", "warning", 135.0),
    ]


def test_the_cap_drops_the_oldest_incidents_and_says_how_many() -> None:
    queue = RowQueue(cap=2)
    starts = [T0 + timedelta(minutes=n) for n in range(3)]
    dropped = [queue.add(Upsert(row(start=s))) for s in starts]
    assert dropped == [0, 0, 1]
    assert [op.row.started_at for op in queue] == starts[1:]
    # The index follows the shift: a refresh still finds its incident.
    queue.add(Upsert(row(observed=999.0, start=starts[2])))
    assert [op.row.observed_usd_per_hour for op in queue] == [130.0, 999.0]


def test_done_rows_leave_and_the_rest_keep_their_incidents() -> None:
    queue = RowQueue()
    a, b = row(start=T0), row(start=T0 + timedelta(minutes=1))
    queue.add(Upsert(a))
    queue.add(Upsert(b))
    queue.done(1)
    queue.add(Upsert(row(observed=200.0, start=b.started_at)))
    assert [(op.row.started_at, op.row.observed_usd_per_hour) for op in queue] == [
        (b.started_at, 200.0)
    ]


def test_an_alert_s_later_state_replaces_it_in_its_place() -> None:
    queue = AlertQueue()
    queue.add([alert("warning", 130.0), alert("critical", 300.0)])
    queue.add([alert("warning", 130.0, ended=True), alert("critical", 310.0)])
    batch = queue.take()
    assert [
        (a["labels"]["severity"], float(a["annotations"]["observed_usd_per_hour"])) for a in batch
    ] == [
        ("warning", 130.0),
        ("critical", 310.0),
    ]
    assert batch[0]["endsAt"] < batch[1]["endsAt"]
    assert len(queue) == 0 and queue.take() == []


def test_a_new_incident_of_the_same_labels_does_not_replace_the_old_one_s_resolve() -> None:
    queue = AlertQueue()
    queue.add([alert("warning", 130.0, ended=True)])
    queue.add([alert("warning", 140.0, start=T0 + timedelta(hours=1))])
    resolved, new = queue.take()
    assert resolved["startsAt"] != new["startsAt"] and resolved["endsAt"] < new["startsAt"]


ops = st.lists(
    st.tuples(
        st.sampled_from(["upsert", "escalate", "resolve"]),
        st.integers(0, 3),
        st.floats(1, 1000, allow_nan=False),
    ),
    max_size=40,
)


@given(ops)
def test_the_queue_writes_what_the_ops_in_order_would_have(script: list[Any]) -> None:
    """Applying the compacted queue to a table gives the same rows as applying every op."""

    def apply(table: dict[Any, Any], op: RowOp) -> None:
        key = (op.row.fingerprint, op.row.started_at)
        if isinstance(op, Upsert):
            table[key] = {**table.get(key, {}), "observed": op.row.observed_usd_per_hour}
        elif isinstance(op, Escalate):
            old = table.pop((op.old_fingerprint, op.row.started_at), None)
            if old is not None:
                table[key] = old
            table[key] = {**table.get(key, {}), "observed": op.row.observed_usd_per_hour}
        elif key in table:
            table[key] = {**table[key], "resolved": True}

    full: dict[Any, Any] = {}
    queue = RowQueue()
    severity: dict[int, str] = {}
    for kind, incident, observed in script:
        start = T0 + timedelta(minutes=incident)
        current = severity.setdefault(incident, "warning")
        if kind == "escalate" and current == "warning":
            op: RowOp = Escalate(
                row("critical", observed, start), row("warning", 0, start).fingerprint
            )
            severity[incident] = "critical"
        elif kind == "resolve":
            op = Resolve(row(current, observed, start), 0.0)
        else:
            op = Upsert(row(current, observed, start))
        apply(full, op)
        queue.add(op)
    compacted: dict[Any, Any] = {}
    for op in queue:
        apply(compacted, op)
    assert compacted == full


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(ops, st.lists(st.dictionaries(st.text(), json_values, max_size=3), max_size=3))
def test_the_spool_gives_back_what_was_queued(
    tmp_path: Path, script: list[Any], contributors: list[dict[str, Any]]
) -> None:
    queue, alerts = RowQueue(), AlertQueue()
    for n, (kind, incident, observed) in enumerate(script):
        start = T0 + timedelta(minutes=incident, microseconds=n)
        base = row("warning", observed, start)
        base = AnomalyRow(**{**base.__dict__, "contributors": contributors})
        if kind == "escalate":
            queue.add(Escalate(base, "f" * 16))
        elif kind == "resolve":
            queue.add(Resolve(base, 1.5e9 + n))
        else:
            queue.add(Upsert(base))
        alerts.add([alert("warning", observed, start=start)])
    path = tmp_path / "spool.json"
    path.unlink(missing_ok=True)
    Spool(path).save(queue, alerts)
    left = Spool(path).load()
    assert [op_doc(op) for op in left.rows] == [op_doc(op) for op in queue]
    assert left.alerts == alerts.peek()


def test_the_spool_is_private_written_only_on_change_and_removed_once_delivered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.json"
    spool, queue, alerts = Spool(path), RowQueue(), AlertQueue()
    assert spool.save(queue, alerts) is False and not path.exists()
    queue.add(Upsert(row()))
    assert spool.save(queue, alerts) is True
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert spool.save(queue, alerts) is False  # unchanged: not rewritten every cycle
    queue.add(Upsert(row(observed=140.0)))
    assert spool.save(queue, alerts) is True
    queue.done(len(queue))
    assert spool.save(queue, alerts) is True and not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"{", "unreadable (Expecting property name enclosed in double quotes"),
        (b"[]", "unreadable (not a version 1 spool)"),
        (b'{"version": 2, "rows": [], "alerts": []}', "unreadable (not a version 1 spool)"),
        (b'{"version": 1, "rows": [{"op": "drop", "row": {}}], "alerts": []}', "unreadable ("),
        (b'{"version": 1, "rows": [], "alerts": [{"startsAt": "x"}]}', "an alert without labels"),
        (b'{"version": 1, "rows": [], "alerts": [3]}', "unreadable ("),
        (b'{"version": 1, "rows": [], "alerts": [{"labels": {"a": 1}}]}', "without labels"),
        (b"\xff\xfe", "unreadable ("),
    ],
)
def test_an_unreadable_spool_is_set_aside_and_named(
    tmp_path: Path, content: bytes, error: str
) -> None:
    path = tmp_path / "spool.json"
    path.write_bytes(content)
    with pytest.raises(SpoolError, match=r"moved to spool\.json\.unreadable") as info:
        Spool(path).load()
    assert error in str(info.value)
    assert not path.exists() and (tmp_path / "spool.json.unreadable").read_bytes() == content
    assert Spool(path).load().rows == []  # the next start begins empty


def test_a_spool_row_without_a_zone_is_refused(tmp_path: Path) -> None:
    op = op_doc(Upsert(row()))
    op["row"]["started_at"] = "2026-12-06T12:00:00"
    doc = {"version": 1, "rows": [op], "alerts": []}
    path = tmp_path / "spool.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpoolError, match="started_at has no zone"):
        Spool(path).load()


def test_a_spool_that_cannot_be_written_says_where(tmp_path: Path) -> None:
    queue = RowQueue()
    queue.add(Upsert(row()))
    with pytest.raises(SpoolError, match=r"missing/spool\.json"):
        Spool(tmp_path / "missing" / "spool.json").save(queue, AlertQueue())


def test_a_spool_row_of_an_unknown_level_is_refused(tmp_path: Path) -> None:
    op = op_doc(Upsert(row()))
    op["row"]["level"] = "galaxy"
    path = tmp_path / "spool.json"
    path.write_text(json.dumps({"version": 1, "rows": [op], "alerts": []}))
    with pytest.raises(SpoolError, match="a row of level 'galaxy'"):
        Spool(path).load()


def test_still_open_follows_escalations_and_resolves() -> None:
    later = T0 + timedelta(hours=1)
    warning, critical = row("warning"), row("critical", 260.0)
    ops: list[RowOp] = [Upsert(warning), Escalate(critical, warning.fingerprint)]
    assert still_open(ops) == [critical]
    assert still_open([*ops, Upsert(row("critical", 270.0))]) == [row("critical", 270.0)]
    assert still_open([*ops, Resolve(critical, 0.0)]) == []
    # A later incident of the same labels after a resolve is open on its own.
    again = row("warning", start=later)
    assert still_open([*ops, Resolve(critical, 0.0), Upsert(again)]) == [again]


def test_only_the_spooled_resolves_are_replayed(tmp_path: Path) -> None:
    """A firing alert in the spool is older than what the detector re-sends for the
    incidents it takes over; replayed, one of an incident resolved since would page again."""
    alerts = AlertQueue()
    now = datetime.now(UTC)
    alerts.add([alert("warning", 130.0, start=now - timedelta(minutes=5))])  # firing
    alerts.add([alert("critical", 260.0, start=now - timedelta(hours=2), ended=True)])
    path = tmp_path / "spool.json"
    Spool(path).save(RowQueue(), alerts)
    left = Spool(path).load()
    assert len(left.alerts) == 2
    assert [a["labels"]["severity"] for a in left.resolves()] == ["critical"]
