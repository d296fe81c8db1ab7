"""Read policy YAML, validate it (JSON Schema, then cross-field rules) and build a PolicySet.

Every problem is reported as `<file>: document <n>: <location>: <message>` so a reviewer can
find it from the CI log alone. Nothing is partially loaded: either the whole set is valid or
`PolicyLoadError` lists what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

from lambdas.policy.policyset import (
    SELECTOR_EXCLUSIONS,
    SELECTOR_FIELDS,
    WEEKDAYS,
    Calendar,
    Conditions,
    Policy,
    PolicySet,
    Rule,
    Selector,
    Window,
)

__all__ = ["PolicyLoadError", "load_policy_set", "parse_policy_files", "policy_files"]

# Placeholders every reason may use, and those that need a condition on the same rule.
_ALWAYS = {
    "provider",
    "service",
    "resource_id",
    "resource_type",
    "action",
    "environment",
    "team",
    "account_id",
    "region",
    "impact_usd",
    "recent_actions",
}
_NEEDS = {
    "calendar": "businessHours",
    "local_time": "businessHours",
    "threshold_usd": "impactAboveUsd",
    "limit": "accountActionsLastHour",
    "freeze_window": "freezeWindows",
}


class PolicyLoadError(ValueError):
    """The policy set is invalid. Fix the files; retrying will not help."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# The JSON Schemas shipped in lambdas/policy/schema/ (also visible as policies/schema/).
SCHEMAS = ("optimization-policy", "policy-tests")


@cache
def schema(name: str = "optimization-policy") -> dict[str, Any]:
    text = resources.files("lambdas.policy").joinpath(f"schema/{name}.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


@cache
def _validator(name: str = "optimization-policy") -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(name))


def schema_error(instance: Any, schema_name: str) -> str | None:
    """The most relevant schema violation as `<location>: <message>`, or None when valid."""
    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is None:
        return None
    return f"{_location(error.absolute_path)}: {_message(error)}"


def _message(error: ValidationError) -> str:
    # A `not` failure's own message prints the whole object; the schema holding the `not`
    # says what is wrong in its description (e.g. two `match` keys that exclude each other).
    if error.validator == "not" and isinstance(error.schema, dict):
        description = error.schema.get("description")
        if isinstance(description, str):
            return description
    return error.message


def policy_files(path: Path) -> list[Path]:
    """The policy files of a directory (`*.yaml`, `*.yml`, not hidden, not recursive)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PolicyLoadError([f"{path}: no such file or directory"])
    return sorted(
        p
        for p in path.iterdir()
        if p.suffix in {".yaml", ".yml"} and not p.name.startswith(".") and p.is_file()
    )


def load_policy_set(path: str | Path) -> PolicySet:
    """Load every policy document of a directory (or one file) into a validated PolicySet."""
    files = policy_files(Path(path))
    return parse_policy_files({p.name: p.read_bytes() for p in files}, origin=str(path))


def parse_policy_files(files: Mapping[str, bytes], origin: str = "policy set") -> PolicySet:
    """Build a PolicySet from file name -> content; the webhook's reload uses this directly."""
    if not files:
        raise PolicyLoadError([f"{origin}: no policy files (*.yaml) found"])
    digest = hashlib.sha256()
    builder = _Builder()
    for name in sorted(files):
        content = files[name]
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
        builder.add_file(name, content)
    return builder.build(digest.hexdigest())


def yaml_error(exc: yaml.YAMLError) -> str:
    """A parse error as one line with its position."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _location(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


@dataclass
class _Builder:
    errors: list[str] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    calendars: list[Calendar] = field(default_factory=list)
    policy_sources: dict[str, str] = field(default_factory=dict)
    calendar_sources: dict[str, str] = field(default_factory=dict)
    business_hours_users: list[str] = field(default_factory=list)

    def add_file(self, name: str, content: bytes) -> None:
        try:
            documents = list(yaml.safe_load_all(content))
        except yaml.YAMLError as exc:
            self.errors.append(f"{name}: {yaml_error(exc)}")
            return
        except RecursionError:
            # PyYAML composes nested collections recursively: a file nested a few hundred
            # levels deep is a load error like any other, not a crash of the loader.
            self.errors.append(f"{name}: nested too deeply to be a policy")
            return
        documents = [d for d in documents if d is not None]
        if not documents:
            self.errors.append(f"{name}: contains no YAML documents")
        for index, document in enumerate(documents, start=1):
            self._add_document(f"{name}: document {index}", name, document)

    def _add_document(self, where: str, source: str, doc: Any) -> None:
        problem = schema_error(doc, "optimization-policy")
        if problem is not None:
            self.errors.append(f"{where}: {problem}")
            return
        name = doc["metadata"]["name"]
        if name in self.policy_sources:
            self.errors.append(
                f"{where}: metadata.name: policy {name!r} is also defined in "
                f"{self.policy_sources[name]}"
            )
            return
        self.policy_sources[name] = where
        spec = doc["spec"]
        for i, raw in enumerate(spec.get("calendars", [])):
            calendar = self._calendar(f"{where}: spec.calendars[{i}]", raw)
            if calendar is not None:
                self.calendars.append(calendar)
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, raw in enumerate(spec["rules"]):
            at = f"{where}: spec.rules[{i}]"
            if raw["id"] in seen:
                self.errors.append(f"{at}.id: duplicate rule id {raw['id']!r}")
                continue
            seen.add(raw["id"])
            rule = self._rule(at, name, raw)
            if rule is not None:
                rules.append(rule)
        self.policies.append(
            Policy(
                name=name,
                description=doc["metadata"]["description"],
                owner=doc["metadata"].get("owner", ""),
                source=source,
                rules=tuple(rules),
            )
        )

    def _calendar(self, at: str, raw: dict[str, Any]) -> Calendar | None:
        errors_before = len(self.errors)
        if raw["name"] in self.calendar_sources:
            self.errors.append(
                f"{at}.name: calendar {raw['name']!r} is also defined in "
                f"{self.calendar_sources[raw['name']]}"
            )
        self.calendar_sources[raw["name"]] = at
        zone: ZoneInfo | None = None
        try:
            zone = ZoneInfo(raw["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            self.errors.append(f"{at}.timezone: unknown time zone {raw['timezone']!r}")
        start = time.fromisoformat(raw["hours"]["start"])
        end = time.fromisoformat(raw["hours"]["end"])
        if start >= end:
            self.errors.append(f"{at}.hours: start {start:%H:%M} must be before end {end:%H:%M}")
        holidays: set[date] = set()
        for j, text in enumerate(raw.get("holidays", [])):
            try:
                holidays.add(date.fromisoformat(text))
            except ValueError:
                self.errors.append(f"{at}.holidays[{j}]: {text!r} is not a valid date")
        default = bool(raw.get("default", False))
        if not default and "teams" not in raw and "environments" not in raw:
            self.errors.append(
                f"{at}: calendar {raw['name']!r} is never used: "
                "set default: true or list teams or environments"
            )
        if len(self.errors) > errors_before or zone is None:
            return None
        return Calendar(
            name=raw["name"],
            timezone=zone,
            weekdays=frozenset(WEEKDAYS.index(d) for d in raw["weekdays"]),
            start=start,
            end=end,
            holidays=frozenset(holidays),
            teams=frozenset(t.lower() for t in raw.get("teams", [])),
            environments=frozenset(e.lower() for e in raw.get("environments", [])),
            default=default,
        )

    def _rule(self, at: str, policy: str, raw: dict[str, Any]) -> Rule | None:
        errors_before = len(self.errors)
        when = raw.get("when", {})
        self._check_reason(f"{at}.reason", raw["reason"], when)
        windows = tuple(
            w
            for j, w_raw in enumerate(when.get("freezeWindows", []))
            if (w := self._window(f"{at}.when.freezeWindows[{j}]", w_raw)) is not None
        )
        if "businessHours" in when:
            self.business_hours_users.append(f"{at}.when.businessHours")
        allowed_on = self._allowed_on(f"{at}.when.actionNotAllowedOn", when)
        if len(self.errors) > errors_before:
            return None
        match = raw.get("match", {})
        selector = Selector(
            fields=tuple(
                (attribute, frozenset(_as_list(match[key])))
                for key, attribute in SELECTOR_FIELDS.items()
                if key in match
            ),
            tags=tuple(
                (key.strip().lower(), frozenset() if value == "*" else frozenset(_as_list(value)))
                for key, value in sorted(match.get("tags", {}).items())
            ),
            excluded=tuple(
                (attribute, frozenset(_as_list(match[key])))
                for key, attribute in SELECTOR_EXCLUSIONS.items()
                if key in match
            ),
        )
        actions = when.get("actionNotIn")
        conditions = Conditions(
            business_hours=when.get("businessHours"),
            freeze_windows=windows,
            impact_above_usd=(float(when["impactAboveUsd"]) if "impactAboveUsd" in when else None),
            action_not_in=frozenset(a.lower() for a in actions) if actions else None,
            action_not_allowed_on=allowed_on,
            dry_run=when.get("dryRun"),
            account_actions_last_hour_at_least=when.get("accountActionsLastHour", {}).get(
                "atLeast"
            ),
        )
        return Rule(
            policy_id=f"{policy}/{raw['id']}",
            description=raw["description"],
            effect=raw["effect"],
            reason=raw["reason"],
            match=selector,
            when=conditions,
        )

    def _allowed_on(self, at: str, when: Mapping[str, Any]) -> dict[str, frozenset[str]] | None:
        if "actionNotAllowedOn" not in when:
            return None
        table: dict[str, frozenset[str]] = {}
        for resource_type, actions in when["actionNotAllowedOn"].items():
            key = resource_type.lower()
            if key in table:
                # Matching is case-insensitive, so two spellings would silently merge.
                self.errors.append(f"{at}: resource type {resource_type!r} is listed twice")
            table[key] = frozenset(a.lower() for a in actions)
        return table

    def _check_reason(self, at: str, template: str, when: Mapping[str, Any]) -> None:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            self.errors.append(f"{at}: malformed template: {exc}")
            return
        for _, field_name, spec, conversion in parsed:
            if field_name is None:
                continue
            if spec or conversion or field_name not in _ALWAYS | set(_NEEDS):
                known = ", ".join("{" + n + "}" for n in sorted(_ALWAYS | set(_NEEDS)))
                self.errors.append(
                    f"{at}: unknown placeholder {{{field_name}}}; use one of {known}"
                )
            elif field_name in _NEEDS and _NEEDS[field_name] not in when:
                self.errors.append(
                    f"{at}: placeholder {{{field_name}}} needs the "
                    f"{_NEEDS[field_name]} condition on this rule"
                )

    def _window(self, at: str, raw: dict[str, str]) -> Window | None:
        bounds: list[datetime] = []
        for key in ("start", "end"):
            try:
                moment = datetime.fromisoformat(raw[key])
            except ValueError:
                self.errors.append(f"{at}.{key}: {raw[key]!r} is not an RFC 3339 date-time")
                return None
            if moment.tzinfo is None:
                self.errors.append(
                    f"{at}.{key}: {raw[key]!r} has no UTC offset; write e.g. "
                    f"{raw[key]}Z or {raw[key]}-05:00"
                )
                return None
            bounds.append(moment)
        if bounds[1] <= bounds[0]:
            self.errors.append(f"{at}: end {raw['end']} must be after start {raw['start']}")
            return None
        return Window(raw["name"], bounds[0], bounds[1])

    def build(self, fingerprint: str) -> PolicySet:
        by_team: dict[str, Calendar] = {}
        by_env: dict[str, Calendar] = {}
        defaults = [c for c in self.calendars if c.default]
        if len(defaults) > 1:
            names = ", ".join(repr(c.name) for c in defaults)
            self.errors.append(f"calendars: more than one default calendar ({names})")
        for cal in self.calendars:
            for kind, keys, index in (
                ("team", cal.teams, by_team),
                ("environment", cal.environments, by_env),
            ):
                for key in sorted(keys):
                    if key in index:
                        self.errors.append(
                            f"calendars: {kind} {key!r} is in both {index[key].name!r} "
                            f"and {cal.name!r}"
                        )
                    index[key] = cal
        if self.business_hours_users and not defaults:
            self.errors.extend(
                f"{at}: needs a calendar with default: true in the policy set"
                for at in self.business_hours_users
            )
        if self.errors:
            raise PolicyLoadError(self.errors)
        return PolicySet(
            policies=tuple(self.policies),
            calendars=tuple(self.calendars),
            fingerprint=fingerprint,
            calendars_by_team=by_team,
            calendars_by_environment=by_env,
            default_calendar=defaults[0] if defaults else None,
        )


def _as_list(value: str | list[str]) -> list[str]:
    return [v.strip().lower() for v in ([value] if isinstance(value, str) else value)]
