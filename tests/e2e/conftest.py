"""The system test runs against the stack `make up` started (`make test` and `make e2e`
start it). A part that is not healthy fails the test; nothing is skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack

# Per scenario, the hops it passed and when (seconds since its resource was launched):
# printed at the end of the session.
TIMELINE: dict[str, list[tuple[str, float]]] = {}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    s = Stack.load()
    bad = s.unhealthy()
    assert not bad, f"parts of the local stack are not healthy: {bad} (run `make up`)"
    yield s


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMELINE:
        return
    terminalreporter.section("e2e: hop by hop, seconds after the cloud change")
    for scenario, hops in TIMELINE.items():
        terminalreporter.write_line(scenario)
        for hop, t in hops:
            terminalreporter.write_line(f"  {t:7.2f}s  {hop}")
