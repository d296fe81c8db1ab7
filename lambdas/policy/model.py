"""The policy engine's public data types: what a request looks like, what a verdict says.

These are the stable contract other areas code against (the trigger's pre-check, the workflow
steps, the admission webhook). A request is built from the Workflow parameters listed in
docs/architecture.md section 6 with `PolicyRequest.from_parameters`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Decision = Literal["allow", "require-approval", "deny"]
Effect = Literal["require-approval", "deny"]

# Deny beats require-approval beats allow (docs/architecture.md section 7).
SEVERITY: dict[str, int] = {"allow": 0, "require-approval": 1, "deny": 2}


class InvalidRequestError(ValueError):
    """The workflow parameters are missing or malformed. Fix the caller; retrying will not help."""


# Parameter name -> whether it must be present. Optional ones default to "" / {} / false.
PARAMETERS: dict[str, bool] = {
    "provider": True,
    "service": True,
    "resource-id": True,
    "resource-type": True,
    "action": True,
    "environment": True,
    "account-id": True,
    "estimated-monthly-impact-usd": True,
    "team": False,
    "region": False,
    "tags": False,
    "dry-run": False,
    "event-id": False,
}


@dataclass(frozen=True)
class PolicyRequest:
    """One proposed optimization action, as the policies see it."""

    provider: str
    service: str
    resource_id: str
    resource_type: str
    action: str
    environment: str
    account_id: str
    estimated_monthly_impact_usd: float
    team: str = ""
    region: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False
    event_id: str = ""

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any]) -> PolicyRequest:
        """Build a request from Workflow parameters (strings) or their typed YAML/JSON form.

        Parameters the policies do not read (playbook options such as `target-sku`) are ignored.
        Raises InvalidRequestError naming the first parameter that is missing or malformed.
        """
        missing = [name for name, required in PARAMETERS.items() if required and name not in params]
        if missing:
            raise InvalidRequestError(f"missing parameter(s): {', '.join(missing)}")
        text = {
            name: _text(name, params.get(name, ""))
            for name in PARAMETERS
            if name not in {"tags", "dry-run", "estimated-monthly-impact-usd"}
        }
        for name in ("provider", "service", "resource-id", "resource-type", "action"):
            if not text[name]:
                raise InvalidRequestError(f"parameter {name} must not be empty")
        return cls(
            provider=text["provider"],
            service=text["service"],
            resource_id=text["resource-id"],
            resource_type=text["resource-type"],
            action=text["action"],
            environment=text["environment"],
            account_id=text["account-id"],
            estimated_monthly_impact_usd=_impact(params["estimated-monthly-impact-usd"]),
            team=text["team"],
            region=text["region"],
            tags=_tags(params.get("tags", {})),
            dry_run=_bool("dry-run", params.get("dry-run", False)),
            event_id=text["event-id"],
        )

    def to_parameters(self) -> dict[str, str]:
        """The Workflow parameter form (all strings), the inverse of `from_parameters`."""
        return {
            "provider": self.provider,
            "service": self.service,
            "resource-id": self.resource_id,
            "resource-type": self.resource_type,
            "action": self.action,
            "environment": self.environment,
            "account-id": self.account_id,
            "estimated-monthly-impact-usd": repr(self.estimated_monthly_impact_usd),
            "team": self.team,
            "region": self.region,
            "tags": json.dumps(dict(self.tags), sort_keys=True),
            "dry-run": "true" if self.dry_run else "false",
            "event-id": self.event_id,
        }


@dataclass(frozen=True)
class RuleMatch:
    """One rule whose selector and conditions all held for the request."""

    policy_id: str  # "<policy metadata.name>/<rule id>"
    effect: Effect
    reason: str


@dataclass(frozen=True)
class Verdict:
    """The engine's answer. `matches` is ordered deny first, then require-approval, by id."""

    decision: Decision
    matches: tuple[RuleMatch, ...] = ()

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(m.policy_id for m in self.matches)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(m.reason for m in self.matches)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.decision,
            "policy_ids": list(self.policy_ids),
            "reasons": list(self.reasons),
        }


def _text(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequestError(f"parameter {name} must be a string, got {type(value).__name__}")
    return str(value)


def _impact(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidRequestError("parameter estimated-monthly-impact-usd must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"parameter estimated-monthly-impact-usd={value!r} is not a number"
        ) from None
    if not math.isfinite(number):
        raise InvalidRequestError(
            f"parameter estimated-monthly-impact-usd={value!r} is not a finite number"
        )
    return number


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise InvalidRequestError(f"parameter {name}={value!r} must be true or false")


def _tags(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"parameter tags is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise InvalidRequestError("parameter tags is nested too deeply") from None
    if not isinstance(value, Mapping):
        raise InvalidRequestError("parameter tags must be a JSON object of string values")
    tags: dict[str, str] = {}
    for key, tag_value in value.items():
        if not isinstance(key, str) or not isinstance(tag_value, str):
            raise InvalidRequestError(f"parameter tags: value of {key!r} must be a string")
        tags[key] = tag_value
    return tags
