"""The step input and the workflow parameters, parsed and checked once.

Argo passes every workflow parameter as a string, the local backend may pass JSON types; both
are accepted and normalised here so the steps see one shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from lambdas.steps.errors import InvalidInput
from lambdas.steps.playbooks import PLAYBOOKS

PROVIDERS = ("aws", "azure", "gcp")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


@dataclass(frozen=True)
class Parameters:
    provider: str
    resource_id: str
    region: str
    environment: str
    team: str
    account_id: str
    event_id: str
    tags: Mapping[str, str]
    dry_run: bool
    require_approval: bool
    restart_schedule: str | None
    target_sku: str | None
    estimated_impact_usd: Decimal | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class StepInput:
    run_id: str
    playbook: str
    parameters: Parameters
    previous: Mapping[str, Mapping[str, Any]]
    approval: Mapping[str, Any] | None
    failure: Mapping[str, Any] | None
    # The Argo workflow's uid (CCT_WORKFLOW_UID): whose admission verdict is this run's.
    workflow_uid: str | None = None

    def output_of(self, step: str) -> Mapping[str, Any]:
        out = self.previous.get(step)
        if not isinstance(out, Mapping):
            raise InvalidInput(f"input.previous.{step} is missing: run the {step} step first")
        return out


def _text(params: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = params.get(key, default)
    if value is None:
        raise InvalidInput(f"parameters.{key} is required")
    if not isinstance(value, str | int | float):
        raise InvalidInput(f"parameters.{key} must be a string, got {type(value).__name__}")
    return str(value)


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"parameters.{key}={value!r} must be true or false")


def _tags(params: Mapping[str, Any]) -> dict[str, str]:
    raw = params.get("tags", {})
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"parameters.tags is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("parameters.tags is nested too deeply") from None
    if not isinstance(raw, dict):
        raise InvalidInput("parameters.tags must be a JSON object")
    return {str(k): str(v) for k, v in raw.items()}


def parse_parameters(params: Mapping[str, Any]) -> Parameters:
    provider = _text(params, "provider")
    if provider not in PROVIDERS:
        raise InvalidInput(f"parameters.provider={provider!r} must be one of {list(PROVIDERS)}")
    impact_raw = params.get("estimated-monthly-impact-usd")
    impact: Decimal | None = None
    if impact_raw not in (None, ""):
        try:
            impact = Decimal(str(impact_raw))
        except InvalidOperation:
            raise InvalidInput(
                f"parameters.estimated-monthly-impact-usd={impact_raw!r} is not a number"
            ) from None
    resource_id = _text(params, "resource-id").strip()
    if not resource_id:
        raise InvalidInput("parameters.resource-id is empty")
    return Parameters(
        provider=provider,
        resource_id=resource_id,
        region=_text(params, "region", ""),
        environment=_text(params, "environment", ""),
        team=_text(params, "team", ""),
        account_id=_text(params, "account-id", ""),
        event_id=_text(params, "event-id", ""),
        tags=_tags(params),
        dry_run=_flag(params, "dry-run"),
        require_approval=_flag(params, "require-approval"),
        restart_schedule=params.get("restart-schedule") or None,
        target_sku=params.get("target-sku") or None,
        estimated_impact_usd=impact,
        raw=dict(params),
    )


def parse_input(doc: Any) -> StepInput:
    if not isinstance(doc, dict):
        raise InvalidInput("step input must be one JSON object")
    run_id = doc.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise InvalidInput("input.run_id must be a non-empty string")
    playbook = doc.get("playbook")
    if playbook not in PLAYBOOKS:
        raise InvalidInput(f"input.playbook={playbook!r} is not one of {sorted(PLAYBOOKS)}")
    params = doc.get("parameters")
    if not isinstance(params, dict):
        raise InvalidInput("input.parameters must be a JSON object")
    previous = doc.get("previous", {}) or {}
    if not isinstance(previous, dict) or not all(isinstance(v, dict) for v in previous.values()):
        raise InvalidInput("input.previous must map step names to JSON objects")
    approval = doc.get("approval")
    if approval is not None and not isinstance(approval, dict):
        raise InvalidInput("input.approval must be a JSON object")
    failure = doc.get("failure")
    if failure is not None and not isinstance(failure, dict):
        raise InvalidInput("input.failure must be a JSON object")
    workflow_uid = doc.get("workflow_uid")
    if workflow_uid is not None and not (isinstance(workflow_uid, str) and workflow_uid):
        raise InvalidInput("input.workflow_uid must be a non-empty string")
    return StepInput(
        run_id=run_id,
        playbook=str(playbook),
        parameters=parse_parameters(params),
        previous=previous,
        approval=approval,
        failure=failure,
        workflow_uid=workflow_uid,
    )
