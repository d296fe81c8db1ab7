"""A PostgreSQL that stops answering at the network level (a partition, a paused host) ends
a query with a retryable error within seconds instead of hanging it. Found in review: the
detector's loop froze for as long as the drop lasted (TCP retransmits for about 15 minutes),
so no alert was evaluated or re-sent and every open one expired in Alertmanager;
statement_timeout cannot help, the server never receives the query."""

from __future__ import annotations

import threading
import time

import pytest

from benchmarks.netdrop import dropped_ports
from lambdas.devstack.stack import services
from lambdas.store.db import StoreError, connect, translate_errors

pytestmark = [pytest.mark.services]


def test_a_query_to_a_database_gone_dark_fails_retryably_instead_of_hanging() -> None:
    pg = services()["postgres"]
    conn = connect(str(pg["dsn"]), application_name="cct-test-dark")
    conn.execute("select 1")
    errors: list[StoreError] = []
    took: list[float] = []

    def query() -> None:
        started = time.monotonic()
        try:
            with translate_errors("select"):
                conn.execute("select 1")
        except StoreError as exc:
            errors.append(exc)
        took.append(time.monotonic() - started)

    worker = threading.Thread(target=query, daemon=True)
    try:
        # Only the server's packets: the query goes out and is never acknowledged, as across
        # a partition (a sender's own loopback drops fail within seconds anyway).
        with dropped_ports([int(pg["port"])], directions=("sport",)):
            worker.start()
            worker.join(40.0)
            assert not worker.is_alive(), "the query still hangs after 40 s of network drop"
    finally:
        if worker.is_alive():
            worker.join(30.0)
        conn.close()
    assert [e.retryable for e in errors] == [True], errors
    assert took[0] < 30.0
