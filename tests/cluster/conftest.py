"""The local stack deployed once per session into the real API server, and CCT's admission
handler on the host at the URL the stack registers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from lambdas.trigger.argo import ArgoBackend, KubeSettings, api_client
from lambdas.trigger.core import WorkflowRun
from tests.admission.support import Tls, Webhook, params, policies_for_now, serve_admission
from tests.cluster import support
from tests.cluster.support import WEBHOOK_PORT, Cluster, PulumiRun, load_cluster, pulumi


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    return load_cluster()


@pytest.fixture(scope="session")
def deployed(cluster: Cluster) -> PulumiRun:
    """`pulumi up` of the local stack (a no-op when an earlier run deployed it already)."""
    return pulumi("up", "--yes", "--skip-preview")


@pytest.fixture(scope="session")
def cluster_tls(cluster: Cluster) -> Tls:
    return support.cluster_tls(cluster.ca_file)


@pytest.fixture(scope="module")
def host_webhook(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, cluster_tls: Tls, deployed: PulumiRun
) -> Iterator[Webhook]:
    """`cct serve admission` on 127.0.0.1:18443 over TLS, where the API server calls it."""
    tmp = tmp_path_factory.mktemp("cluster-admission")
    with serve_admission(
        tmp,
        pg_dsn,
        policies_for_now(tmp / "policies"),
        cluster_tls,
        CCT_ADMISSION_PORT=str(WEBHOOK_PORT),
        CCT_ADMISSION_CLIENT_NAMES=support.APISERVER_CLIENT_NAME,
    ) as hook:
        yield hook


NAMESPACE = "cct-system"
TRIGGER_ACCOUNT = "trigger"


@pytest.fixture(scope="module")
def trigger_token(cluster: Cluster, deployed: PulumiRun) -> str:
    """A short-lived token of the trigger's service account (TokenRequest), so every call
    below is authorized by the stack's own RBAC, nothing more."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = client.CoreV1Api(cluster.api()).create_namespaced_service_account_token(
        TRIGGER_ACCOUNT, NAMESPACE, request
    )
    return str(token.status.token)


@pytest.fixture
def backend(cluster: Cluster, trigger_token: str, tmp_path: Path) -> Iterator[ArgoBackend]:
    token_file = tmp_path / "token"
    token_file.write_text(trigger_token)
    settings = KubeSettings(
        namespace=NAMESPACE,
        api_url=cluster.server,
        token_file=str(token_file),
        ca_file=cluster.ca_file,
    )
    api = api_client(settings)
    yield ArgoBackend(api, NAMESPACE, 15.0)
    api.close()


def run(**overrides: str) -> WorkflowRun:
    return WorkflowRun(
        run_id=f"cct-rightsize-compute-{uuid.uuid4().hex[:12]}",
        event_id=uuid.uuid4().hex[:10],
        playbook="rightsize-compute",
        rule_id="test",
        parameters=params(**overrides),
    )


def workflow_exists(cluster: Cluster, name: str) -> bool:
    objects = client.CustomObjectsApi(cluster.api())
    try:
        objects.get_namespaced_custom_object(
            "argoproj.io", "v1alpha1", NAMESPACE, "workflows", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
