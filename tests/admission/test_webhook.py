"""Real HTTPS AdmissionReview calls against `cct serve admission` running as a subprocess,
with decisions landing in the real PostgreSQL."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from lambdas.store.decisions import DecisionRecord, record_decisions
from tests.admission.conftest import decision_row, wait_for
from tests.admission.support import PARAMS, Webhook, review, workflow
from tests.admission.support import params as make_params

Wait = Callable[[str], dict[str, Any]]


def name(prefix: str = "cct-rightsize-compute") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_allowed_workflow_is_admitted_and_recorded(webhook: Webhook, wait_decision: Wait) -> None:
    body = review(workflow(wf := name()))
    response = webhook.response(body)
    assert response == {"uid": body["request"]["uid"], "allowed": True}
    row = wait_decision(body["request"]["uid"])
    assert row["source"] == "admission"
    assert row["run_id"] == wf
    assert (row["verdict"], row["allowed"], row["dry_run"]) == ("allow", True, False)
    parameters = body["request"]["object"]["spec"]["arguments"]["parameters"]
    assert row["account_id"] == {p["name"]: p["value"] for p in parameters}["account-id"]
    assert row["input"]["parameters"]["resource-id"] == PARAMS["resource-id"]
    assert row["input"]["user"] == "system:serviceaccount:cct-system:cct-trigger"
    assert row["input"]["policy_set"]


def test_denied_workflow_gets_every_reason_in_the_status(
    webhook: Webhook, wait_decision: Wait
) -> None:
    params = make_params(tags='{"cct.io/protect":"true","legal-hold":"case-7"}')
    body = review(workflow(name(), params))
    response = webhook.response(body)
    assert response["allowed"] is False
    assert response["status"] == {
        "code": 403,
        "reason": "Forbidden",
        "message": "denied by CCT policy: "
        "protected-resources/legal-hold: i-0abc123def4567890 is under legal hold; CCT never "
        "changes it; protected-resources/protect-tag: i-0abc123def4567890 is tagged "
        "cct.io/protect=true; remove the tag to allow changes",
    }
    row = wait_decision(body["request"]["uid"])
    assert row["verdict"] == "deny"
    assert row["allowed"] is False
    assert row["policy_ids"] == [
        "protected-resources/legal-hold",
        "protected-resources/protect-tag",
    ]


def test_critical_service_in_business_hours_is_denied(webhook: Webhook) -> None:
    params = make_params(service="Amazon Relational Database Service", action="rightsize-database")
    response = webhook.response(review(workflow(name(), params, "cct-rightsize-database")))
    assert response["allowed"] is False
    assert response["status"]["message"].startswith(
        "denied by CCT policy: critical-services/aws-databases: Amazon Relational Database "
        "Service i-0abc123def4567890 is a critical service and must not be changed during "
        "business hours"
    )


def test_require_approval_is_admitted_when_the_template_has_the_approve_step(
    webhook: Webhook, wait_decision: Wait
) -> None:
    body = review(workflow(name(), make_params(environment="prod")))
    response = webhook.response(body)
    assert response["allowed"] is True
    assert response["warnings"] == [
        "CCT policy requires approval; the workflow waits at its approve step: "
        "production-approval/production: prod is a production environment: rightsize-compute "
        "on i-0abc123def4567890 needs approval"
    ]
    row = wait_decision(body["request"]["uid"])
    assert (row["verdict"], row["allowed"]) == ("require-approval", True)


def test_inline_templates_are_refused_even_with_a_proper_approve_step(webhook: Webhook) -> None:
    """Before issue 17 an inline suspend step named approve satisfied require-approval; the
    workflow's own templates are now never trusted, only an approved WorkflowTemplate."""
    templates: list[dict[str, Any]] = [
        {
            "name": "main",
            "steps": [
                [{"name": "plan", "template": "run-plan"}],
                [{"name": "approve", "template": "wait-for-human"}],
                [{"name": "execute", "template": "run-execute"}],
            ],
        },
        {"name": "run-plan", "container": {"image": "cct", "args": ["step", "plan"]}},
        {"name": "wait-for-human", "suspend": {}},
        {"name": "run-execute", "container": {"image": "cct", "args": ["step", "execute"]}},
    ]
    params = make_params(environment="prod")
    refused = webhook.response(review(workflow(wf := name(), params, None, templates)))
    assert refused["allowed"] is False
    assert refused["status"]["message"] == (
        f"denied by CCT policy: cct/approved-templates-only: workflow {wf} must be an approved "
        "WorkflowTemplate by reference with its parameters: spec.workflowTemplateRef is "
        "missing: only approved WorkflowTemplates run; spec.entrypoint: the workflow may not "
        "start the template anywhere but its entrypoint; spec.templates: inline templates are "
        "not allowed; reference an approved WorkflowTemplate"
    )


def test_require_approval_from_an_unknown_template_is_refused(webhook: Webhook) -> None:
    params = make_params(environment="prod")
    response = webhook.response(review(workflow(name(), params, "someone-elses-template")))
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert (
        "WorkflowTemplate someone-elses-template is not an approved template"
        in response["status"]["message"]
    )


def test_invalid_parameters_are_refused_and_recorded(webhook: Webhook, wait_decision: Wait) -> None:
    without_account = {k: v for k, v in PARAMS.items() if k != "account-id"}
    body = review(workflow(wf := name(), without_account))
    response = webhook.response(body)
    assert response["allowed"] is False
    assert response["status"] == {
        "code": 400,
        "reason": "BadRequest",
        "message": f"CCT workflow {wf} has invalid parameters: missing parameter(s): account-id",
    }
    row = wait_decision(body["request"]["uid"])
    assert (row["verdict"], row["allowed"], row["account_id"]) == ("deny", False, None)

    bad_tags = webhook.response(review(workflow(name(), make_params(tags="{oops"))))
    assert "parameter tags is not valid JSON" in bad_tags["status"]["message"]
    no_args = workflow(name())
    del no_args["spec"]["arguments"]
    response = webhook.response(review(no_args))
    assert response["status"]["message"].endswith("workflow has no spec.arguments.parameters")


def test_other_kinds_and_operations_are_not_governed(webhook: Webhook) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}}
    response = webhook.response(review(pod, kind={"group": "", "version": "v1", "kind": "Pod"}))
    assert response["allowed"] is True
    assert response["warnings"] == [
        "cct-admission governs only CREATE and UPDATE of argoproj.io/v1alpha1 Workflow; "
        "CREATE of core/v1 Pod admitted without a policy check"
    ]
    # The workflow controller updates status on every step: never block that.
    protected = workflow(name(), make_params(tags='{"cct.io/protect":"true"}'))
    assert webhook.response(review(protected, operation="UPDATE"))["allowed"] is True


def test_malformed_bodies_get_a_4xx_naming_the_problem(webhook: Webhook) -> None:
    ok = review(workflow(name()))
    cases: list[tuple[bytes, str, int, str]] = [
        (b"{not json", "application/json", 400, "body is not JSON"),
        (b"[1, 2]", "application/json", 400, "body is not a JSON object"),
        (
            json.dumps({**ok, "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
            "application/json",
            400,
            "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got "
            "'admission.k8s.io/v1beta1' 'AdmissionReview'",
        ),
        (
            json.dumps({**ok, "kind": "ConversionReview"}).encode(),
            "application/json",
            400,
            "expected apiVersion admission.k8s.io/v1 kind AdmissionReview",
        ),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
            "application/json",
            400,
            "AdmissionReview has no request",
        ),
        (
            json.dumps({**ok, "request": {**ok["request"], "uid": ""}}).encode(),
            "application/json",
            400,
            "AdmissionReview request has no uid",
        ),
        (b"\xff\xfe\x00garbage", "application/json", 400, "body is not JSON"),
        (json.dumps(ok).encode(), "text/plain", 415, "expected application/json"),
    ]
    for body, content_type, status, message in cases:
        got_status, doc = webhook.post(body, content_type)
        assert got_status == status, (body[:40], doc)
        assert message in doc["error"], (body[:40], doc)
    assert webhook.metric("cct_admission_bad_requests_total", reason="malformed") >= 7


def test_oversized_body_is_refused_with_413(webhook: Webhook) -> None:
    wf = workflow(name())
    wf["metadata"]["annotations"] = {"padding": "x" * (300 * 1024)}
    status, doc = webhook.post(review(wf))
    assert status == 413
    assert doc == {"error": "request body exceeds 262144 bytes"}
    assert webhook.metric("cct_admission_bad_requests_total", reason="oversized") >= 1


def test_a_body_that_never_arrives_times_out_with_408(webhook: Webhook) -> None:
    raw = socket.create_connection(("127.0.0.1", webhook.port), timeout=10)
    with webhook.context().wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(
            b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 5000\r\n\r\n{"apiVersion": '
        )
        started = time.monotonic()
        reply = conn.recv(4096).decode()
        elapsed = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "request body not received within 1.0s" in reply
    assert 0.8 < elapsed < 5


def test_plain_http_and_untrusted_clients_are_refused(webhook: Webhook) -> None:
    plain = http.client.HTTPConnection("127.0.0.1", webhook.port, timeout=5)
    try:
        plain.request("POST", "/validate", body=b"{}")
        response = plain.getresponse()
        assert response.status == 400  # aiohttp answers plain HTTP on a TLS port with 400
    except (ConnectionError, http.client.BadStatusLine):
        pass  # or drops the connection; either way nothing is decided
    finally:
        plain.close()
    untrusting = ssl.create_default_context()  # system CAs only: our test CA is unknown
    raw = socket.create_connection(("127.0.0.1", webhook.port), timeout=5)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        raw.close()


def test_server_side_dry_run_is_answered_but_not_recorded(webhook: Webhook, pg_dsn: str) -> None:
    body = review(workflow(name()), dry_run=True)
    assert webhook.response(body)["allowed"] is True
    marker = review(workflow(name()))
    webhook.response(marker)
    wait_for(lambda: decision_row(pg_dsn, marker["request"]["uid"]), what="marker decision")
    # The writer keeps order: the dry run, sent before the marker, would be there by now.
    assert decision_row(pg_dsn, body["request"]["uid"]) is None


def test_a_retried_review_is_recorded_once(
    webhook: Webhook, pg_dsn: str, wait_decision: Wait
) -> None:
    body = review(workflow(name()))
    first = webhook.response(body)
    assert webhook.response(body) == first
    wait_decision(body["request"]["uid"])
    time.sleep(0.3)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "select count(*) from policy_decisions where decision_id = %s",
            (body["request"]["uid"],),
        ).fetchone()
    assert row == (1,)


def test_blast_radius_counts_this_replicas_admissions(webhook: Webhook, uid: str) -> None:
    params = dict(PARAMS, **{"account-id": f"acct-{uid}"})
    for _ in range(5):
        assert webhook.response(review(workflow(name(), params))).get("warnings") is None
    sixth = webhook.response(review(workflow(name(), params)))
    assert sixth["allowed"] is True
    assert "blast-radius/approval-after-five-per-hour: account acct-" in sixth["warnings"][0]
    # Dry runs are not actions: another account's dry runs leave its count at zero.
    dry = dict(params, **{"account-id": f"dry-{uid}", "dry-run": "true"})
    for _ in range(6):
        assert webhook.response(review(workflow(name(), dry))).get("warnings") is None


def test_blast_radius_includes_other_replicas_decisions(
    webhook: Webhook, pg_dsn: str, uid: str
) -> None:
    account = f"other-{uid}"
    now = datetime.now(UTC)
    others = [
        DecisionRecord(
            decision_id=f"{uid}-{i}",
            source="admission",
            verdict="allow",
            policy_ids=(),
            reasons=(),
            input={},
            decided_at=now,
            run_id=f"wf-{i}",
            allowed=True,
            dry_run=False,
            account_id=account,
        )
        for i in range(20)
    ]
    with psycopg.connect(pg_dsn) as conn:
        record_decisions(conn, others)
    params = dict(PARAMS, **{"account-id": account})

    def refused() -> dict[str, Any] | None:
        response = webhook.response(review(workflow(name(), params)))
        return response if not response["allowed"] else None

    response = wait_for(refused, timeout=10, what="the other replica's actions to count")
    assert (
        "blast-radius/stop-after-twenty-per-hour: account other-" in response["status"]["message"]
    )


def test_metrics_count_decisions(webhook: Webhook) -> None:
    before = webhook.metric("cct_admission_requests_total", allowed="false", verdict="deny")
    params = make_params(tags='{"cct.io/protect":"true"}')
    webhook.response(review(workflow(name(), params)))
    after = webhook.metric("cct_admission_requests_total", allowed="false", verdict="deny")
    assert after == before + 1
    assert webhook.metric("cct_admission_policy_set_valid") == 1
    assert webhook.metric("cct_admission_policy_rules") == 16
    assert webhook.metric("cct_admission_request_duration_seconds_count") >= 1
    wait_for(lambda: webhook.metric("cct_admission_decisions_recorded_total") >= 1)
    status, body = webhook.get("/healthz")
    assert status == 200
    assert json.loads(body)["files_valid"] is True
