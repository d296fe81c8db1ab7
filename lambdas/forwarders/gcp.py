"""GCP Cloud Function forwarder for Cloud Audit Log entries delivered by Pub/Sub (a log sink
filtered to compute instances insert/delete/start/stop/setMachineType/setLabels, disks
insert/delete/setLabels and Cloud SQL instances create/update/delete). The function receives
the Pub/Sub CloudEvent's data:
`{"message": {"data": "<base64 LogEntry>", "messageId": ...}, "subscription": ...}`."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from lambdas.forwarders.common import Forwarder, ForwarderSettings, ForwardResult

METHODS = (
    "compute.instances.insert",
    "compute.instances.delete",
    "compute.instances.start",
    "compute.instances.stop",
    "compute.instances.setMachineType",
    "compute.disks.insert",
    "compute.disks.delete",
    # Re-labels: a resource's cost belongs to the team its labels name now.
    "compute.instances.setLabels",
    "compute.disks.setLabels",
    # Cloud SQL instances: created, resized or re-labelled (a PATCH is logged as update),
    # deleted.
    "cloudsql.instances.create",
    "cloudsql.instances.update",
    "cloudsql.instances.delete",
)


def log_sink_filter() -> str:
    """The Logging sink filter that feeds the Pub/Sub topic."""
    methods = " OR ".join(f'protoPayload.methodName:"{m}"' for m in METHODS)
    return f'logName:"cloudaudit.googleapis.com%2Factivity" AND ({methods})'


def handle(data: Any, forwarder: Forwarder) -> ForwardResult:
    result = ForwardResult()
    message = data.get("message") if isinstance(data, Mapping) else None
    if not isinstance(message, Mapping) or "data" not in message:
        result.dropped["not_a_pubsub_message"] += 1
        return forwarder.send([], result)
    try:
        entry = json.loads(base64.b64decode(message["data"], validate=True))
    except (binascii.Error, ValueError, TypeError):
        result.dropped["unreadable_message_data"] += 1
        return forwarder.send([], result)
    payload = entry.get("protoPayload") if isinstance(entry, Mapping) else None
    if not isinstance(payload, Mapping) or not any(
        str(payload.get("methodName", "")).endswith(m) for m in METHODS
    ):
        result.dropped["not_a_lifecycle_audit_entry"] += 1
        return forwarder.send([], result)
    return forwarder.send([forwarder.envelope(entry)], result)


def entry_point(cloud_event: Any) -> None:
    """functions-framework CloudEvent entry; ForwardError propagates so Pub/Sub redelivers."""
    handle(cloud_event.data, Forwarder(ForwarderSettings.from_env(), "gcp"))
