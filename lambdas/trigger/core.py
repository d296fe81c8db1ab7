"""The trigger's pure core: from an anomaly event to the workflow it should start.

No I/O here: the service shell reads Kafka and PostgreSQL and calls the backend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from lambdas.contract import ACTIONABLE_LABELS, TAG_LABELS
from lambdas.events.cloudevents import AnomalyEvent, InvalidEvent
from lambdas.policy.workflow import MAX_PARAMETER_CHARS
from lambdas.trigger.mapping import Rule

# Hours in an average month (365 * 24 / 12): turns an hourly cost delta into the monthly
# impact the policies compare against their limits.
HOURS_PER_MONTH = Decimal(730)

# Labels a resource-level anomaly must carry for a playbook to act on it, and the resource
# tags that are alert labels: both the anomaly contract's (lambdas.contract).
_REQUIRED_LABELS = ACTIONABLE_LABELS
_TAG_LABELS = TAG_LABELS


def workflow_name(incident: str, playbook: str) -> str:
    """`cct-<playbook>-<12 hex of sha256(incident/playbook)>`, `incident` an event's
    `AnomalyEvent.incident`: every event of one incident (a redelivery, a repeat, its
    escalation to a higher severity) gives the same name for the same playbook, so a
    resubmission is refused as AlreadyExists instead of running the playbook again."""
    digest = hashlib.sha256(f"{incident}/{playbook}".encode()).hexdigest()[:12]
    return f"cct-{playbook}-{digest}"


@dataclass(frozen=True)
class WorkflowRun:
    """One workflow to submit: what both backends receive."""

    run_id: str
    event_id: str
    playbook: str
    rule_id: str
    parameters: Mapping[str, str]  # section 6 names, all strings (as Argo passes them)
    # The account the anomaly's cost rolls up to (the dashboards' `billing_account_id`):
    # the AWS payer, Azure billing account or GCP billing account. The workflow acts in
    # `account_id` (the linked account, subscription or project), which is not the same.
    # Empty when unknown (a workflow not planned from an anomaly).
    billing_account_id: str = ""

    @property
    def dry_run(self) -> bool:
        return self.parameters["dry-run"] == "true"

    @property
    def account_id(self) -> str:
        return self.parameters["account-id"]


# The largest hourly cost change the trigger plans a workflow for, absent a setting: far above
# any one resource's cost, far below what Decimal arithmetic cannot quantize.
MAX_DELTA_USD_PER_HOUR = Decimal(1_000_000)


def tags_parameter(
    tags: Mapping[str, str], keep: frozenset[str], limit: int = MAX_PARAMETER_CHARS
) -> tuple[str, int]:
    """The `tags` workflow parameter (compact JSON) within the admission webhook's `limit`,
    and how many tags were left out to fit. The keys in `keep` (the ones policies read) go
    first, so a cut never hides a protection tag; then the others by key. Tag sets beyond
    the limit are real (50 tags of 85 characters), and the webhook refuses the whole
    workflow for one long parameter."""

    def text(d: Mapping[str, str]) -> str:
        return json.dumps(dict(d), sort_keys=True, separators=(",", ":"))

    full = text(tags)
    if len(full) <= limit:
        return full, 0
    kept: dict[str, str] = {}
    order = sorted(tags, key=lambda k: (k not in keep, k))
    size = 2  # "{}"
    for key in order:
        item = len(text({key: tags[key]})) - 2 + (1 if kept else 0)
        if size + item <= limit or key in keep:
            kept[key] = tags[key]
            size += item
    return text(kept), len(tags) - len(kept)


def monthly_impact(
    annotations: Mapping[str, str], max_delta: Decimal = MAX_DELTA_USD_PER_HOUR
) -> str:
    raw = annotations.get("delta_usd_per_hour", "")
    try:
        delta = Decimal(raw)
    except InvalidOperation:
        raise InvalidEvent(f"annotation delta_usd_per_hour={raw[:40]!r} is not a number") from None
    if not delta.is_finite():
        raise InvalidEvent(f"annotation delta_usd_per_hour={raw[:40]!r} is not finite")
    if abs(delta) > max_delta:
        raise InvalidEvent(
            f"annotation delta_usd_per_hour={raw[:40]!r} is outside ±{max_delta} (setting "
            "CCT_TRIGGER_MAX_DELTA_USD_PER_HOUR)"
        )
    return str((delta * HOURS_PER_MONTH).quantize(Decimal("0.01")))


def plan_run(
    event: AnomalyEvent, rule: Rule, max_delta: Decimal = MAX_DELTA_USD_PER_HOUR
) -> WorkflowRun:
    """The workflow for an anomaly the rule selected; InvalidEvent if labels are missing."""
    labels = event.labels
    missing = [name for name in _REQUIRED_LABELS if not labels.get(name)]
    account = labels.get("sub_account_id") or labels.get("billing_account_id") or ""
    if not account:
        missing.append("sub_account_id or billing_account_id")
    if missing:
        raise InvalidEvent(f"anomaly {event.id} lacks labels needed by rule {rule.id}: {missing}")
    tags = {name: labels[name] for name in _TAG_LABELS if labels.get(name)}
    parameters = {
        "provider": labels["provider"],
        "service": labels["service_name"],
        "resource-id": labels["resource_id"],
        "resource-type": labels["resource_type"],
        "action": rule.playbook,
        "environment": labels.get("env", ""),
        "team": labels.get("team", ""),
        "account-id": account,
        "region": labels["region_id"],
        "tags": json.dumps(tags, sort_keys=True, separators=(",", ":")),
        "estimated-monthly-impact-usd": monthly_impact(event.annotations, max_delta),
        "dry-run": "true" if rule.dry_run else "false",
        "event-id": event.id,
    }
    return WorkflowRun(
        run_id=workflow_name(event.incident, rule.playbook),
        event_id=event.id,
        playbook=rule.playbook,
        rule_id=rule.id,
        parameters=MappingProxyType(parameters),
        billing_account_id=labels.get("billing_account_id") or account,
    )
