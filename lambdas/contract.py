"""The anomaly contract: what a cost anomaly looks like on every hop, defined once.

Producer and consumers import these names instead of spelling them: the detector (and the
vmalert budget rules) build `CostAnomaly` alerts with them, the Alertmanager configuration
groups by them, the bridge turns the alerts into CloudEvents of these types on these topics,
the trigger plans workflows from them and the playbook rules (`policies/playbooks.yaml`)
match them. `tests/contract/` checks the real detector's output against this module and every
playbook rule against that output (docs/architecture.md, "Contracts").

Hop by hop:
1. detector -> Alertmanager: an alert with `CORE_LABELS`, the dimension labels of its level
   (`LEVEL_LABELS`) and the `ANNOTATIONS`;
2. Alertmanager -> bridge: the webhook (payload version 4) with those alerts;
3. bridge -> Kafka `TOPIC_ANOMALIES`: one CloudEvent per alert transition (`DETECTED` or
   `RESOLVED`), keyed by the alert fingerprint, `data` = the alert's labels and annotations;
4. trigger: a `DETECTED` event whose labels match a playbook rule starts that playbook with
   `ACTIONABLE_LABELS`; one that matches none is published as `UNMAPPED` on
   `TOPIC_UNMAPPED` (with the reason), one that cannot be read goes to `TOPIC_DEAD_LETTER`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ALERTNAME = "CostAnomaly"

# Who produced the alert: the statistical detector or a static vmalert budget rule.
SOURCE_DETECTOR = "detector"
SOURCE_BUDGET = "vmalert"
SOURCES = (SOURCE_DETECTOR, SOURCE_BUDGET)
SOURCE_LABEL = "source"

LEVELS = ("account", "service", "team", "resource")
SEVERITIES = ("info", "warning", "critical")
# The detector's rules (docs/detection.md) plus the budget rule of vmalert.
RULE_DAY0_STEP = "day0_step"
RULE_SEASONAL = "seasonal"
RULE_LOCAL_STEP = "local_step"
RULE_DECREASE = "decrease"
RULE_BUDGET = "budget"
RULES = (RULE_DAY0_STEP, RULE_SEASONAL, RULE_LOCAL_STEP, RULE_DECREASE, RULE_BUDGET)

# Resource tags that become labels (matched case-insensitively against the resource's tags).
# The collector writes them on every series; the detector passes them on; playbook rules may
# match them. A rule may only match labels in ALL_LABELS (tests/contract checks).
TAG_LABELS = ("team", "env")

# Every CostAnomaly alert carries these.
CORE_LABELS = ("alertname", "severity", "level", "rule", "source")

# The dimension labels of each level (the series identity): coarsest level first. The service
# level is scoped to one account so that it is a true child of the account level. A resource
# anomaly carries everything a playbook needs to act on the resource: where it is, what it
# is, and its tags, all read from the collector's inventory labels.
LEVEL_LABELS: dict[str, tuple[str, ...]] = {
    "account": ("provider", "billing_account_id"),
    "service": ("provider", "billing_account_id", "region_id", "service_name"),
    "team": ("team",),
    "resource": (
        "provider",
        "billing_account_id",
        "sub_account_id",
        "region_id",
        "service_name",
        "resource_type",
        "resource_id",
        *TAG_LABELS,
    ),
}

# Every dimension label, in a stable order: Alertmanager groups and inhibits by these.
DIMENSION_LABELS: tuple[str, ...] = tuple(
    dict.fromkeys(("level", *(n for names in LEVEL_LABELS.values() for n in names)))
)
# A vmalert budget alert also names its budget.
BUDGET_LABEL = "budget"
ALL_LABELS: frozenset[str] = frozenset((*CORE_LABELS, *DIMENSION_LABELS, BUDGET_LABEL))

# What a resource-level anomaly must carry for a playbook to act on it (the trigger refuses
# an event without them; the account is sub_account_id, else billing_account_id).
ACTIONABLE_LABELS = ("provider", "service_name", "resource_id", "resource_type", "region_id")

# Annotations (all strings; the JSON ones are lists of objects).
A_EXPECTED = "expected_usd_per_hour"
A_OBSERVED = "observed_usd_per_hour"
A_DELTA = "delta_usd_per_hour"
A_DEVIATION = "deviation"
A_BASELINE = "baseline"
A_SUMMARY = "summary"
# Children that explain the increase, ranked by share: [{level, labels, expected_usd_per_hour,
# observed_usd_per_hour, delta_usd_per_hour, share}].
A_CONTRIBUTORS = "contributors"
# The aggregates this anomaly explains (one incident per cause: a resource's step is not also
# reported as its service's, team's and account's): [{level, labels, rule, severity,
# started_at, expected_usd_per_hour, observed_usd_per_hour, delta_usd_per_hour}].
A_ANCESTORS = "ancestors"
# Change events on the contributing resources: [{event_id, resource_id, action, actor,
# event_time, usd_per_hour_before, usd_per_hour_after[, pulumi_project, pulumi_stack]}].
A_CHANGE_EVENTS = "change_events"
# Optional: the severity before an escalation, and on the resolved predecessor the
# fingerprint of its successor.
A_ESCALATED_FROM = "escalated_from"
A_SUPERSEDED_BY = "superseded_by"
ANNOTATIONS = (
    A_EXPECTED,
    A_OBSERVED,
    A_DELTA,
    A_DEVIATION,
    A_BASELINE,
    A_CONTRIBUTORS,
    A_ANCESTORS,
    A_CHANGE_EVENTS,
    A_SUMMARY,
)
OPTIONAL_ANNOTATIONS = (A_ESCALATED_FROM, A_SUPERSEDED_BY)

# Labels whose value changes during one incident: the detector raises an open incident's
# severity (A_ESCALATED_FROM) and keeps its other labels and its startsAt. That new label set
# is a new alert to Alertmanager (new fingerprint, new event id), yet the same cause, so what
# names the incident (`lambdas.events.cloudevents.incident_id`, and through it the trigger's
# workflow per playbook) leaves these out.
ESCALATING_LABELS = ("severity",)

# CloudEvents (1.0, structured JSON mode) on Kafka.
EVENT_SOURCE_BRIDGE = "/cct/bridge"
EVENT_SOURCE_TRIGGER = "/cct/trigger"
DETECTED = "io.cct.anomaly.detected"
RESOLVED = "io.cct.anomaly.resolved"
# Published by the trigger for a detected anomaly that no playbook rule matches: the original
# event's `data` plus `reason` and `original_id`, keyed like the original.
UNMAPPED = "io.cct.anomaly.unmapped"
TOPIC_ANOMALIES = "cct.cost.anomalies"
TOPIC_UNMAPPED = "cct.cost.anomalies.unmapped"
TOPIC_DEAD_LETTER = "cct.cost.anomalies.dlq"
# Keys of an anomaly event's `data`.
EVENT_DATA_KEYS = ("status", "labels", "annotations", "startsAt", "endsAt", "fingerprint")


def dimensions(level: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The level's dimension labels of a label set (empty ones left out: Alertmanager treats
    an empty label as absent)."""
    return {n: labels[n] for n in LEVEL_LABELS[level] if labels.get(n)}


def tag_values(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """The TAG_LABELS of a resource's tags (keys matched case-insensitively), '' if absent."""
    lowered = {str(k).lower(): str(v) for k, v in (tags or {}).items()}
    return {name: lowered.get(name, "") for name in TAG_LABELS}


def resource_labels(
    *,
    provider: str,
    billing_account_id: str,
    sub_account_id: str | None,
    region_id: str | None,
    service_name: str | None,
    resource_type: str | None,
    resource_id: str,
    tags: Mapping[str, Any] | None,
) -> dict[str, str]:
    """The resource-level dimension labels of an inventory row: what the collector writes on
    a resource's series and what the detector's fast path reads from the inventory, so both
    name one resource with one label set."""
    return {
        "provider": provider,
        "billing_account_id": billing_account_id,
        "sub_account_id": sub_account_id or "",
        "region_id": region_id or "",
        "service_name": service_name or "",
        "resource_type": resource_type or "",
        "resource_id": resource_id,
        **tag_values(tags),
    }


def alert_problems(labels: Mapping[str, str], annotations: Mapping[str, str]) -> list[str]:
    """What an alert lacks or carries that the contract does not allow (empty: conforms)."""
    problems = []
    for name in CORE_LABELS:
        if not labels.get(name):
            problems.append(f"label {name} is missing")
    if labels.get("alertname") not in (None, ALERTNAME):
        problems.append(f"alertname must be {ALERTNAME}")
    level = labels.get("level", "")
    if level and level not in LEVELS:
        problems.append(f"level {level!r} is not one of {LEVELS}")
    if labels.get("severity") and labels["severity"] not in SEVERITIES:
        problems.append(f"severity {labels['severity']!r} is not one of {SEVERITIES}")
    if labels.get("rule") and labels["rule"] not in RULES:
        problems.append(f"rule {labels['rule']!r} is not one of {RULES}")
    if labels.get("source") and labels["source"] not in SOURCES:
        problems.append(f"source {labels['source']!r} is not one of {SOURCES}")
    unknown = sorted(set(labels) - ALL_LABELS)
    if unknown:
        problems.append(f"labels outside the contract: {unknown}")
    if level == "resource" and labels.get("source") == SOURCE_DETECTOR:
        missing = [n for n in ACTIONABLE_LABELS if not labels.get(n)]
        if missing:
            problems.append(f"resource anomaly lacks {missing}")
    missing_ann = [n for n in ANNOTATIONS if n not in annotations]
    if missing_ann and labels.get("source") == SOURCE_DETECTOR:
        problems.append(f"annotations missing: {missing_ann}")
    return problems
