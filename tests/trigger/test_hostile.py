"""Hostile anomaly events: each is dead-lettered with its reason and counted, the events around
it are handled, the offsets are committed and `cct serve trigger` keeps running."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from lambdas.events.cloudevents import InvalidEvent, decode, encode
from lambdas.store.db import BadRecordError, connect, open_pool, translate_errors
from tests.routing.helpers import committed_and_end, produce, read_topic, wait_until
from tests.trigger.events import event_bytes, event_doc
from tests.trigger.fake_kube import FakeKube
from tests.trigger.test_processor import make_processor
from tests.trigger.test_service import TOKEN, trigger_env, trigger_process


def with_delta(uid: str, n: int, delta: str) -> bytes:
    doc = event_doc(uid, n)
    doc["data"]["annotations"]["delta_usd_per_hour"] = delta
    return encode(doc)


def poison(uid: str) -> list[tuple[bytes, str]]:
    """Events the issue saw crash the trigger, or that must not reach the database, each with
    the reason its dead letter must give."""
    return [
        (with_delta(uid, 10, "1e308"), "is outside"),
        (with_delta(uid, 11, "NaN"), "is not finite"),
        (event_bytes(uid, 12, team="pay\x00ments"), "label 'team' contains a NUL character"),
        (event_bytes(uid, 13, resource_id="i-" + "a" * 5000), "label 'resource_id' is longer"),
        # JSON's escape for a lone surrogate: valid JSON, no valid PostgreSQL text.
        (event_bytes(uid, 14, team="pay\ud800ments"), "label 'team' is not valid Unicode"),
        (b"{" * 100_000, "not JSON"),
        (b"x" * 300_000, "exceeds the limit"),
    ]


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(TOKEN) as fake:
        yield fake


def test_poison_between_good_events_is_dead_lettered_and_the_trigger_keeps_running(
    tmp_path: Path, kube: FakeKube, kafka_bootstrap: str, pg_dsn: str, uid: str
) -> None:
    env = trigger_env(tmp_path, kube, kafka_bootstrap, pg_dsn, uid)
    topic = env["CCT_TRIGGER_TOPIC"]
    bad = poison(uid)
    items: list[tuple[bytes | None, bytes]] = [(b"good0", event_bytes(uid, 0))]
    items += [(f"bad{i}".encode(), raw) for i, (raw, _) in enumerate(bad)]
    items.append((b"good1", event_bytes(uid, 1)))
    produce(kafka_bootstrap, topic, items)

    with trigger_process(tmp_path, env) as trigger:
        wait_until(
            lambda: (
                committed_and_end(kafka_bootstrap, topic, env["CCT_TRIGGER_GROUP"])[0] == len(items)
            ),
            120,
            "every offset committed",
            interval=0.3,
        )
        assert trigger.proc.poll() is None, "the trigger exited on a poison event"
        with urllib.request.urlopen(trigger.metrics_url) as resp:
            metrics = resp.read().decode()
        trigger.proc.send_signal(signal.SIGTERM)
        assert trigger.proc.wait(timeout=20) == 0

    assert len(kube.created_names()) == 2  # both good events, on either side of the poison
    dead = read_topic(kafka_bootstrap, env["CCT_TRIGGER_DLQ_TOPIC"], expected=len(bad))
    reasons = {r.key: dict(r.headers)["cct-dlq-reason"].decode() for r in dead}
    for i, (raw, reason) in enumerate(bad):
        key = f"bad{i}".encode()
        assert reason in reasons[key], (key, reasons[key])
        assert next(r.value for r in dead if r.key == key) == raw  # the original bytes
    assert f'cct_trigger_events_total{{outcome="dead_letter"}} {float(len(bad))}' in metrics
    assert 'cct_trigger_events_total{outcome="created"} 2.0' in metrics


@pytest.fixture(scope="module")
def pool(pg_dsn: str) -> Iterator[ConnectionPool]:
    p = open_pool(pg_dsn, application_name="cct-trigger-hostile-test")
    yield p
    p.close()


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("select %s::text", ("pay\x00ments",)),  # refused by the client library
        ("select %s::text", ("pay\ud800ments",)),  # a lone surrogate: no UTF-8 for it
        ("select %s::jsonb", (json.dumps({"team": "pay\x00ments"}),)),  # 22P05
        ("select %s::numeric(18, 6)", ("1e308",)),  # 22003 numeric overflow
        ("insert into t (v) values (%s)", (os.urandom(200_000).hex(),)),  # 54000 index row
    ],
)
def test_values_the_database_refuses_are_bad_records_not_retryable_errors(
    pg_dsn: str, sql: str, params: tuple[str, ...]
) -> None:
    with connect(pg_dsn) as conn:
        conn.execute("create temporary table t (v text primary key)")
        with pytest.raises(BadRecordError) as caught, translate_errors("hostile"):
            conn.execute(sql, params)
    assert not caught.value.retryable


def test_a_refused_record_is_dead_lettered_and_the_next_is_handled(
    kube: FakeKube, pool: ConnectionPool, tmp_path: Path, uid: str
) -> None:
    proc = make_processor(kube, pool, tmp_path, clock=lambda: datetime.now(UTC))
    real = proc.connection
    refuse = [True]

    @contextmanager
    def refusing() -> Iterator[Any]:
        # The first unit of work hits a value PostgreSQL refuses, as one the edge let through
        # would; the processor must not re-raise it (which exited the process) nor retry it.
        with real() as conn, translate_errors("write"):
            if refuse.pop() if refuse else False:
                conn.execute("select %s::numeric(18, 6)", ("1e308",))
            yield conn

    proc.connection = refusing
    handled = proc.handle(event_bytes(uid, 0))
    assert handled.outcome == "dead_letter"
    assert handled.reason is not None and "refused by the database" in handled.reason
    assert proc.handle(event_bytes(uid, 1)).outcome == "created"


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300))
def test_decode_of_any_bytes_is_an_event_or_invalid_event(raw: bytes) -> None:
    with suppress(InvalidEvent):
        decode(raw)


@given(_json, st.dictionaries(_text, _json, max_size=3), st.dictionaries(_text, _json, max_size=3))
def test_decode_of_any_json_in_an_events_place_is_an_event_or_invalid_event(
    anything: Any, labels: dict[str, Any], annotations: dict[str, Any]
) -> None:
    doc = event_doc("h", 0)
    for place in (doc, doc["data"]):
        for key in list(place):
            mutated = json.loads(json.dumps(doc))
            target = mutated if place is doc else mutated["data"]
            target[key] = anything
            with suppress(InvalidEvent):
                decode(encode(mutated))
    doc["data"]["labels"].update(labels)
    doc["data"]["annotations"].update(annotations)
    with suppress(InvalidEvent):
        decode(encode(doc))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.tuples(
        st.text(st.characters(codec="utf-8"), max_size=300),
        st.one_of(st.text(max_size=30), st.floats().map(repr), st.integers().map(str)),
        st.integers(0, 9999),
    )
)
def test_any_label_or_delta_is_handled_without_raising(
    kube: FakeKube, pool: ConnectionPool, tmp_path: Path, uid: str, case: tuple[str, str, int]
) -> None:
    team, delta, n = case
    proc = make_processor(kube, pool, tmp_path, clock=lambda: datetime.now(UTC))
    doc = event_doc(uid, n, "firing", team=team, env="dev")
    doc["data"]["annotations"]["delta_usd_per_hour"] = delta
    handled = proc.handle(encode(doc))
    assert handled.outcome in (
        "created",
        "already_exists",
        "precheck_denied",
        "settled",
        "dead_letter",
    )
    if handled.outcome == "dead_letter":
        assert handled.reason
