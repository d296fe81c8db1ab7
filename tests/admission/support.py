"""Helpers for the admission tests: a test CA and server certificate (made by
`lambdas.devstack.certs`), AdmissionReview bodies shaped like the kube-apiserver's, a
`cct serve admission` subprocess, and a small HTTPS client."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import shutil
import ssl
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from components.argo import controller_user
from lambdas.devstack import certs
from tests.support.procs import free_port, http_ready, running

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "policies" / "optimization"
CCT = Path(sys.executable).with_name("cct")


# The workflow controller's user name (CCT_ADMISSION_CONTROLLER_USERS), as the bundle sets it.
CONTROLLER_USER = controller_user("cct-platform")
# The name the test API server's client certificate carries (CCT_ADMISSION_CLIENT_NAMES).
APISERVER_NAME = "kube-apiserver-admission-client"


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path
    # The CA of the API server's webhook client certificate, and certificates it signed.
    client_ca: Path
    apiserver: ClientCert
    # Signed by the same client CA, for another name: authenticated, not authorised.
    stranger: ClientCert
    # Signed by a CA the webhook does not trust.
    foreign: ClientCert


def _write_pair(directory: Path, name: str, issued: certs.Issued) -> ClientCert:
    return ClientCert(
        certs.write_cert(directory / f"{name}.crt", issued),
        certs.write_key(directory / f"{name}.key", issued),
    )


def make_tls(directory: Path, days: int = 2) -> Tls:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it, a client CA with
    the API server's client certificate and a stranger's, and a foreign client, as PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = certs.ca("cct-test-ca", days)
    server = certs.leaf(
        ca, "cct-admission", sans=["localhost", "127.0.0.1"], usage="server", days=days
    )
    client_ca = certs.ca("cct-test-apiserver-client-ca", days)
    foreign_ca = certs.ca("cct-test-apiserver-client-ca", days)  # same name, other key

    def client(issuer: certs.Issued, name: str) -> certs.Issued:
        return certs.leaf(issuer, name, sans=[name], usage="client", days=days)

    pair = _write_pair(directory, "tls", server)
    return Tls(
        ca=certs.write_cert(directory / "ca.crt", ca),
        cert=pair.cert,
        key=pair.key,
        client_ca=certs.write_cert(directory / "client-ca.crt", client_ca),
        apiserver=_write_pair(directory, "apiserver", client(client_ca, APISERVER_NAME)),
        stranger=_write_pair(directory, "stranger", client(client_ca, "cct-trigger")),
        foreign=_write_pair(directory, "foreign", client(foreign_ca, APISERVER_NAME)),
    )


def client_context(tls: Tls, client: ClientCert | None) -> ssl.SSLContext:
    """A client TLS context trusting the webhook's CA and presenting `client` (if any)."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def policies_for_now(target: Path) -> Path:
    """The shipped policies, with the critical-services calendar moved to a time zone where
    it is mid-morning right now and without the dated freeze windows, so verdicts in tests
    that run on the real clock do not depend on when the suite runs."""
    shutil.copytree(SHIPPED, target, ignore=shutil.ignore_patterns("tests", "change-freeze.yaml"))
    utc_hour = dt.datetime.now(dt.UTC).hour
    offset = 11 - utc_hour  # local 11:00, ±3 h of margin inside 08:00-19:00
    offset = offset + 24 if offset < -12 else offset - 24 if offset > 14 else offset
    zone = f"Etc/GMT{-offset:+d}" if offset else "UTC"
    ZoneInfo(zone)  # fails loudly if the arithmetic produced a zone that does not exist
    path = target / "critical-services.yaml"
    doc = yaml.safe_load(path.read_text())
    for calendar in doc["spec"]["calendars"]:
        calendar.update(
            timezone=zone, weekdays=["mon", "tue", "wed", "thu", "fri", "sat", "sun"], holidays=[]
        )
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


PARAMS: dict[str, str] = {
    "provider": "aws",
    "service": "Amazon Elastic Compute Cloud",
    "resource-id": "i-0abc123def4567890",
    "resource-type": "Instance",
    "action": "rightsize-compute",
    "environment": "staging",
    "team": "web",
    "account-id": "123456789012",
    "region": "us-east-1",
    "tags": '{"team":"web"}',
    "estimated-monthly-impact-usd": "140.16",
    "dry-run": "false",
    "event-id": "6c1f3b1e2a",
}


def params(**overrides: str) -> dict[str, str]:
    """PARAMS in a fresh account (so blast-radius counts never leak between tests); keyword
    arguments override parameters, with underscores for dashes."""
    fresh = {**PARAMS, "account-id": f"{uuid.uuid4().int % 10**12:012d}"}
    fresh.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return fresh


def workflow(
    name: str,
    parameters: Mapping[str, str] | None = None,
    template_ref: str | None = "cct-rightsize-compute",
    templates: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Workflow as the trigger creates it (see lambdas/trigger/argo.py)."""
    spec: dict[str, Any] = {
        "arguments": {
            "parameters": [
                {"name": k, "value": v} for k, v in sorted((parameters or params()).items())
            ]
        }
    }
    if template_ref:
        spec["workflowTemplateRef"] = {"name": template_ref}
    if templates is not None:
        spec["entrypoint"] = "main"
        spec["templates"] = templates
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": name,
            "namespace": "cct-workflows",
            "creationTimestamp": None,
            "labels": {"app.kubernetes.io/managed-by": "cct-trigger"},
        },
        "spec": spec,
    }


def review(
    obj: Mapping[str, Any],
    uid: str | None = None,
    operation: str = "CREATE",
    kind: Mapping[str, str] | None = None,
    dry_run: bool = False,
    *,
    old_object: Mapping[str, Any] | None = None,
    user: str = "system:serviceaccount:cct-system:cct-trigger",
) -> dict[str, Any]:
    """An AdmissionReview v1 request with every field the kube-apiserver fills in (for an
    UPDATE, `old_object` defaults to `obj`: nothing but status changed)."""
    kind = kind or {"group": "argoproj.io", "version": "v1alpha1", "kind": "Workflow"}
    resource = {
        "group": kind["group"],
        "version": kind["version"],
        "resource": kind["kind"].lower() + "s",
    }
    metadata = obj.get("metadata", {})
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": dict(kind),
            "resource": resource,
            "requestKind": dict(kind),
            "requestResource": resource,
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace", "cct-workflows"),
            "operation": operation,
            "userInfo": {
                "username": user,
                "uid": "0d5f8a52-7a52-4f5e-9d25-6b3c1f9c2d11",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:cct-system",
                    "system:authenticated",
                ],
            },
            "object": obj,
            "oldObject": old_object or (obj if operation == "UPDATE" else None),
            "dryRun": dry_run,
            "options": {
                "kind": "CreateOptions",
                "apiVersion": "meta.k8s.io/v1",
                "fieldManager": "cct-trigger",
            },
        },
    }


@dataclass
class Webhook:
    port: int
    metrics_port: int
    tls: Tls
    policy_dir: Path
    log: Path

    def context(self, client: ClientCert | None = None) -> ssl.SSLContext:
        """As the API server connects (its client certificate), or as `client`."""
        return client_context(self.tls, client or self.tls.apiserver)

    def post(
        self,
        body: bytes | Mapping[str, Any],
        content_type: str = "application/json",
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """POST /validate?timeout=10s the way the API server does; (status, JSON body)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context or self.context(), timeout=10
        )
        try:
            conn.request(
                "POST",
                "/validate?timeout=10s",
                body=data,
                headers={"Content-Type": content_type, "Accept": "application/json"},
            )
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def response(self, body: Mapping[str, Any]) -> dict[str, Any]:
        status, doc = self.post(body)
        assert status == 200, doc
        assert doc["apiVersion"] == "admission.k8s.io/v1"
        assert doc["kind"] == "AdmissionReview"
        assert doc["response"]["uid"] == body["request"]["uid"]
        return dict(doc["response"])

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        _, text = self.get("/metrics")
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and got == wanted:
                return float(value)
        return 0.0


@contextmanager
def serve_admission(
    tmp: Path,
    pg_dsn: str,
    policy_dir: Path,
    tls: Tls,
    **env: str,
) -> Iterator[Webhook]:
    """Run `cct serve admission` as a real subprocess until the block ends (on a free port,
    unless `env` names CCT_ADMISSION_PORT)."""
    port, metrics_port = int(env.pop("CCT_ADMISSION_PORT", 0)) or free_port(), free_port()
    hook = Webhook(port, metrics_port, tls, policy_dir, tmp / f"admission-{port}.log")
    settings = {
        "CCT_PG_DSN": pg_dsn,
        "CCT_POLICY_DIR": str(policy_dir),
        "CCT_ADMISSION_TLS_CERT": str(tls.cert),
        "CCT_ADMISSION_TLS_KEY": str(tls.key),
        "CCT_ADMISSION_CLIENT_CA": str(tls.client_ca),
        "CCT_ADMISSION_CLIENT_NAMES": APISERVER_NAME,
        "CCT_ADMISSION_CONTROLLER_USERS": CONTROLLER_USER,
        "CCT_ADMISSION_HOST": "127.0.0.1",
        "CCT_ADMISSION_PORT": str(port),
        "CCT_ADMISSION_METRICS_PORT": str(metrics_port),
        "CCT_ADMISSION_RELOAD_INTERVAL_S": "0.2",
        "CCT_ADMISSION_RECENT_REFRESH_S": "0.5",
        **env,
    }
    ready = http_ready(f"http://127.0.0.1:{metrics_port}/metrics")
    with running([str(CCT), "serve", "admission"], ready, hook.log, env=settings):
        yield hook
