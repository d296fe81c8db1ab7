"""How steps wait for a cloud operation: poll soon, then less and less often.

A fixed 2 s interval made every quick operation (an EBS snapshot of a small volume, a
simulator's instant state change, an API that settles in a second) cost whole seconds, and
a slow one (an instance stop, minutes of snapshot) does not need more than a poll every few
seconds. Delays double from `initial_s` up to `max_s` (StepSettings: CCT_STEP_POLL_INITIAL_S,
CCT_STEP_POLL_MAX_S).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

POLL_INITIAL_S = 0.25
POLL_MAX_S = 5.0


def delays(initial_s: float = POLL_INITIAL_S, max_s: float = POLL_MAX_S) -> Iterator[float]:
    """0.25, 0.5, 1, 2, 4, 5, 5, ... with the defaults."""
    delay = max(0.0, initial_s)
    while True:
        yield min(delay, max_s)
        delay = delay * 2 if delay > 0 else max_s


def wait_until(
    check: Callable[[], bool],
    deadline: float,
    initial_s: float = POLL_INITIAL_S,
    max_s: float = POLL_MAX_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Call `check` until it is true (True) or the monotonic `deadline` passed (False)."""
    for delay in delays(initial_s, max_s):
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        sleep(delay)
    return False  # pragma: no cover - delays() never ends
