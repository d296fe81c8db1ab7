"""The shipped policies against what the trigger really submits.

The trigger's mapping (`policies/playbooks.yaml`) picks a playbook from the anomaly's
resource type, and its core turns the collector's labels into the Workflow parameters the
policies read. A policy keyed on something else (the FOCUS service name alone, say) can deny
every workflow the trigger starts; these tests feed the trigger's own output through
`evaluate` so such a mismatch fails here rather than in production.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from lambdas.admission.settings import DEFAULT_APPROVAL_TEMPLATES
from lambdas.collector.normalize import (
    AWS_EC2,
    AWS_RDS,
    AZURE_DISK,
    AZURE_VM,
    GCP_COMPUTE,
)
from lambdas.events.cloudevents import DETECTED, AnomalyEvent
from lambdas.policy import PolicyRequest, evaluate, load_policy_set
from lambdas.policy.workflow import workflow_findings
from lambdas.trigger.argo import build_workflow
from lambdas.trigger.core import plan_run
from lambdas.trigger.mapping import load_mapping

ROOT = Path(__file__).parents[2]
POLICIES = load_policy_set(ROOT / "policies" / "optimization")
MAPPING = load_mapping(ROOT / "policies" / "playbooks.yaml")
# A Tuesday 10:00 in New York: business hours, outside every shipped freeze window.
NOW = datetime.fromisoformat("2026-03-03T10:00:00-05:00")

# Resource type -> (provider, FOCUS ServiceName) as the collector labels it (its constants),
# or as the providers' FOCUS exports name the service where the collector does not see it.
SERVICE_OF = {
    "Instance": ("aws", AWS_EC2),
    "Volume": ("aws", AWS_EC2),
    "DBInstance": ("aws", AWS_RDS),
    "Bucket": ("aws", "Amazon Simple Storage Service"),
    "Microsoft.Compute/virtualMachines": ("azure", AZURE_VM),
    "Microsoft.Compute/disks": ("azure", AZURE_DISK),
    "Microsoft.Storage/storageAccounts": ("azure", "Storage"),
    "Microsoft.Sql/servers/databases": ("azure", "Azure SQL Database"),
    "compute.googleapis.com/Instance": ("gcp", GCP_COMPUTE),
    "compute.googleapis.com/Disk": ("gcp", GCP_COMPUTE),
    "storage.googleapis.com/Bucket": ("gcp", "Cloud Storage"),
    "sqladmin.googleapis.com/Instance": ("gcp", "Cloud SQL"),
}


def anomaly(resource_type: str, resource_id: str = "r-1", env: str = "dev") -> AnomalyEvent:
    provider, service = SERVICE_OF[resource_type]
    return AnomalyEvent(
        id="evt-1",
        type=DETECTED,
        fingerprint="f1",
        labels={
            "level": "resource",
            "provider": provider,
            "service_name": service,
            "resource_id": resource_id,
            "resource_type": resource_type,
            "region_id": "us-east-1",
            "sub_account_id": "444455556666",
            "team": "web",
            "env": env,
        },
        annotations={"delta_usd_per_hour": "0.05"},
        starts_at="2026-03-03T14:55:00Z",
    )


def trigger_request(event: AnomalyEvent) -> tuple[str, PolicyRequest]:
    """What the trigger's pre-check evaluates: the mapped playbook and its parameters."""
    rule = MAPPING.select(event.labels)
    assert rule is not None, f"the trigger maps no playbook for {dict(event.labels)}"
    run = plan_run(event, rule)
    return run.playbook, PolicyRequest.from_parameters(run.parameters)


def test_an_aws_volume_anomaly_is_allowed_as_a_dry_run_in_dev() -> None:
    playbook, request = trigger_request(anomaly("Volume", "vol-0123456789abcdef0"))
    assert playbook == "delete-unattached-volume"
    assert (request.service, request.resource_type) == (AWS_EC2, "Volume")
    assert request.dry_run
    assert evaluate(POLICIES, request, NOW, {}).to_dict() == {
        "verdict": "allow",
        "policy_ids": [],
        "reasons": [],
    }


def test_an_aws_volume_may_be_deleted_for_real_in_dev() -> None:
    _, request = trigger_request(anomaly("Volume", "vol-0123456789abcdef0"))
    real = PolicyRequest.from_parameters({**request.to_parameters(), "dry-run": "false"})
    assert evaluate(POLICIES, real, NOW, {}).decision == "allow"


@pytest.mark.parametrize("resource_type", sorted(SERVICE_OF))
def test_every_playbook_the_trigger_maps_passes_the_allowed_actions(resource_type: str) -> None:
    # Every (resource type, playbook) pair of the mapping is a reviewed pair: a dry run in dev
    # outside a freeze has no reason to be stopped.
    playbook, request = trigger_request(anomaly(resource_type))
    verdict = evaluate(POLICIES, request, NOW, {})
    assert verdict.decision == "allow", (playbook, verdict.to_dict())


@pytest.mark.parametrize("resource_type", sorted(SERVICE_OF))
def test_every_service_the_trigger_acts_on_is_named_by_the_allowed_actions(
    resource_type: str,
) -> None:
    # allowed-actions/other-services denies a real action on a service no rule names: every
    # mapped pair, with the service its collector or FOCUS export gives it, may act for real.
    playbook, request = trigger_request(anomaly(resource_type))
    real = PolicyRequest.from_parameters({**request.to_parameters(), "dry-run": "false"})
    verdict = evaluate(POLICIES.only({"allowed-actions"}), real, NOW, {})
    assert verdict.decision == "allow", (playbook, verdict.to_dict())


def test_every_resource_type_the_trigger_maps_is_listed_here() -> None:
    mapped = {t for rule in MAPPING.rules for t in rule.match.get("resource_type", ())}
    assert mapped == set(SERVICE_OF)


def test_a_volume_playbook_routed_to_an_instance_is_denied() -> None:
    _, request = trigger_request(anomaly("Instance", "i-0abc"))
    misrouted = PolicyRequest.from_parameters(
        {**request.to_parameters(), "action": "delete-unattached-volume"}
    )
    verdict = evaluate(POLICIES, misrouted, NOW, {})
    assert verdict.to_dict() == {
        "verdict": "deny",
        "policy_ids": ["allowed-actions/compute"],
        "reasons": [
            "delete-unattached-volume is not an allowed action for aws "
            "Amazon Elastic Compute Cloud Instance"
        ],
    }


@pytest.mark.parametrize("resource_type", sorted(SERVICE_OF))
def test_every_workflow_the_trigger_builds_is_an_approved_template_run(
    resource_type: str,
) -> None:
    """The admission webhook refuses anything but a reference to an approved template with
    bounded parameters (lambdas.policy.workflow.workflow_findings): the trigger's real
    Workflow manifests for every mapped resource type pass it."""
    event = anomaly(resource_type)
    rule = MAPPING.select(event.labels)
    assert rule is not None
    workflow = build_workflow(plan_run(event, rule), "cct-system")
    approved = frozenset(DEFAULT_APPROVAL_TEMPLATES.split(","))
    assert workflow_findings(workflow, approved) == ()
