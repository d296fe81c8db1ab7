"""failurePolicy through the real API server while CCT's admission handler is down (this
module starts none; the handler of test_admission.py is stopped with its module)."""

from __future__ import annotations

import pytest
from kubernetes import client

from lambdas.trigger.argo import ArgoBackend
from lambdas.trigger.backends import RetryableSubmitError
from tests.cluster.conftest import run, workflow_exists
from tests.cluster.support import Cluster, PulumiRun


def test_fail_policy_refuses_while_the_handler_is_down(
    deployed: PulumiRun, backend: ArgoBackend, cluster: Cluster
) -> None:
    """failurePolicy Fail (the stack's default, docs/admission.md): nothing is created while
    the handler cannot answer, and the trigger is told to retry."""
    policy = client.AdmissionregistrationV1Api(cluster.api()).read_validating_webhook_configuration(
        "cct-admission"
    )
    assert policy.webhooks[0].failure_policy == "Fail"
    wf = run()
    with pytest.raises(RetryableSubmitError, match="failed calling webhook"):
        backend.submit(wf)
    assert not workflow_exists(cluster, wf.run_id)


def test_ignore_policy_admits_while_the_handler_is_down(
    deployed: PulumiRun, backend: ArgoBackend, cluster: Cluster
) -> None:
    """failurePolicy Ignore: the API server admits without a review while the handler is
    down. Set on the live object for this test only, then restored."""
    api = client.AdmissionregistrationV1Api(cluster.api())

    def set_policy(value: str) -> None:
        patch = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": value}]
        api.patch_validating_webhook_configuration("cct-admission", patch)

    set_policy("Ignore")
    try:
        wf = run()
        assert backend.submit(wf).outcome == "created"
        assert workflow_exists(cluster, wf.run_id)
    finally:
        set_policy("Fail")
