"""Faults on the live pipeline, the cheap ones: a handler killed with SIGKILL and restarted,
or the broker's network dropped, while new resources keep arriving loses nothing and
duplicates nothing, hop by hop. The same
code as `benchmarks/faults.py` (which runs the whole matrix) against the stack `make up`
started; a part that is not healthy fails the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.faults import run_fault
from lambdas import contract
from tests.e2e.stack import Stack, TopicWatch

pytestmark = [
    pytest.mark.services,
    pytest.mark.e2e,
    # The restarted handler is started as `make up` starts it and outlives the test on purpose.
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[Stack, TopicWatch]]:
    stack = Stack.load()
    bad = stack.settled()
    assert not bad, f"parts of the local stack are not healthy: {bad} (run `make up`)"
    with TopicWatch(stack.bootstrap, (contract.TOPIC_ANOMALIES,)) as watch:
        yield stack, watch


# A network drop of the broker: its packets discarded (benchmarks/netdrop.py) while the
# bridge produces over TLS and the trigger consumes.
@pytest.mark.parametrize("fault", ["kill trigger", "kill collector", "drop kafka"])
def test_handler_killed_during_load_loses_and_duplicates_nothing(
    live: tuple[Stack, TopicWatch], fault: str
) -> None:
    stack, watch = live
    r = run_fault(stack, watch, fault, events=4, interval=1.5, settle_s=90)
    assert not r.errors, r.errors
    assert r.sent == 4
    assert (r.stored, r.alerted, r.workflows) == (4, 4, 4), r
    assert r.lost_total == 0, r.lost
    assert r.duplicated_total == 0, r.duplicated
