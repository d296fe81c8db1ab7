"""Hostile AdmissionReviews against `cct serve admission` (a real process, real PostgreSQL):
each gets a clear 400 and is counted, nothing of it is recorded, and the next genuine review is
answered and recorded, so the audit trail never stops."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.admission.metrics import AdmissionMetrics
from lambdas.admission.recorder import DecisionRecorder
from lambdas.store.decisions import DecisionRecord
from tests.admission.conftest import decision_row, wait_for
from tests.admission.support import Webhook, review, workflow
from tests.support.hostile import json_values, mutate

Wait = Callable[[str], dict[str, Any]]


def name() -> str:
    return f"cct-rightsize-compute-{uuid.uuid4().hex[:12]}"


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def with_uid(uid: str) -> bytes:
    body = review(workflow(name()))
    body["request"]["uid"] = uid
    return json.dumps(body).encode()


def with_name(wf_name: str) -> bytes:
    return json.dumps(review(workflow(wf_name))).encode()


CASES = [
    ("JSON nested 40,000 deep (100,000 was a 500)", nested(40_000), "JSON nests deeper than 64"),
    ("JSON nested 200 deep", nested(200), "JSON nests 200 levels deep"),
    (
        "a 200 KB uid (could never be recorded; the writer retried forever)",
        with_uid("u" * 200_000),
        "request uid of 200000 characters exceeds the limit of 128",
    ),
    (
        "a NUL in the workflow name (was admitted, its decision silently dropped)",
        with_name("cct-rightsize-compute-a\x00b"),
        "holds a NUL character",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0][:30] for c in CASES])
def test_hostile_reviews_get_a_400_and_the_audit_trail_goes_on(
    webhook: Webhook, wait_decision: Wait, case: tuple[str, bytes, str]
) -> None:
    what, body, message = case
    before = webhook.metric("cct_admission_bad_requests_total", reason="malformed")
    status, doc = webhook.post(body)
    assert status == 400, (what, doc)
    assert message in doc["error"], (what, doc)
    assert webhook.metric("cct_admission_bad_requests_total", reason="malformed") == before + 1
    good = review(workflow(name()))
    assert webhook.response(good)["allowed"] is True
    wait_decision(good["request"]["uid"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data(), json_values)
def test_any_value_anywhere_in_a_review_gets_an_answer_never_a_500(
    webhook: Webhook, data: st.DataObject, value: Any
) -> None:
    body = review(workflow(name()))
    path = mutate(data, body, value)
    status, doc = webhook.post(json.dumps(body).encode())
    assert status in (200, 400), (path, doc)
    if status == 200:
        assert doc["response"]["uid"] == body["request"]["uid"]
    else:
        assert doc["error"]


def test_a_decision_the_database_refuses_is_dropped_and_counted_not_retried(
    pg_dsn: str,
) -> None:
    """Behind the edge: a record PostgreSQL refuses ("index row requires ... bytes") was an
    OperationalError, retried forever, and every later decision queued behind it."""
    metrics = AdmissionMetrics()
    recorder = DecisionRecorder(pg_dsn, metrics, queue_size=100)
    recorder.start()
    now = datetime.now(UTC)

    def record(decision_id: str) -> DecisionRecord:
        return DecisionRecord(decision_id, "admission", "allow", [], [], {}, now, name())

    good = str(uuid.uuid4())
    try:
        assert recorder.submit(record(os.urandom(100_000).hex()))
        assert recorder.submit(record(good))
        wait_for(lambda: decision_row(pg_dsn, good), what="the good decision")
    finally:
        recorder.close()
    dropped = metrics.decisions_dropped.labels(reason="rejected")._value.get()
    assert dropped == 1
