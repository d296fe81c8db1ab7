"""The webhook's pure core (`review.decide`, workflow reading) as table tests, and the
request-budget timeout on an in-process server on a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lambdas.admission.server as server_module
from lambdas.admission.review import BadReview, Context, Outcome, decide
from lambdas.admission.server import AdmissionServer
from lambdas.admission.settings import AdmissionSettings
from lambdas.common.settings import SettingsError
from lambdas.policy import load_policy_set
from lambdas.policy.policyset import Conditions, Policy, PolicySet, Rule, Selector
from tests.admission.support import (
    APISERVER_NAME,
    CONTROLLER_USER,
    SHIPPED,
    Tls,
    client_context,
    params,
    review,
    workflow,
)
from tests.support.procs import free_port

NOW = datetime(2026, 2, 2, 3, 0, tzinfo=UTC)  # 22:00 New York on a Sunday: outside hours


def context(**overrides: Any) -> Context:
    values: dict[str, Any] = {
        "now": NOW,
        "policy_set": load_policy_set(SHIPPED),
        "recent_actions": {},
        "failure_mode": "closed",
        "approval_templates": frozenset({"cct-rightsize-compute"}),
    }
    values.update(overrides)
    return Context(**values)


FUZZ_CONTEXT = context()


def broken_policy_set() -> PolicySet:
    # Built by hand, past the loader's checks: its reason names a placeholder that does not
    # exist, so rendering it raises inside the engine.
    rule = Rule("broken/r", "d", "deny", "{nope}", Selector(), Conditions())
    return PolicySet((Policy("broken", "d", "", "x.yaml", (rule,)),), (), "f")


@pytest.mark.parametrize(
    ("mode", "allowed", "field"),
    [("closed", False, "status"), ("open", True, "warnings")],
)
def test_engine_errors_are_decided_by_the_failure_mode(
    mode: str, allowed: bool, field: str
) -> None:
    outcome = decide(
        review(workflow("wf", params())), context(policy_set=broken_policy_set(), failure_mode=mode)
    )
    assert (outcome.allowed, outcome.verdict, outcome.failure) == (
        allowed,
        "error",
        "internal_error",
    )
    assert "policy evaluation failed: KeyError('nope')" in json.dumps(
        outcome.response()["response"][field]
    )
    assert outcome.record is None


def test_generate_name_workflows_use_the_prefix_as_run_id() -> None:
    wf = workflow("", params(environment="prod"))
    wf["metadata"] = {"generateName": "cct-manual-", "namespace": "cct-workflows"}
    outcome = decide(review(wf), context())
    assert outcome.allowed is True
    assert outcome.record is not None
    assert outcome.record.run_id == "cct-manual-"


def test_long_warnings_are_cut_to_what_kubernetes_shows() -> None:
    outcome = Outcome("u", allowed=True, verdict="allow", warnings=("x" * 1000,))
    assert len(outcome.response()["response"]["warnings"][0]) == 256


def test_duplicate_parameters_are_invalid() -> None:
    wf = workflow("wf", params())
    wf["spec"]["arguments"]["parameters"].append({"name": "provider", "value": "gcp"})
    outcome = decide(review(wf), context())
    assert outcome.allowed is False
    assert (
        outcome.message
        == "CCT workflow wf has invalid parameters: parameter provider is given twice"
    )


@pytest.mark.parametrize(
    "status",
    [
        {"storedWorkflowTemplateSpec": {"templates": [{"name": "x", "container": {}}]}},
        {"nodes": {"wf-1": {"displayName": "approve", "phase": "Succeeded"}}},
        {"phase": "Running"},
    ],
)
def test_a_workflow_created_with_a_status_is_refused(status: dict[str, Any]) -> None:
    """The Workflow CRD keeps a status sent with the CREATE: a stored spec would run instead
    of the approved template, a node marked done would skip the approval."""
    wf = workflow("wf-status", params())
    wf["status"] = status
    outcome = decide(review(wf), context())
    assert outcome.allowed is False
    assert "status: a new Workflow carries no status" in outcome.message


def test_argo_s_own_zero_status_is_no_status() -> None:
    """`argo submit` and the UI send Go's zero WorkflowStatus: nothing forged, nothing said."""
    wf = workflow("wf-zero", params())
    wf["status"] = {"startedAt": None, "finishedAt": None}
    outcome = decide(review(wf), context())
    assert outcome.allowed is True, outcome.message


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_an_action_that_is_not_text_is_still_checked_against_the_template(value: Any) -> None:
    """The policies judge the action as text; the template must still be the action's."""
    wf = workflow("wf-num", params(), template_ref="cct-delete-unattached-volume")
    for item in wf["spec"]["arguments"]["parameters"]:
        if item["name"] == "action":
            item["value"] = value
    approved = frozenset({"cct-rightsize-compute", "cct-delete-unattached-volume"})
    outcome = decide(review(wf), context(approval_templates=approved))
    assert outcome.allowed is False
    assert (
        f"WorkflowTemplate cct-delete-unattached-volume does not run the action {value}"
        in outcome.message
    )


def test_tags_nested_too_deeply_are_invalid_parameters_not_a_crash() -> None:
    wf = workflow("wf-deep", params(tags="[" * 1500 + "]" * 1500))
    outcome = decide(review(wf), context())
    assert (outcome.allowed, outcome.code) == (False, 400)
    assert "parameter tags is nested too deeply" in outcome.message


def slow_decide(review_doc: Any, ctx: Context) -> Outcome:
    time.sleep(0.6)  # an engine stuck far beyond the 0.2 s budget
    return decide(review_doc, ctx)


def broken_decide(review_doc: Any, ctx: Context) -> Outcome:
    raise RuntimeError("bug")


@pytest.mark.parametrize(
    "case",
    [
        (slow_decide, "timeout", "CCT admission failed closed: no decision within 0.2s"),
        (
            broken_decide,
            "internal_error",
            "CCT admission failed closed: internal error: RuntimeError('bug')",
        ),
    ],
    ids=["timeout", "internal-error"],
)
async def test_server_failures_are_answered_by_the_failure_mode(
    tls: Tls,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[Callable[[Any, Context], Outcome], str, str],
) -> None:
    replacement, failure, message = case
    monkeypatch.setattr(server_module, "decide", replacement)
    config = AdmissionSettings(
        policy_dir=SHIPPED,
        tls_cert=tls.cert,
        tls_key=tls.key,
        client_ca=tls.client_ca,
        client_names=frozenset({APISERVER_NAME}),
        controller_users=frozenset({CONTROLLER_USER}),
        pg_dsn=pg_dsn,
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        request_timeout_s=0.2,
    )
    server = AdmissionServer(config)
    await server.start()
    try:
        body = review(workflow("wf-slow", params()))
        ssl_ctx = client_context(tls, tls.apiserver)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://127.0.0.1:{config.port}/validate", json=body, ssl=ssl_ctx
            ) as resp,
        ):
            answer = await resp.json()
        assert answer["response"] == {
            "uid": body["request"]["uid"],
            "allowed": False,
            "status": {"code": 500, "reason": "InternalError", "message": message},
        }
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{config.metrics_port}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert (
            f'cct_admission_failure_mode_total{{mode="closed",reason="{failure}"}} 1.0' in metrics
        )
    finally:
        await server.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
# Needs approval and carries its steps inline, so mutated templates reach the step search.
VALID = review(
    workflow(
        "wf-fuzz",
        params(environment="prod"),
        template_ref=None,
        templates=[
            {"name": "main", "steps": [[{"name": "approve", "template": "wait"}]]},
            {"name": "wait", "suspend": {}},
        ],
    )
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["request", "object", "spec", "arguments", "parameters", "templates", "kind", "uid"]
    ),
    json_values,
)
def test_decide_answers_or_rejects_any_mutation_of_a_review(where: str, value: Any) -> None:
    """Replace one part of a valid review with arbitrary JSON: decide returns an answer or
    raises BadReview, nothing else."""
    doc = json.loads(json.dumps(VALID))
    request = doc["request"]
    targets = {
        "request": (doc, "request"),
        "object": (request, "object"),
        "spec": (request["object"], "spec"),
        "arguments": (request["object"]["spec"], "arguments"),
        "parameters": (request["object"]["spec"]["arguments"], "parameters"),
        "templates": (request["object"]["spec"], "templates"),
        "kind": (request, "kind"),
        "uid": (request, "uid"),
    }
    parent, key = targets[where]
    parent[key] = value
    try:
        outcome = decide(doc, FUZZ_CONTEXT)
    except BadReview:
        return
    json.dumps(outcome.response())
    assert outcome.allowed in {True, False}


SERVING = {"CCT_ADMISSION_TLS_CERT": "c", "CCT_ADMISSION_TLS_KEY": "k"}
MUTUAL = {
    **SERVING,
    "CCT_ADMISSION_CLIENT_CA": "ca",
    "CCT_ADMISSION_CLIENT_NAMES": "api",
    "CCT_ADMISSION_CONTROLLER_USERS": "system:serviceaccount:argo:controller",
}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "CCT_ADMISSION_TLS_CERT is required but not set"),
        # Every caller is authenticated: there is no setting without a client CA.
        (SERVING, "CCT_ADMISSION_CLIENT_CA is required but not set"),
        (
            {**SERVING, "CCT_ADMISSION_CLIENT_CA": "ca"},
            "CCT_ADMISSION_CLIENT_NAMES is required but not set",
        ),
        (
            {**MUTUAL, "CCT_ADMISSION_CLIENT_NAMES": " , "},
            "CCT_ADMISSION_CLIENT_NAMES names no client certificate",
        ),
        (
            {k: v for k, v in MUTUAL.items() if k != "CCT_ADMISSION_CONTROLLER_USERS"},
            "CCT_ADMISSION_CONTROLLER_USERS is required but not set",
        ),
        (
            {**MUTUAL, "CCT_ADMISSION_CONTROLLER_USERS": ","},
            "CCT_ADMISSION_CONTROLLER_USERS names no workflow controller",
        ),
        (
            {**MUTUAL, "CCT_ADMISSION_FAILURE_MODE": "maybe"},
            "CCT_ADMISSION_FAILURE_MODE='maybe' must be closed or open",
        ),
        (
            {**MUTUAL, "CCT_ADMISSION_REQUEST_TIMEOUT_S": "0"},
            "CCT_ADMISSION_REQUEST_TIMEOUT_S=0.0 must be positive",
        ),
    ],
)
def test_settings_errors_name_the_variable(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CCT_ADMISSION_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CCT_PG_DSN", "postgresql://x/y")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        AdmissionSettings.from_env()
    assert str(err.value) == message


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CCT_ADMISSION_") or name == "CCT_POLICY_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CCT_PG_DSN", "postgresql://x/y")
    monkeypatch.setenv("CCT_ADMISSION_TLS_CERT", "/tls/tls.crt")
    monkeypatch.setenv("CCT_ADMISSION_TLS_KEY", "/tls/tls.key")
    monkeypatch.setenv("CCT_ADMISSION_CLIENT_CA", "/tls/client-ca.crt")
    monkeypatch.setenv("CCT_ADMISSION_CLIENT_NAMES", "kube-apiserver, other ")
    monkeypatch.setenv("CCT_ADMISSION_CONTROLLER_USERS", "system:serviceaccount:argo:c")
    settings = AdmissionSettings.from_env()
    assert settings.client_names == {"kube-apiserver", "other"}
    assert (settings.port, settings.metrics_port, settings.failure_mode) == (18443, 18085, "closed")
    assert "cct-rightsize-database" in settings.approval_templates


async def test_a_failing_refresh_does_not_stop_later_refreshes(
    tls: Tls, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = AdmissionSettings(
        policy_dir=SHIPPED,
        tls_cert=tls.cert,
        tls_key=tls.key,
        client_ca=tls.client_ca,
        client_names=frozenset({APISERVER_NAME}),
        controller_users=frozenset({CONTROLLER_USER}),
        pg_dsn=pg_dsn,
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        recent_refresh_s=0.05,
    )
    server = AdmissionServer(config)
    calls: list[datetime] = []

    def flaky(since: datetime) -> list[tuple[str, str, datetime]]:
        calls.append(since)
        if len(calls) == 1:
            raise RuntimeError("unexpected driver error")
        return [("d-1", "acct-1", datetime.now(UTC))]

    monkeypatch.setattr(server, "_read_admitted", flaky)
    await server.start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(calls) >= 2
        assert server.recent.count("acct-1", datetime.now(UTC)) == 1
    finally:
        await server.stop()
