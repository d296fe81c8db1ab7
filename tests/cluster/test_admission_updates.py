"""The webhook's UPDATE rule through the real API server, against what Argo really writes.

Argo's Workflow CRD has no status subresource (`subresources: {}` in the vendored chart), so
the workflow controller persists status by updating the whole object: every one of its
writes is an UPDATE of `workflows` that the API server sends to CCT's webhook. Those must
pass, as must `argo stop`/`terminate` (spec.shutdown) and `argo suspend`/`resume`
(spec.suspend); any other spec change after admission is judged and refused, and so is a
stored spec (what the controller runs) written by anyone but the controller. The
controller's write is made with the controller's own service account (the chart's RBAC)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client

from components.argo import CONTROLLER_SERVICE_ACCOUNT
from lambdas.trigger.argo import ArgoBackend
from tests.admission.support import Webhook
from tests.cluster.conftest import NAMESPACE, run
from tests.cluster.support import Cluster, PulumiRun

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "workflows"
CONTROLLER = ("cct-platform", CONTROLLER_SERVICE_ACCOUNT)


@pytest.fixture(scope="module")
def controller_api(cluster: Cluster, deployed: PulumiRun) -> Iterator[client.CustomObjectsApi]:
    """The workflow controller's identity: a token of its service account."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    namespace, account = CONTROLLER
    token = client.CoreV1Api(cluster.api()).create_namespaced_service_account_token(
        account, namespace, request
    )
    api = cluster.api(str(token.status.token))
    yield client.CustomObjectsApi(api)
    api.close()


@pytest.fixture
def admitted(host_webhook: Webhook, backend: ArgoBackend, cluster: Cluster) -> str:
    wf = run()
    assert backend.submit(wf).outcome == "created"
    return wf.run_id


def get(cluster: Cluster, name: str) -> dict[str, Any]:
    objects = client.CustomObjectsApi(cluster.api())
    return cast(
        "dict[str, Any]",
        objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name),
    )


def merge_patch(cluster: Cluster, name: str, body: dict[str, Any]) -> dict[str, Any]:
    objects = client.CustomObjectsApi(cluster.api())
    return cast(
        "dict[str, Any]",
        objects.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name, body),
    )


def test_controller_status_updates_pass(
    admitted: str, cluster: Cluster, controller_api: client.CustomObjectsApi
) -> None:
    """What the controller writes while it runs a workflow up to the approval step: phase
    labels, status with nodes (the suspended `approve` node), the stored template spec."""
    wf = get(cluster, admitted)
    wf["metadata"].setdefault("labels", {})["workflows.argoproj.io/phase"] = "Running"
    wf["status"] = {
        "phase": "Running",
        "startedAt": "2026-01-01T00:00:00Z",
        "progress": "1/2",
        "nodes": {
            admitted: {"id": admitted, "name": admitted, "type": "Steps", "phase": "Running"},
            f"{admitted}-1": {
                "id": f"{admitted}-1",
                "name": f"{admitted}[0].approve",
                "type": "Suspend",
                "phase": "Running",
            },
        },
        "storedWorkflowTemplateSpec": {"entrypoint": "main"},
    }
    updated = cast(
        "dict[str, Any]",
        controller_api.replace_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, admitted, wf
        ),
    )
    assert updated["status"]["phase"] == "Running"
    # `argo resume` of the approval node is a status write too; then the run completes.
    wf = updated
    wf["status"]["nodes"][f"{admitted}-1"]["phase"] = "Succeeded"
    wf["status"]["phase"] = "Succeeded"
    wf["metadata"]["labels"]["workflows.argoproj.io/completed"] = "true"
    done = controller_api.replace_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, admitted, wf
    )
    assert done["status"]["phase"] == "Succeeded"


def test_argo_stop_and_suspend_pass(admitted: str, cluster: Cluster) -> None:
    assert merge_patch(cluster, admitted, {"spec": {"suspend": True}})["spec"]["suspend"]
    assert (
        merge_patch(cluster, admitted, {"spec": {"suspend": None}})["spec"].get("suspend") is None
    )
    stopped = merge_patch(cluster, admitted, {"spec": {"shutdown": "Stop"}})
    assert stopped["spec"]["shutdown"] == "Stop"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"spec": {"podSpecPatch": '{"hostNetwork": true}'}}, "spec.podSpecPatch"),
        ({"spec": {"serviceAccountName": "argo-workflows-server"}}, "spec.serviceAccountName"),
        ({"spec": {"workflowTemplateRef": {"name": "cct-other"}}}, "spec.workflowTemplateRef"),
    ],
)
def test_a_users_spec_change_is_judged_and_refused(
    admitted: str, cluster: Cluster, change: dict[str, Any], field: str
) -> None:
    before = get(cluster, admitted)
    with pytest.raises(client.ApiException) as err:
        merge_patch(cluster, admitted, change)
    assert err.value.status == 403
    message = json.loads(str(err.value.body))["message"]
    assert 'admission webhook "workflows.admission.cct.io" denied the request' in message
    assert f"{field} may not change after the workflow was admitted" in message
    assert get(cluster, admitted)["spec"] == before["spec"]


def test_changed_parameters_are_refused(admitted: str, cluster: Cluster) -> None:
    """A merge patch replaces the whole parameter list: the run's approved values go."""
    wf = get(cluster, admitted)
    params = wf["spec"]["arguments"]["parameters"]
    for p in params:
        if p["name"] == "dry-run":
            p["value"] = "true" if p["value"] == "false" else "false"
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(cluster.api()).replace_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, admitted, wf
        )
    assert err.value.status == 403
    message = json.loads(str(err.value.body))["message"]
    assert "spec.arguments may not change after the workflow was admitted" in message


def test_a_stored_spec_written_by_a_user_is_refused(admitted: str, cluster: Cluster) -> None:
    """Anyone who may update Workflows (approvers may: `argo resume` writes status) setting
    the spec a Strict controller runs from, before the controller does."""
    forged = {"entrypoint": "main", "templates": [{"name": "main", "container": {"image": "x"}}]}
    with pytest.raises(client.ApiException) as err:
        merge_patch(cluster, admitted, {"status": {"storedWorkflowTemplateSpec": forged}})
    assert err.value.status == 403
    message = json.loads(str(err.value.body))["message"]
    assert "status.storedWorkflowTemplateSpec is written only by the workflow controller" in message
    assert "storedWorkflowTemplateSpec" not in get(cluster, admitted).get("status", {})
