"""Forwarders: envelopes, batching, token, retries with backoff, and counted drops."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from lambdas.forwarders import aws, azure, gcp
from lambdas.forwarders.common import (
    Forwarder,
    ForwarderConfigError,
    ForwardError,
    ForwarderSettings,
    urllib_transport,
)
from tests.support.http import serving_http

Event = Callable[[str], dict[str, Any]]
SETTINGS = ForwarderSettings(
    endpoint="http://fb.test",
    token="tok-123",
    billing_account_id="payer-9",
    batch_size=2,
    backoff_s=0.01,
)


class Recorder:
    def __init__(self, statuses: list[int] | None = None) -> None:
        self.calls: list[tuple[str, list[dict[str, Any]], dict[str, str]]] = []
        self.statuses = statuses or []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        self.calls.append((url, json.loads(body), dict(headers)))
        return self.statuses.pop(0) if self.statuses else 200


def forwarder(provider: str, rec: Recorder, sleeps: list[float] | None = None) -> Forwarder:
    return Forwarder(
        SETTINGS, provider, transport=rec, sleep=(sleeps if sleeps is not None else []).append
    )


def test_aws_forwards_eventbridge_and_sqs_batches(event: Event) -> None:
    rec = Recorder()
    result = aws.handle(event("aws_run_instances"), forwarder("aws", rec))
    assert result.sent == 1
    url, records, headers = rec.calls[0]
    assert url == "http://fb.test/cct.aws"
    assert headers["Authorization"] == "Bearer tok-123"
    assert records[0] == {
        "provider": "aws",
        "auth": "tok-123",
        "event": event("aws_run_instances"),
        "billing_account_id": "payer-9",
    }
    sqs = {
        "Records": [
            {"body": json.dumps(event(n))}
            for n in ("aws_stop_instances", "aws_start_instances", "aws_create_volume")
        ]
        + [
            {"body": "{not json"},
            {"body": json.dumps({"detail-type": "Scheduled Event", "detail": {}})},
        ]
    }
    rec2 = Recorder()
    result = aws.handle(sqs, forwarder("aws", rec2))
    assert result.sent == 3 and [len(c[1]) for c in rec2.calls] == [2, 1]  # batch_size 2
    assert dict(result.dropped) == {"unreadable_sqs_record": 1, "not_a_lifecycle_event": 1}


def test_aws_event_pattern_selects_every_cloudtrail_call_the_collector_reads() -> None:
    """Both lists name the same calls: one the collector reads but EventBridge does not
    deliver is never seen (the re-tags, CreateTags and the others, were neither)."""
    from lambdas.collector.normalize import _CLOUDTRAIL

    names = aws.event_pattern()["$or"][1]["detail"]["eventName"]
    assert set(names) == set(_CLOUDTRAIL)
    assert {"CreateTags", "DeleteTags", "AddTagsToResource", "RemoveTagsFromResource"} <= set(names)


def test_azure_enriches_writes_skips_deletes_and_answers_validation(event: Event) -> None:
    rec = Recorder()
    arm_calls: list[str] = []

    def arm_get(uri: str) -> dict[str, Any]:
        arm_calls.append(uri)
        return event("arm_vm")

    body = json.dumps(
        [
            event("azure_vm_write"),
            event("azure_vm_delete"),
            {"eventType": "Microsoft.Storage.BlobCreated", "data": {}},
            "junk",
        ]
    ).encode()
    status, resp = azure.handle_http(body, forwarder("azure", rec), arm_get)
    assert status == 200 and resp == {
        "sent": 2,
        "dropped": {"not_a_resource_event": 1, "not_an_object": 1},
    }
    sent = [r for c in rec.calls for r in c[1]]
    assert sent[0]["resource"]["properties"]["hardwareProfile"]["vmSize"] == "Standard_D2s_v3"
    assert "resource" not in sent[1] and len(arm_calls) == 1
    validation = [
        {
            "id": "v",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6"},
        }
    ]
    assert azure.handle_http(
        json.dumps(validation).encode(), forwarder("azure", Recorder()), arm_get
    ) == (200, {"validationResponse": "512d38b6"})
    assert azure.handle_http(b"{", forwarder("azure", Recorder()), arm_get)[0] == 400


def test_azure_reads_the_resource_whose_tags_the_tags_api_wrote(event: Event) -> None:
    """A re-tag through the Tags API names the VM's tags sub-resource, which ARM cannot read
    as a VM: the forwarder reads the VM itself, whose tags the collector then takes."""
    rec = Recorder()
    arm_calls: list[str] = []

    def arm_get(uri: str) -> dict[str, Any]:
        arm_calls.append(uri)
        return event("arm_vm")

    ev = event("azure_vm_write")
    vm = ev["data"]["resourceUri"]
    ev["data"]["resourceUri"] = ev["subject"] = vm + "/providers/Microsoft.Resources/tags/default"
    status, resp = azure.handle_http(json.dumps([ev]).encode(), forwarder("azure", rec), arm_get)
    assert (status, resp["sent"], arm_calls) == (200, 1, [vm])
    [sent] = [r for c in rec.calls for r in c[1]]
    assert sent["resource"]["tags"] == {"team": "web", "env": "prod"}
    assert azure.tagged_parent(vm) is None


def test_gcp_decodes_pubsub_and_drops_unreadable(event: Event) -> None:
    rec = Recorder()
    data = base64.b64encode(json.dumps(event("gcp_instances_insert")).encode()).decode()
    assert (
        gcp.handle({"message": {"data": data, "messageId": "1"}}, forwarder("gcp", rec)).sent == 1
    )
    assert rec.calls[0][1][0]["event"]["insertId"] == "-abc123def1"
    for bad, reason in [
        ({"message": {"data": "!!"}}, "unreadable_message_data"),
        ({"nope": 1}, "not_a_pubsub_message"),
        (
            {
                "message": {
                    "data": base64.b64encode(
                        b'{"protoPayload": {"methodName": "v1.compute.instances.get"}}'
                    ).decode()
                }
            },
            "not_a_lifecycle_audit_entry",
        ),
    ]:
        assert dict(gcp.handle(bad, forwarder("gcp", Recorder())).dropped) == {reason: 1}
    assert "compute.instances.setMachineType" in gcp.log_sink_filter()


def test_gcp_sink_filter_selects_every_method_the_collector_reads() -> None:
    from lambdas.collector.normalize import GCP_METHODS

    assert set(gcp.METHODS) == set(GCP_METHODS)
    for method in GCP_METHODS:
        assert f'protoPayload.methodName:"{method}"' in gcp.log_sink_filter()


def test_retries_with_backoff_then_gives_up(event: Event) -> None:
    rec, sleeps = Recorder([503, 429, 200]), []  # type: ignore[var-annotated]
    assert aws.handle(event("aws_run_instances"), forwarder("aws", rec, sleeps)).sent == 1
    assert len(rec.calls) == 3 and len(sleeps) == 2 and all(0 <= s <= 0.02 for s in sleeps)
    with pytest.raises(ForwardError, match="HTTP 503 after 5 attempts"):
        aws.handle(event("aws_run_instances"), forwarder("aws", Recorder([503] * 5)))
    with pytest.raises(ForwardError, match="HTTP 401; not retried"):
        aws.handle(event("aws_run_instances"), forwarder("aws", Recorder([401])))


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, list[int]]]:
    """A real HTTP server that fails twice with 503, then accepts."""
    seen: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(len(seen))
            self.send_response(503 if len(seen) <= 2 else 201)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            """Keep the test output free of the server's access log."""

    with serving_http(Handler) as url:
        yield url, seen


def test_urllib_transport_retries_against_a_real_server(
    flaky_server: tuple[str, list[int]], event: Event
) -> None:
    url, seen = flaky_server
    settings = ForwarderSettings(endpoint=url, token="t", backoff_s=0.01)
    fwd = Forwarder(settings, "aws", transport=urllib_transport)
    assert aws.handle(event("aws_run_instances"), fwd).sent == 1
    assert len(seen) == 3


def test_settings_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCT_FORWARDER_ENDPOINT", raising=False)
    with pytest.raises(ForwarderConfigError, match="CCT_FORWARDER_ENDPOINT"):
        ForwarderSettings.from_env()
    monkeypatch.setenv("CCT_FORWARDER_ENDPOINT", "https://fb")
    monkeypatch.delenv("CCT_FORWARDER_TOKEN", raising=False)
    with pytest.raises(ForwarderConfigError, match="CCT_FORWARDER_TOKEN"):
        ForwarderSettings.from_env()
