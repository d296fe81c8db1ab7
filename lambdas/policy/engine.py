"""The policy engine: a pure function from (policy set, request, time, recent actions) to a verdict.

No I/O and no clock: `now` and the per-account count of actions started in the hour before
`now` are inputs, so the same inputs always give the same verdict (the property tests check
this). Every rule whose selector and conditions all hold contributes a match; the verdict is
the most severe effect among the matches (deny > require-approval > allow) and no match means
allow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from lambdas.policy.model import SEVERITY, Decision, PolicyRequest, RuleMatch, Verdict
from lambdas.policy.policyset import (
    SELECTOR_FIELDS,
    WEEKDAYS,
    Conditions,
    PolicySet,
    Rule,
    Selector,
)

__all__ = ["RuleTrace", "evaluate", "explain"]


@dataclass(frozen=True)
class RuleTrace:
    """Why one rule did or did not match (for `cct policy explain`)."""

    policy_id: str
    effect: str
    matched: bool
    steps: tuple[str, ...]  # one line per check, in evaluation order, ending at the first miss
    reason: str | None  # the rendered reason when matched


def evaluate(
    policy_set: PolicySet,
    request: PolicyRequest,
    now: datetime,
    recent_actions: Mapping[str, int],
) -> Verdict:
    """Decide one request.

    `now` must be timezone-aware. `recent_actions` maps an account id to the number of
    optimization actions started in that account during the hour before `now`; accounts not
    in it count as zero.
    """
    _require_aware(now)
    ctx = _Context(policy_set, request, now, recent_actions.get(request.account_id, 0))
    matches = [
        RuleMatch(rule.policy_id, rule.effect, ctx.render(rule))
        for rule in policy_set.rules
        if _check(rule, ctx, trace=None)
    ]
    return _verdict(matches)


def explain(
    policy_set: PolicySet,
    request: PolicyRequest,
    now: datetime,
    recent_actions: Mapping[str, int],
) -> tuple[Verdict, tuple[RuleTrace, ...]]:
    """The verdict plus, for every rule, the checks made and where it stopped matching."""
    _require_aware(now)
    ctx = _Context(policy_set, request, now, recent_actions.get(request.account_id, 0))
    traces = []
    matches = []
    for rule in policy_set.rules:
        steps: list[str] = []
        matched = _check(rule, ctx, trace=steps)
        reason = ctx.render(rule) if matched else None
        if reason is not None:
            matches.append(RuleMatch(rule.policy_id, rule.effect, reason))
        traces.append(RuleTrace(rule.policy_id, rule.effect, matched, tuple(steps), reason))
    return _verdict(matches), tuple(traces)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def _verdict(matches: list[RuleMatch]) -> Verdict:
    matches.sort(key=lambda m: (-SEVERITY[m.effect], m.policy_id))
    decision: Decision = matches[0].effect if matches else "allow"
    return Verdict(decision, tuple(matches))


class _Context:
    """Per-request values shared by every rule; reason placeholders are filled from here."""

    def __init__(
        self, policy_set: PolicySet, request: PolicyRequest, now: datetime, recent: int
    ) -> None:
        self.request = request
        self.now = now
        self.recent = recent
        self.calendar = policy_set.calendar_for(request.team, request.environment)
        self.local_time = now.astimezone(self.calendar.timezone) if self.calendar else None
        # Matched in any case and without surrounding spaces ("Prod ", "PROD" are prod), like
        # tag names: Azure's are case-insensitive, and a `Legal-Hold` disk is on legal hold.
        self.lowered = {
            attr: getattr(request, attr).strip().lower() for attr in SELECTOR_FIELDS.values()
        }
        self.tags = {k.strip().lower(): v.strip() for k, v in request.tags.items()}
        self.values: dict[str, str] = {
            "provider": request.provider,
            "service": request.service,
            "resource_id": request.resource_id,
            "resource_type": request.resource_type,
            "action": request.action,
            "environment": request.environment,
            "team": request.team,
            "account_id": request.account_id,
            "region": request.region,
            "impact_usd": _usd(request.estimated_monthly_impact_usd),
            "recent_actions": str(recent),
        }
        if self.calendar is not None and self.local_time is not None:
            self.values["calendar"] = self.calendar.name
            self.values["local_time"] = (
                f"{self.local_time:%a %Y-%m-%d %H:%M} {self.calendar.timezone.key}"
            )

    def render(self, rule: Rule) -> str:
        values = dict(self.values)
        when = rule.when
        if when.impact_above_usd is not None:
            values["threshold_usd"] = _usd(when.impact_above_usd)
        if when.account_actions_last_hour_at_least is not None:
            values["limit"] = str(when.account_actions_last_hour_at_least)
        window = next((w for w in when.freeze_windows if w.start <= self.now < w.end), None)
        if window is not None:
            values["freeze_window"] = window.name
        return rule.reason.format_map(values)


def _usd(amount: float) -> str:
    return f"{'-' if amount < 0 else ''}${abs(amount):,.2f}"


def _check(rule: Rule, ctx: _Context, trace: list[str] | None) -> bool:
    """True when the rule's selector and every condition hold; `trace` (explain only)
    collects one line per check, so evaluate builds no strings for rules that miss."""
    if not _selected(rule.match, ctx, trace):
        return False
    when = rule.when
    return all(check(when, ctx, trace) for check in _CONDITIONS)


def _note(trace: list[str] | None, ok: bool, text: str) -> bool:
    if trace is not None:
        trace.append(f"{'match' if ok else 'no match'}: {text}")
    return ok


def _selected(selector: Selector, ctx: _Context, trace: list[str] | None) -> bool:
    for attribute, allowed in selector.fields:
        ok = ctx.lowered[attribute] in allowed
        if trace is not None:
            value = getattr(ctx.request, attribute)
            _note(
                trace, ok, f"{attribute} {value!r} {'is' if ok else 'is not'} in {sorted(allowed)}"
            )
        if not ok:
            return False
    for attribute, excluded in selector.excluded:
        ok = ctx.lowered[attribute] not in excluded
        if trace is not None:
            value = getattr(ctx.request, attribute)
            verb = "is not" if ok else "is"
            _note(trace, ok, f"{attribute} {value!r} {verb} one of the excluded {sorted(excluded)}")
        if not ok:
            return False
    for key, accepted in selector.tags:
        tag = ctx.tags.get(key)
        ok = tag is not None and (not accepted or tag.lower() in accepted)
        if trace is not None:
            wanted = f"in {sorted(accepted)}" if accepted else "present"
            _note(trace, ok, f"tag {key}={tag!r} {'is' if ok else 'is not'} {wanted}")
        if not ok:
            return False
    return True


# Each condition check returns True when the condition holds or is not set on the rule.


def _business_hours(when: Conditions, ctx: _Context, trace: list[str] | None) -> bool:
    if when.business_hours is None:
        return True
    cal, local = ctx.calendar, ctx.local_time
    if cal is None or local is None:
        # The loader refuses sets that use business hours without a default calendar.
        return _note(trace, False, "no business-hours calendar applies")
    if local.date() in cal.holidays:
        inside, why = False, f"{local.date()} is a holiday"
    elif local.weekday() not in cal.weekdays:
        inside, why = False, f"{WEEKDAYS[local.weekday()]} is not a working day"
    else:
        inside = cal.start <= local.time() < cal.end
        why = f"{local:%H:%M} is {'inside' if inside else 'outside'} working hours"
    ok = inside == when.business_hours
    if trace is not None:
        wanted = "during" if when.business_hours else "outside"
        _note(
            trace,
            ok,
            f"wanted {wanted} business hours; {local:%a %Y-%m-%d %H:%M} in calendar "
            f"{cal.describe()}: {why}",
        )
    return ok


def _freeze(when: Conditions, ctx: _Context, trace: list[str] | None) -> bool:
    if not when.freeze_windows:
        return True
    window = next((w for w in when.freeze_windows if w.start <= ctx.now < w.end), None)
    if trace is not None:
        if window is None:
            names = ", ".join(w.name for w in when.freeze_windows)
            _note(trace, False, f"{ctx.now.isoformat()} is in no freeze window ({names})")
        else:
            _note(
                trace,
                True,
                f"{ctx.now.isoformat()} is in freeze window {window.name} "
                f"[{window.start.isoformat()}, {window.end.isoformat()})",
            )
    return window is not None


def _impact(when: Conditions, ctx: _Context, trace: list[str] | None) -> bool:
    if when.impact_above_usd is None:
        return True
    impact = abs(ctx.request.estimated_monthly_impact_usd)
    ok = impact > when.impact_above_usd
    if trace is not None:
        _note(
            trace,
            ok,
            f"|impact| {_usd(impact)}/month {'>' if ok else '<='} {_usd(when.impact_above_usd)}",
        )
    return ok


def _action_not_in(when: Conditions, ctx: _Context, trace: list[str] | None) -> bool:
    if when.action_not_in is None:
        return True
    ok = ctx.lowered["action"] not in when.action_not_in
    if trace is not None:
        _note(
            trace,
            ok,
            f"action {ctx.request.action!r} {'is not' if ok else 'is'} one of the allowed "
            f"{sorted(when.action_not_in)}",
        )
    return ok


def _action_not_allowed_on(when: Conditions, ctx: _Context, trace: list[str] | None) -> bool:
    table = when.action_not_allowed_on
    if table is None:
        return True
    allowed = table.get(ctx.lowered["resource_type"])
    ok = allowed is None or ctx.lowered["action"] not in allowed
    if trace is not None:
        kind = f"resource type {ctx.request.resource_type!r}"
        if allowed is None:
            why = f"{kind} is not one of the listed {sorted(table)}"
        else:
            verb = "is not" if ok else "is"
            why = f"action {ctx.request.action!r} {verb} one allowed on {kind} {sorted(allowed)}"
        _note(trace, ok, why)
    return ok


def _dry_run(when: Conditions, ctx: _Context, trace: list[str] | None) -> bool:
    if when.dry_run is None:
        return True
    ok = ctx.request.dry_run == when.dry_run
    if trace is not None:
        _note(
            trace,
            ok,
            f"dry-run is {str(ctx.request.dry_run).lower()}, rule wants "
            f"{str(when.dry_run).lower()}",
        )
    return ok


def _blast_radius(when: Conditions, ctx: _Context, trace: list[str] | None) -> bool:
    limit = when.account_actions_last_hour_at_least
    if limit is None:
        return True
    ok = ctx.recent >= limit
    if trace is not None:
        _note(
            trace,
            ok,
            f"account {ctx.request.account_id!r} had {ctx.recent} action(s) in the last hour, "
            f"limit {limit}",
        )
    return ok


_CONDITIONS: tuple[Callable[[Conditions, _Context, list[str] | None], bool], ...] = (
    _dry_run,
    _action_not_in,
    _action_not_allowed_on,
    _impact,
    _blast_radius,
    _freeze,
    _business_hours,
)
