"""The generated Argo WorkflowTemplates: one per playbook, the steps in the playbook's order,
the approval suspend, retries on exit 75, deadlines, the exit handler, and every field known
to Argo's API model (hera's models are generated from Argo's OpenAPI spec)."""

from __future__ import annotations

from typing import Any

import pytest
from hera.workflows.models import WorkflowTemplate as WorkflowTemplateModel

from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.steps.templates import WORKFLOW_PARAMETERS, workflow_template, workflow_templates

TEMPLATES = {t["metadata"]["name"]: t for t in workflow_templates("cct-system")}


def _templates(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in manifest["spec"]["templates"]}


def _main_steps(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    main = _templates(manifest)["main"]
    return [group[0] for group in main["steps"]]


def test_one_template_per_playbook() -> None:
    assert sorted(TEMPLATES) == sorted(f"cct-{p}" for p in PLAYBOOKS)
    for manifest in TEMPLATES.values():
        assert manifest["apiVersion"] == "argoproj.io/v1alpha1"
        assert manifest["kind"] == "WorkflowTemplate"
        assert manifest["metadata"]["namespace"] == "cct-system"


@pytest.mark.parametrize("name", sorted(PLAYBOOKS))
def test_steps_follow_the_playbook(name: str) -> None:
    manifest = TEMPLATES[f"cct-{name}"]
    steps = _main_steps(manifest)
    assert [s["name"] for s in steps] == [
        "analyze",
        "plan",
        "approve-request",
        "approve",
        "execute",
        "verify",
        "record",
    ]
    # The containers run exactly the playbook's entrypoints, in its order.
    templates = _templates(manifest)
    entrypoints = [
        templates[s["template"]]["container"]["args"][1]
        for s in steps
        if "container" in templates[s["template"]]
    ]
    assert entrypoints == list(PLAYBOOKS[name].steps)
    for s in steps:
        tpl = templates[s["template"]]
        if "container" in tpl:
            assert tpl["container"]["command"] == ["cct"]
            assert tpl["container"]["args"][0] == "step"


@pytest.mark.parametrize("name", sorted(PLAYBOOKS))
def test_approve_is_a_conditional_suspend(name: str) -> None:
    manifest = TEMPLATES[f"cct-{name}"]
    approve = next(s for s in _main_steps(manifest) if s["name"] == "approve")
    assert _templates(manifest)[approve["template"]] == {"name": "approve", "suspend": {}}
    assert approve["when"] == "{{steps.plan.outputs.parameters.approval-required}} == true"
    plan = _templates(manifest)["plan"]
    outputs = {p["name"]: p["valueFrom"]["path"] for p in plan["outputs"]["parameters"]}
    assert outputs["approval-required"] == "/tmp/cct/approval-required"


@pytest.mark.parametrize("name", sorted(PLAYBOOKS))
def test_retries_deadlines_and_exit_handler(name: str) -> None:
    manifest = TEMPLATES[f"cct-{name}"]
    playbook = PLAYBOOKS[name]
    templates = _templates(manifest)
    containers = [t for t in templates.values() if "container" in t]
    assert len(containers) == len(playbook.steps) + 1  # + the exit handler
    for tpl in containers:
        retry = tpl["retryStrategy"]
        assert retry["retryPolicy"] == "Always"
        assert retry["expression"] == (
            'asInt(lastRetry.exitCode) == 75 || lastRetry.status == "Error"'
        )
        assert retry["limit"] == str(playbook.retry.limit)
        assert retry["backoff"] == {"duration": "5s", "factor": "2", "cap": "60s"}
        assert int(tpl["activeDeadlineSeconds"]) > 0
    assert templates["execute"]["activeDeadlineSeconds"] == "1800"
    assert manifest["spec"]["onExit"] == "record-on-exit"
    handler = templates["record-on-exit"]["container"]
    assert handler["args"] == ["step", "record", "--from-env"]
    env = {e["name"]: e["value"] for e in handler["env"]}
    assert env["CCT_WORKFLOW_STATUS"] == "{{workflow.status}}"
    assert env["CCT_WORKFLOW_FAILURES"] == "{{workflow.failures}}"


def test_parameters_and_environment() -> None:
    manifest = TEMPLATES["cct-rightsize-compute"]
    params = {p["name"]: p.get("value") for p in manifest["spec"]["arguments"]["parameters"]}
    assert set(params) == set(WORKFLOW_PARAMETERS)
    assert params["dry-run"] == "true"  # a workflow submitted without it changes nothing
    execute = _templates(manifest)["execute"]["container"]
    env = {e["name"]: e["value"] for e in execute["env"]}
    assert env["CCT_PARAM_RESOURCE_ID"] == "{{workflow.parameters.resource-id}}"
    assert env["CCT_PREVIOUS_PLAN"] == "{{steps.plan.outputs.parameters.result}}"
    assert env["CCT_RUN_ID"] == "{{workflow.name}}"
    assert env["CCT_WORKFLOW_UID"] == "{{workflow.uid}}"
    assert env["CCT_STEP_BACKEND"] == "argo"
    assert {
        e.get("configMapRef", {}).get("name") or e["secretRef"]["name"] for e in execute["envFrom"]
    } == {"cct-steps", "cct-steps-db"}
    # No credential is ever placed in the template: Vault issues them at run time.
    text = str(manifest).lower()
    assert "secret_key" not in text and "client_secret" not in text and "hvs." not in text


# As the bundle deploys them (infra.generated): the Kafka identity and Vault's CA mounted.
MOUNTED = {
    f"{name} (mounted)": workflow_template(
        p, "cct-system", kafka_secrets=("kafka-user", "kafka-ca"), vault_ca_config_map="vault-ca"
    )
    for name, p in PLAYBOOKS.items()
}


@pytest.mark.parametrize("name", sorted(TEMPLATES) + sorted(MOUNTED))
def test_every_field_is_known_to_the_argo_api_model(name: str) -> None:
    manifest = TEMPLATES.get(name) or MOUNTED[name]
    model = WorkflowTemplateModel.model_validate(manifest)
    # Unknown or misspelt fields are dropped by the model, so a round trip must be lossless.
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == manifest
