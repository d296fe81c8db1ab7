"""An attribution that could not be read (a drill-down in VictoriaMetrics that timed out,
change events PostgreSQL did not return) is not "nothing explains it": the report book holds
the aggregate's report and tries again at the next evaluation, up to `MAX_UNREAD_TRIES`
tries in a row, then reports it as before. Review finding: one resource's step, with its
drill-downs timed out, was four incidents (the resource, its service, team and account),
each its own alert, reaching the trigger as unmapped events.

First the book alone (pure, time passed in), then the live detector on the real
VictoriaMetrics, Alertmanager and PostgreSQL, its drill-downs sent to a VictoriaMetrics that
never answers (a listening socket that accepts nothing) for a few cycles."""

from __future__ import annotations

import collections
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from lambdas.common.vm import VictoriaMetrics
from lambdas.detector.attribution import Child, Contributor
from lambdas.detector.config import DetectionConfig, SeriesKey
from lambdas.detector.core import Engine
from lambdas.detector.reports import (
    ATTRIBUTED,
    DEPTH,
    FALLBACK,
    HELD,
    MAX_UNREAD_TRIES,
    SIBLING,
    Attribute,
    Attribution,
    Fold,
    Hooks,
    ReportBook,
    Streak,
    Unread,
)
from lambdas.detector.service import Detector
from tests.detector.test_incidents import _served
from tests.detector.test_live import Account, am_alerts, wait_for, watching

LEVELS = ("account", "service", "team", "resource")
OLD = {
    "provider": "aws",
    "billing_account_id": "111",
    "region_id": "us-east-1",
    "service_name": "Amazon EC2",
    "team": "web",
    "resource_id": "i-old",
}
T0 = 1_780_000_000.0
TIMED_OUT = Unread("victoriametrics", "/api/v1/query: TimeoutError: timed out", True)
REFUSED = Unread("victoriametrics", "query failed: cannot parse", False)
PG_DOWN = Unread("postgres", "connection refused", True)


def explained(key: SeriesKey, started: float, now: float) -> Attribution:
    """i-old carries all of every aggregate's step (100 -> 200 $/h)."""
    root = Contributor("resource", OLD, 100.0, 200.0, 100.0, 1.0)
    resources = [Child("resource", OLD, 100.0, 200.0)] if DEPTH[key.level] == 1 else []
    return Attribution([root], [], resources)


def failing(times: int, why: Unread = TIMED_OUT, then: Attribute = explained) -> Attribute:
    """An attribution that cannot be read for each key's first `times` calls (a resource's
    too: its change events), then `then`'s."""
    calls: collections.Counter[SeriesKey] = collections.Counter()

    def attribute(key: SeriesKey, started: float, now: float) -> Attribution:
        calls[key] += 1
        if calls[key] <= times:
            return Attribution([], [], [], unread=(why,))
        return then(key, started, now)

    return attribute


Outcomes = list[tuple[str, str, int]]


def _at(value: float) -> Callable[[Iterable[SeriesKey]], dict[SeriesKey, float]]:
    """Every followed series at `value`."""
    return lambda wanted: dict.fromkeys(wanted, value)


def _stepped(
    attribute: Attribute, evaluations: int, levels: tuple[str, ...] = LEVELS
) -> tuple[ReportBook, list[list[str]], Outcomes]:
    """A book over i-old and the aggregates of `levels` it rolls up to (young series, judged
    by their step), one evaluation every 3 s: 100 $/h twice, then 200 $/h at every level for
    `evaluations`. The reports' levels after each evaluation from the step on, and the
    book's `unattributed` outcomes: (level, outcome, tries)."""
    keys = [SeriesKey.of(level, OLD) for level in levels]
    engine = Engine(DetectionConfig(day0_window_s=1e9))
    idx = engine.index_of(keys)
    outcomes: Outcomes = []

    def unattributed(key: SeriesKey, outcome: str, tries: int, why: Unread | None) -> None:
        outcomes.append((key.level, outcome, tries))

    book = ReportBook(DetectionConfig(), attribute, Hooks(unattributed=unattributed))
    seen = []
    for n, value in enumerate([100.0, 100.0] + [200.0] * evaluations):
        now = T0 + 3 * n
        transitions = engine.observe(now, idx, [value] * len(keys))
        open_now = {inc.key: inc for inc in engine.open_incidents()}
        book.step(transitions, open_now, _at(value), now)
        book.close(open_now)
        if n >= 2:
            seen.append(sorted(k.level for k in book.reports))
    return book, seen, outcomes


def test_the_step_opens_at_every_level_and_is_one_report() -> None:
    book, seen, outcomes = _stepped(explained, 3)
    assert seen == [["resource"]] * 3 and outcomes == []
    [report] = book.reports.values()
    assert {k.level for k in report.ancestors} == {"account", "service", "team"}


@pytest.mark.parametrize("fails", range(1, MAX_UNREAD_TRIES))
def test_aggregates_whose_attribution_failed_wait_and_fold_into_their_root(fails: int) -> None:
    # The resource is reported at once, its own attribution (its change events) failing too;
    # the aggregates are held, not reported, and fold into it once a try reads theirs.
    book, seen, outcomes = _stepped(failing(fails), fails + 2)
    assert seen == [["resource"]] * (fails + 2)
    [report] = book.reports.values()
    assert {k.level for k in report.ancestors} == {"account", "service", "team"}
    assert book.held == {} and report.unread is None
    assert sorted(outcomes) == sorted(
        [(level, HELD, 1) for level in LEVELS[:3]]
        + [(level, ATTRIBUTED, fails + 1) for level in LEVELS[:3]]
    )


def test_held_aggregates_are_no_ancestors_until_attributed() -> None:
    book, _, _ = _stepped(failing(MAX_UNREAD_TRIES - 1), MAX_UNREAD_TRIES - 1)
    [report] = book.reports.values()
    assert report.ancestors == {}
    assert {k.level for k in book.held} == {"account", "service", "team"}
    assert not book.idle


def test_an_attribution_failing_past_the_bound_reports_the_aggregates_as_before() -> None:
    # A VictoriaMetrics broken for minutes must not silence an aggregate-level increase: after
    # MAX_UNREAD_TRIES tries each aggregate is judged without it (nothing explains it: its own
    # cause), and says why.
    book, seen, outcomes = _stepped(failing(100), MAX_UNREAD_TRIES + 1)
    before = [["resource"]] * (MAX_UNREAD_TRIES - 1)
    assert seen == before + [["account", "resource", "service", "team"]] * 2
    for key, report in book.reports.items():
        assert report.unread == (None if key.level == "resource" else TIMED_OUT)
        assert report.own
    assert book.held == {}
    assert sorted(outcomes) == sorted(
        [(level, HELD, 1) for level in LEVELS[:3]]
        + [(level, FALLBACK, MAX_UNREAD_TRIES) for level in LEVELS[:3]]
    )


def test_an_error_retrying_cannot_fix_is_judged_without_the_attribution_at_once() -> None:
    _, seen, outcomes = _stepped(failing(100, REFUSED), 1)
    assert seen == [["account", "resource", "service", "team"]]
    assert sorted(outcomes) == [(level, FALLBACK, 1) for level in ("account", "service", "team")]


def test_missing_change_events_do_not_hold_what_the_drill_down_explains() -> None:
    # PostgreSQL failed, VictoriaMetrics did not: i-old explains the step, as read.
    def no_events(key: SeriesKey, started: float, now: float) -> Attribution:
        found = explained(key, started, now)
        return Attribution(found.contributors, [], found.resources, unread=(PG_DOWN,))

    book, seen, outcomes = _stepped(no_events, 1)
    assert seen == [["resource"]] and outcomes == []
    [report] = book.reports.values()
    assert {k.level for k in report.ancestors} == {"account", "service", "team"}


def test_missing_change_events_are_no_evidence_of_a_diffuse_rise() -> None:
    # Nothing the drill-down read explains the service's step, but a resource too new to be
    # served is known only from its change events, which could not be read: held, like a
    # failed drill-down, then judged without them.
    def diffuse(key: SeriesKey, started: float, now: float) -> Attribution:
        return Attribution([], [], [], unread=(PG_DOWN,))

    book, seen, outcomes = _stepped(diffuse, MAX_UNREAD_TRIES, levels=("service",))
    assert seen == [[]] * (MAX_UNREAD_TRIES - 1) + [["service"]]
    assert outcomes == [("service", HELD, 1), ("service", FALLBACK, MAX_UNREAD_TRIES)]
    [report] = book.reports.values()
    assert report.unread == PG_DOWN


def test_an_account_waits_for_its_held_service_then_folds_into_it() -> None:
    # A diffuse rise in one service: the account's attribution (read) shows the service with
    # all of its increase, and the service's could not be read. Reported now, the account
    # would be its own cause beside the service reported a cycle later: it waits for it.
    def attribute(key: SeriesKey, started: float, now: float) -> Attribution:
        if key.level == "account":
            labels = SeriesKey.of("service", OLD).as_dict()
            return Attribution([Contributor("service", labels, 100, 200, 100, 1)], [], [])
        return Attribution([], [], [])  # diffuse: no resource explains it

    book, seen, outcomes = _stepped(failing(1, then=attribute), 2, levels=("account", "service"))
    assert seen == [[], ["service"]]
    [report] = book.reports.values()
    assert report.own and {k.level for k in report.ancestors} == {"account"}
    assert sorted(outcomes) == [
        ("account", ATTRIBUTED, 2),
        ("account", HELD, 1),
        ("service", ATTRIBUTED, 2),
        ("service", HELD, 1),
    ]


def test_a_team_left_by_its_fallen_service_waits_for_its_attribution_then_is_reported() -> None:
    # The team's diffuse rise is folded into its service (its sibling); the service falls
    # back while the team stays high, so the team is judged on its own (`_refold`), and its
    # attribution cannot be read then: held, and reported at the next evaluation, once read.
    service, team = SeriesKey.of("service", OLD), SeriesKey.of("team", OLD)
    engine = Engine(DetectionConfig(day0_window_s=1e9))
    idx = engine.index_of([service, team])
    grown = [Child("resource", OLD, 100.0, 200.0)]  # shares only: no root, a diffuse rise
    calls: collections.Counter[SeriesKey] = collections.Counter()

    def attribute(key: SeriesKey, started: float, now: float) -> Attribution:
        calls[key] += 1
        if key == team and calls[key] == 2:
            return Attribution([], [], [], unread=(TIMED_OUT,))
        return Attribution([], [], grown)

    book = ReportBook(DetectionConfig(), attribute)
    seen = []
    for n, values in enumerate([(100.0, 100.0)] * 2 + [(200.0, 200.0)] + [(100.0, 200.0)] * 6):
        now = T0 + 3 * n
        transitions = engine.observe(now, idx, list(values))
        open_now = {inc.key: inc for inc in engine.open_incidents()}
        book.step(transitions, open_now, _at(0.0), now)
        book.close(open_now)
        seen.append((sorted(k.level for k in book.reports), sorted(k.level for k in book.held)))
        if team in book.held:
            assert book.held[team].fold == Fold(SIBLING, 100.0)  # tried again as an orphan
    start = seen.index(([], ["team"]))
    assert seen[2:start] == [(["service"], [])] * (start - 2)  # the team folded into it
    assert seen[start + 1 :] == [(["team"], [])] * (len(seen) - start - 1)
    assert calls[team] == 3


def _watched(fails: int, evaluations: int) -> tuple[ReportBook, SeriesKey, list[float]]:
    """A book watching a firing service (i-big's fix left it silent, as in
    `test_backtest._watched`) whose checks cannot read its attribution `fails` times, then
    find i-new carrying its increase; stepped for `evaluations`. The times of the checks."""
    key = SeriesKey.of("service", OLD)
    engine = Engine(DetectionConfig(day0_window_s=1e9))
    idx = engine.index_of([key])
    for n, value in enumerate([100.0, 100.0, 130.0, 130.0]):
        engine.observe(T0 + 3 * n, idx, [value])
    open_now = {inc.key: inc for inc in engine.open_incidents()}
    assert open_now[key].firing
    new = {**OLD, "resource_id": "i-new"}
    checks: list[float] = []

    def found(k: SeriesKey, started: float, now: float) -> Attribution:
        return Attribution([Contributor("resource", new, 0.0, 30.0, 30.0, 1.0)], [], [])

    attribute = failing(fails, then=found)

    def counted(k: SeriesKey, started: float, now: float) -> Attribution:
        checks.append(now)
        return attribute(k, started, now)

    book = ReportBook(DetectionConfig(), counted)
    book.silent[key] = Streak(0, T0)
    book.fixed_roots[key] = {"i-big"}
    for n in range(evaluations):
        book.step([], open_now, lambda keys: {}, T0 + 12 + 3 * n)
    return book, key, checks


def test_a_watch_check_that_cannot_read_the_attribution_is_asked_again_at_once() -> None:
    # Not a check that found nothing (whose next one waits twice as long): the next
    # evaluation asks again, and reports the root it then finds.
    book, key, checks = _watched(1, 3)
    assert [round(t - T0) for t in checks] == [15, 18]
    assert [k.as_dict().get("resource_id") for k in book.reports] == ["i-new"]
    assert key not in book.silent


def test_a_watch_check_failing_past_the_bound_counts_as_one_that_found_nothing() -> None:
    # Tried at consecutive evaluations, then a check that found nothing: the next one waits
    # twice `resolve_after_ticks` (2) evaluations, as before.
    book, key, checks = _watched(100, 8)
    tries = [15 + 3 * n for n in range(MAX_UNREAD_TRIES)]
    assert [round(t - T0) for t in checks] == [*tries, tries[-1] + 3 * 4]
    assert book.reports == {} and book.silent[key].checks == 1
    assert book.silent[key].unread == 1  # the next check's first try


# ---------------------------------------------------------------- the live detector


@pytest.fixture
def account(vm: VictoriaMetrics, uid: str) -> Account:
    return Account(vm, uid)


@pytest.fixture
def detector(
    account: Account, vm_url: str, alertmanager_url: str, pg_dsn: str
) -> Iterator[Detector]:
    d = Detector(watching(account, vm_url, alertmanager_url, pg_dsn, resend_s=0.01))
    yield d
    d.close()


class SlowDrillDowns:
    """The detector's drill-downs, while `on`, sent to a VictoriaMetrics that never answers:
    the kernel accepts the connection into a backlog nobody reads, so each query times out
    (the detector's client waits max(2, interval) s; this one 0.5 s). Its other reads go on
    as ever. `levels`: the levels drilled down."""

    def __init__(self, detector: Detector, caplog: pytest.LogCaptureFixture, port: int) -> None:
        self.on = True
        self.levels: list[str] = []
        self.caplog = caplog
        self._detector = detector
        self._real = detector._drill_down
        self._slow = VictoriaMetrics(f"http://127.0.0.1:{port}", timeout=0.5)

    def drill_down(self, key: SeriesKey, now: float) -> Any:
        self.levels.append(key.level)
        if not self.on:
            return self._real(key, now)
        served, self._detector.vm = self._detector.vm, self._slow
        try:
            return self._real(key, now)
        finally:
            self._detector.vm = served

    def logged(self, start: str) -> int:
        return sum(r.getMessage().startswith(start) for r in self.caplog.records)


@pytest.fixture
def slow(
    detector: Detector, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[SlowDrillDowns]:
    caplog.set_level(logging.INFO, logger="cct.detector")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        slow = SlowDrillDowns(detector, caplog, sock.getsockname()[1])
        slow.on = False  # switched on by the test
        monkeypatch.setattr(detector, "_drill_down", slow.drill_down)
        yield slow


def _alerted_levels(alertmanager_url: str, of: Account) -> set[str]:
    """The levels of this test's active alerts (a team's alert carries its team, not its
    account)."""
    found = am_alerts(alertmanager_url, billing_account_id=of.account)
    found += am_alerts(alertmanager_url, team=of.team)
    return {a["labels"]["level"] for a in found if a["status"]["state"] == "active"}


def _resized(d: Detector, of: Account) -> None:
    """i-old, all of its account, is resized 100 -> 200 $/h (no change event stored yet)."""
    of.write(100.0, **{"i-old": 100.0})
    d.cycle(time.time())
    d.cycle(time.time())
    of.write(200.0, **{"i-old": 200.0})
    wait_for(lambda: _served(d, "i-old", 200.0), "i-old at 200")


@pytest.mark.parametrize("failing_cycles", range(1, MAX_UNREAD_TRIES))
def test_one_cause_is_one_report_while_drill_downs_time_out(
    detector: Detector,
    account: Account,
    slow: SlowDrillDowns,
    alertmanager_url: str,
    failing_cycles: int,
) -> None:
    """The reviewer's reproduction: the drill-downs time out for a cycle or two. Before, the
    account, service and team were reported as their own (diffuse) causes next to i-old:
    four alerts for one step."""
    _resized(detector, account)
    slow.on = True
    for _ in range(failing_cycles):
        detector.cycle(time.time())
        assert sorted(k.level for k in detector.reports) == ["resource"]
    # A resource needs no drill-down: only the aggregates were drilled down, and timed out.
    assert sorted(slow.levels) == sorted(["account", "service", "team"] * failing_cycles)
    errors = detector.metrics.errors.labels("victoriametrics")._value.get()
    assert errors == 3 * failing_cycles
    slow.on = False
    detector.cycle(time.time())
    [report] = detector.reports.values()
    assert report.labels["resource_id"] == "i-old"
    assert {k.level for k in report.ancestors} == {"account", "service", "team"}
    unattributed = detector.metrics.unattributed
    assert unattributed.labels(HELD)._value.get() == 3
    assert unattributed.labels(ATTRIBUTED)._value.get() == 3
    assert unattributed.labels(FALLBACK)._value.get() == 0
    # Logged once per series, not once per cycle.
    assert slow.logged("attribution failed") == 3
    assert slow.logged("attribution read after failing") == 3
    wait_for(lambda: _alerted_levels(alertmanager_url, account) == {"resource"}, "i-old's alert")
    for _ in range(2):  # and nothing else is reported later
        detector.cycle(time.time())
        assert [k.level for k in detector.reports] == ["resource"]
    assert _alerted_levels(alertmanager_url, account) == {"resource"}


def test_drill_downs_timing_out_past_the_bound_report_the_aggregates(
    detector: Detector, account: Account, slow: SlowDrillDowns, alertmanager_url: str
) -> None:
    """The fallback: a VictoriaMetrics whose drill-downs keep timing out does not silence the
    aggregates; after MAX_UNREAD_TRIES cycles they are reported as before, without
    attribution (each says why)."""
    _resized(detector, account)
    slow.on = True
    for _ in range(MAX_UNREAD_TRIES - 1):
        detector.cycle(time.time())
        assert sorted(k.level for k in detector.reports) == ["resource"]
    detector.cycle(time.time())
    assert sorted(k.level for k in detector.reports) == ["account", "resource", "service", "team"]
    for report in detector.reports.values():
        if report.key.level != "resource":
            assert report.unread is not None and report.unread.dependency == "victoriametrics"
            assert report.unread.retryable and report.contributors == []
    assert detector.metrics.unattributed.labels(FALLBACK)._value.get() == 3
    assert slow.logged("attribution failed") == 6  # held, then judged without it: each once
    everything = {"account", "resource", "service", "team"}
    wait_for(lambda: _alerted_levels(alertmanager_url, account) == everything, "four alerts")
