"""The local stack's Google Cloud: the Compute Engine v1 calls CCT makes (instances insert,
get, stop, start, setMachineType, setLabels, delete; disks insert, get, createSnapshot,
delete; snapshots get; zone operations get and wait), the Cloud SQL Admin API v1's
instances insert, get, patch, delete and operations get, Cloud Monitoring's timeSeries.list and
IAM Credentials' generateAccessToken (what Vault's GCP engine calls), each in its documented
JSON shape. Every call the project's log sink selects (`lambdas.forwarders.gcp.METHODS`)
writes its Admin Activity audit LogEntry, which is published as the sink's Pub/Sub message
and pushed, with retries, to the real forwarder code (`lambdas.forwarders.gcp.handle`, the
Cloud Function's Pub/Sub trigger), which posts it to the collector.

Callers authenticate with OAuth2 bearer tokens as on Google's APIs: the static tokens of the
clients file (a user, and Vault's own service account) or tokens minted by
generateAccessToken for a service account the clients file lists. Vault's account may only
mint tokens; users and minted service-account tokens may use Compute and Monitoring.

    python -m lambdas.devstack.gcp_sim --port 18088 --clients-file F \\
        --collector-url URL --collector-token-file T
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import logging
import re
import secrets
import threading
import time
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
    serve,
)
from lambdas.forwarders import gcp as forwarder
from lambdas.forwarders.common import Forwarder, ForwarderSettings

log = logging.getLogger(__name__)

API = "https://www.googleapis.com/compute/v1"
EDITOR, TOKEN_CREATOR = "editor", "token-creator"
_PROJECT = r"/projects/(?P<p>[a-z][a-z0-9-]{4,28}[a-z0-9])"
_ZONE = r"/compute/v1" + _PROJECT + r"/zones/(?P<z>[a-z]+-[a-z]+[0-9]-[a-z])"
_NAME = r"(?P<n>[a-z]([-a-z0-9]{0,61}[a-z0-9])?)"
_SQL_NAME = r"[a-z][-a-z0-9]{0,61}[a-z0-9]"
SQL_SELF = "https://sqladmin.googleapis.com/v1"
# The Cloud SQL settings an instance keeps from its creation and PATCHes (the ones CCT prices).
_SQL_SETTINGS = (
    "tier",
    "availabilityType",
    "dataDiskSizeGb",
    "dataDiskType",
    "activationPolicy",
    "userLabels",
)
ROUTES = [
    ("instances", re.compile(f"^{_ZONE}/instances$")),
    ("instance", re.compile(f"^{_ZONE}/instances/{_NAME}$")),
    ("instance_verb", re.compile(f"^{_ZONE}/instances/{_NAME}/(?P<verb>[A-Za-z]+)$")),
    ("disks", re.compile(f"^{_ZONE}/disks$")),
    ("disk", re.compile(f"^{_ZONE}/disks/{_NAME}$")),
    ("disk_verb", re.compile(f"^{_ZONE}/disks/{_NAME}/(?P<verb>createSnapshot)$")),
    ("operation", re.compile(f"^{_ZONE}/operations/(?P<op>[a-z0-9-]+)(?P<wait>/wait)?$")),
    (
        "snapshot",
        re.compile(f"^/compute/v1{_PROJECT}/global/snapshots/{_NAME}$"),
    ),
    ("timeseries", re.compile(f"^/v3{_PROJECT}/timeSeries$")),
    # Cloud SQL Admin API v1
    ("sql_instances", re.compile(f"^/v1{_PROJECT}/instances$")),
    ("sql_instance", re.compile(f"^/v1{_PROJECT}/instances/(?P<n>{_SQL_NAME})$")),
    ("sql_operation", re.compile(f"^/v1{_PROJECT}/operations/(?P<op>[a-z0-9-]+)$")),
    (
        "access_token",
        re.compile(r"^/v1/projects/-/serviceAccounts/(?P<sa>[^/:]+):generateAccessToken$"),
    ),
]
# A new instance here runs nothing: Cloud Monitoring reports it idle (a fraction of one).
IDLE_CPU = {"ALIGN_MEAN": 0.01, "ALIGN_MAX": 0.03}
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


def google_error(status: int, reason: str, message: str) -> HttpError:
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
    names |= {404: "NOT_FOUND", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION"}
    return HttpError(
        status,
        {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
                "status": names.get(status, "UNKNOWN"),
            }
        },
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fingerprint() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _LABEL.match(k) and isinstance(v, str) and _LABEL_VALUE.match(v)
        for k, v in value.items()
    ):
        raise google_error(400, "invalid", "Invalid value for field 'labels'")
    return dict(value)


def _interval(req: Request) -> tuple[datetime, datetime]:
    try:
        start = datetime.fromisoformat(req.query["interval.startTime"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(req.query["interval.endTime"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise google_error(400, "badRequest", "interval.startTime/endTime") from None
    return start, end


def _hourly_points(start: datetime, end: datetime, value: float) -> list[dict[str, Any]]:
    """One point per hour of the interval (at most 31 days), newest first, as Monitoring
    returns them."""
    hours = max(0, min(int((end - start).total_seconds() // 3600), 24 * 31))
    return [
        {
            "interval": {
                "startTime": f"{end - timedelta(hours=h + 1):%Y-%m-%dT%H:%M:%SZ}",
                "endTime": f"{end - timedelta(hours=h):%Y-%m-%dT%H:%M:%SZ}",
            },
            "value": {"doubleValue": value},
        }
        for h in range(hours)
    ]


class GcpSimulator:
    def __init__(self, clients: dict[str, Any], deliver: Any) -> None:
        self.tokens = Tokens()
        # Static tokens of the clients file: token -> (principal, role).
        self.static: dict[str, tuple[str, str]] = {
            c["token"]: (c["email"], c["role"]) for c in clients["principals"].values()
        }
        self.service_accounts: set[str] = set(clients.get("service_accounts", []))
        self.instances: dict[str, dict[str, Any]] = {}
        self.disks: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.sql: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.counts: dict[str, Counter[str]] = {"requests": Counter(), "audit_entries": Counter()}
        self.delivery = Delivery(deliver, "pubsub-push")

    # ------------------------------------------------------------------ entry
    def __call__(self, req: Request) -> Response:
        self.counts["requests"][req.method] += 1
        grant = self._grant(req)
        for name, pattern in ROUTES:
            m = pattern.match(req.path)
            if m is None:
                continue
            if name == "access_token":
                return self.generate_access_token(req, grant, m["sa"])
            if grant.role != EDITOR:
                raise google_error(403, "forbidden", f"{grant.principal} may not call {req.path}")
            handler = getattr(self, f"on_{name}")
            result: Response = handler(req, grant, m.groupdict())
            return result
        raise google_error(404, "notFound", f"The requested URL {req.path} was not found.")

    def _grant(self, req: Request) -> Grant:
        token = req.bearer() or ""
        static = self.static.get(token)
        if static is not None:
            return Grant(static[0], "google", static[1], time.time() + 3600)
        grant = self.tokens.check(token, "google")
        if grant is None:
            self.counts["requests"]["refused"] += 1
            raise google_error(401, "authError", "Request had invalid authentication credentials.")
        return grant

    # ------------------------------------------------------------------ IAM Credentials
    def generate_access_token(self, req: Request, grant: Grant, email: str) -> Response:
        if req.method != "POST":
            raise google_error(404, "notFound", req.path)
        if grant.role != TOKEN_CREATOR:
            raise google_error(
                403, "forbidden", "Permission 'iam.serviceAccounts.getAccessToken' denied"
            )
        if email not in self.service_accounts:
            raise google_error(404, "notFound", f"Service account {email} not found")
        body = obj(req.body)
        lifetime = str(body.get("lifetime", "3600s"))
        try:
            seconds = int(lifetime.rstrip("s"))
        except ValueError:
            raise google_error(400, "invalid", f"lifetime {lifetime!r}") from None
        if not 1 <= seconds <= 3600 or not body.get("scope"):
            raise google_error(400, "invalid", "scope and a lifetime of at most 3600s")
        token, issued = self.tokens.issue(email, "google", EDITOR, prefix="ya29.")
        issued.expires = time.time() + seconds
        expire = datetime.fromtimestamp(issued.expires, UTC)
        return 200, {}, {"accessToken": token, "expireTime": f"{expire:%Y-%m-%dT%H:%M:%SZ}"}

    # ------------------------------------------------------------------ operations
    def _operation(self, p: dict[str, str], kind: str, target: str, grant: Grant) -> dict[str, Any]:
        """A zonal operation, finished (this simulator applies changes at once)."""
        name = f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}"
        now = _now()
        zone = f"{API}/projects/{p['p']}/zones/{p['z']}"
        op = {
            "kind": "compute#operation",
            "id": str(uuid.uuid4().int % 10**19),
            "name": name,
            "zone": zone,
            "operationType": kind,
            "targetLink": target,
            "targetId": str(uuid.uuid4().int % 10**19),
            "status": "DONE",
            "user": grant.principal,
            "progress": 100,
            "insertTime": now,
            "startTime": now,
            "endTime": now,
            "selfLink": f"{zone}/operations/{name}",
        }
        self.operations[name] = op
        return op

    def on_operation(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        op = self.operations.get(p["op"])
        if op is None:
            raise google_error(404, "notFound", f"The resource operation {p['op']} was not found")
        return 200, {}, op

    # ------------------------------------------------------------------ instances
    def _key(self, p: dict[str, str], kind: str) -> str:
        return f"projects/{p['p']}/zones/{p['z']}/{kind}/{p['n']}"

    def on_instances(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        if req.method != "POST":
            raise google_error(405, "methodNotAllowed", req.method)
        body = obj(req.body)
        name = body.get("name")
        machine = body.get("machineType")
        if not isinstance(name, str) or not re.fullmatch(_NAME, name):
            raise google_error(400, "invalid", "Invalid value for field 'resource.name'")
        if not isinstance(machine, str) or "/machineTypes/" not in machine:
            raise google_error(400, "invalid", "Invalid value for field 'resource.machineType'")
        p = {**p, "n": name}
        key = self._key(p, "instances")
        link = f"{API}/{key}"
        with self.lock:
            if key in self.instances:
                raise google_error(409, "alreadyExists", f"The resource '{key}' already exists")
            self.instances[key] = {
                "kind": "compute#instance",
                "id": str(uuid.uuid4().int % 10**19),
                "creationTimestamp": _now(),
                "name": name,
                "machineType": f"{API}/projects/{p['p']}/zones/{p['z']}/machineTypes/"
                + machine.rsplit("/", 1)[1],
                "status": "RUNNING",
                "zone": f"{API}/projects/{p['p']}/zones/{p['z']}",
                "labels": _labels(body.get("labels")),
                "labelFingerprint": _fingerprint(),
                "selfLink": link,
            }
            op = self._operation(p, "insert", link, grant)
        self.audit("compute.instances.insert", key, body, op, grant)
        return 200, {}, op

    def _instance(self, key: str) -> dict[str, Any]:
        found = self.instances.get(key)
        if found is None:
            raise google_error(404, "notFound", f"The resource '{key}' was not found")
        return found

    def on_instance(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        key = self._key(p, "instances")
        with self.lock:
            inst = self._instance(key)
            if req.method == "GET":
                return 200, {}, copy.deepcopy(inst)
            if req.method != "DELETE":
                raise google_error(405, "methodNotAllowed", req.method)
            del self.instances[key]
            op = self._operation(p, "delete", inst["selfLink"], grant)
        self.audit("compute.instances.delete", key, {}, op, grant)
        return 200, {}, op

    def on_instance_verb(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        verb = p["verb"]
        if req.method != "POST" or verb not in ("stop", "start", "setMachineType", "setLabels"):
            raise google_error(404, "notFound", req.path)
        key = self._key(p, "instances")
        body = obj(req.body)
        with self.lock:
            inst = self._instance(key)
            if verb == "stop":
                inst["status"] = "TERMINATED"
            elif verb == "start":
                inst["status"] = "RUNNING"
            elif verb == "setMachineType":
                machine = body.get("machineType")
                if not isinstance(machine, str) or "/machineTypes/" not in machine:
                    raise google_error(400, "invalid", "Invalid value for field 'machineType'")
                if inst["status"] != "TERMINATED":
                    raise google_error(
                        400, "resourceNotReady", "The instance must be stopped to change it"
                    )
                inst["machineType"] = (
                    f"{API}/projects/{p['p']}/zones/{p['z']}/machineTypes/"
                    + machine.rsplit("/", 1)[1]
                )
            else:
                if body.get("labelFingerprint") != inst["labelFingerprint"]:
                    raise google_error(
                        412, "conditionNotMet", "Labels fingerprint either invalid or outdated"
                    )
                inst["labels"] = _labels(body.get("labels"))
                inst["labelFingerprint"] = _fingerprint()
            op = self._operation(p, verb, inst["selfLink"], grant)
        self.audit(f"compute.instances.{verb}", key, body, op, grant)
        return 200, {}, op

    # ------------------------------------------------------------------ disks
    def on_disks(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        if req.method != "POST":
            raise google_error(405, "methodNotAllowed", req.method)
        body = obj(req.body)
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(_NAME, name):
            raise google_error(400, "invalid", "Invalid value for field 'resource.name'")
        try:
            size = int(body.get("sizeGb", 10))
        except (TypeError, ValueError):
            raise google_error(400, "invalid", "Invalid value for field 'sizeGb'") from None
        if not 1 <= size <= 65536:
            raise google_error(400, "invalid", "Invalid value for field 'sizeGb'")
        p = {**p, "n": name}
        key = self._key(p, "disks")
        disk_type = str(body.get("type") or "pd-standard").rsplit("/", 1)[-1]
        with self.lock:
            if key in self.disks:
                raise google_error(409, "alreadyExists", f"The resource '{key}' already exists")
            self.disks[key] = {
                "kind": "compute#disk",
                "id": str(uuid.uuid4().int % 10**19),
                "name": name,
                "sizeGb": str(size),
                "zone": f"{API}/projects/{p['p']}/zones/{p['z']}",
                "status": "READY",
                "type": f"{API}/projects/{p['p']}/zones/{p['z']}/diskTypes/{disk_type}",
                "labels": _labels(body.get("labels")),
                "labelFingerprint": _fingerprint(),
                "selfLink": f"{API}/{key}",
            }
            op = self._operation(p, "insert", f"{API}/{key}", grant)
        self.audit("compute.disks.insert", key, body, op, grant)
        return 200, {}, op

    def on_disk(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        key = self._key(p, "disks")
        with self.lock:
            disk = self.disks.get(key)
            if disk is None:
                raise google_error(404, "notFound", f"The resource '{key}' was not found")
            if req.method == "GET":
                return 200, {}, copy.deepcopy(disk)
            if req.method != "DELETE":
                raise google_error(405, "methodNotAllowed", req.method)
            del self.disks[key]
            op = self._operation(p, "delete", disk["selfLink"], grant)
        self.audit("compute.disks.delete", key, {}, op, grant)
        return 200, {}, op

    def on_disk_verb(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        key = self._key(p, "disks")
        body = obj(req.body)
        name = body.get("name")
        if req.method != "POST" or not isinstance(name, str) or not re.fullmatch(_NAME, name):
            raise google_error(400, "invalid", "Invalid value for field 'resource.name'")
        with self.lock:
            disk = self.disks.get(key)
            if disk is None:
                raise google_error(404, "notFound", f"The resource '{key}' was not found")
            self.snapshots[f"projects/{p['p']}/global/snapshots/{name}"] = {
                "kind": "compute#snapshot",
                "name": name,
                "status": "READY",
                "sourceDisk": disk["selfLink"],
                "diskSizeGb": disk["sizeGb"],
                "labels": _labels(body.get("labels")),
                "selfLink": f"{API}/projects/{p['p']}/global/snapshots/{name}",
            }
            op = self._operation(p, "createSnapshot", disk["selfLink"], grant)
        return 200, {}, op

    def on_snapshot(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        found = self.snapshots.get(f"projects/{p['p']}/global/snapshots/{p['n']}")
        if found is None or req.method != "GET":
            raise google_error(404, "notFound", f"The resource snapshot '{p['n']}' was not found")
        return 200, {}, copy.deepcopy(found)

    # ------------------------------------------------------------------ Cloud SQL
    def _sql_operation(self, project: str, kind: str, name: str, grant: Grant) -> dict[str, Any]:
        """A Cloud SQL operation, finished (changes apply at once here)."""
        op_name = str(uuid.uuid4())
        now = _now()
        op = {
            "kind": "sql#operation",
            "name": op_name,
            "operationType": kind,
            "status": "DONE",
            "user": grant.principal,
            "insertTime": now,
            "startTime": now,
            "endTime": now,
            "targetId": name,
            "targetProject": project,
            "targetLink": f"{SQL_SELF}/projects/{project}/instances/{name}",
            "selfLink": f"{SQL_SELF}/projects/{project}/operations/{op_name}",
        }
        self.operations[op_name] = op
        return op

    def on_sql_operation(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        op = self.operations.get(p["op"])
        if op is None or op.get("kind") != "sql#operation":
            raise google_error(404, "notFound", f"The operation {p['op']} was not found")
        return 200, {}, op

    def _sql_settings(self, given: Any, current: dict[str, Any]) -> dict[str, Any]:
        """The settings after a creation or a PATCH: the fields given replace the current
        ones, except the labels, which merge (a label given as null is removed)."""
        settings = obj(given)
        tier = settings.get("tier", current.get("tier"))
        if not isinstance(tier, str) or not tier.startswith("db-"):
            raise google_error(400, "invalid", "Invalid request: settings.tier")
        out = {**current, **{k: settings[k] for k in _SQL_SETTINGS if k in settings}}
        merged = {**current.get("userLabels", {}), **obj(settings.get("userLabels"))}
        out["userLabels"] = _labels({k: v for k, v in merged.items() if v is not None})
        return out

    def on_sql_instances(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        if req.method != "POST":
            raise google_error(405, "methodNotAllowed", req.method)
        body = obj(req.body)
        name, version = body.get("name"), body.get("databaseVersion", "MYSQL_8_0")
        if not isinstance(name, str) or not re.fullmatch(_SQL_NAME, name):
            raise google_error(400, "invalid", "Invalid request: instance name")
        defaults = {"availabilityType": "ZONAL", "dataDiskSizeGb": "10", "dataDiskType": "PD_SSD"}
        settings = self._sql_settings(body.get("settings"), defaults)
        settings |= {"activationPolicy": settings.get("activationPolicy", "ALWAYS")}
        key = f"projects/{p['p']}/instances/{name}"
        with self.lock:
            if key in self.sql:
                raise google_error(409, "alreadyExists", f"The instance {name} already exists")
            self.sql[key] = {
                "kind": "sql#instance",
                "name": name,
                "project": p["p"],
                "databaseVersion": version,
                "region": body.get("region", "us-central1"),
                "state": "RUNNABLE",
                "settings": {**settings, "settingsVersion": "1"},
                "connectionName": f"{p['p']}:{body.get('region', 'us-central1')}:{name}",
                "selfLink": f"{SQL_SELF}/{key}",
            }
            op = self._sql_operation(p["p"], "CREATE", name, grant)
        request = {"@type": "type.googleapis.com/google.cloud.sql.v1.SqlInstancesInsertRequest"}
        region = str(body.get("region", "us-central1"))
        self.audit_sql(
            "cloudsql.instances.create", key, {**request, "body": body}, op, grant, region
        )
        return 200, {}, op

    def on_sql_instance(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        key = f"projects/{p['p']}/instances/{p['n']}"
        with self.lock:
            inst = self.sql.get(key)
            if inst is None:
                raise google_error(
                    404, "instanceDoesNotExist", f"The instance {p['n']} does not exist"
                )
            if req.method == "GET":
                return 200, {}, copy.deepcopy(inst)
            region = inst["region"]
            if req.method == "DELETE":
                del self.sql[key]
                op = self._sql_operation(p["p"], "DELETE", p["n"], grant)
                kind, body = "Delete", None
            elif req.method == "PATCH":
                body = obj(req.body)
                given = obj(body.get("settings"))
                version = given.get("settingsVersion")
                if version is not None and str(version) != inst["settings"]["settingsVersion"]:
                    raise google_error(
                        412, "staleData", "The settings version does not match the current one"
                    )
                settings = self._sql_settings(given, inst["settings"])
                settings["settingsVersion"] = str(int(inst["settings"]["settingsVersion"]) + 1)
                inst["settings"] = settings
                if settings["activationPolicy"] == "NEVER":
                    inst["state"] = "STOPPED"
                else:
                    inst["state"] = "RUNNABLE"
                op = self._sql_operation(p["p"], "UPDATE", p["n"], grant)
                kind = "Patch"
            else:
                raise google_error(405, "methodNotAllowed", req.method)
        request: dict[str, Any] = {
            "@type": f"type.googleapis.com/google.cloud.sql.v1.SqlInstances{kind}Request",
            "project": p["p"],
            "instance": p["n"],
        }
        if body is not None:
            request["body"] = body
        method = "cloudsql.instances.delete" if kind == "Delete" else "cloudsql.instances.update"
        self.audit_sql(method, key, request, op, grant, region)
        return 200, {}, op

    def audit_sql(  # noqa: PLR0917 - the audit entry's fields
        self,
        method: str,
        key: str,
        request: dict[str, Any],
        op: dict[str, Any],
        grant: Grant,
        region: str,
    ) -> None:
        """A Cloud SQL Admin Activity entry: the operation's first, with the request (its
        `cloudsql_database` resource labels as real entries have them)."""
        project, name = key.split("/")[1], key.split("/")[3]
        payload = {
            "methodName": method,
            "authorizationInfo": [
                {"resource": f"instances/{project}:{name}", "permission": method, "granted": True}
            ],
            "resourceName": key,
            "request": request,
            "response": {
                "@type": "type.googleapis.com/google.cloud.sql.v1.Operation",
                "kind": "sql#operation",
                "name": op["name"],
                "operationType": op["operationType"],
                "status": "PENDING",
                "targetId": name,
                "targetProject": project,
            },
        }
        labels = {"project_id": project, "database_id": f"{project}:{name}", "region": region}
        resource = {"type": "cloudsql_database", "labels": labels}
        self.publish(
            method, "cloudsql.googleapis.com", payload, resource, operation=op["name"], grant=grant
        )

    # ------------------------------------------------------------------ monitoring
    def _sql_cpu(self, req: Request, p: dict[str, str], database_id: str) -> Response:
        """An idle Cloud SQL instance's `cloudsql.googleapis.com/database/cpu/utilization`."""
        project, _, name = database_id.partition(":")
        start, end = _interval(req)
        with self.lock:
            found = f"projects/{project}/instances/{name}" in self.sql and project == p["p"]
        if not found:
            return 200, {}, {}
        aligner = req.query.get("aggregation.perSeriesAligner", "ALIGN_MEAN")
        series = {
            "metric": {"type": "cloudsql.googleapis.com/database/cpu/utilization"},
            "resource": {
                "type": "cloudsql_database",
                "labels": {"project_id": project, "database_id": database_id},
            },
            "metricKind": "GAUGE",
            "valueType": "DOUBLE",
            "points": _hourly_points(start, end, IDLE_CPU.get(aligner, IDLE_CPU["ALIGN_MEAN"])),
        }
        return 200, {}, {"timeSeries": [series]}

    def on_timeseries(self, req: Request, grant: Grant, p: dict[str, str]) -> Response:
        flt = req.query.get("filter", "")
        database = re.search(r'resource\.labels\.database_id\s*=\s*"([^"]+)"', flt)
        if database:
            return self._sql_cpu(req, p, database[1])
        name = re.search(r'metric\.labels\.instance_name\s*=\s*"([^"]+)"', flt)
        aligner = req.query.get("aggregation.perSeriesAligner", "ALIGN_MEAN")
        start, end = _interval(req)
        with self.lock:
            found = [
                i
                for k, i in self.instances.items()
                if k.startswith(f"projects/{p['p']}/") and name and i["name"] == name[1]
            ]
        value = IDLE_CPU.get(aligner, IDLE_CPU["ALIGN_MEAN"])
        series = [
            {
                "metric": {
                    "type": "compute.googleapis.com/instance/cpu/utilization",
                    "labels": {"instance_name": i["name"]},
                },
                "resource": {
                    "type": "gce_instance",
                    "labels": {
                        "project_id": p["p"],
                        "instance_id": i["id"],
                        "zone": i["zone"].rsplit("/", 1)[1],
                    },
                },
                "metricKind": "GAUGE",
                "valueType": "DOUBLE",
                "points": _hourly_points(start, end, value),
            }
            for i in found
        ]
        return 200, {}, {"timeSeries": series} if series else {}

    # ------------------------------------------------------------------ audit log -> Pub/Sub
    def audit(
        self, method: str, key: str, request: dict[str, Any], op: dict[str, Any], grant: Grant
    ) -> None:
        """The Admin Activity audit LogEntry of one call (the first entry of its operation,
        which carries the request), published if the sink's filter selects it."""
        project, zone = key.split("/")[1], key.split("/")[3]
        kind = key.split("/")[4]
        if isinstance(request.get("labels"), dict):
            # The audit log writes a map as a list of {key, value}, as real entries do.
            labels = [{"key": k, "value": v} for k, v in request["labels"].items()]
            request = {**request, "labels": labels}
        payload = {
            "methodName": f"v1.{method}",
            "authorizationInfo": [
                {
                    "permission": method,
                    "granted": True,
                    "resourceAttributes": {
                        "service": "compute",
                        "name": key,
                        "type": f"compute.{kind}",
                    },
                }
            ],
            "resourceName": key,
            "request": {"@type": f"type.googleapis.com/{method}", **request},
            "response": {
                "@type": "type.googleapis.com/operation",
                "id": op["id"],
                "name": op["name"],
                "status": "RUNNING",
                "targetLink": op["targetLink"],
                "operationType": op["operationType"],
                "zone": op["zone"],
            },
            "resourceLocation": {"currentLocations": [zone]},
        }
        resource = {
            "type": "gce_instance" if kind == "instances" else "gce_disk",
            "labels": {"project_id": project, "zone": zone},
        }
        self.publish(
            method, "compute.googleapis.com", payload, resource, operation=op["name"], grant=grant
        )

    def publish(
        self,
        method: str,
        service: str,
        payload: dict[str, Any],
        resource: dict[str, Any],
        *,
        operation: str,
        grant: Grant,
    ) -> None:
        """The entry (the first of its operation, which carries the request) as the log
        sink's Pub/Sub push delivers it to the forwarder, if the sink's filter selects it."""
        if method not in forwarder.METHODS:
            return
        project = resource["labels"]["project_id"]
        now = _now()
        entry = {
            "protoPayload": {
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "status": {},
                "authenticationInfo": {"principalEmail": grant.principal},
                "requestMetadata": {"callerIp": "127.0.0.1"},
                "serviceName": service,
                **payload,
            },
            "insertId": uuid.uuid4().hex[:12],
            "resource": resource,
            "timestamp": now,
            "severity": "NOTICE",
            "logName": f"projects/{project}/logs/cloudaudit.googleapis.com%2Factivity",
            "operation": {"id": operation, "producer": service, "first": True},
            "receiveTimestamp": now,
        }
        data = base64.b64encode(json.dumps(entry).encode()).decode()
        message_id = str(uuid.uuid4().int % 10**16)
        publish = _now()
        push = {
            "message": {
                "attributes": {"logging.googleapis.com/timestamp": entry["timestamp"]},
                "data": data,
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": publish,
                "publish_time": publish,
            },
            "subscription": f"projects/{project}/subscriptions/cct-audit-forwarder",
        }
        self.counts["audit_entries"][method] += 1
        self.delivery.put(push)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gcp_sim", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18088)
    parser.add_argument("--clients-file", type=Path, required=True)
    parser.add_argument("--collector-url", required=True)
    parser.add_argument("--collector-token-file", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = ForwarderSettings(
        endpoint=args.collector_url,
        token=args.collector_token_file.read_text().strip(),
    )

    def deliver(push: dict[str, Any]) -> None:
        result = forwarder.handle(push, Forwarder(settings, "gcp"))
        if result.sent != 1:
            raise Rejected(f"the forwarder dropped the entry: {dict(result.dropped)}")

    sim = GcpSimulator(json.loads(args.clients_file.read_text()), deliver)
    sim.delivery.start()
    serve(
        sim,
        args.host,
        args.port,
        lambda: metrics_text("cct_gcp_sim", {**sim.counts, "delivery": sim.delivery.counts}),
        "gcp simulator",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
