"""`make up` / `make down`: the whole pipeline on this machine.

    python -m lambdas.devstack.stack up       services, schema, prices, topics, every part
    python -m lambdas.devstack.stack down     stop the parts, then the services
    python -m lambdas.devstack.stack env      the settings a local user's shell needs

Idempotent like `scripts/services`: a part that answers its health check is left alone, a
part whose pid file names a live process is waited for, anything else is started. Each part
runs as its own process group with its log in `.local/log/<part>.log` and its pid in
`.local/run/<part>.pid`; only processes whose pid file this module wrote are ever stopped.
What runs where is written to `.local/stack.json` (read by `cct status` and the system test).

The parts are the production handlers (`cct serve NAME`) with the settings a pod would get,
pointed at the local stand-ins: moto for AWS, a Zenduty-compatible receiver, the trigger's
local workflow backend (which plays Argo and the API server's admission call) and the local
credential source (docs/local-stack.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lambdas import contract
from lambdas.alerting.config import AlertRoutingSettings, render_alertmanager_config
from lambdas.detector.rules import RulesSettings, load_budgets, render_vmalert_rules
from lambdas.trigger.local import STEP_ENV_PREFIX

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / ".local"
LOGS = LOCAL / "log"
RUN = LOCAL / "run"
SECRETS = LOCAL / "secrets"
STACK_FILE = LOCAL / "stack.json"
HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
CCT = str(VENV_BIN / "cct")

# One port per part, distinct from the services' (scripts/services) and from each other.
PORTS = {
    "collector": 18081,
    "detector": 18082,
    "bridge": 18083,
    "trigger": 18084,
    "admission": 18443,
    "admission-ops": 18085,
    "zenduty": 18086,
    "azure": 18087,
    "gcp": 18088,
    "billing": 18089,
    "vault": 18200,
}
RESULTS_TOPIC = "cct.optimization.results"
TOPICS = (
    contract.TOPIC_ANOMALIES,
    contract.TOPIC_UNMAPPED,
    contract.TOPIC_DEAD_LETTER,
    RESULTS_TOPIC,
)
# The simulator's account and the price fixtures the catalog is loaded from.
PRICE_FIXTURES = {
    "aws": [
        "aws_ec2_offer.json",
        "aws_rds_offer.json",
        "aws_s3_offer.json",
        "aws_s3_deep_archive_offer.json",
    ],
    "azure": ["azure_retail_page1.json", "azure_retail_blob.json", "azure_retail_sql.json"],
    "gcp": ["gcp_compute_skus.json", "gcp_storage_skus.json", "gcp_sql_skus.json"],
}
PRICE_DIR = ROOT / "tests" / "ingest" / "fixtures" / "prices"
# The fixtures price a handful of SKUs at a few cents to a dollar an hour; production's
# materiality ($2/h, critical at $100/h) would never alert on them, so the local stack
# scales the detector's dollar thresholds down to the simulator's prices (the statistics,
# windows and rules are production's).
DETECTOR_SCALE = {
    "CCT_DETECTOR_MIN_IMPACT_USD_PER_HOUR": "0.05",
    "CCT_DETECTOR_DAY0_MIN_STEP_USD_PER_HOUR": "0.05",
    "CCT_DETECTOR_WARNING_USD_PER_HOUR": "0.05",
    "CCT_DETECTOR_CRITICAL_USD_PER_HOUR": "0.15",
}


class StackError(RuntimeError):
    """A part did not start or is not healthy; the message names it and its log."""


def say(msg: str) -> None:
    print(f"up: {msg}", flush=True)


def services() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((LOCAL / "services.json").read_text())
    return data


def secret(name: str, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> Path:
    """A generated secret file under .local/secrets (0600), created once."""
    SECRETS.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = SECRETS / name
    if not path.exists():
        path.write_text(make() + "\n")
        path.chmod(0o600)
    return path


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_of(name: str) -> int | None:
    try:
        pid = int((RUN / f"{name}.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return None
    except OSError:
        return None
    return pid


@dataclass
class Part:
    """One long-running process of the stack."""

    name: str
    command: list[str]
    health: str
    env: dict[str, str] = field(default_factory=dict)
    # What a user looks at: name -> URL or path, printed by `make up`.
    shows: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0

    @property
    def log(self) -> Path:
        return LOGS / f"{self.name}.log"

    def healthy(self) -> bool:
        return http_ok(self.health)

    def start(self) -> None:
        if self.healthy():
            say(f"{self.name}: already running")
            return
        if pid_of(self.name) is None:
            with open(self.log, "a") as log:
                log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(self.command)}\n")
                log.flush()
                proc = subprocess.Popen(
                    self.command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **self.env},
                    cwd=str(ROOT),
                    start_new_session=True,
                )
            (RUN / f"{self.name}.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + self.timeout_s
        while not self.healthy():
            if pid_of(self.name) is None:
                raise StackError(f"[{self.name}] exited during start-up (log: {self.log})")
            if time.monotonic() > deadline:
                raise StackError(
                    f"[{self.name}] not healthy after {self.timeout_s:.0f}s (log: {self.log})"
                )
            time.sleep(0.2)
        say(f"{self.name}: healthy ({self.health})")


def url(port_name: str, path: str = "") -> str:
    return f"http://{HOST}:{PORTS[port_name]}{path}"


def base_env() -> dict[str, str]:
    svc = services()
    return {
        "CCT_PG_DSN": svc["postgres"]["dsn"],
        "CCT_VM_URL": svc["victoriametrics"]["url"],
        "CCT_ALERTMANAGER_URL": svc["alertmanager"]["url"],
        "CCT_KAFKA_BOOTSTRAP": svc["kafka"]["bootstrap"],
        "CCT_AWS_ENDPOINT_URL": svc["moto"]["url"],
        # Handlers listen on loopback only in the local stack.
        "CCT_COLLECTOR_HOST": HOST,
        "CCT_BRIDGE_HOST": HOST,
        "CCT_TRIGGER_HOST": HOST,
        "CCT_ADMISSION_HOST": HOST,
    }


# The local backend plays the API server when it asks the webhook (lambdas/trigger/admission.py),
# so it presents the client certificate the API server's AdmissionConfiguration would.
ADMISSION_CLIENT_NAME = "cct-local-apiserver"


@dataclass(frozen=True)
class AdmissionTls:
    ca: Path  # signed the webhook's serving certificate (the caBundle)
    cert: Path
    key: Path
    client_ca: Path  # the only CA whose client certificates the webhook accepts
    client_cert: Path
    client_key: Path


def admission_tls() -> AdmissionTls:
    """Local CAs, a loopback serving certificate for the admission webhook and the API
    server's client certificate (in the cluster the bundle issues them), made once."""
    from lambdas.devstack import certs

    directory = SECRETS / "admission-tls"
    files = AdmissionTls(
        *(
            directory / n
            for n in ("ca.crt", "tls.crt", "tls.key", "client-ca.crt", "client.crt", "client.key")
        )
    )
    if all(Path(f).exists() for f in vars(files).values()):
        return files
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    server_ca, client_ca = certs.ca("cct-local-ca"), certs.ca("cct-local-apiserver-client-ca")
    serving = certs.leaf(server_ca, "cct-admission", sans=["localhost", HOST], usage="server")
    client = certs.leaf(
        client_ca, ADMISSION_CLIENT_NAME, sans=[ADMISSION_CLIENT_NAME], usage="client"
    )
    certs.write_cert(files.cert, serving)
    certs.write_key(files.key, serving)
    certs.write_cert(files.client_cert, client)
    certs.write_key(files.client_key, client)
    certs.write_cert(files.ca, server_ca)
    certs.write_cert(files.client_ca, client_ca)
    return files


def kafka_env(user: str) -> dict[str, str]:
    """The CCT_KAFKA_* identity of one principal of the local broker (scripts/services creates
    a SCRAM user and ACLs per handler from lambdas.common.kafka.HANDLER_GRANTS, and the CA
    that signed the broker's TLS certificate)."""
    from lambdas.common.kafka import local_client_env
    from lambdas.common.settings import SettingsError

    try:
        return local_client_env(services()["kafka"], user)
    except SettingsError as exc:
        raise StackError(f"kafka: {exc}") from exc


def admin_kafka() -> dict[str, Any]:
    """aiokafka keyword arguments for the stack's own tools (topics, status): the broker's
    super user, never a handler's identity."""
    from lambdas.common.kafka import local_auth

    return local_auth(services()["kafka"], "admin").client_kwargs()


def local_playbooks() -> Path:
    """The shipped playbook rules with dry runs off: the local stack acts, on the simulator
    only, so the system test can see a resource change. Everything else is the shipped file."""
    shipped = ROOT / "policies" / "playbooks.yaml"
    doc = yaml.safe_load(shipped.read_text())
    doc["defaults"]["dry_run"] = False
    out = LOCAL / "playbooks.yaml"
    out.write_text(
        "# Generated by `make up` from policies/playbooks.yaml with dry runs off.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    (LOCAL / "playbooks.schema.json").write_text(
        (ROOT / "policies" / "playbooks.schema.json").read_text()
    )
    return out


VAULT_STATE = LOCAL / "vault-dev"
VAULT_CONFIG = VAULT_STATE / "config.json"
STEPS_VAULT_ROLE = "cct-steps"


def vault_config() -> None:
    """The local credential source's access table, written from the bundle's own Vault
    policies (`infra.local_vault`; run as a program: handlers never import the bundle)."""
    VAULT_STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    proc = subprocess.run(
        [sys.executable, "-m", "infra.local_vault", str(VAULT_CONFIG)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise StackError(f"infra.local_vault failed: {proc.stderr[-2000:]}")


def parts() -> list[Part]:
    env = base_env()
    collector_token = secret("collector.token")
    bridge_token = secret("bridge.token")
    zenduty_key = secret("zenduty.key", lambda: secrets.token_hex(16))
    zenduty_url_file = SECRETS / "zenduty.url"
    from lambdas.devstack.zenduty import integration_url

    zenduty_url_file.write_text(integration_url(url("zenduty"), zenduty_key.read_text().strip()))
    zenduty_url_file.chmod(0o600)
    tls = admission_tls()
    step_env = {
        # What a step pod gets: Vault's address, its Kubernetes-auth role and the token file
        # that plays its service-account token; cloud APIs at the simulator.
        "VAULT_ADDR": url("vault"),
        "CCT_STEP_VAULT_K8S_ROLE": STEPS_VAULT_ROLE,
        "CCT_STEP_VAULT_JWT_PATH": str(VAULT_STATE / "jwt" / STEPS_VAULT_ROLE),
        "CCT_STEP_BACKEND": "local",
        "CCT_STEP_OPERATION_TIMEOUT_S": "60",
        **cloud_step_env(),
    }
    result: list[Part] = [
        Part(
            "zenduty",
            [
                str(VENV_BIN / "python"),
                "-m",
                "lambdas.devstack.zenduty",
                "--port",
                str(PORTS["zenduty"]),
                "--key-file",
                str(zenduty_key),
                "--pages-file",
                str(LOCAL / "zenduty" / "pages.jsonl"),
            ],
            url("zenduty", "/healthz"),
            shows={"pages": url("zenduty", "/pages")},
        ),
    ]
    result += [
        Part(
            "vault",
            [CCT, "serve", "vault-dev"],
            url("vault", "/v1/sys/health"),
            env={
                **env,
                "CCT_VAULTDEV_PORT": str(PORTS["vault"]),
                "CCT_VAULTDEV_HOST": HOST,
                "CCT_VAULTDEV_CONFIG": str(VAULT_CONFIG),
                "CCT_VAULTDEV_STATE_DIR": str(VAULT_STATE),
                **cloud_vault_env(),
            },
            shows={"api": url("vault", "/v1/"), "metrics": url("vault", "/metrics")},
        ),
        Part(
            "collector",
            [CCT, "serve", "collector"],
            url("collector", "/readyz"),
            env={
                **env,
                "CCT_COLLECTOR_PORT": str(PORTS["collector"]),
                "CCT_COLLECTOR_TOKEN_FILE": str(collector_token),
                "CCT_COLLECTOR_HEARTBEAT_S": "1",
                "CCT_COLLECTOR_REFRESH_S": "5",
            },
            shows={"ingest": url("collector", "/ingest"), "metrics": url("collector", "/metrics")},
        ),
        Part(
            "bridge",
            [CCT, "serve", "bridge"],
            url("bridge", "/readyz"),
            env={
                **env,
                **kafka_env("bridge"),
                "CCT_BRIDGE_PORT": str(PORTS["bridge"]),
                "CCT_BRIDGE_TOKEN_FILE": str(bridge_token),
                "CCT_BRIDGE_ZENDUTY_URL_FILE": str(zenduty_url_file),
            },
            shows={"metrics": url("bridge", "/metrics")},
        ),
        Part(
            "detector",
            [CCT, "serve", "detector"],
            url("detector", "/readyz"),
            env={
                **env,
                "CCT_DETECTOR_PORT": str(PORTS["detector"]),
                # A fresh local stack has no history worth loading.
                "CCT_DETECTOR_BOOTSTRAP_HOURS": "0",
                **DETECTOR_SCALE,
            },
            shows={"metrics": url("detector", "/metrics")},
        ),
        Part(
            "admission",
            [CCT, "serve", "admission"],
            url("admission-ops", "/readyz"),
            env={
                **env,
                "CCT_POLICY_DIR": str(ROOT / "policies" / "optimization"),
                "CCT_ADMISSION_TLS_CERT": str(tls.cert),
                "CCT_ADMISSION_TLS_KEY": str(tls.key),
                "CCT_ADMISSION_CLIENT_CA": str(tls.client_ca),
                "CCT_ADMISSION_CLIENT_NAMES": ADMISSION_CLIENT_NAME,
                # No workflow controller runs here (workflows run on the local backend).
                "CCT_ADMISSION_CONTROLLER_USERS": "system:serviceaccount:cct-platform:none",
                "CCT_ADMISSION_PORT": str(PORTS["admission"]),
                "CCT_ADMISSION_METRICS_PORT": str(PORTS["admission-ops"]),
            },
            shows={
                "webhook": f"https://{HOST}:{PORTS['admission']}/validate",
                "metrics": url("admission-ops", "/metrics"),
            },
        ),
        Part(
            "trigger",
            [CCT, "serve", "trigger"],
            url("trigger", "/readyz"),
            env={
                **env,
                **step_env,
                **kafka_env("trigger"),
                # Each step runs as the steps' own Kafka user, as a step pod would.
                **{f"{STEP_ENV_PREFIX}{k}": v for k, v in kafka_env("steps").items()},
                "CCT_TRIGGER_PORT": str(PORTS["trigger"]),
                "CCT_TRIGGER_BACKEND": "local",
                "CCT_TRIGGER_STEP_COMMAND": CCT,
                # Workflows run in their own processes, as Argo runs them in pods.
                "CCT_TRIGGER_LOCAL_STATE_DIR": str(LOCAL / "workflows"),
                "CCT_PLAYBOOKS_FILE": str(local_playbooks()),
                "CCT_POLICY_DIR": str(ROOT / "policies" / "optimization"),
                # Where the local backend asks for admission, as the API server would.
                "CCT_TRIGGER_ADMISSION_URL": f"https://{HOST}:{PORTS['admission']}/validate",
                "CCT_TRIGGER_ADMISSION_CA_FILE": str(tls.ca),
                "CCT_TRIGGER_ADMISSION_CERT_FILE": str(tls.client_cert),
                "CCT_TRIGGER_ADMISSION_KEY_FILE": str(tls.client_key),
            },
            shows={"metrics": url("trigger", "/metrics"), "workflows": str(LOCAL / "workflows")},
        ),
    ]
    return result + cloud_parts(collector_token) + [billing_part(env)]


# ---------------------------------------------------------------------- Azure and GCP
# The simulators' own directory: the tenant, the GCP project of Vault's service accounts and
# the service account the steps' roleset mints tokens for (lambdas/devstack/{azure,gcp}_sim.py).
AZURE_TENANT = "7d1c3a52-0c7e-4c1a-9f1e-00000000c0c7"
GCP_PROJECT = "cct-local"
AZURE_DIR = SECRETS / "azure-sim"
GCP_DIR = SECRETS / "gcp-sim"


def _secret_json(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        path.write_text(json.dumps(make(), indent=2) + "\n")
        path.chmod(0o600)
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def cloud_credentials() -> None:
    """The simulators' principals, made once (0600): for Azure a user and Vault's own
    application (client credentials) and the Function's identity header; for GCP a user's
    and Vault's service-account tokens and the service account Vault mints tokens for."""
    import uuid

    def client(role: str) -> dict[str, str]:
        secret_text = secrets.token_urlsafe(32)
        return {"client_id": str(uuid.uuid4()), "client_secret": secret_text, "role": role}

    clients = _secret_json(
        AZURE_DIR / "clients.json",
        lambda: {"user": client("contributor"), "vault": client("graph-admin")},
    )
    for name in ("user", "vault"):
        sign_in = {
            "tenant": AZURE_TENANT,
            "client_id": clients[name]["client_id"],
            "client_secret": clients[name]["client_secret"],
        }
        _secret_json(AZURE_DIR / f"{name}.json", functools.partial(dict, sign_in))
    secret("azure-sim/identity-header")

    def principal(name: str, role: str) -> dict[str, str]:
        email = f"{name}@{GCP_PROJECT}.iam.gserviceaccount.com"
        return {"token": "ya29." + secrets.token_urlsafe(32), "email": email, "role": role}

    gcp = _secret_json(
        GCP_DIR / "clients.json",
        lambda: {
            "principals": {
                "user": principal("local-user", "editor"),
                "vault": principal("vault", "token-creator"),
            },
            "service_accounts": [f"{STEPS_GCP_ROLESET}@{GCP_PROJECT}.iam.gserviceaccount.com"],
        },
    )
    for name in ("user", "vault"):
        token: str = gcp["principals"][name]["token"]
        secret(f"gcp-sim/{name}.token", functools.partial(str, token))


STEPS_GCP_ROLESET = "cct-remediation"


def cloud_step_env() -> dict[str, str]:
    """Where the steps' Azure and GCP calls go: the simulators, with the tenant whose
    token endpoint exchanges the Vault-issued service principal."""
    return {
        "CCT_STEP_AZURE_MANAGEMENT_URL": url("azure"),
        "CCT_STEP_AZURE_LOGIN_URL": url("azure"),
        "CCT_STEP_AZURE_TENANT_ID": AZURE_TENANT,
        "CCT_STEP_GCP_API_URL": url("gcp"),
    }


def cloud_vault_env() -> dict[str, str]:
    """The credential source's Azure and GCP engines make real credentials on the
    simulators (Graph applications; generateAccessToken)."""
    cloud_credentials()
    return {
        "CCT_VAULTDEV_AZURE_URL": url("azure"),
        "CCT_VAULTDEV_AZURE_CREDENTIAL_FILE": str(AZURE_DIR / "vault.json"),
        "CCT_VAULTDEV_GCP_URL": url("gcp"),
        "CCT_VAULTDEV_GCP_CREDENTIAL_FILE": str(GCP_DIR / "vault.token"),
        "CCT_VAULTDEV_GCP_PROJECT": GCP_PROJECT,
    }


def cloud_user_files() -> dict[str, str]:
    """What a local user (and the system test) signs in to the simulators with."""
    return {
        "azure_user_file": str(AZURE_DIR / "user.json"),
        "gcp_user_token_file": str(GCP_DIR / "user.token"),
    }


def cloud_parts(collector_token: Path) -> list[Part]:
    cloud_credentials()
    python = str(VENV_BIN / "python")
    common = ["--collector-url", url("collector", "/ingest"), "--collector-token-file"]
    return [
        Part(
            "azure",
            [
                python,
                "-m",
                "lambdas.devstack.azure_sim",
                "--port",
                str(PORTS["azure"]),
                "--tenant",
                AZURE_TENANT,
                "--clients-file",
                str(AZURE_DIR / "clients.json"),
                "--identity-header-file",
                str(SECRETS / "azure-sim" / "identity-header"),
                *common,
                str(collector_token),
            ],
            url("azure", "/healthz"),
            shows={"arm": url("azure"), "metrics": url("azure", "/metrics")},
        ),
        Part(
            "gcp",
            [
                python,
                "-m",
                "lambdas.devstack.gcp_sim",
                "--port",
                str(PORTS["gcp"]),
                "--clients-file",
                str(GCP_DIR / "clients.json"),
                *common,
                str(collector_token),
            ],
            url("gcp", "/healthz"),
            shows={"api": url("gcp"), "metrics": url("gcp", "/metrics")},
        ),
    ]


BILLING_DROP = LOCAL / "billing" / "drop"
# The CronJob's schedule, shortened: a local user should not wait hours for a reload.
BILLING_INTERVAL_S = 300


def billing_part(env: dict[str, str]) -> Part:
    """The billing CronJob's stand-in: `cct billing load` over a drop directory, on a
    schedule and on demand (lambdas/devstack/billing_drop.py)."""
    return Part(
        "billing",
        [
            str(VENV_BIN / "python"),
            "-m",
            "lambdas.devstack.billing_drop",
            "--port",
            str(PORTS["billing"]),
            "--drop-dir",
            str(BILLING_DROP),
            "--interval-s",
            str(BILLING_INTERVAL_S),
            "--cct",
            CCT,
        ],
        url("billing", "/healthz"),
        env=env,
        shows={"status": url("billing", "/status"), "drop": str(BILLING_DROP)},
    )


def routing_settings() -> AlertRoutingSettings:
    return AlertRoutingSettings(
        bridge_url=url("bridge", "/v1/alerts"),
        zenduty_relay_url=url("bridge", "/v1/relay/zenduty"),
        token_file=str(SECRETS / "bridge.token"),
    )


def configure_alerting() -> None:
    """Alertmanager and vmalert get the configuration the bundle deploys, rendered by the
    same functions (infra/generated.py), pointed at the local bridge."""
    svc = services()
    am_config = Path(svc["alertmanager"]["config"])
    rendered = render_alertmanager_config(routing_settings())
    if not am_config.exists() or am_config.read_text() != rendered:
        am_config.write_text(rendered)
        _post(f"{svc['alertmanager']['url']}/-/reload")
        say(f"alertmanager: configuration rendered to {am_config} and reloaded")
    budgets_file = ROOT / "policies" / "budgets.yaml"
    budgets = load_budgets(budgets_file) if budgets_file.exists() else ()
    rules_dir = Path(svc["vmalert"]["rules_dir"])
    rules = rules_dir / "budgets.yaml"
    rendered_rules = render_vmalert_rules(RulesSettings(budgets=budgets))
    if not rules.exists() or rules.read_text() != rendered_rules:
        rules.write_text(rendered_rules)
        _post(f"{svc['vmalert']['url']}/-/reload")
        say(f"vmalert: budget rules rendered to {rules} and reloaded")


def _post(target: str) -> None:
    req = urllib.request.Request(target, method="POST", data=b"")  # noqa: S310 - loopback
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        if resp.status >= 300:
            raise StackError(f"POST {target} answered {resp.status}")


def create_topics(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    async def create() -> None:
        admin = AIOKafkaAdminClient(**admin_kafka())
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in TOPICS if t not in existing]
            if missing:
                # Another `make up` may have created them meanwhile.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(t, num_partitions=3, replication_factor=1) for t in missing]
                    )
                say(f"kafka: created topics {', '.join(missing)}")
        finally:
            await admin.close()

    asyncio.run(create())


def load_prices(dsn: str) -> None:
    # An upsert: loading again picks up fixture changes and duplicates nothing.
    for provider, files in PRICE_FIXTURES.items():
        paths = [str(PRICE_DIR / f) for f in files]
        _cct("prices", "load", "--provider", provider, *paths, env={"CCT_PG_DSN": dsn})
    say("prices: catalog loaded from tests/ingest/fixtures/prices")


def _cct(*args: str, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [CCT, *args], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise StackError(f"cct {' '.join(args)} failed: {proc.stderr[-2000:]}")


def up() -> int:
    started = time.monotonic()
    for d in (LOGS, RUN):
        d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "services"), "up"], check=False)
    if proc.returncode != 0:
        raise StackError("scripts/services up failed")
    env = base_env()
    _cct("db", "migrate", env={"CCT_PG_DSN": env["CCT_PG_DSN"]})
    say("postgres: schema migrated")
    load_prices(env["CCT_PG_DSN"])
    create_topics(env["CCT_KAFKA_BOOTSTRAP"])
    vault_config()
    stack = parts()
    for part in stack:
        part.start()
    configure_alerting()
    write_stack(stack)
    print_summary(stack, time.monotonic() - started)
    return 0


def write_stack(stack: list[Part]) -> None:
    svc = services()
    doc = {
        "services": svc,
        "parts": {
            p.name: {
                "health": p.health,
                "log": str(p.log),
                "pid_file": str(RUN / f"{p.name}.pid"),
                **p.shows,
            }
            for p in stack
        },
        "secrets": {
            "collector_token_file": str(SECRETS / "collector.token"),
            "bridge_token_file": str(SECRETS / "bridge.token"),
            "admission_ca_file": str(SECRETS / "admission-tls" / "ca.crt"),
            **cloud_user_files(),
        },
        "topics": list(TOPICS),
        "playbooks_file": str(LOCAL / "playbooks.yaml"),
        "detector_thresholds": DETECTOR_SCALE,
    }
    STACK_FILE.write_text(json.dumps(doc, indent=2) + "\n")
    STACK_FILE.chmod(0o600)


def print_summary(stack: list[Part], took: float) -> None:
    svc = services()
    print(f"\nCCT local stack healthy in {took:.1f}s. What runs where:")
    for name, entry in svc.items():
        where = entry.get("url") or entry.get("bootstrap") or f"{HOST}:{entry['port']}"
        print(f"  {name:16} {where:40} log {LOGS / (name + '.log')}")
    for p in stack:
        where = next(iter(p.shows.values()), p.health)
        print(f"  {p.name:16} {where:40} log {p.log}")
    print(f"  pid files in {RUN}; secrets in {SECRETS}; summary in {STACK_FILE}")
    print("Next: `cct status`, `make e2e`, `make down`.")


def down(keep_services: bool = False) -> int:
    names = [p.name for p in reversed(_known_parts())]
    for name in names:
        pid = pid_of(name)
        if pid is None:
            (RUN / f"{name}.pid").unlink(missing_ok=True)
            continue
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pid_of(name) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_of(name) is not None:
            os.killpg(pid, signal.SIGKILL)
        (RUN / f"{name}.pid").unlink(missing_ok=True)
        say(f"{name}: stopped (pid {pid})")
    if not keep_services:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "services"), "down"], check=False)
    return 0


def _known_parts() -> list[Part]:
    """The parts by name only (no secrets made, no files written): what `down` may stop."""
    names = ["zenduty", "vault", "collector", "bridge", "detector", "admission", "trigger"]
    names += ["azure", "gcp", "billing"]
    return [Part(n, [], "") for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/up", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument(
        "--keep-services",
        action="store_true",
        help="down: stop CCT's handlers and stand-ins, leave the shared services running",
    )
    args = parser.parse_args(argv)
    try:
        return up() if args.command == "up" else down(args.keep_services)
    except StackError as exc:
        print(f"up: ERROR {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
