"""Admission through the real API server: the trigger's Argo backend creates Workflows in
the local stack's namespace with the trigger's own service account token; the API server
calls `cct serve admission` on the host (registered by URL) and answers what the policies
decide. With the handler down, the webhook's failurePolicy decides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lambdas.trigger.argo import ArgoBackend
from tests.admission.conftest import decision_row, wait_for
from tests.admission.support import Webhook
from tests.cluster.conftest import NAMESPACE, TRIGGER_ACCOUNT, run, workflow_exists
from tests.cluster.support import Cluster


def decision_for(pg_dsn: str, run_id: str) -> Callable[[], dict[str, Any] | None]:
    import psycopg

    def find() -> dict[str, Any] | None:
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute(
                "select decision_id from policy_decisions where run_id = %s", (run_id,)
            ).fetchone()
        return decision_row(pg_dsn, row[0]) if row else None

    return find


def test_allowed_workflow_is_created(
    host_webhook: Webhook, backend: ArgoBackend, cluster: Cluster, pg_dsn: str
) -> None:
    wf = run()
    assert backend.submit(wf).outcome == "created"
    assert workflow_exists(cluster, wf.run_id)
    row = wait_for(decision_for(pg_dsn, wf.run_id), what="the decision row")
    assert (row["verdict"], row["allowed"]) == ("allow", True)
    # The API server, not a test client, sent the review: its user is the trigger's account.
    assert row["input"]["user"] == f"system:serviceaccount:{NAMESPACE}:{TRIGGER_ACCOUNT}"


def test_denied_workflow_gets_the_policy_reasons_from_the_api_server(
    host_webhook: Webhook, backend: ArgoBackend, cluster: Cluster
) -> None:
    wf = run(tags='{"cct.io/protect":"true"}')
    submission = backend.submit(wf)
    assert submission.outcome == "denied"
    assert 'admission webhook "workflows.admission.cct.io" denied the request' in str(
        submission.detail
    )
    assert "protected-resources/protect-tag" in str(submission.detail)
    assert not workflow_exists(cluster, wf.run_id)


def test_approval_gated_workflow_is_created_to_wait_at_its_approve_step(
    host_webhook: Webhook, backend: ArgoBackend, cluster: Cluster, pg_dsn: str
) -> None:
    wf = run(environment="prod")
    assert backend.submit(wf).outcome == "created"
    assert workflow_exists(cluster, wf.run_id)
    row = wait_for(decision_for(pg_dsn, wf.run_id), what="the decision row")
    assert (row["verdict"], row["allowed"]) == ("require-approval", True)
