"""The real control plane and Pulumi engine of `make cluster` (scripts/cluster), as the
cluster tests use them: its settings file, `pulumi` runs of the `local` stack, an API client."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.admission.support import ClientCert, Tls

ROOT = Path(__file__).parents[2]
SETTINGS = ROOT / ".local" / "cluster" / "cluster.json"
SCRIPT = ROOT / "scripts" / "cluster"
# Where Pulumi.local.yaml registers the webhook (cct:webhookUrl).
WEBHOOK_PORT = 18443
# The name on the API server's webhook client certificate (scripts/cluster's PKI).
APISERVER_CLIENT_NAME = "cct-admission-apiserver-client"


def cluster_tls(ca_file: str) -> Tls:
    """The webhook's serving certificate and the API server's client CA, from the cluster's
    PKI: the stack registers the serving CA, the API server presents the client cert."""
    pki = Path(ca_file).parent
    apiserver = ClientCert(
        pki / "apiserver-admission-client.crt", pki / "apiserver-admission-client.key"
    )
    return Tls(
        pki / "ca.crt", pki / "webhook.crt", pki / "webhook.key",
        pki / "admission-client-ca.crt", apiserver, apiserver, apiserver,
    )  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    server: str
    ca_file: str
    token: str
    bin: Path
    settings: dict[str, Any]

    def api(self, token: str | None = None) -> client.ApiClient:
        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = self.ca_file
        cfg.api_key = {"authorization": token or self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        cfg.retries = False
        return client.ApiClient(cfg)


def load_cluster() -> Cluster:
    """The running cluster; a missing one fails the test (CI builds and starts it)."""
    if not SETTINGS.exists():
        pytest.fail(f"no cluster: {SETTINGS} is missing; run `make cluster`", pytrace=False)
    data = json.loads(SETTINGS.read_text())
    cluster = Cluster(data["server"], data["ca_file"], data["token"], Path(data["bin"]), data)
    try:
        client.VersionApi(cluster.api()).get_code(_request_timeout=5)
    except Exception as exc:
        pytest.fail(f"the cluster at {cluster.server} does not answer ({exc}); run `make cluster`")
    return cluster


@dataclass(frozen=True)
class PulumiRun:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def pulumi(*args: str, check: bool = True, env: dict[str, str] | None = None) -> PulumiRun:
    """`scripts/cluster pulumi ARGS` (the `local` stack, the built engine and provider)."""
    started = time.monotonic()
    proc = subprocess.run(
        ["python3", str(SCRIPT), "pulumi", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=1200,
    )
    run = PulumiRun(args, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    if check and proc.returncode != 0:
        raise AssertionError(f"pulumi {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return run


def summary(run: PulumiRun) -> dict[str, int]:
    """The operation counts of an `up`/`preview` run made with `--json`."""
    doc = json.loads(run.stdout)
    changes = doc.get("changeSummary") or doc.get("summary", {}).get("resourceChanges") or {}
    return {str(k): int(v) for k, v in changes.items()}
