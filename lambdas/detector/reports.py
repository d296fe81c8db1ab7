"""One incident per cause: the engine's incidents at every level become reports.

The engine opens an incident on every series whose value departs from what it expected: a
resource, and the service, team and account it rolls up to. A report is what a person is told:
one per cause, at the deepest series that explains the increase (a resource, when one or a few
do), with the aggregate incidents it explains as its ancestors (context, not further alerts).

`ReportBook` is the pure bookkeeping shared by the live detector (`service.Detector`) and
`cct backtest` (`lambdas.backtest.run`); each drives it once per evaluation with the engine's
transitions and hands it a function that attributes an aggregate's increase (the live shell
drills down in VictoriaMetrics and reads change events; the backtest reads its matrix). An
attribution that could not be read in full is no evidence that nothing explains an
aggregate: its report waits for one (`Attribution.unread`, `MAX_UNREAD_TRIES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from lambdas import contract
from lambdas.detector.alerts import alert_labels
from lambdas.detector.attribution import (
    ChangeEvent,
    Child,
    Contributor,
    root_causes,
    share_besides,
    shares_by,
)
from lambdas.detector.config import SEVERITIES, DetectionConfig, SeriesKey
from lambdas.detector.core import OpenIncident, Transition

# Deepest first: resources explain services and teams, which explain accounts.
DEPTH = {"resource": 0, "service": 1, "team": 1, "account": 2}


@dataclass(frozen=True)
class Unread:
    """A part of an attribution that could not be read: the dependency that failed, why, and
    whether asking again can succeed (a timeout can; a query refused as invalid cannot)."""

    dependency: str
    error: str
    retryable: bool

    def describe(self) -> str:
        return f"{self.dependency}: {self.error}"


@dataclass(frozen=True)
class Attribution:
    """What explains an aggregate's increase. `unread` names the parts that could not be read
    (the live drill-down in VictoriaMetrics, the change events in PostgreSQL): what is shown
    is then all that is known, and nothing shown is no evidence that nothing explains it
    (`ReportBook` waits for a complete one: `MAX_UNREAD_TRIES`). The backtest's is always
    complete."""

    contributors: list[Contributor]  # the largest growers of each child level (shown)
    events: list[ChangeEvent]
    # Every resource as read (of a service or a team; empty otherwise): how much of the
    # increase lies inside a sibling aggregate (a team within a service) is read from this,
    # not from the shown few. Grouped only when asked, once per level.
    resources: Sequence[Child]
    _by_level: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    unread: tuple[Unread, ...] = field(default=(), kw_only=True)

    @property
    def complete(self) -> bool:
        return not self.unread

    def share_in(self, other: SeriesKey) -> float:
        """The share of the increase carried by resources that also belong to `other`."""
        if other.level not in self._by_level:  # a key's labels are sorted by name
            names = [n for n, _ in other.labels]
            self._by_level[other.level] = shares_by(self.resources, names)
        return self._by_level[other.level].get(tuple(v for _, v in other.labels), 0.0)


# (key, started_at, now) -> what explains the increase of the aggregate `key`.
Attribute = Callable[[SeriesKey, float, float], Attribution]


@dataclass
class Report:
    """One reported incident: one alert, one `anomalies` row. Its key is the deepest series
    that explains the increase; the aggregate incidents it explains are its ancestors.

    It stays open while any of its sources is: the engine's own incident on the key (`own`),
    an ancestor, or, for an incident adopted from a previous run, the key's value staying at
    the hold threshold of its stored figures. A root cause (a resource reported for the
    aggregates it explains) whose own value falls back below its hold threshold, or stops,
    lets go of its ancestors: it is fixed even while they stay high for other reasons."""

    key: SeriesKey
    labels: dict[str, str]
    started_at: float
    rule: str
    severity: str
    expected: float
    observed: float
    baseline: str
    contributors: list[dict[str, Any]]
    events: list[dict[str, Any]]
    own: bool
    ancestors: dict[SeriesKey, OpenIncident] = field(default_factory=dict)
    # Ancestors stored with an adopted incident, shown until live ones replace them.
    stored_ancestors: list[dict[str, Any]] = field(default_factory=list)
    adopted: bool = False
    normal_ticks: int = 0
    last_seen: float = 0.0
    # The increase when reported (an adopted incident's stored one): the hold threshold of a
    # report that follows its series' value is a fraction of it.
    opened_delta: float = 0.0
    # The value expected when reported: whether its series fell back (rather than the engine
    # taking a lasting step as its new normal) is judged against it.
    opened_expected: float = 0.0
    # The severity this incident's alert had before an escalation, if any.
    escalated_from: str | None = None
    # An aggregate reported as its own cause although its attribution could not be read (the
    # fallback after `MAX_UNREAD_TRIES`): why. Then nothing is known of what explains it.
    unread: Unread | None = None

    @property
    def deviation(self) -> float:
        return (self.observed - self.expected) / max(self.expected, 0.01)

    @property
    def delta(self) -> float:
        return self.observed - self.expected

    def ancestors_json(self) -> list[dict[str, Any]]:
        if not self.ancestors:
            return self.stored_ancestors
        return [
            {
                "level": a.key.level,
                "labels": {k: v for k, v in a.key.labels if v},
                "rule": a.rule,
                "severity": a.severity,
                "started_at": datetime.fromtimestamp(a.started_at, tz=UTC).isoformat(),
                "expected_usd_per_hour": round(a.expected, 4),
                "observed_usd_per_hour": round(a.observed, 4),
                "delta_usd_per_hour": round(a.delta, 4),
            }
            for a in sorted(self.ancestors.values(), key=lambda a: DEPTH[a.key.level])
        ]


class Figures(NamedTuple):
    expected: float
    observed: float
    baseline: str


@dataclass
class Hooks:
    """What the live shell counts; the backtest needs none of it."""

    # A new report of `how` ("own", "root_cause"), with the change events linked to it.
    reported: Callable[[Report, str, Sequence[ChangeEvent]], None] = lambda r, how, ev: None
    folded: Callable[[SeriesKey], None] = lambda key: None
    # An aggregate's attribution could not be read (`Unread`), once per run of failed tries:
    # HELD when its report (or check) began to wait, ATTRIBUTED when a later try no longer
    # had to (it read the attribution, or what was read explains it), FALLBACK when it was
    # judged without it; with the tries so far. (A held incident that closes ends silently.)
    unattributed: Callable[[SeriesKey, str, int, Unread | None], None] = (
        lambda key, outcome, tries, why: None
    )


# How an aggregate was folded: into its root resources, into a reported child, or into a
# sibling (a team into a service, or a service into a team). WAIT: not folded, because the
# child that carries its increase waits for its own attribution (`Held`).
ROOT, CHILD, SIBLING, WAIT = "root", "child", "sibling", "wait"

# How a run of unread attributions went (`Hooks.unattributed`).
HELD, ATTRIBUTED, FALLBACK = "held", "attributed", "fallback"

# An aggregate that nothing explains as read, when the attribution could not be read in
# full (`Attribution.unread`: a drill-down timed out, the change events failed), is not
# reported as its own cause: that would page once per level for one resource's step (the
# resource, its service, team and account). It is tried again at each evaluation, up to this
# many tries in a row (the third evaluation, 6 s later at the live 3 s cadence, plus the
# timeouts); then it is judged without it, as before: a VictoriaMetrics broken for minutes
# must not silence a real aggregate-level increase. An error that retrying cannot fix is
# judged without it at once. A resource needs no attribution and never waits.
MAX_UNREAD_TRIES = 3


class Fold(NamedTuple):
    """How an aggregate was folded into reports, and its increase then."""

    kind: str
    delta: float


def _is(child: Child, resource_ids: set[str]) -> bool:
    """Whether `child` is one of those resources, by its id: a resource known only from a
    change event carries the inventory's labels, which may differ from its series' (no team
    yet)."""
    return child.level == "resource" and child.labels.get("resource_id") in resource_ids


class Streak(NamedTuple):
    """A watched aggregate's run of firing evaluations: how many, and since when. And its
    checks: how many in a row found nothing, how many evaluations ago the last one was, and
    the largest increase they saw (a check costs a drill-down, and an aggregate can fire for
    hours with nothing new to find: each check that finds nothing doubles the wait for the
    next, unless the increase grows beyond that)."""

    ticks: int
    since: float
    checks: int = 0
    waited: int = 0
    delta: float = 0.0
    unread: int = 0  # tries in a row whose attribution could not be read (`MAX_UNREAD_TRIES`)


class Held(NamedTuple):
    """An aggregate whose report waits for its attribution (`MAX_UNREAD_TRIES`): the tries in
    a row that could not read it, why the last failed, and how it is tried again at the next
    evaluation: as an opening (fold None), or as an orphan refolded (`_refold`, with its
    fold)."""

    tries: int
    why: Unread
    fold: Fold | None = None


# The longest wait between two checks of a watched aggregate, in evaluations:
# resolve_after_ticks x 2**MAX_CHECK_BACKOFF (192 s at the live detector's 3 s).
MAX_CHECK_BACKOFF = 5
# An increase larger than any a check found nothing in, by this share of it or by the
# level's materiality (whichever is more), is checked at once.
RECHECK_GROWTH = 0.25


class ReportBook:
    """The open reports and which aggregate incidents each explains. Drive it once per
    evaluation: `step` with the engine's transitions, then `close`."""

    def __init__(
        self,
        detection: DetectionConfig,
        attribute: Attribute,
        hooks: Hooks | None = None,
    ) -> None:
        self.cfg = detection
        self.attribute = attribute
        self.root_cause_share = detection.root_cause_share
        self.hooks = hooks or Hooks()
        # Reported incidents by key; for each aggregate folded into reports, their keys and
        # how it was folded.
        self.reports: dict[SeriesKey, Report] = {}
        self.folded: dict[SeriesKey, set[SeriesKey]] = {}
        self.how_folded: dict[SeriesKey, Fold] = {}
        # Aggregates left open and silent when what they were folded into was fixed, with
        # how many evaluations in a row their rule has fired since, and since when
        # (`_recheck`).
        self.silent: dict[SeriesKey, Streak] = {}
        # For each open aggregate, the ids of the root resources it was folded into that
        # were fixed since it opened: their values are the first cause, not a second one.
        self.fixed_roots: dict[SeriesKey, set[str]] = {}
        # Aggregates whose report waits for an attribution that could not be read, tried
        # again at the next evaluation.
        self.held: dict[SeriesKey, Held] = {}

    @property
    def idle(self) -> bool:
        """Nothing open, watched or held: an evaluation without transitions changes nothing."""
        return not (self.reports or self.silent or self.held)

    # ---------------------------------------------------------------- one evaluation
    def step(
        self,
        transitions: Sequence[Transition],
        open_now: Mapping[SeriesKey, OpenIncident],
        values: Callable[[Iterable[SeriesKey]], Mapping[SeriesKey, float]],
        now: float,
    ) -> set[SeriesKey]:
        """Carry the engine's transitions and the followed series' values (`values` returns
        those it has of the keys asked for) into the reports; the reports touched (to be
        posted)."""
        posted: set[SeriesKey] = set()
        orphans: list[tuple[SeriesKey, Fold | None]] = []
        for tr in transitions:
            if tr.kind == "resolved":
                orphans += self._source_closed(tr)
        # Held aggregates still open and not reported are tried again: openings with this
        # evaluation's, orphans with its orphans.
        self.held = {
            k: h
            for k, h in self.held.items()
            if k in open_now and k not in self.reports and k not in self.folded
        }
        opening = [tr.key for tr in transitions if tr.kind == "opened"]
        opening += [k for k, h in self.held.items() if h.fold is None and k not in opening]
        orphans += [(k, h.fold) for k, h in self.held.items() if h.fold is not None]
        opened, found = self._opening_order(opening, open_now, now)
        for key in opened:
            posted.update(self._open(open_now[key], now, found.get(key)))
        for key in self.folded:  # ancestors show their current figures
            if key in open_now:
                for report_key in self.folded[key]:
                    self.reports[report_key].ancestors[key] = open_now[key]
        orphans += self._follow_values(now, values)
        posted.update(self._recheck(open_now, now))
        # Deepest first, so an account finds the report a service orphaned with it now has
        # (and folds into it as its child).
        for key, fold in sorted(dict(orphans).items(), key=lambda o: DEPTH[o[0].level]):
            if key in open_now and key not in self.folded and key not in self.reports:
                inc = open_now[key]
                touched = self._refold(inc, fold, now)
                posted.update(touched)
                # Watched: an aggregate that its fixed root or child explained (a sibling
                # is not part of it, and `_refold` judges it at once).
                if not touched and fold is not None and fold.kind != SIBLING:
                    self.silent[key] = Streak(0, now)
        return posted

    def close(self, open_now: Mapping[SeriesKey, OpenIncident]) -> list[Report]:
        """Refresh each report's figures from its own incident; remove and return the reports
        none of whose sources is open (resolved)."""
        resolved = []
        for key, report in list(self.reports.items()):
            if report.own and key in open_now:
                inc = open_now[key]
                report.expected, report.observed = inc.expected, inc.observed
                report.baseline = inc.baseline
            if not (report.own or report.ancestors or report.adopted):
                del self.reports[key]
                for agg in [a for a, keys in self.folded.items() if key in keys]:
                    self.folded[agg].discard(key)
                    if not self.folded[agg]:
                        del self.folded[agg]
                        self.how_folded.pop(agg, None)
                resolved.append(report)
        return resolved

    @staticmethod
    def severity(report: Report, open_now: Mapping[SeriesKey, OpenIncident]) -> str:
        """The highest severity of the report's sources (never lower than it had)."""
        found = [report.severity, *(a.severity for a in report.ancestors.values())]
        if report.own and report.key in open_now:
            found.append(open_now[report.key].severity)
        return max(found, key=SEVERITIES.index)

    # ---------------------------------------------------------------- sources closing
    def _source_closed(self, tr: Transition) -> list[tuple[SeriesKey, Fold | None]]:
        """The engine's incident on `tr.key` resolved: it no longer keeps its report (or the
        reports it was folded into) open. Its own value is back to normal, so its report is
        fixed: the aggregates it explained no longer keep it open. Those it alone explained,
        with how they were folded."""
        key = tr.key
        orphans = []
        self.fixed_roots.pop(key, None)
        if key in self.reports:
            report = self.reports[key]
            report.own = False
            # Resolved with its value still up: the engine took the step as the new normal,
            # which says nothing new about the aggregates it explained. Resolved with fewer
            # normal ticks than closing takes: its series stopped (gone, as good as fallen).
            hold = report.opened_expected + self.cfg.hold_fraction * max(
                report.opened_delta, self.cfg.min_impact(key.level)
            )
            fell_back = tr.normal_ticks < self.cfg.resolve_after_ticks or tr.observed < hold
            orphans = self._fixed(report, fell_back)
        for report_key in self.folded.pop(key, set()):
            self.reports[report_key].ancestors.pop(key, None)
        self.how_folded.pop(key, None)
        return orphans

    def _follow_values(
        self, now: float, values: Callable[[Iterable[SeriesKey]], Mapping[SeriesKey, float]]
    ) -> list[tuple[SeriesKey, Fold | None]]:
        """Reports without an engine incident of their own (root causes, adopted ones) show
        their series' current value, and resolve like the engine's incidents: after
        `resolve_after_ticks` values below their hold threshold, or when their series has had
        no value for `stale_after_s` (a deleted resource's series stops). An adopted one then
        ends; a root cause lets go of its ancestors. The aggregates it alone explained."""
        follow = {k: r for k, r in self.reports.items() if not r.own}
        if not follow:
            return []
        cfg = self.cfg
        now_values = values(follow)
        orphans: list[tuple[SeriesKey, Fold | None]] = []
        for key, report in follow.items():
            value = now_values.get(key)
            if value is None:
                if now - report.last_seen > cfg.stale_after_s:
                    orphans += self._fixed(report, fell_back=True)
                continue
            report.last_seen = now
            report.observed = value
            hold = report.expected + cfg.hold_fraction * max(
                report.opened_delta, cfg.min_impact(report.key.level)
            )
            report.normal_ticks = 0 if value >= hold else report.normal_ticks + 1
            if report.normal_ticks >= cfg.resolve_after_ticks:
                orphans += self._fixed(report, fell_back=True)
        return orphans

    def _fixed(self, report: Report, fell_back: bool) -> list[tuple[SeriesKey, Fold | None]]:
        """A report's own incident is over: it no longer keeps itself open, and the
        aggregates it explained no longer keep it open. The aggregates that it alone
        explained, with how they were folded (None when its value did not fall back: nothing
        changed for them)."""
        report.adopted = False
        orphans = []
        for agg in report.ancestors:
            if report.key.level == "resource":
                rid = report.key.as_dict()["resource_id"]
                self.fixed_roots.setdefault(agg, set()).add(rid)
            targets = self.folded.get(agg, set())
            targets.discard(report.key)
            if not targets:
                self.folded.pop(agg, None)
                fold = self.how_folded.pop(agg, None)
                orphans.append((agg, fold if fell_back else None))
        report.ancestors.clear()
        return orphans

    # ---------------------------------------------------------------- incidents opening
    def _opening_order(
        self,
        opened: Sequence[SeriesKey],
        open_now: Mapping[SeriesKey, OpenIncident],
        now: float,
    ) -> tuple[list[SeriesKey], dict[SeriesKey, Attribution]]:
        """The incidents opened this cycle (and those held, tried again), deepest first, so
        an aggregate finds the report of what explains it. Services and teams are siblings:
        of those opening together, the one whose resources hold most of the others'
        increases goes first, and they fold into it (a team growing across two services is
        one incident, the team's; a team within one service is its service's, services first
        on a tie). Their attributions, made once here."""
        found = {
            key: self.attribute(key, open_now[key].started_at, now)
            for key in opened
            if DEPTH[key.level] == 1 and key not in self.reports
        }

        def holds(key: SeriesKey) -> int:
            if DEPTH[key.level] != 1:
                return 0
            share = self.root_cause_share
            return sum(
                1
                for other, f in found.items()
                if other.level != key.level and f.share_in(key) >= share
            )

        order = sorted(opened, key=lambda k: (DEPTH[k.level], -holds(k), k.level))
        return order, found

    def _open(
        self, inc: OpenIncident, now: float, found: Attribution | None = None
    ) -> list[SeriesKey]:
        """Report a newly opened engine incident: as its own report, or folded into the
        reports of the resources (or the child, or the sibling) that explain it. The reports
        it touched. An aggregate that nothing explains as read waits when its attribution
        could not be read (`_waits`): held, and tried again at the next evaluation."""
        key = inc.key
        held = self.held.pop(key, None)
        if key in self.reports:  # a root cause found earlier, or adopted at a restart
            report = self.reports[key]
            report.own, report.adopted = True, False
            return [key]
        found = found or self.attribute(key, inc.started_at, now)
        unread = None
        if key.level != "resource":
            targets, kind = self._fold(inc, found, now)
            wait = self._waits(key, found, kind, bool(targets), held.tries if held else 0)
            if targets:
                return targets
            if isinstance(wait, Held):
                self.held[key] = wait
                return []
            unread = wait
        found_now = (found.contributors, found.events)
        self._new_report(key, inc, inc, found_now, now=now, how="own", unread=unread)
        return [key]

    def _refold(self, inc: OpenIncident, fold: Fold | None, now: float) -> list[SeriesKey]:
        """An aggregate still open after every report it was folded into closed: folded into
        what explains its increase now (another resource that rose since it opened), if
        anything does.

        What happens otherwise depends on what it was folded into. A root resource or a child
        is part of the aggregate: with it back to normal, the aggregate's value is usually on
        its way down (the engine closes it after `resolve_after_ticks`, and a rollup can be
        read a cycle after its resources), and a new alert would page for a cause already
        fixed, so it stays silent (and watched: `_recheck`). A sibling is not part of it: a
        service falls back when another of its teams cuts as much as this team still grows,
        so an aggregate folded into a sibling whose value fell back is reported on its own,
        if its own increase is still there: its rule holds and it keeps `hold_fraction` of
        its increase when folded. When a rise ends, the smaller of two siblings can stay
        open for hours after the larger resolved (its relative rise is larger), on its way
        down: that is no news (it is not watched: `_recheck`). Reported on its own only with
        its attribution read (`_waits`): held until then, and tried again."""
        held = self.held.pop(inc.key, None)
        found = self.attribute(inc.key, inc.started_at, now)
        targets, kind = self._fold(inc, found, now, orphaned=True)
        own = (
            not targets
            and fold is not None
            and fold.kind == SIBLING
            and inc.normal_ticks == 0
            and inc.delta >= self.cfg.hold_fraction * fold.delta
        )
        if not own and held is None:
            return targets
        wait = self._waits(inc.key, found, kind, not own, held.tries if held else 0)
        if not own:
            return targets
        if isinstance(wait, Held):
            self.held[inc.key] = wait._replace(fold=fold)
            return []
        found_now = (found.contributors, found.events)
        self._new_report(inc.key, inc, inc, found_now, now=now, how="own", unread=wait)
        return [inc.key]

    def _recheck(self, open_now: Mapping[SeriesKey, OpenIncident], now: float) -> list[SeriesKey]:
        """Aggregates left silent when what explained them was fixed (`_refold`) are watched
        while the engine keeps them open. One whose value would open an incident now
        (`OpenIncident.firing`: full strength, record included) for `resolve_after_ticks`
        evaluations in a row, lasting `min_duration_s` from the first of them, has a second
        cause that began while the first was open (a diffuse rise that outlasts a deleted
        resource). It is folded into the reports that explain it now (new root causes only
        if they, or all its resources, carry its increase); else, unless roots explain it,
        it is reported as its own cause, provided its resources grew by a material part of
        its increase now
        (`_grown`): a rollup read a few cycles late still carries the deleted resource,
        which its resources no longer show. A value on its way down after the fix holds its
        incident at the hysteresis threshold but does not fire, so it stays silent. A check
        that finds nothing doubles the wait for the next (`Streak`); one that could not read
        the attribution is no check, and is asked again at the next evaluation (`_waits`).
        Deepest first, so an account folds into the service or team reported in the same
        evaluation. The reports it touched."""
        posted: list[SeriesKey] = []
        for key in sorted(self.silent, key=lambda k: (DEPTH[k.level], k.level)):
            inc = open_now.get(key)
            # `firing` is of increases: a decrease incident has no second cause to find.
            decrease = inc is not None and inc.rule == contract.RULE_DECREASE
            if inc is None or decrease or key in self.folded or key in self.reports:
                del self.silent[key]
                continue
            streak = self.silent[key]._replace(waited=self.silent[key].waited + 1)
            if not inc.firing:
                self.silent[key] = streak._replace(ticks=0, since=now)
                continue
            since = streak.since if streak.ticks else now
            streak = streak._replace(ticks=streak.ticks + 1, since=since)
            grew = streak.delta + max(self.cfg.min_impact(key.level), RECHECK_GROWTH * streak.delta)
            if streak.checks and inc.delta >= grew:
                streak = streak._replace(checks=0)
            self.silent[key] = streak
            # The minimum duration counts from the first firing evaluation of the streak, not
            # from the incident's start: the aggregate fired all along while the first cause
            # ran.
            lasted = now - streak.since >= self.cfg.min_duration_s
            wait = self.cfg.resolve_after_ticks << min(streak.checks, MAX_CHECK_BACKOFF)
            if streak.ticks < self.cfg.resolve_after_ticks or not lasted:
                continue
            if streak.checks and streak.waited < wait:
                continue
            found = self.attribute(key, inc.started_at, now)
            # An account's attribution holds only its largest growers, not every resource,
            # so its net change is unknown: it is reported through its services and teams.
            fixed = self.fixed_roots.get(key, set())
            grown = DEPTH[key.level] == 1 and self._grown(inc, found, fixed)
            # New roots must carry its increase as the engine measures it, or its resources
            # must have grown by as much: after a fix, the resource whose growth looks
            # largest can be a wobble while the increase is elsewhere (new resources, whose
            # expected value catches up within minutes, show none of the growth they carry).
            targets, kind = self._fold(inc, found, now, orphaned=True, guarded=not grown)
            unread = self._waits(key, found, kind, bool(targets), streak.unread)
            if isinstance(unread, Held):  # no check: asked again at the next evaluation
                self.silent[key] = streak._replace(unread=unread.tries)
                continue
            if not targets and kind != ROOT and grown:
                found_now = (found.contributors, found.events)
                self._new_report(key, inc, inc, found_now, now=now, how="own", unread=unread)
                targets = [key]
            if targets:
                del self.silent[key]
                posted.extend(targets)
            else:  # asked again later, not at every evaluation
                seen = max(streak.delta, inc.delta)
                self.silent[key] = Streak(0, now, streak.checks + 1, 0, seen)
        return posted

    def _grown(self, inc: OpenIncident, found: Attribution, fixed: set[str]) -> bool:
        """Whether the aggregate's resources, as read now, grew by at least
        `root_cause_share` of its increase (and by a material amount): their net change,
        so that the noise of many resources does not add up to growth, leaving out the fixed
        resource (its fall is the first cause ending) and resources without a value now."""
        resources = found.resources or [c for c in found.contributors if c.level == "resource"]
        growth = sum(
            c.observed - c.expected
            for c in resources
            if math.isfinite(c.observed - c.expected) and not _is(c, fixed)
        )
        need = max(self.root_cause_share * inc.delta, self.cfg.min_impact(inc.key.level))
        return growth >= need

    def _fold(
        self,
        inc: OpenIncident,
        found: Attribution,
        now: float,
        *,
        orphaned: bool = False,
        guarded: bool = False,
    ) -> tuple[list[SeriesKey], str]:
        """Fold the aggregate into the reports that explain it (`_explained_by`); them, and
        how."""
        targets, kind = self._explained_by(inc, found, now, orphaned=orphaned, guarded=guarded)
        if targets:
            self.folded.setdefault(inc.key, set()).update(targets)
            self.how_folded[inc.key] = Fold(kind, inc.delta)
            for target in targets:
                self.reports[target].ancestors[inc.key] = inc
            self.hooks.folded(inc.key)
        return targets, kind

    def _explained_by(
        self,
        inc: OpenIncident,
        found: Attribution,
        now: float,
        *,
        orphaned: bool = False,
        guarded: bool = False,
    ) -> tuple[list[SeriesKey], str]:
        """The reports that explain an aggregate's increase (created when new), and how: its
        root resources, else a reported child with most of the increase, else a sibling
        reported as its own cause whose resources carry most of it; empty when it is diffuse
        and so its own cause (empty and ROOT: roots explain it, none to be reported now; empty
        and WAIT: a child with most of it is held, and may be reported yet). Of
        an `orphaned` aggregate (what explained it was fixed), the root resources fixed since
        it opened are its first cause, not a new one. `guarded`: roots not yet reported are
        reported only if the roots carry `root_cause_share` of the aggregate's increase
        (else the aggregate is left as it is: empty and ROOT)."""
        contributors, events = found.contributors, found.events
        roots = root_causes(contributors, self.root_cause_share, self.cfg.min_impact("resource"))
        fixed = self.fixed_roots.get(inc.key, set()) if orphaned else set()
        if fixed:
            if roots and all(_is(c, fixed) for c in roots):
                # A root fixed while the aggregate was open, read again (back, or in a
                # rollup read late): its first cause, whose own incident the engine's
                # cooldown governs, not a new report; and then nothing else explains it.
                return [], ROOT
            # The other roots must carry half of what grew besides the fixed ones: a root only
            # partly fixed still shows growth, and beside it a small grower of a diffuse rise
            # made up the rest of "half of what grew". (Each keeps its share of the whole
            # increase for ROOT_MIN_SHARE: raised, a grower too small to be a root passed.)
            gone = [c for c in contributors if _is(c, fixed)]
            roots = [c for c in roots if not _is(c, fixed)]
            if share_besides(contributors, roots, gone) < self.root_cause_share:
                roots = []
        if guarded:
            known = all(SeriesKey.of("resource", c.labels) in self.reports for c in roots)
            if not known and sum(c.delta for c in roots) < self.root_cause_share * inc.delta:
                return [], ROOT
        out = []
        for c in roots:
            rkey = SeriesKey.of("resource", c.labels)
            if rkey not in self.reports:
                mine = [e for e in events if e.resource_id == c.labels.get("resource_id")]
                figures = Figures(c.expected, c.observed, inc.baseline)
                self._new_report(rkey, inc, figures, ([], mine), now=now, how="root_cause")
            out.append(rkey)
        if out:
            return out, ROOT
        for c in contributors:
            if c.level == "resource" or c.share < self.root_cause_share:
                continue
            ckey = SeriesKey.of(c.level, c.labels)
            reported = [ckey] if ckey in self.reports else sorted(self.folded.get(ckey, ()))
            if reported:
                return reported, CHILD
            if ckey in self.held:  # it may be reported yet: this one folds into it then
                return [], WAIT
        return self._sibling(inc.key, found), SIBLING

    def _sibling(self, key: SeriesKey, found: Attribution) -> list[SeriesKey]:
        """The sibling report (same depth, other level) whose resources carry most of `key`'s
        increase, when it is its own cause: a team growing inside one service is that
        service's increase seen by owner, and a service whose increase is one team's (across
        services) is that team's: one cause, not two incidents."""
        shares = [
            (found.share_in(other), other)
            for other, report in self.reports.items()
            if report.own and other.level != key.level and DEPTH[other.level] == DEPTH[key.level]
        ]
        share, best = max(shares, default=(0.0, key))
        return [best] if share >= self.root_cause_share else []

    def _waits(
        self, key: SeriesKey, found: Attribution, kind: str, explained: bool, tried: int
    ) -> Held | Unread | None:
        """Whether an aggregate's report waits for its attribution, after `tried` tries in a
        row that could not read it. Nothing explains it as read (not `explained`, `kind`
        from `_explained_by`), but what could not be read may (`Attribution.unread`: a
        drill-down that timed out shows no contributors at all, missing change events hide
        the resources too new to be served), or a child that carries its increase is held:
        then it is no evidence that the aggregate is its own cause. A `Held` (this try
        counted) while it waits; after `MAX_UNREAD_TRIES` tries, or at once when retrying
        cannot help, the `Unread` it is judged without (as if nothing explained it); None
        when its attribution was read in full, or what was read explains it."""
        why = found.unread[0] if found.unread else None
        if found.unread and not all(u.retryable for u in found.unread):
            why = next(u for u in found.unread if not u.retryable)
        elif kind == WAIT:
            held = [h.why for k, h in self.held.items() if k != key and key.contains(k)]
            why = held[0] if held else Unread("detector", "a child waits for its own", True)
        if explained or kind == ROOT or why is None:
            if tried:
                self.hooks.unattributed(key, ATTRIBUTED, tried + 1, None)
            return None
        tries = tried + 1
        if why.retryable and tries < MAX_UNREAD_TRIES:
            if not tried:
                self.hooks.unattributed(key, HELD, tries, why)
            return Held(tries, why)
        self.hooks.unattributed(key, FALLBACK, tries, why)
        return why

    def _new_report(
        self,
        key: SeriesKey,
        inc: OpenIncident,
        figures: Figures | OpenIncident,
        found: tuple[Sequence[Contributor], Sequence[ChangeEvent]],
        *,
        now: float,
        how: str,
        unread: Unread | None = None,
    ) -> Report:
        """A new report of `key`, with the rule, severity and start of the engine incident
        that made it (its own, or the aggregate's it explains), and `found`: its contributors
        and change events (`unread`: why they could not be read)."""
        contributors, events = found
        report = Report(
            key=key,
            labels=alert_labels(key, inc.rule, inc.severity),
            started_at=inc.started_at,
            rule=inc.rule,
            severity=inc.severity,
            expected=figures.expected,
            observed=figures.observed,
            baseline=figures.baseline,
            contributors=[c.as_json() for c in contributors],
            events=[e.as_json() for e in events],
            own=how == "own",
            last_seen=now,
            opened_delta=figures.observed - figures.expected,
            opened_expected=figures.expected,
            unread=unread,
        )
        self.reports[key] = report
        self.hooks.reported(report, how, events)
        return report
