"""The gate walked around (issue 17): every attack as a table, decided by the pure core and
again over real HTTPS by `cct serve admission` with the API server's client certificate, plus
the callers that must not be heard at all (no certificate, a foreign CA, another name).

The base of every attack is the Workflow the trigger really creates
(`lambdas.trigger.argo.build_workflow`); each case changes it the way an author with create
rights on Workflows could.
"""

from __future__ import annotations

import copy
import http.client
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from lambdas.admission.review import SHAPE_POLICY, Context, decide
from lambdas.policy import load_policy_set
from lambdas.policy.workflow import TEMPLATE_PARAMETERS, approval_gate_findings
from lambdas.steps.templates import WORKFLOW_PARAMETERS, workflow_templates
from lambdas.trigger.argo import build_workflow
from lambdas.trigger.core import WorkflowRun
from tests.admission.conftest import decision_row, wait_for
from tests.admission.support import (
    CONTROLLER_USER,
    SHIPPED,
    Webhook,
    client_context,
    params,
    review,
)

NOW = datetime(2026, 2, 2, 3, 0, tzinfo=UTC)
APPROVED = frozenset(
    f"cct-{p}"
    for p in (
        "rightsize-compute",
        "stop-idle-compute",
        "delete-unattached-volume",
        "storage-tiering",
        "rightsize-database",
    )
)
PRIVILEGED = {
    "image": "alpine:3",
    "command": ["sh", "-c", "chroot /host"],
    "securityContext": {"privileged": True},
    "volumeMounts": [{"name": "root", "mountPath": "/host"}],
}
HOST_ROOT = [{"name": "root", "hostPath": {"path": "/"}}]


def trigger_workflow(**overrides: str) -> dict[str, Any]:
    """What the trigger submits for a rightsize-compute event (a fresh account)."""
    run_id = f"cct-rightsize-compute-{uuid.uuid4().hex[:12]}"
    run = WorkflowRun(run_id, "evt-1", "rightsize-compute", "rule-1", params(**overrides))
    return build_workflow(run, "cct-workflows")


Attack = Callable[[dict[str, Any]], None]


def _inline(spec: dict[str, Any], templates: list[dict[str, Any]]) -> None:
    del spec["workflowTemplateRef"]
    spec.update(entrypoint="main", templates=templates)


def _approve_then_act(approve: dict[str, Any], gate: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": "main",
            "steps": [
                [{"name": "approve", "template": "gate", **approve}],
                [{"name": "execute", "template": "act"}],
            ],
        },
        {"name": "gate", "suspend": gate},
        {"name": "act", "container": {"image": "ghcr.io/cct/cct:0.1.0", "args": ["step"]}},
    ]


def _set(path: str, value: Any) -> Attack:
    def attack(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = spec
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value

    return attack


def _parameter(item: dict[str, Any]) -> Attack:
    return lambda spec: spec["arguments"]["parameters"].append(item)


def _replace_parameter(name: str, value: str) -> Attack:
    def attack(spec: dict[str, Any]) -> None:
        for item in spec["arguments"]["parameters"]:
            if item["name"] == name:
                item["value"] = value

    return attack


# (id, environment, the attack on spec, a finding the refusal must name)
ATTACKS: list[tuple[str, str, Attack, str]] = [
    (
        "inline-privileged-hostpath-hostnetwork-sa",
        "staging",
        lambda spec: _inline(
            spec,
            [
                {
                    "name": "main",
                    "container": PRIVILEGED,
                    "volumes": HOST_ROOT,
                    "serviceAccountName": "cluster-admin",
                    "podSpecPatch": '{"hostNetwork": true}',
                }
            ],
        ),
        "spec.templates[main].container.securityContext: privileged container",
    ),
    (
        "spec-level-host-namespaces-and-volumes",
        "staging",
        lambda spec: spec.update(
            hostNetwork=True, hostPID=True, volumes=HOST_ROOT, serviceAccountName="argo-server"
        ),
        "spec.volumes[0]: hostPath / mounts the node's filesystem",
    ),
    (
        "pod-spec-patch-beside-ref",
        "staging",
        _set(
            "podSpecPatch", '{"containers":[{"name":"main","securityContext":{"privileged":true}}]}'
        ),
        "spec.podSpecPatch sets privileged",
    ),
    (
        "service-account-swap-beside-ref",
        "staging",
        _set("serviceAccountName", "cct-remediation-admin"),
        "spec.serviceAccountName: runs as service account cct-remediation-admin",
    ),
    (
        "security-context-beside-ref",
        "staging",
        _set("securityContext", {"runAsUser": 0}),
        "spec.securityContext: runs as root",
    ),
    (
        "inline-templates-beside-approved-ref",
        "staging",
        lambda spec: spec.update(
            templates=[{"name": "main", "container": PRIVILEGED}], entrypoint="main"
        ),
        "spec.templates: inline templates are not allowed",
    ),
    (
        "entrypoint-skips-the-approval",
        "prod",
        _set("entrypoint", "execute"),
        "spec.entrypoint: the workflow may not start the template anywhere but its entrypoint",
    ),
    (
        "template-defaults-privileged",
        "staging",
        _set("templateDefaults", {"container": PRIVILEGED}),
        "spec.templateDefaults.container.securityContext: privileged container",
    ),
    (
        "exit-hook-runs-a-pod",
        "staging",
        lambda spec: spec.update(onExit="cleanup", hooks={"exit": {"template": "cleanup"}}),
        "spec.onExit: the workflow may not add exit handlers",
    ),
    (
        "self-resuming-approve-step",
        "prod",
        lambda spec: _inline(spec, _approve_then_act({}, {"duration": "1s"})),
        "steps[0] approve: resumes itself after 1s",
    ),
    (
        "approve-step-never-taken",
        "prod",
        lambda spec: _inline(spec, _approve_then_act({"when": "1 == 2"}, {})),
        "steps[0] approve: skipped unless '1 == 2'",
    ),
    (
        "dag-task-inline-privileged",
        "staging",
        lambda spec: _inline(
            spec,
            [
                {
                    "name": "main",
                    "dag": {"tasks": [{"name": "x", "inline": {"container": PRIVILEGED}}]},
                }
            ],
        ),
        "spec.templates[main].dag.tasks[0].inline.container.securityContext: privileged",
    ),
    (
        "unapproved-template",
        "staging",
        _set("workflowTemplateRef", {"name": "someone-elses-template"}),
        "WorkflowTemplate someone-elses-template is not an approved template",
    ),
    (
        "cluster-scoped-template-of-the-same-name",
        "staging",
        _set("workflowTemplateRef", {"name": "cct-rightsize-compute", "clusterScope": True}),
        "spec.workflowTemplateRef: only a name may be given, not clusterScope",
    ),
    (
        "policies-judge-one-action-template-runs-another",
        "staging",
        _set("workflowTemplateRef", {"name": "cct-delete-unattached-volume"}),
        "WorkflowTemplate cct-delete-unattached-volume does not run the action rightsize-compute",
    ),
    (
        "parameter-from-a-configmap",
        "staging",
        _parameter({"name": "target-sku", "valueFrom": {"configMapKeyRef": {"name": "x"}}}),
        "parameter target-sku: only name and value may be given, not valueFrom",
    ),
    (
        "parameter-the-template-does-not-declare",
        "staging",
        _parameter({"name": "image", "value": "evil:latest"}),
        "parameter image is not a parameter of the approved templates",
    ),
    (
        "argo-expression-in-a-value",
        "staging",
        _replace_parameter("resource-id", "{{=sprig.env('AWS_SECRET_ACCESS_KEY')}}"),
        "parameter resource-id: the value may not contain an Argo expression",
    ),
    (
        "oversized-parameter",
        "staging",
        _replace_parameter("region", "x" * 5000),
        "parameter region: the value is longer than 4096 characters",
    ),
    (
        "artifacts-into-the-approved-pods",
        "staging",
        _set("arguments.artifacts", [{"name": "kubeconfig", "raw": {"data": "x"}}]),
        "spec.arguments.artifacts: only parameters may be passed",
    ),
]


def attacked(attack: Attack, environment: str) -> dict[str, Any]:
    wf = trigger_workflow(environment=environment)
    attack(wf["spec"])
    return wf


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(
        now=NOW,
        policy_set=load_policy_set(SHIPPED),
        recent_actions={},
        failure_mode="closed",
        approval_templates=APPROVED,
        controller_users=frozenset({CONTROLLER_USER}),
    )


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_the_trigger_workflow_itself_is_admitted(ctx: Context, environment: str) -> None:
    outcome = decide(review(trigger_workflow(environment=environment)), ctx)
    assert outcome.allowed is True, outcome.message


@pytest.mark.parametrize(
    ("environment", "attack", "finding"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_each_attack_is_denied_naming_what_it_would_run(
    ctx: Context, environment: str, attack: Attack, finding: str
) -> None:
    outcome = decide(review(attacked(attack, environment)), ctx)
    assert (outcome.allowed, outcome.code, outcome.verdict) == (False, 403, "deny")
    assert outcome.message.startswith(f"denied by CCT policy: {SHAPE_POLICY}: workflow ")
    assert finding in outcome.message
    assert outcome.record is not None
    assert outcome.record.policy_ids == (SHAPE_POLICY,)
    assert outcome.record.allowed is False


@pytest.mark.parametrize(
    ("environment", "attack", "finding"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_each_attack_is_denied_over_https(
    webhook: Webhook, environment: str, attack: Attack, finding: str
) -> None:
    response = webhook.response(review(attacked(attack, environment)))
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert finding in response["status"]["message"]


def test_the_shipped_templates_have_a_gate_only_a_resume_opens() -> None:
    assert set(WORKFLOW_PARAMETERS) == TEMPLATE_PARAMETERS
    manifests = workflow_templates("cct-workflows")
    assert {m["metadata"]["name"] for m in manifests} == APPROVED
    for manifest in manifests:
        assert approval_gate_findings(manifest["spec"]) == (), manifest["metadata"]["name"]


def _main_steps(spec: dict[str, Any]) -> list[list[dict[str, Any]]]:
    main = next(t for t in spec["templates"] if t["name"] == spec["entrypoint"])
    steps: list[list[dict[str, Any]]] = main["steps"]
    return steps


def _approve(spec: dict[str, Any]) -> dict[str, Any]:
    return next(s for g in _main_steps(spec) for s in g if s["name"] == "approve")


def _self_resume(spec: dict[str, Any]) -> None:
    target = _approve(spec)["template"]
    next(t for t in spec["templates"] if t["name"] == target)["suspend"] = {"duration": "1s"}


def _execute_first(spec: dict[str, Any]) -> None:
    steps = _main_steps(spec)
    execute = next(g for g in steps if g[0]["name"] == "execute")
    steps.remove(execute)
    steps.insert(0, execute)


@pytest.mark.parametrize(
    ("change", "finding"),
    [
        (_self_resume, "resumes itself after 1s"),
        (lambda spec: _approve(spec).update(when="1 == 2"), "skipped unless '1 == 2'"),
        (lambda spec: _approve(spec).update(continueOn={"failed": True}), "has continueOn"),
        (_execute_first, "execute runs before or beside the approve step"),
        (lambda spec: _approve(spec).update(name="approved"), "no step named approve"),
    ],
    ids=["duration", "when", "continue-on", "execute-first", "renamed"],
)
def test_a_template_whose_gate_opens_by_itself_is_found(
    change: Callable[[dict[str, Any]], None], finding: str
) -> None:
    spec = copy.deepcopy(workflow_templates("cct-workflows")[0]["spec"])
    change(spec)
    assert any(finding in f for f in approval_gate_findings(spec))


# Callers the webhook must not hear: no certificate or one from a CA it does not trust never
# complete the handshake; a trusted CA's certificate for another name gets a 403.


def _post_raw(webhook: Webhook, context: ssl.SSLContext, body: dict[str, Any]) -> int:
    status, _ = webhook.post(body, context=context)
    return status


@pytest.mark.parametrize("who", ["no-certificate", "foreign-ca"])
def test_callers_without_the_api_servers_certificate_cannot_connect(
    webhook: Webhook, who: str
) -> None:
    client = None if who == "no-certificate" else webhook.tls.foreign
    context = client_context(webhook.tls, client)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        _post_raw(webhook, context, review(trigger_workflow()))


def test_forged_reviews_change_no_counter_and_reach_no_audit_row(
    webhook: Webhook, pg_dsn: str
) -> None:
    """The attack of the issue: 25 forged admissions for one account would have held every
    genuine workflow of that account (blast radius). From a certificate of the trusted CA
    with another name they are refused, counted as forbidden, recorded nowhere."""
    stranger = client_context(webhook.tls, webhook.tls.stranger)
    before = webhook.metric("cct_admission_bad_requests_total", reason="forbidden_client")
    genuine = trigger_workflow()
    account = next(
        p["value"] for p in genuine["spec"]["arguments"]["parameters"] if p["name"] == "account-id"
    )
    forged = [review(trigger_workflow(account_id=account)) for _ in range(25)]
    for body in forged:
        status, answer = webhook.post(body, context=stranger)
        assert status == 403
        assert "may not call" in answer["error"]
    after = webhook.metric("cct_admission_bad_requests_total", reason="forbidden_client")
    assert after == before + 25
    response = webhook.response(review(genuine))
    assert response == {"uid": response["uid"], "allowed": True}  # no blast-radius warning
    marker = review(trigger_workflow())
    webhook.response(marker)
    wait_for(lambda: decision_row(pg_dsn, marker["request"]["uid"]), what="marker decision")
    assert all(decision_row(pg_dsn, b["request"]["uid"]) is None for b in forged)


def test_a_uid_no_api_server_sends_is_refused_before_the_audit_table(
    webhook: Webhook, pg_dsn: str
) -> None:
    body = review(trigger_workflow(), uid="u" * 100_000)
    status, answer = webhook.post(body)
    assert status == 400
    assert "exceeds the limit of 128" in answer["error"]


def _update(new: dict[str, Any], old: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return review(new, operation="UPDATE", old_object=old, **kw)


def test_an_admitted_spec_cannot_be_changed_by_an_update(ctx: Context, webhook: Webhook) -> None:
    """Walking around the CREATE check: add a podSpecPatch or swap a parameter afterwards."""
    admitted = trigger_workflow()
    patched = copy.deepcopy(admitted)
    patched["spec"]["podSpecPatch"] = '{"hostNetwork": true}'
    outcome = decide(_update(patched, admitted), ctx)
    assert (outcome.allowed, outcome.code) == (False, 403)
    assert "spec.podSpecPatch may not change after the workflow was admitted" in outcome.message
    swapped = copy.deepcopy(admitted)
    swapped["spec"]["arguments"]["parameters"][0]["value"] = "other"
    response = webhook.response(_update(swapped, admitted))
    assert response["allowed"] is False
    assert "spec.arguments may not change" in response["status"]["message"]


def test_status_updates_and_argo_stop_or_suspend_pass(ctx: Context) -> None:
    admitted = trigger_workflow()
    progressed = copy.deepcopy(admitted)
    progressed["status"] = {"phase": "Running", "nodes": {"x": {"phase": "Succeeded"}}}
    assert decide(_update(progressed, admitted), ctx).allowed is True
    stopped = copy.deepcopy(admitted)
    stopped["spec"].update(shutdown="Stop", suspend=True)
    assert decide(_update(stopped, admitted), ctx).allowed is True


APPROVER = "alice@example.com"
# What a user with update rights on Workflows (an approver: `argo resume` writes status) could
# make the controller run instead of the approved template.
FORGED_SPEC = {
    "entrypoint": "main",
    "templates": [{"name": "main", "container": {"image": "attacker/image", "command": ["sh"]}}],
}


def test_only_the_controller_writes_the_stored_spec_a_workflow_runs_from(
    ctx: Context, webhook: Webhook
) -> None:
    """Review finding: with `templateReferencing: Strict` the controller runs a stored spec it
    finds in the status; set by an approver before the controller's first pass, it replaced
    the approved template, and the webhook passed it as a status update."""
    admitted = trigger_workflow()
    forged = copy.deepcopy(admitted)
    forged["status"] = {"storedWorkflowTemplateSpec": FORGED_SPEC}
    outcome = decide(_update(forged, admitted, user=APPROVER), ctx)
    assert (outcome.allowed, outcome.code) == (False, 403)
    assert (
        "status.storedWorkflowTemplateSpec is written only by the workflow controller, "
        f"not by {APPROVER}"
    ) in outcome.message
    response = webhook.response(_update(forged, admitted, user=APPROVER))
    assert response["allowed"] is False
    assert "status.storedWorkflowTemplateSpec is written only" in response["status"]["message"]
    templates = copy.deepcopy(admitted)
    templates["status"] = {"storedTemplates": {"x": FORGED_SPEC["templates"][0]}}
    assert decide(_update(templates, admitted, user=APPROVER), ctx).allowed is False
    # A status that is not an object hides nothing from the check.
    broken = copy.deepcopy(admitted)
    broken["status"] = "Running"
    assert decide(_update(broken, admitted, user=APPROVER), ctx).allowed is False
    # No user name at all is no controller either.
    assert decide(_update(forged, admitted, user=""), ctx).allowed is False


def test_the_controller_stores_the_spec_and_approvers_resume_around_it(
    ctx: Context, webhook: Webhook
) -> None:
    admitted = trigger_workflow()
    stored = copy.deepcopy(admitted)
    stored["status"] = {"phase": "Running", "storedWorkflowTemplateSpec": {"entrypoint": "x"}}
    assert decide(_update(stored, admitted, user=CONTROLLER_USER), ctx).allowed is True
    assert webhook.response(_update(stored, admitted, user=CONTROLLER_USER))["allowed"] is True
    resumed = copy.deepcopy(stored)
    resumed["status"]["nodes"] = {"approve": {"phase": "Succeeded"}}
    assert decide(_update(resumed, stored, user=APPROVER), ctx).allowed is True
    # Removing the stored spec is a change too: the controller would load it afresh.
    cleared = copy.deepcopy(stored)
    del cleared["status"]["storedWorkflowTemplateSpec"]
    assert decide(_update(cleared, stored, user=APPROVER), ctx).allowed is False
