"""The local stack's Azure: Entra ID's token endpoint, the Functions managed identity
endpoint, the Microsoft Graph calls Vault's Azure engine makes, and the Azure Resource
Manager calls CCT makes (virtual machines, managed disks, snapshots, SQL databases, tags,
Azure Monitor metrics, long-running operations) and a resource group's deletion, each in its
documented JSON shape. Every successful
write, action or delete raises the Event Grid event Azure raises for it
(Microsoft.Resources.ResourceWriteSuccess / ResourceActionSuccess / ResourceDeleteSuccess,
Event Grid schema) and pushes it, with retries, to the real forwarder code
(`lambdas.forwarders.azure.handle_http`, the Function's HTTP trigger), which reads the
resource back from this ARM with the Function's managed identity and posts to the collector.

Callers authenticate as in Azure: client credentials at `/<tenant>/oauth2/v2.0/token` (the
users and Vault's own application from the clients file; the service principals Vault
creates through Graph), or the managed identity endpoint with its X-IDENTITY-HEADER secret.
Tokens are opaque, issued for one audience (ARM or Graph) and one role: the Function's
identity may only read, Vault's application may only use Graph, users and Vault-issued
service principals may change resources.

    python -m lambdas.devstack.azure_sim --port 18087 --clients-file F --identity-header-file H \\
        --collector-url URL --collector-token-file T
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lambdas.devstack.simbase import (
    Delivery,
    Grant,
    HttpError,
    Rejected,
    Request,
    Response,
    Tokens,
    metrics_text,
    obj,
    same_secret,
    serve,
)
from lambdas.forwarders import azure as forwarder
from lambdas.forwarders.common import Forwarder, ForwarderSettings

log = logging.getLogger(__name__)

ARM = "https://management.azure.com/"
GRAPH = "https://graph.microsoft.com/"
# Clients file roles: what a principal may do.
READER, CONTRIBUTOR, GRAPH_ADMIN = "reader", "contributor", "graph-admin"
_ARM_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<ns>Microsoft\.[A-Za-z]+)/(?P<type>[A-Za-z]+)/(?P<name>[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)
# A resource group: deleting it deletes everything in it.
_GROUP = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)$", re.IGNORECASE)
_OPERATION = re.compile(
    r"^/subscriptions/[^/]+/providers/Microsoft\.Compute/locations/[^/]+/operations/(?P<id>[^/]+)$",
    re.IGNORECASE,
)
# The resource types this simulator keeps, by ARM's canonical spelling.
TYPES = {
    "microsoft.compute/virtualmachines": "Microsoft.Compute/virtualMachines",
    "microsoft.compute/disks": "Microsoft.Compute/disks",
    "microsoft.compute/snapshots": "Microsoft.Compute/snapshots",
    "microsoft.sql/servers/databases": "Microsoft.Sql/servers/databases",
}
# A logical server's database: the resource under `.../Microsoft.Sql/servers/<server>`.
_DATABASE = re.compile(r"^/databases/(?P<db>[^/]+)(?P<rest>/.*)?$", re.IGNORECASE)
# A vCore service objective (`GP_Gen5_4`), or a sku of family and capacity (`GP_Gen5` of 4).
_SQL_SKU = re.compile(r"^(GP|BC|HS)_(Gen\d+)(?:_([1-9]\d{0,2}))?$")
_SQL_TIERS = {"GP": "GeneralPurpose", "BC": "BusinessCritical", "HS": "Hyperscale"}
# A new VM here runs nothing: Azure Monitor reports it idle (what the steps' analyze reads).
IDLE_CPU = {"average": 1.0, "maximum": 3.0}


def _sql_sku(given: dict[str, Any]) -> dict[str, Any]:
    """ARM's shape of a vCore database's sku from a request's (`{"name": "GP_Gen5_4"}` or
    `{"name": "GP_Gen5", "capacity": 4}`); serverless and DTU skus are not simulated."""
    m = _SQL_SKU.match(str(given.get("name", "")))
    capacity = given.get("capacity") or (int(m[3]) if m and m[3] else None)
    if m is None or not isinstance(capacity, int) or capacity < 1:
        raise arm_error(400, "InvalidSku", f"The sku {given!r} is not a vCore sku")
    return {
        "name": f"{m[1]}_{m[2]}",
        "tier": _SQL_TIERS[m[1]],
        "family": m[2],
        "capacity": capacity,
    }


def arm_error(status: int, code: str, message: str) -> HttpError:
    return HttpError(status, {"error": {"code": code, "message": message}})


def aad_error(status: int, error: str, description: str) -> HttpError:
    return HttpError(status, {"error": error, "error_description": description})


def graph_error(status: int, code: str, message: str) -> HttpError:
    return HttpError(status, {"error": {"code": code, "message": message}})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


class AzureSimulator:
    def __init__(
        self,
        clients: dict[str, dict[str, str]],
        identity_header: str,
        tenant: str,
        deliver: Any,
    ) -> None:
        # client_id -> (secret, role); Graph-created service principals are added here.
        self.clients: dict[str, tuple[str, str]] = {
            c["client_id"]: (c["client_secret"], c["role"]) for c in clients.values()
        }
        self.identity_header = identity_header
        self.tenant = tenant
        self.tokens = Tokens()
        self.resources: dict[str, dict[str, Any]] = {}  # lower-case id -> resource
        self.power: dict[str, str] = {}  # VM id -> running / deallocated / stopped
        self.operations: dict[str, dict[str, Any]] = {}
        self.applications: dict[str, dict[str, Any]] = {}  # Graph object id -> application
        self.lock = threading.Lock()
        self.counts: dict[str, Counter[str]] = {"requests": Counter(), "events": Counter()}
        self.delivery = Delivery(deliver, "event-grid")

    # ------------------------------------------------------------------ entry
    def __call__(self, req: Request) -> Response:
        self.counts["requests"][req.method] += 1
        if req.path == "/msi/token":
            return self.managed_identity(req)
        if req.path.endswith("/oauth2/v2.0/token"):
            return self.client_credentials(req)
        if req.path.startswith("/v1.0/"):
            return self.graph(req)
        return self.arm(req)

    # ------------------------------------------------------------------ identity
    def client_credentials(self, req: Request) -> Response:
        form = obj(req.body)
        if form.get("grant_type") != "client_credentials":
            raise aad_error(400, "unsupported_grant_type", "AADSTS70003: grant type")
        client_id = str(form.get("client_id", ""))
        known = self.clients.get(client_id)
        if known is None or not same_secret(str(form.get("client_secret", "")), known[0]):
            self.counts["requests"]["refused"] += 1
            raise aad_error(401, "invalid_client", "AADSTS7000215: Invalid client secret.")
        scope = str(form.get("scope", ""))
        audience = {ARM + ".default": ARM, GRAPH + ".default": GRAPH}.get(scope)
        if audience is None:
            raise aad_error(400, "invalid_scope", f"AADSTS70011: scope {scope!r} is not valid")
        token, _ = self.tokens.issue(client_id, audience, known[1])
        return (
            200,
            {},
            {
                "token_type": "Bearer",
                "expires_in": self.tokens.ttl_s,
                "ext_expires_in": self.tokens.ttl_s,
                "access_token": token,
            },
        )

    def managed_identity(self, req: Request) -> Response:
        if not same_secret(req.header("X-IDENTITY-HEADER"), self.identity_header):
            self.counts["requests"]["refused"] += 1
            raise HttpError(401, {"error": "unauthorized", "error_description": "identity header"})
        resource = req.query.get("resource", "")
        if resource != ARM:
            raise HttpError(400, {"error": "invalid_resource", "error_description": resource})
        token, grant = self.tokens.issue("cct-forwarder-function", ARM, READER)
        return (
            200,
            {},
            {
                "access_token": token,
                "expires_on": str(int(grant.expires)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": "cct-forwarder-function",
            },
        )

    def _grant(self, req: Request, audience: str) -> Grant:
        grant = self.tokens.check(req.bearer(), audience)
        if grant is None:
            self.counts["requests"]["refused"] += 1
            if audience == GRAPH:
                raise graph_error(401, "InvalidAuthenticationToken", "Access token is invalid.")
            raise arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        return grant

    # ------------------------------------------------------------------ Graph (Vault's engine)
    def graph(self, req: Request) -> Response:
        grant = self._grant(req, GRAPH)
        if grant.role != GRAPH_ADMIN:
            raise graph_error(403, "Authorization_RequestDenied", "Insufficient privileges.")
        parts = req.path.strip("/").split("/")  # v1.0 applications [id [addPassword]]
        if parts[1:] == ["applications"] and req.method == "POST":
            body = obj(req.body)
            app: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "appId": str(uuid.uuid4()),
                "displayName": str(body.get("displayName", "")),
                "createdDateTime": _now(),
                "passwordCredentials": [],
            }
            with self.lock:
                self.applications[app["id"]] = app
            return 201, {}, app
        if len(parts) == 4 and parts[1] == "applications" and parts[3] == "addPassword":
            with self.lock:
                found = self.applications.get(parts[2])
                if found is None or req.method != "POST":
                    raise graph_error(404, "Request_ResourceNotFound", parts[2])
                secret = uuid.uuid4().hex + uuid.uuid4().hex
                cred = {
                    "keyId": str(uuid.uuid4()),
                    "displayName": obj(req.body, "passwordCredential").get("displayName"),
                    "startDateTime": _now(),
                    "endDateTime": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                    "hint": secret[:3],
                    "secretText": secret,
                }
                self.clients[found["appId"]] = (secret, CONTRIBUTOR)
            return 200, {}, cred
        if len(parts) == 3 and parts[1] == "applications" and req.method == "DELETE":
            with self.lock:
                gone = self.applications.pop(parts[2], None)
                if gone is None:
                    raise graph_error(404, "Request_ResourceNotFound", parts[2])
                self.clients.pop(gone["appId"], None)
                # Deleting the application ends its service principal's access at once.
                self.tokens.revoke(gone["appId"])
            return 204, {}, None
        raise graph_error(404, "Request_BadRequest", f"{req.method} {req.path}")

    # ------------------------------------------------------------------ ARM
    def arm(self, req: Request) -> Response:
        grant = self._grant(req, ARM)
        if req.method != "GET" and grant.role != CONTRIBUTOR:
            raise arm_error(
                403,
                "AuthorizationFailed",
                f"The client '{grant.principal}' does not have authorization to perform"
                f" {req.method} over scope '{req.path}'.",
            )
        if (op := _OPERATION.match(req.path)) is not None:
            found = self.operations.get(op["id"])
            if found is None:
                raise arm_error(404, "NotFound", req.path)
            return 200, {}, found
        m = _ARM_ID.match(req.path)
        if m is None:
            return self.group(req, grant)
        rtype = f"{m['ns']}/{m['type']}".lower()
        name, rest = m["name"], m["rest"]
        if rtype == "microsoft.sql/servers" and (db := _DATABASE.match(rest or "")) is not None:
            rtype, name, rest = (
                "microsoft.sql/servers/databases",
                f"{name}/databases/{db['db']}",
                db["rest"],
            )
        if rtype not in TYPES:
            raise arm_error(404, "ResourceTypeNotSupported", rtype)
        # ARM's spelling of the namespace and (top) type; a database's name carries its server.
        namespace, kind = TYPES[rtype].split("/")[:2]
        group = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}"
        rid = f"{group}/providers/{namespace}/{kind}/{name}"
        if "api-version" not in req.query:
            raise arm_error(400, "MissingApiVersionParameter", "api-version is required")
        if rest:
            return self.sub_resource(req, rid, rest.lower(), grant)
        if req.method == "GET":
            return 200, {}, self.read(rid, expand=req.query.get("$expand"))
        writes = {
            "PUT": lambda: self.put(req, rid, rtype, grant),
            "PATCH": lambda: self.patch(req, rid, grant),
            "DELETE": lambda: self.delete(req, rid, grant),
        }
        if req.method not in writes:
            raise arm_error(405, "MethodNotAllowed", req.method)
        return writes[req.method]()

    def group(self, req: Request, grant: Grant) -> Response:
        """A resource group's own path: only its deletion is served."""
        g = _GROUP.match(req.path)
        if g is None:
            raise arm_error(404, "InvalidResourceType", req.path)
        if "api-version" not in req.query:
            raise arm_error(400, "MissingApiVersionParameter", "api-version is required")
        if req.method != "DELETE":
            raise arm_error(405, "MethodNotAllowed", req.method)
        return self.delete_group(req, f"/subscriptions/{g['sub']}/resourceGroups/{g['rg']}", grant)

    def sub_resource(self, req: Request, rid: str, rest: str, grant: Grant) -> Response:
        if rest == "/providers/microsoft.resources/tags/default":
            return self.tags(req, rid, grant)
        if rest == "/providers/microsoft.insights/metrics":
            return self.metrics(req, rid)
        if rest in ("/deallocate", "/start", "/poweroff", "/restart"):
            return self.vm_action(req, rid, rest[1:], grant)
        raise arm_error(404, "NotFound", req.path)

    def read(self, rid: str, expand: str | None = None) -> dict[str, Any]:
        with self.lock:
            found = self.resources.get(rid.lower())
            if found is None:
                raise arm_error(404, "ResourceNotFound", f"The Resource '{rid}' was not found.")
            doc = json.loads(json.dumps(found))
            is_vm = doc["type"] == TYPES["microsoft.compute/virtualmachines"]
            if is_vm and expand == "instanceView":
                power = self.power.get(rid.lower(), "running")
                doc["properties"]["instanceView"] = {
                    "statuses": [
                        {
                            "code": "ProvisioningState/succeeded",
                            "level": "Info",
                            "displayStatus": "Provisioning succeeded",
                        },
                        {
                            "code": f"PowerState/{power}",
                            "level": "Info",
                            "displayStatus": f"VM {power}",
                        },
                    ]
                }
        return doc

    def _operation(self, location: str, port_base: str) -> tuple[dict[str, str], str]:
        """A finished long-running operation and the headers that point to it."""
        op_id = str(uuid.uuid4())
        now = _now()
        self.operations[op_id] = {
            "name": op_id,
            "status": "Succeeded",
            "startTime": now,
            "endTime": now,
        }
        url = f"{port_base}/providers/Microsoft.Compute/locations/{location}/operations/{op_id}"
        return {"Azure-AsyncOperation": url + "?api-version=2024-07-01"}, op_id

    def _sub_base(self, req: Request, rid: str) -> str:
        host = req.header("Host")
        return f"http://{host}{rid.split('/resourceGroups/', maxsplit=1)[0]}"

    def put(self, req: Request, rid: str, rtype: str, grant: Grant) -> Response:
        body = req.body if isinstance(req.body, dict) else None
        if body is None or not isinstance(body.get("location"), str):
            raise arm_error(400, "LocationRequired", "The location property is required.")
        props = obj(body, "properties")
        name = rid.rsplit("/", 1)[1]
        doc: dict[str, Any] = {
            "id": rid,
            "name": name,
            "type": TYPES[rtype],
            "location": body["location"],
            "tags": {str(k): str(v) for k, v in obj(body, "tags").items()},
        }
        if rtype == "microsoft.compute/virtualmachines":
            size = obj(props, "hardwareProfile").get("vmSize")
            if not isinstance(size, str) or not size.startswith("Standard_"):
                raise arm_error(400, "InvalidParameter", "hardwareProfile.vmSize is required")
            os_disk = obj(props, "storageProfile", "osDisk")
            doc["properties"] = {
                "vmId": str(uuid.uuid4()),
                "hardwareProfile": {"vmSize": size},
                "storageProfile": {"osDisk": {"osType": os_disk.get("osType", "Linux")}},
                "provisioningState": "Succeeded",
            }
        elif rtype == "microsoft.compute/disks":
            size = props.get("diskSizeGB")
            if not isinstance(size, int) or not 1 <= size <= 65536:
                raise arm_error(400, "InvalidParameter", "properties.diskSizeGB is required")
            doc["sku"] = {"name": str(obj(body, "sku").get("name", "Premium_LRS"))}
            doc["properties"] = {
                "creationData": props.get("creationData") or {"createOption": "Empty"},
                "diskSizeGB": size,
                "diskState": "Unattached",
                "provisioningState": "Succeeded",
            }
        elif rtype == "microsoft.sql/servers/databases":
            sku = _sql_sku(obj(body, "sku"))
            objective = f"{sku['name']}_{sku['capacity']}"
            doc["sku"] = sku
            doc["kind"] = "v12.0,user,vcore"
            doc["properties"] = {
                "maxSizeBytes": int(props.get("maxSizeBytes", 34359738368)),
                "status": "Online",
                "databaseId": str(uuid.uuid4()),
                "creationDate": _now(),
                "currentServiceObjectiveName": objective,
                "requestedServiceObjectiveName": objective,
                "zoneRedundant": bool(props.get("zoneRedundant", False)),
                "licenseType": str(props.get("licenseType", "LicenseIncluded")),
                "currentSku": dict(sku),
            }
        else:  # snapshot of a disk
            source = str(obj(props, "creationData").get("sourceResourceId") or "")
            src = self.read(source)
            # A full snapshot without a sku is kept on Standard HDD storage.
            doc["sku"] = {"name": str(obj(body, "sku").get("name", "Standard_LRS"))}
            doc["properties"] = {
                "creationData": props.get("creationData"),
                "diskSizeGB": src["properties"]["diskSizeGB"],
                "provisioningState": "Succeeded",
            }
        with self.lock:
            created = rid.lower() not in self.resources
            self.resources[rid.lower()] = doc
            if rtype == "microsoft.compute/virtualmachines":
                self.power.setdefault(rid.lower(), "running")
            headers, _ = self._operation(doc["location"], self._sub_base(req, rid))
        self.event("ResourceWriteSuccess", rid, f"{TYPES[rtype]}/write", req, grant)
        return (201 if created else 200), headers, self.read(rid)

    def patch(self, req: Request, rid: str, grant: Grant) -> Response:
        body = obj(req.body)
        with self.lock:
            doc = self.resources.get(rid.lower())
            if doc is None:
                raise arm_error(404, "ResourceNotFound", rid)
            if doc["type"] == TYPES["microsoft.sql/servers/databases"] and "sku" in body:
                # A resize names the service objective (`{"sku": {"name": "GP_Gen5_2"}}`).
                sku = _sql_sku(obj(body, "sku"))
                objective = f"{sku['name']}_{sku['capacity']}"
                doc["sku"] = doc["properties"]["currentSku"] = sku
                doc["properties"]["currentServiceObjectiveName"] = objective
                doc["properties"]["requestedServiceObjectiveName"] = objective
            size = obj(body, "properties", "hardwareProfile").get("vmSize")
            if size is not None:
                if doc["type"] != TYPES["microsoft.compute/virtualmachines"] or not str(
                    size
                ).startswith("Standard_"):
                    raise arm_error(400, "InvalidParameter", "vmSize")
                doc["properties"]["hardwareProfile"]["vmSize"] = size
            if isinstance(body.get("tags"), dict):
                doc["tags"] = {str(k): str(v) for k, v in body["tags"].items()}
            headers, _ = self._operation(doc["location"], self._sub_base(req, rid))
        self.event("ResourceWriteSuccess", rid, f"{doc['type']}/write", req, grant)
        return 200, headers, self.read(rid)

    def delete(self, req: Request, rid: str, grant: Grant) -> Response:
        with self.lock:
            doc = self.resources.pop(rid.lower(), None)
            self.power.pop(rid.lower(), None)
            if doc is None:
                return 204, {}, None  # ARM: deleting what is not there succeeds
            headers, _ = self._operation(doc["location"], self._sub_base(req, rid))
        self.event("ResourceDeleteSuccess", rid, f"{doc['type']}/delete", req, grant)
        return 202, headers, None

    def delete_group(self, req: Request, group: str, grant: Grant) -> Response:
        """Delete a resource group and everything in it. As in Azure, Event Grid raises one
        event, the group's deletion: none for the resources that go with it. Groups are not
        kept apart from their resources here: one that holds nothing is not found."""
        prefix = group.lower() + "/"
        with self.lock:
            held = [rid for rid in self.resources if rid.startswith(prefix)]
            if not held:
                raise arm_error(
                    404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found."
                )
            for rid in held:
                del self.resources[rid]
                self.power.pop(rid, None)
        self.event(
            "ResourceDeleteSuccess",
            group,
            "Microsoft.Resources/subscriptions/resourceGroups/delete",
            req,
            grant,
        )
        return 202, {}, None

    def vm_action(self, req: Request, rid: str, action: str, grant: Grant) -> Response:
        if req.method != "POST":
            raise arm_error(405, "MethodNotAllowed", req.method)
        state = {"deallocate": "deallocated", "start": "running", "restart": "running"}
        state["poweroff"] = "stopped"
        with self.lock:
            doc = self.resources.get(rid.lower())
            if doc is None or doc["type"] != TYPES["microsoft.compute/virtualmachines"]:
                raise arm_error(404, "ResourceNotFound", rid)
            self.power[rid.lower()] = state[action]
            headers, _ = self._operation(doc["location"], self._sub_base(req, rid))
        op = {"deallocate": "deallocate", "start": "start", "poweroff": "powerOff"}
        op["restart"] = "restart"
        self.event("ResourceActionSuccess", rid, f"{doc['type']}/{op[action]}/action", req, grant)
        return 202, headers, None

    def tags(self, req: Request, rid: str, grant: Grant) -> Response:
        if req.method != "PATCH":
            raise arm_error(405, "MethodNotAllowed", req.method)
        body = obj(req.body)
        given = obj(body, "properties", "tags")
        operation = body.get("operation")
        with self.lock:
            doc = self.resources.get(rid.lower())
            if doc is None:
                raise arm_error(404, "ResourceNotFound", rid)
            if operation == "Merge":
                doc["tags"].update({str(k): str(v) for k, v in given.items()})
            elif operation == "Replace":
                doc["tags"] = {str(k): str(v) for k, v in given.items()}
            elif operation == "Delete":
                for k, v in given.items():
                    if doc["tags"].get(k) == v:
                        del doc["tags"][k]
            else:
                raise arm_error(400, "InvalidTagOperation", str(operation))
            tags = dict(doc["tags"])
        # Azure raises the write of the tags resource, not of the resource whose tags changed.
        tags_id = f"{rid}/providers/Microsoft.Resources/tags/default"
        self.event("ResourceWriteSuccess", tags_id, "Microsoft.Resources/tags/write", req, grant)
        return (
            200,
            {},
            {
                "id": tags_id,
                "name": "default",
                "type": "Microsoft.Resources/tags",
                "properties": {"tags": tags},
            },
        )

    def metrics(self, req: Request, rid: str) -> Response:
        doc = self.read(rid)
        names = [n for n in req.query.get("metricnames", "").split(",") if n]
        span = req.query.get("timespan", "")
        try:
            start_s, end_s = span.split("/")
            start = datetime.fromisoformat(start_s.replace("Z", "+00:00"))
            end = datetime.fromisoformat(end_s.replace("Z", "+00:00"))
        except ValueError:
            raise arm_error(400, "BadRequest", f"timespan {span!r}") from None
        hours = max(0, min(int((end - start).total_seconds() // 3600), 24 * 31))
        data = [
            {"timeStamp": f"{start + timedelta(hours=h):%Y-%m-%dT%H:%M:%SZ}", **IDLE_CPU}
            for h in range(hours)
        ]
        return (
            200,
            {},
            {
                "cost": hours,
                "timespan": span,
                "interval": req.query.get("interval", "PT1H"),
                "value": [
                    {
                        "id": f"{rid}/providers/Microsoft.Insights/metrics/{name}",
                        "type": "Microsoft.Insights/metrics",
                        "name": {"value": name, "localizedValue": name},
                        "unit": "Percent",
                        "timeseries": [{"metadatavalues": [], "data": data}],
                    }
                    for name in names
                ],
                "namespace": doc["type"],
                "resourceregion": doc["location"],
            },
        )

    # ------------------------------------------------------------------ Event Grid
    def event(self, kind: str, rid: str, operation: str, req: Request, grant: Grant) -> None:
        """The Event Grid event of one successful operation (Event Grid schema, data as
        documented for Microsoft.Resources.* events), queued for the forwarder."""
        parts = rid.split("/")
        sub, group = parts[2], parts[4]
        # The operation's namespace: a resource group's and a tags resource's operations are
        # Microsoft.Resources', not the namespace in the tagged resource's id.
        namespace = operation.partition("/")[0]
        host = req.header("Host")
        event = {
            "subject": rid,
            "eventType": f"Microsoft.Resources.{kind}",
            "id": str(uuid.uuid4()),
            "eventTime": _now(),
            "topic": f"/subscriptions/{sub}",
            "dataVersion": "2",
            "metadataVersion": "1",
            "data": {
                "authorization": {"scope": rid, "action": operation, "evidence": {}},
                "claims": {"aud": ARM, "appid": grant.principal},
                "correlationId": str(uuid.uuid4()),
                "httpRequest": {
                    "clientRequestId": req.header("x-ms-client-request-id"),
                    "clientIpAddress": "127.0.0.1",
                    "method": req.method,
                    "url": f"http://{host}{req.path}?api-version={req.query['api-version']}",
                },
                "resourceProvider": namespace,
                "resourceGroup": group,
                "resourceUri": rid,
                "operationName": operation,
                "status": "Succeeded",
                "subscriptionId": sub,
                "tenantId": self.tenant,
            },
        }
        self.counts["events"][kind] += 1
        self.delivery.put(event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="azure_sim", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18087)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--clients-file", type=Path, required=True)
    parser.add_argument("--identity-header-file", type=Path, required=True)
    parser.add_argument("--collector-url", required=True)
    parser.add_argument("--collector-token-file", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    identity_header = args.identity_header_file.read_text().strip()
    settings = ForwarderSettings(
        endpoint=args.collector_url,
        token=args.collector_token_file.read_text().strip(),
    )
    base = f"http://{args.host}:{args.port}"
    # The Function's settings: its identity endpoint and the ARM it reads.
    arm_get = forwarder.arm_reader(f"{base}/msi/token", identity_header, base)

    def deliver(event: dict[str, Any]) -> None:
        # Event Grid posts an array of events to the Function's HTTP trigger.
        body = json.dumps([event]).encode()
        status, result = forwarder.handle_http(body, Forwarder(settings, "azure"), arm_get)
        if status != 200 or result.get("sent") != 1:
            raise Rejected(f"the forwarder answered {status} {result}")

    sim = AzureSimulator(
        json.loads(args.clients_file.read_text()), identity_header, args.tenant, deliver
    )
    sim.delivery.start()
    serve(
        sim,
        args.host,
        args.port,
        lambda: metrics_text("cct_azure_sim", {**sim.counts, "delivery": sim.delivery.counts}),
        "azure simulator",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
