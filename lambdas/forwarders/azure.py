"""Azure Function forwarder for Event Grid resource events (ResourceWriteSuccess,
ResourceDeleteSuccess, ResourceActionSuccess).

Event Grid events name the resource but not its size, so for writes the function reads the
resource from Azure Resource Manager (with the Function's managed identity) and forwards it
alongside the event; the collector prices from it. The HTTP trigger also answers Event Grid's
subscription validation handshake."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from lambdas.forwarders.common import Forwarder, ForwarderSettings, ForwardResult

log = logging.getLogger(__name__)

EVENT_TYPES = {
    "Microsoft.Resources.ResourceWriteSuccess",
    "Microsoft.Resources.ResourceDeleteSuccess",
    "Microsoft.Resources.ResourceActionSuccess",
}
VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
API_VERSIONS = {
    "microsoft.compute/virtualmachines": "2024-07-01",
    "microsoft.compute/disks": "2024-03-02",
    "microsoft.sql/servers/databases": "2021-11-01",
}
# The Azure RBAC operations of the ARM reads above, one GET per resource type (the VM's
# `$expand=instanceView` is part of the same read). The Function's managed identity holds a
# custom role with exactly these (components/azure_subscription.py): a type added to
# API_VERSIONS needs its `<type>/read` here, or its GET is refused with 403.
ARM_READ_ACTIONS = (
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/disks/read",
    "Microsoft.Sql/servers/databases/read",
)
ArmGet = Callable[[str], Mapping[str, Any] | None]
# The Tags API (the portal's tag editor, `az tag update`) writes a resource's tags as its
# sub-resource `<id>/providers/Microsoft.Resources/tags/default`: the event names that, and the
# resource whose tags changed is its parent. Read by the collector's normaliser too.
TAGS_SUFFIX = "/providers/microsoft.resources/tags/default"


def tagged_parent(uri: str) -> str | None:
    """The resource whose tags an event on its tags resource changed, else None."""
    trimmed = uri.rstrip("/")
    if trimmed.lower().endswith(TAGS_SUFFIX):
        return trimmed[: -len(TAGS_SUFFIX)]
    return None


def arm_type(resource_id: str) -> str:
    """The lower-cased resource type of an ARM id (`microsoft.compute/virtualmachines`, a
    nested one `microsoft.sql/servers/databases`); "" for no resource's id (a resource group,
    a path cut short)."""
    parts = resource_id.strip("/").split("/")
    if len(parts) < 8 or len(parts) % 2 or parts[0].lower() != "subscriptions":
        return ""
    return "/".join([parts[5], *parts[6::2]]).lower()


ARM_URL = "https://management.azure.com"


def arm_reader(identity_endpoint: str, identity_header: str, arm_url: str = ARM_URL) -> ArmGet:
    """An ArmGet that reads with the Function's managed identity: a token from the platform's
    identity endpoint (App Service / Functions: IDENTITY_ENDPOINT with the X-IDENTITY-HEADER
    secret), then GET on ARM. None if not readable (the collector then keeps what it knew
    about the resource)."""

    def get(resource_id: str) -> Mapping[str, Any] | None:
        rtype = arm_type(resource_id)
        version = API_VERSIONS.get(rtype)
        if version is None:
            return None
        query = urllib.parse.urlencode({"resource": ARM_URL + "/", "api-version": "2019-08-01"})
        req = urllib.request.Request(  # noqa: S310 - the platform's identity endpoint
            f"{identity_endpoint}?{query}", headers={"X-IDENTITY-HEADER": identity_header}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - platform endpoint
                token = json.load(resp)["access_token"]
            url = f"{arm_url}{resource_id}?api-version={version}"
            if rtype == "microsoft.compute/virtualmachines":
                # The power state: a write event is any PUT or PATCH (a tag edit of a
                # deallocated VM too), and only the instance view says whether it runs.
                url += "&$expand=instanceView"
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return dict(json.load(resp))
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            log.warning("ARM read failed", extra={"resource": resource_id, "error": str(exc)})
            return None

    return get


def managed_identity_arm_get(resource_id: str) -> Mapping[str, Any] | None:
    """The Function's ArmGet, from the platform's identity settings."""
    reader = arm_reader(os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"])
    return reader(resource_id)


def handle_events(events: Any, forwarder: Forwarder, arm_get: ArmGet) -> ForwardResult:
    result = ForwardResult()
    if not isinstance(events, list):
        events = [events]
    records = []
    for event in events:
        if not isinstance(event, Mapping):
            result.dropped["not_an_object"] += 1
            continue
        event_type = event.get("eventType") or event.get("type")
        data = event.get("data")
        if event_type not in EVENT_TYPES or not isinstance(data, Mapping):
            result.dropped["not_a_resource_event"] += 1
            continue
        uri = data.get("resourceUri") or event.get("subject")
        if not isinstance(uri, str):
            result.dropped["no_resource_uri"] += 1
            continue
        extra: dict[str, Any] = {}
        if event_type != "Microsoft.Resources.ResourceDeleteSuccess":
            resource = arm_get(tagged_parent(uri) or uri)
            if resource is not None:
                extra["resource"] = resource
        records.append(forwarder.envelope(event, **extra))
    return forwarder.send(records, result)


def handle_http(body: bytes, forwarder: Forwarder, arm_get: ArmGet) -> tuple[int, dict[str, Any]]:
    """The HTTP-trigger entry: (status, JSON response)."""
    try:
        events = json.loads(body)
    except ValueError:
        return 400, {"error": "body is not JSON"}
    first = events[0] if isinstance(events, list) and events else events
    if isinstance(first, Mapping) and first.get("eventType") == VALIDATION:
        return 200, {"validationResponse": (first.get("data") or {}).get("validationCode")}
    result = handle_events(events, forwarder, arm_get)
    return 200, {"sent": result.sent, "dropped": dict(result.dropped)}


def main(body: bytes) -> tuple[int, dict[str, Any]]:
    """Called by the Function's HTTP trigger with the raw request body."""
    forwarder = Forwarder(ForwarderSettings.from_env(), "azure")
    return handle_http(body, forwarder, managed_identity_arm_get)
