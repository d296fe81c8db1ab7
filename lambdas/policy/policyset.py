"""A loaded, validated policy set in the form the engine evaluates quickly.

Built only by `lambdas.policy.loader`; every cross-field rule (time zones exist, windows end
after they start, calendars do not overlap) has been checked by then, so the engine can trust it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from functools import cached_property
from zoneinfo import ZoneInfo

from lambdas.policy.model import Effect

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Request attribute each `match` key selects on; values compare case-insensitively and
# without surrounding spaces, on both sides.
SELECTOR_FIELDS: dict[str, str] = {
    "providers": "provider",
    "services": "service",
    "resourceTypes": "resource_type",
    "actions": "action",
    "environments": "environment",
    "teams": "team",
    "accounts": "account_id",
    "regions": "region",
}
# `match` keys that select the requests whose attribute is none of the listed values (every
# service except these). A rule may not give a key and its negation: `services: [a, b]` with
# `servicesNotIn: [b]` is only `services: [a]` said in a confusing way (the schema refuses it).
SELECTOR_EXCLUSIONS: dict[str, str] = {
    "servicesNotIn": "service",
}


@dataclass(frozen=True)
class Calendar:
    """Business hours of one team, environment, or the company default."""

    name: str
    timezone: ZoneInfo
    weekdays: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: time
    end: time
    holidays: frozenset[date]
    teams: frozenset[str]
    environments: frozenset[str]
    default: bool

    def describe(self) -> str:
        days = ",".join(WEEKDAYS[d] for d in sorted(self.weekdays))
        return (
            f"{self.name} ({days} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone.key}, "
            f"{len(self.holidays)} holidays)"
        )


@dataclass(frozen=True)
class Window:
    """A change-freeze window, [start, end)."""

    name: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Selector:
    """Which requests a rule is about. Empty selector = every request."""

    fields: tuple[tuple[str, frozenset[str]], ...] = ()  # (request attribute, lowercased values)
    # (tag key, lowercased accepted values); an empty set means "tag present, any value".
    tags: tuple[tuple[str, frozenset[str]], ...] = ()
    # (request attribute, lowercased values it must not have), from SELECTOR_EXCLUSIONS keys.
    excluded: tuple[tuple[str, frozenset[str]], ...] = ()


@dataclass(frozen=True)
class Conditions:
    """Extra conditions that must all hold; None = not constrained."""

    business_hours: bool | None = None
    freeze_windows: tuple[Window, ...] = ()
    impact_above_usd: float | None = None
    action_not_in: frozenset[str] | None = None
    # Lowercased resource type -> lowercased actions allowed on it.
    action_not_allowed_on: Mapping[str, frozenset[str]] | None = None
    dry_run: bool | None = None
    account_actions_last_hour_at_least: int | None = None


@dataclass(frozen=True)
class Rule:
    policy_id: str  # "<policy name>/<rule id>"
    description: str
    effect: Effect
    reason: str  # template; placeholders were checked by the loader
    match: Selector
    when: Conditions


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    owner: str
    source: str  # file the document came from
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]
    calendars: tuple[Calendar, ...]
    fingerprint: str  # sha256 over the source files, to tell reloads apart
    calendars_by_team: dict[str, Calendar] = field(default_factory=dict)
    calendars_by_environment: dict[str, Calendar] = field(default_factory=dict)
    default_calendar: Calendar | None = None

    @cached_property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(rule for policy in self.policies for rule in policy.rules)

    @cached_property
    def tag_keys(self) -> frozenset[str]:
        """Every tag key a rule's selector reads: a request cut to fit keeps these."""
        return frozenset(key for rule in self.rules for key, _ in rule.match.tags)

    def calendar_for(self, team: str, environment: str) -> Calendar | None:
        """A team's own calendar wins over its environment's, which wins over the default."""
        return (
            self.calendars_by_team.get(team.lower())
            or self.calendars_by_environment.get(environment.lower())
            or self.default_calendar
        )

    def only(self, policy_names: Collection[str]) -> PolicySet:
        """The same set restricted to some policies' rules (calendars stay set-wide)."""
        return PolicySet(
            policies=tuple(p for p in self.policies if p.name in policy_names),
            calendars=self.calendars,
            fingerprint=self.fingerprint,
            calendars_by_team=self.calendars_by_team,
            calendars_by_environment=self.calendars_by_environment,
            default_calendar=self.default_calendar,
        )
