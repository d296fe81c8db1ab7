"""Polling a running cloud operation: soon at first, then at most every `max_s`; the
settings that shape it are checked with an error naming the key."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambdas.common.settings import SettingsError
from lambdas.steps import polling
from lambdas.steps.settings import StepSettings


def test_delays_double_from_the_first_up_to_the_largest() -> None:
    assert list(itertools.islice(polling.delays(0.25, 5.0), 8)) == [
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
        5.0,
    ]


def test_zero_polls_back_to_back() -> None:
    """GCP's operations `wait` call blocks server-side: no sleep between calls."""
    assert list(itertools.islice(polling.delays(0.0, 0.0), 3)) == [0.0, 0.0, 0.0]


@given(st.floats(0.001, 10), st.floats(0.001, 100))
def test_no_delay_exceeds_the_largest(initial: float, largest: float) -> None:
    assert all(d <= largest for d in itertools.islice(polling.delays(initial, largest), 40))


def test_wait_until_stops_at_the_check_or_the_deadline() -> None:
    slept: list[float] = []
    answers = iter([False, False, True])
    assert polling.wait_until(lambda: next(answers), float("inf"), 0.25, 5.0, slept.append)
    assert slept == [0.25, 0.5]
    assert not polling.wait_until(lambda: False, 0.0, 0.25, 5.0, slept.append)


@pytest.mark.parametrize(
    ("initial", "largest"), [("0", "5"), ("-1", "5"), ("6", "5"), ("nan", "5")]
)
def test_bad_poll_settings_name_the_key(
    monkeypatch: pytest.MonkeyPatch, initial: str, largest: str
) -> None:
    monkeypatch.setenv("CCT_STEP_POLL_INITIAL_S", initial)
    monkeypatch.setenv("CCT_STEP_POLL_MAX_S", largest)
    with pytest.raises(SettingsError, match="CCT_STEP_POLL_INITIAL_S"):
        StepSettings.from_env()
