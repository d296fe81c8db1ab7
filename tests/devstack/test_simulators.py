"""The Azure and GCP simulators of the local stack, in-process on loopback: their events go
through the real forwarders (the Azure one reading the resource back from the simulator's
ARM with the Function's managed identity) and the records they post are normalized by the
collector's real code; the credential source's engines make real credentials on them; forged
callers and hostile requests get the providers' errors and the server keeps serving."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.collector.normalize import normalize
from lambdas.devstack.azure_sim import AzureSimulator
from lambdas.devstack.cloud import AzureUser, GcpUser
from lambdas.devstack.gcp_sim import GcpSimulator
from lambdas.devstack.simbase import make_server
from lambdas.forwarders import azure as azure_fwd
from lambdas.forwarders import gcp as gcp_fwd
from lambdas.forwarders.common import Forwarder, ForwarderSettings
from lambdas.vaultdev.engines import AzureEngine, CloudDirectory, GcpTokenEngine

TENANT = "tenant-test"


class Collector:
    """Plays the collector's /ingest: records what the forwarder posts."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def transport(self, url: str, body: bytes, headers: Any, timeout: float) -> int:
        assert headers["Authorization"] == "Bearer collector-token"
        self.records.extend(json.loads(body))
        return 200


def call(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=kwargs.pop("timeout", 10), **kwargs)


@contextmanager
def running(app: Any) -> Iterator[str]:
    server = make_server(app, "127.0.0.1", 0, lambda: "", "test")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _settings() -> ForwarderSettings:
    return ForwarderSettings(endpoint="http://collector.invalid/ingest", token="collector-token")


# ---------------------------------------------------------------------- Azure
@pytest.fixture
def azure_env(tmp_path: Any) -> Iterator[dict[str, Any]]:
    collector = Collector()
    clients = {
        "user": {"client_id": "user-1", "client_secret": "user-secret", "role": "contributor"},
        "vault": {"client_id": "vault-1", "client_secret": "vault-secret", "role": "graph-admin"},
    }
    base: dict[str, str] = {}

    def deliver(event: dict[str, Any]) -> None:
        arm_get = azure_fwd.arm_reader(f"{base['url']}/msi/token", "identity-secret", base["url"])
        forwarder = Forwarder(_settings(), "azure", transport=collector.transport)
        status, result = azure_fwd.handle_http(json.dumps([event]).encode(), forwarder, arm_get)
        assert status == 200 and result["sent"] == 1, result

    sim = AzureSimulator(clients, "identity-secret", TENANT, deliver)
    with running(sim) as url:
        base["url"] = url
        yield _azure_env(tmp_path, url, sim, collector)


def _azure_env(tmp_path: Any, url: str, sim: Any, collector: Collector) -> dict[str, Any]:
    user_file = tmp_path / "user.json"
    user_file.write_text(
        json.dumps({"tenant": TENANT, "client_id": "user-1", "client_secret": "user-secret"})
    )
    vault_file = tmp_path / "vault.json"
    vault_file.write_text(
        json.dumps({"tenant": TENANT, "client_id": "vault-1", "client_secret": "vault-secret"})
    )
    return {
        "url": url,
        "sim": sim,
        "collector": collector,
        "user": AzureUser(url, str(user_file), str(uuid.uuid4())),
        "vault_file": str(vault_file),
    }


def _deliver_all(sim: Any) -> None:
    """Run the queued deliveries in this thread (the process runs them in its own)."""
    while not sim.delivery.pending.empty():
        sim.delivery.deliver(sim.delivery.pending.get())


def test_azure_vm_events_reach_the_collector_through_the_real_forwarder(
    azure_env: dict[str, Any],
) -> None:
    user, sim, collector = azure_env["user"], azure_env["sim"], azure_env["collector"]
    rid = user.create_vm("rg-web", "web-1", "Standard_D2s_v3", {"env": "dev", "team": "web"})
    _deliver_all(sim)
    [record] = collector.records
    assert record["provider"] == "azure" and record["resource"]["id"] == rid
    [change] = normalize(record)
    assert change.resource_id == rid.lower() and change.sku == "Standard_D2s_v3"
    assert change.state == "running" and change.tags == {"env": "dev", "team": "web"}
    assert change.resource_type == "Microsoft.Compute/virtualMachines"
    assert change.region_id == "eastus"

    user.arm("POST", f"{rid}/deallocate", "2024-07-01")
    _deliver_all(sim)
    [change] = normalize(collector.records[-1])
    assert change.state == "deallocated"
    assert user.power_state(rid.lower()) == "deallocated"  # ARM ids are case-insensitive

    # A tag edit of the deallocated VM is a write event too: the forwarder reads the VM's
    # instance view, so the VM stays deallocated (it used to be priced as running again).
    user.arm("PATCH", rid, "2024-07-01", body={"tags": {"env": "dev", "team": "shop"}})
    _deliver_all(sim)
    [change] = normalize(collector.records[-1])
    assert (change.state, change.tags) == ("deallocated", {"env": "dev", "team": "shop"})

    user.arm("DELETE", rid, "2024-07-01")
    _deliver_all(sim)
    [change] = normalize(collector.records[-1])
    assert change.state == "deleted"


def test_an_azure_tags_api_merge_raises_the_tags_resource_s_write(
    azure_env: dict[str, Any],
) -> None:
    """As in Azure: a Tags API PATCH raises the write of `<resource>/providers/
    Microsoft.Resources/tags/default`; the real forwarder reads the resource itself back and
    the normaliser makes it the resource's change with its whole new tag set."""
    user, sim, collector = azure_env["user"], azure_env["sim"], azure_env["collector"]
    vm = user.create_vm("rg-web", "web-1", "Standard_D2s_v3", {"env": "prod", "team": "web"})
    _deliver_all(sim)
    before = len(collector.records)
    user.merge_tags(vm, {"team": "shop"})
    _deliver_all(sim)
    [record] = collector.records[before:]
    assert record["event"]["subject"] == f"{vm}/providers/Microsoft.Resources/tags/default"
    assert record["event"]["data"]["resourceProvider"] == "Microsoft.Resources"
    assert record["resource"]["id"] == vm
    [change] = normalize(record)
    assert change.resource_id == vm.lower() and change.tags == {"env": "prod", "team": "shop"}
    assert change.state == "running"


def test_deleting_an_azure_resource_group_raises_the_group_s_event_only(
    azure_env: dict[str, Any],
) -> None:
    """As in Azure: the group's resources are gone with it, and Event Grid raises one event,
    the group's deletion, which the real forwarder passes on and the normaliser reads as a
    container deletion (the collector deletes what the group holds)."""
    user, sim, collector = azure_env["user"], azure_env["sim"], azure_env["collector"]
    vm = user.create_vm("rg-gone", "web-1", "Standard_D2s_v3", {"team": "web"})
    kept = user.create_vm("rg-gone2", "web-1", "Standard_D2s_v3", {"team": "web"})
    _deliver_all(sim)
    before = len(collector.records)
    user.delete_group("rg-gone")
    _deliver_all(sim)
    [record] = collector.records[before:]
    assert "resource" not in record  # a deletion is not read back
    [change] = normalize(record)
    group = f"/subscriptions/{user.subscription}/resourcegroups/rg-gone"
    assert (change.resource_id, change.state, change.contains) == (group, "deleted", True)
    assert change.action == "Microsoft.Resources/subscriptions/resourceGroups/delete"
    with pytest.raises(requests.HTTPError, match="404"):
        user.power_state(vm)
    assert user.power_state(kept) == "running"
    with pytest.raises(requests.HTTPError, match="404"):
        user.delete_group("rg-gone")
    assert len(collector.records) == before + 1


def test_azure_refuses_forged_and_underprivileged_callers(azure_env: dict[str, Any]) -> None:
    url, user = azure_env["url"], azure_env["user"]
    rid = user.vm_id("rg", "vm")
    forged = call(
        "GET",
        f"{url}{rid}",
        params={"api-version": "2024-07-01"},
        headers={"Authorization": "Bearer x"},
    )
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "InvalidAuthenticationToken"
    wrong = call(
        "POST",
        f"{url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "user-1",
            "client_secret": "guess",
            "scope": "https://management.azure.com/.default",
        },
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    bad_header = call(
        "GET",
        f"{url}/msi/token",
        params={"resource": "https://management.azure.com/", "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": "guess"},
    )
    assert bad_header.status_code == 401
    # The Function's identity may read, never write.
    mi = call(
        "GET",
        f"{url}/msi/token",
        params={"resource": "https://management.azure.com/", "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": "identity-secret"},
    ).json()["access_token"]
    put = call(
        "PUT",
        f"{url}{rid}",
        params={"api-version": "2024-07-01"},
        json={"location": "eastus"},
        headers={"Authorization": f"Bearer {mi}"},
    )
    assert put.status_code == 403 and put.json()["error"]["code"] == "AuthorizationFailed"
    # A user's ARM token is no Graph token.
    graph = call(
        "POST",
        f"{url}/v1.0/applications",
        json={"displayName": "x"},
        headers={"Authorization": f"Bearer {user.token()}"},
    )
    assert graph.status_code == 401
    assert call("GET", f"{url}/healthz").status_code == 200


def test_vault_azure_engine_makes_and_deletes_a_service_principal(
    azure_env: dict[str, Any],
) -> None:
    engine = AzureEngine(
        frozenset({"cct-remediation"}), CloudDirectory(azure_env["url"], azure_env["vault_file"])
    )
    handle, creds = engine.issue("cct-remediation", 900)
    login = {
        "grant_type": "client_credentials",
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "scope": "https://management.azure.com/.default",
    }
    token_url = f"{azure_env['url']}/{TENANT}/oauth2/v2.0/token"
    token = call("POST", token_url, data=login).json()["access_token"]
    rid = azure_env["user"].vm_id("rg", "vm-sp")
    ok = call(
        "PUT",
        f"{azure_env['url']}{rid}",
        params={"api-version": "2024-07-01"},
        json={"location": "eastus", "properties": {"hardwareProfile": {"vmSize": "Standard_B2s"}}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert ok.status_code == 201
    engine.revoke("cct-remediation", handle)
    # Revoked: the secret no longer signs in and the issued token is dead.
    assert call("POST", token_url, data=login).status_code == 401
    again = call(
        "GET",
        f"{azure_env['url']}{rid}",
        params={"api-version": "2024-07-01"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert again.status_code == 401


KEYS = ["location", "properties", "hardwareProfile", "vmSize", "tags", "sku", "name"]
KEYS += ["operation", "creationData", "diskSizeGB", "labels", "machineType", "sizeGb"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=12,
)
ARM_PATHS = [
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d",
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/snapshots/x",
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/deallocate",
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
    "/providers/Microsoft.Resources/tags/default",
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
    "/providers/Microsoft.Insights/metrics",
]
GCP_PATHS = [
    "/compute/v1/projects/shop-test1/zones/us-central1-a/instances",
    "/compute/v1/projects/shop-test1/zones/us-central1-a/instances/api-1/setLabels",
    "/compute/v1/projects/shop-test1/zones/us-central1-a/instances/api-1/setMachineType",
    "/compute/v1/projects/shop-test1/zones/us-central1-a/disks",
    "/compute/v1/projects/shop-test1/zones/us-central1-a/disks/d-1/createSnapshot",
    "/v3/projects/shop-test1/timeSeries",
]
HOSTILE = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HOSTILE
@given(
    path=st.sampled_from(ARM_PATHS)
    | st.text(alphabet="/abcdefghijklmnopqrstuvwxyzACMR.-_0123456789", max_size=120),
    method=st.sampled_from(["GET", "PUT", "PATCH", "POST", "DELETE"]),
    body=st.one_of(JSON, st.binary(max_size=200)),
)
def test_azure_hostile_requests_get_a_4xx_and_the_server_keeps_serving(
    azure_env: dict[str, Any], path: str, method: str, body: Any
) -> None:
    token = azure_env["user"].token()
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = call(
        method,
        f"{azure_env['url']}/{path.lstrip('/')}",
        params={"api-version": "2024-07-01"},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        **kwargs,
    )
    assert resp.status_code < 500, (resp.status_code, resp.text)


@HOSTILE
@given(
    path=st.sampled_from(GCP_PATHS),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    body=st.one_of(JSON, st.binary(max_size=200)),
)
def test_gcp_hostile_requests_get_a_4xx_and_the_server_keeps_serving(
    gcp_env: dict[str, Any], path: str, method: str, body: Any
) -> None:
    gcp_env["user"].insert_instance("api-1", "e2-small", {}) if not gcp_env[
        "sim"
    ].instances else None
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = call(
        method,
        f"{gcp_env['url']}{path}",
        headers={"Authorization": "Bearer ya29.user", "Content-Type": "application/json"},
        **kwargs,
    )
    assert resp.status_code < 500, (resp.status_code, resp.text)


def test_azure_oversized_body_is_refused(azure_env: dict[str, Any]) -> None:
    resp = call("PUT", f"{azure_env['url']}/x", data=b"{" * (2 * 1024 * 1024), timeout=10)
    assert resp.status_code == 413
    assert call("GET", f"{azure_env['url']}/healthz").status_code == 200


# ---------------------------------------------------------------------- GCP
@pytest.fixture
def gcp_env(tmp_path: Any) -> Iterator[dict[str, Any]]:
    collector = Collector()
    clients = {
        "principals": {
            "user": {
                "token": "ya29.user",
                "email": "me@p.iam.gserviceaccount.com",
                "role": "editor",
            },
            "vault": {
                "token": "ya29.vault",
                "email": "vault@p.iam.gserviceaccount.com",
                "role": "token-creator",
            },
        },
        "service_accounts": ["cct-remediation@cct-local.iam.gserviceaccount.com"],
    }

    def deliver(push: dict[str, Any]) -> None:
        result = gcp_fwd.handle(push, Forwarder(_settings(), "gcp", transport=collector.transport))
        assert result.sent == 1, result

    sim = GcpSimulator(clients, deliver)
    with running(sim) as url:
        yield _gcp_env(tmp_path, url, sim, collector)


def _gcp_env(tmp_path: Any, url: str, sim: Any, collector: Collector) -> dict[str, Any]:
    token_file = tmp_path / "user.token"
    token_file.write_text("ya29.user")
    vault_file = tmp_path / "vault.token"
    vault_file.write_text("ya29.vault")
    return {
        "url": url,
        "sim": sim,
        "collector": collector,
        "user": GcpUser(url, str(token_file), "shop-test1"),
        "vault_file": str(vault_file),
    }


def test_gcp_audit_entries_reach_the_collector_through_the_real_forwarder(
    gcp_env: dict[str, Any],
) -> None:
    user, sim, collector = gcp_env["user"], gcp_env["sim"], gcp_env["collector"]
    asset = user.insert_instance("api-1", "e2-standard-8", {"env": "dev", "team": "api"})
    _deliver_all(sim)
    [record] = collector.records
    [change] = normalize(record)
    assert change.resource_id == asset and change.sku == "e2-standard-8"
    assert change.state == "running" and change.tags == {"env": "dev", "team": "api"}
    assert change.region_id == "us-central1" and change.sub_account_id == "shop-test1"

    user.call("POST", "/instances/api-1/stop")
    # A re-label is in the sink's filter too: the instance leaves its team.
    inst = user.instance("api-1")
    user.call(
        "POST",
        "/instances/api-1/setLabels",
        {"labels": {"env": "dev"}, "labelFingerprint": inst["labelFingerprint"]},
    )
    _deliver_all(sim)
    assert len(collector.records) == 3
    [stopped] = normalize(collector.records[1])
    assert stopped.state == "stopped"
    [relabelled] = normalize(collector.records[2])
    assert (relabelled.tags, relabelled.state) == ({"env": "dev"}, None)
    assert user.instance("api-1")["status"] == "TERMINATED"


def test_gcp_refuses_forged_callers_and_stale_fingerprints(gcp_env: dict[str, Any]) -> None:
    url, user = gcp_env["url"], gcp_env["user"]
    forged = call(
        "GET",
        f"{url}/compute/v1/projects/shop-test1/zones/us-central1-a/instances/x",
        headers={"Authorization": "Bearer ya29.guess"},
    )
    assert forged.status_code == 401 and forged.json()["error"]["status"] == "UNAUTHENTICATED"
    user.insert_instance("api-2", "e2-standard-4", {})
    stale = call(
        "POST",
        f"{url}/compute/v1/projects/shop-test1/zones/us-central1-a/instances/api-2/setLabels",
        json={"labels": {"a": "b"}, "labelFingerprint": "stale"},
        headers={"Authorization": "Bearer ya29.user"},
    )
    assert stale.status_code == 412
    # A user may not mint tokens; Vault's account may, only for listed service accounts.
    account = "cct-remediation@cct-local.iam.gserviceaccount.com"
    mint = f"{url}/v1/projects/-/serviceAccounts/{account}:generateAccessToken"
    body = {"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "900s"}
    as_user = call("POST", mint, json=body, headers={"Authorization": "Bearer ya29.user"})
    assert as_user.status_code == 403
    other = mint.replace("cct-remediation", "owner")
    unknown = call("POST", other, json=body, headers={"Authorization": "Bearer ya29.vault"})
    assert unknown.status_code == 404
    bad_names = call(
        "POST",
        f"{url}/compute/v1/projects/shop-test1/zones/us-central1-a/instances",
        json={"name": "UPPER", "machineType": "zones/us-central1-a/machineTypes/e2-small"},
        headers={"Authorization": "Bearer ya29.user"},
    )
    assert bad_names.status_code == 400


def test_vault_gcp_engine_mints_a_token_the_apis_accept(gcp_env: dict[str, Any]) -> None:
    engine = GcpTokenEngine(
        frozenset({"cct-remediation"}),
        CloudDirectory(gcp_env["url"], gcp_env["vault_file"], "cct-local"),
    )
    data = engine.token("cct-remediation", 900)
    assert data["token"].startswith("ya29.") and data["token_ttl"] == 900
    resp = call(
        "GET",
        f"{gcp_env['url']}/compute/v1/projects/shop-test1/zones/us-central1-a/instances/none",
        headers={"Authorization": f"Bearer {data['token']}"},
    )
    assert resp.status_code == 404  # authenticated, and the instance does not exist
    with pytest.raises(LookupError):
        engine.token("unknown", 900)
