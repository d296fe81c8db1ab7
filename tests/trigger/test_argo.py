"""The Argo backend against a fake Kubernetes API server that speaks the real paths and
status bodies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdas.events.cloudevents import decode
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.steps.templates import workflow_templates
from lambdas.trigger import argo
from lambdas.trigger.argo import ArgoBackend, KubeSettings, api_client, build_workflow
from lambdas.trigger.backends import PermanentSubmitError, RetryableSubmitError
from lambdas.trigger.core import WorkflowRun, plan_run
from lambdas.trigger.mapping import load_mapping
from tests.support.procs import free_port
from tests.support.services import ROOT
from tests.trigger.events import event_bytes
from tests.trigger.fake_kube import FakeKube

TOKEN = "kube-token"


def run_for(uid: str, n: int = 0, **overrides: str) -> WorkflowRun:
    event = decode(event_bytes(uid, n, **overrides))
    rule = load_mapping(ROOT / "policies" / "playbooks.yaml").select(event.labels)
    assert rule is not None
    return plan_run(event, rule)


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(TOKEN, deny=_deny_prod) as fake:
        yield fake


def _deny_prod(workflow: dict[str, Any]) -> str | None:
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    return "production changes need approval" if params["environment"] == "prod" else None


def backend(url: str, tmp_path: Path, token: str = TOKEN) -> ArgoBackend:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    settings = KubeSettings(namespace="cct-system", api_url=url, token_file=str(token_file))
    return ArgoBackend(api_client(settings), "cct-system", 5.0)


def test_workflow_manifest_references_the_template_with_string_parameters() -> None:
    run = run_for("m1")
    wf = build_workflow(run, "cct-system")
    assert wf["metadata"]["name"] == run.run_id
    assert wf["spec"]["workflowTemplateRef"] == {"name": "cct-stop-idle-compute"}
    params = wf["spec"]["arguments"]["parameters"]
    assert {p["name"] for p in params} == set(run.parameters)
    assert all(isinstance(p["value"], str) for p in params)
    assert wf["metadata"]["labels"]["cct.io/event-id"] == run.event_id


def test_create_then_already_exists(kube: FakeKube, tmp_path: Path) -> None:
    b = backend(kube.url, tmp_path)
    run = run_for("a1")
    assert b.submit(run).outcome == "created"
    assert b.submit(run).outcome == "already_exists"
    assert kube.attempts == [(run.run_id, 201), (run.run_id, 409)]
    assert list(kube.objects) == [("cct-system", run.run_id)]


def test_admission_denial_is_a_denial_not_an_error(kube: FakeKube, tmp_path: Path) -> None:
    submission = backend(kube.url, tmp_path).submit(run_for("d1", env="prod"))
    assert submission.outcome == "denied"
    assert submission.detail == (
        'admission webhook "validate.workflows.cct.io" denied the request: '
        "production changes need approval"
    )
    assert kube.objects == {}


def test_server_errors_and_auth_problems_are_retryable(kube: FakeKube, tmp_path: Path) -> None:
    kube.fail_next = 1
    with pytest.raises(RetryableSubmitError, match="503: etcdserver: request timed out"):
        backend(kube.url, tmp_path).submit(run_for("r1"))
    with pytest.raises(RetryableSubmitError, match="401: Unauthorized"):
        backend(kube.url, tmp_path, token="wrong").submit(run_for("r1"))
    with pytest.raises(RetryableSubmitError, match="unreachable"):
        backend(f"http://127.0.0.1:{free_port()}", tmp_path).submit(run_for("r1"))
    assert backend(kube.url, tmp_path).submit(run_for("r1")).outcome == "created"


def test_invalid_objects_are_permanent(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = argo.build_workflow

    def without_template_ref(run: WorkflowRun, namespace: str) -> dict[str, Any]:
        wf = real(run, namespace)
        del wf["spec"]["workflowTemplateRef"]
        return wf

    monkeypatch.setattr(argo, "build_workflow", without_template_ref)
    with pytest.raises(PermanentSubmitError, match=r"rejected \(422\).*workflowTemplateRef"):
        backend(kube.url, tmp_path).submit(run_for("p1"))


def test_every_playbook_has_the_template_and_parameters_the_workflow_names() -> None:
    templates = {t["metadata"]["name"]: t for t in workflow_templates("cct-system")}
    run = run_for("t1")
    for playbook in PLAYBOOKS:
        template = templates[argo.template_name(playbook)]
        declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
        assert set(run.parameters) <= declared, set(run.parameters) - declared
