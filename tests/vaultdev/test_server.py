"""`cct serve vault-dev` as a process, driven by hvac exactly as the handlers and the steps
drive Vault, against the real PostgreSQL (users really created, renewed and dropped) and the
AWS simulator (credentials that really act on it)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import hvac
import hvac.exceptions
import psycopg
import pytest

from infra.local_vault import render
from lambdas.common.pg import DsnSource
from lambdas.steps.credentials import vault_credentials
from lambdas.steps.errors import AccessDenied
from lambdas.steps.settings import StepSettings
from lambdas.store.grants import apply_grants
from tests.support.procs import free_port, http_ready, running

pytestmark = pytest.mark.services
CCT = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cct")


@dataclasses.dataclass
class Stand:
    url: str
    state: Path
    log: Path

    def jwt(self, role: str) -> str:
        return (self.state / "jwt" / role).read_text().strip()

    def client(self, role: str) -> hvac.Client:
        client = hvac.Client(url=self.url)
        client.auth.kubernetes.login(role=role, jwt=self.jwt(role))
        return client


def _start(tmp_path: Path, pg_dsn: str, moto_url: str, **extra: str) -> Iterator[Stand]:
    config = tmp_path / "vault-dev.json"
    config.write_text(json.dumps(render()))
    port = free_port()
    state = tmp_path / "state"
    log = tmp_path / "vault-dev.log"
    env = {
        "CCT_PG_DSN": pg_dsn,
        "CCT_AWS_ENDPOINT_URL": moto_url,
        "CCT_VAULTDEV_PORT": str(port),
        "CCT_VAULTDEV_CONFIG": str(config),
        "CCT_VAULTDEV_STATE_DIR": str(state),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        **extra,
    }
    url = f"http://127.0.0.1:{port}"
    with running([CCT, "serve", "vault-dev"], http_ready(f"{url}/v1/sys/health"), log, env=env):
        yield Stand(url, state, log)


@pytest.fixture
def granted_dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_grants(conn)
    return pg_dsn


@pytest.fixture
def stand(tmp_path: Path, granted_dsn: str, moto_url: str) -> Iterator[Stand]:
    yield from _start(tmp_path, granted_dsn, moto_url)


def _user_exists(dsn: str, user: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select 1 from pg_roles where rolname = %s", (user,)).fetchone()
    return row is not None


def _login_dsn(dsn: str, creds: dict[str, Any]) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.update(user=creds["username"], password=creds["password"])
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def test_health_and_token_files_are_private(stand: Stand) -> None:
    assert hvac.Client(url=stand.url).sys.read_health_status(method="GET")["sealed"] is False
    for file in (stand.state / "jwt").iterdir():
        assert file.stat().st_mode & 0o777 == 0o600


def test_database_credentials_live_renew_and_revoke(stand: Stand, granted_dsn: str) -> None:
    client = stand.client("collector")
    secret = client.secrets.database.generate_credentials("cct-collector")
    creds, lease_id = secret["data"], secret["lease_id"]
    assert secret["renewable"] is True and secret["lease_duration"] == 900
    # The user is real, logs in, and holds exactly the collector's group privileges.
    with psycopg.connect(_login_dsn(granted_dsn, creds)) as conn:
        conn.execute("select count(*) from resource_inventory").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from policy_decisions").fetchone()
    before = _valid_until(granted_dsn, creds["username"])
    renewed = client.sys.renew_lease(lease_id=lease_id, increment=1800)
    assert renewed["lease_duration"] > 900
    assert _valid_until(granted_dsn, creds["username"]) > before
    # Revocation drops the user and ends its open sessions.
    # The handler's own policy cannot revoke (the bundle grants it no such path).
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.revoke_lease(lease_id=lease_id)
    operator = hvac.Client(url=stand.url, token=stand.jwt("root"))
    held = psycopg.connect(_login_dsn(granted_dsn, creds), autocommit=True)
    try:
        operator.sys.revoke_lease(lease_id=lease_id)
        assert not _user_exists(granted_dsn, creds["username"])
        with pytest.raises(psycopg.OperationalError):
            held.execute("select 1")
    finally:
        held.close()


def _valid_until(dsn: str, user: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select rolvaliduntil from pg_roles where rolname = %s", (user,))
        return row.fetchone()[0]  # type: ignore[index]


def test_a_role_reads_only_its_own_paths(stand: Stand) -> None:
    collector = stand.client("collector")
    with pytest.raises(hvac.exceptions.Forbidden):
        collector.secrets.database.generate_credentials("cct-trigger")
    with pytest.raises(hvac.exceptions.Forbidden):
        collector.secrets.aws.generate_credentials(name="cct-remediation", endpoint="sts")
    steps = stand.client("cct-steps")
    with pytest.raises(hvac.exceptions.Forbidden):
        steps.secrets.database.generate_credentials("cct-collector")
    # One token cannot end another's lease.
    lease = collector.secrets.database.generate_credentials("cct-collector")["lease_id"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        steps.sys.revoke_lease(lease_id=lease)


@pytest.mark.parametrize(
    ("role", "jwt"),
    [
        ("collector", "forged"),
        ("collector", ""),
        ("no-such-role", "x"),
        ("bridge", "x"),
    ],
)
def test_forged_logins_and_tokens_are_refused(stand: Stand, role: str, jwt: str) -> None:
    client = hvac.Client(url=stand.url)
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
        client.auth.kubernetes.login(role=role, jwt=jwt)
    forged = hvac.Client(url=stand.url, token="hvs.devforged")
    with pytest.raises(hvac.exceptions.Forbidden):
        forged.secrets.database.generate_credentials("cct-collector")
    # Another role's login token does not log in as this role.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.kubernetes.login(role="collector", jwt=stand.jwt("detector"))


def test_a_revoked_token_takes_its_leases_with_it(stand: Stand, granted_dsn: str) -> None:
    steps = stand.client("cct-steps")
    collector = stand.client("collector")
    user = collector.secrets.database.generate_credentials("cct-collector")["data"]["username"]
    steps.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        steps.secrets.aws.generate_credentials(name="cct-remediation", endpoint="sts")
    assert _user_exists(granted_dsn, user)  # another token's lease is untouched


def test_leases_expire_and_their_users_are_dropped(
    tmp_path: Path, granted_dsn: str, moto_url: str
) -> None:
    for stand in _start(
        tmp_path,
        granted_dsn,
        moto_url,
        CCT_VAULTDEV_LEASE_TTL_S="2",
        CCT_VAULTDEV_LEASE_MAX_TTL_S="3",
    ):
        client = stand.client("detector")
        user = client.secrets.database.generate_credentials("cct-detector")["data"]["username"]
        assert _user_exists(granted_dsn, user)
        deadline = time.monotonic() + 15
        while _user_exists(granted_dsn, user) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _user_exists(granted_dsn, user)
        assert "expired" in stand.log.read_text()


def test_a_step_gets_short_lived_aws_credentials_and_acts_on_the_simulator(
    stand: Stand, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steps' own credential code (hvac, Kubernetes auth, lease and token revoked at the
    end) against the stand-in; the credentials then stop a real instance in the simulator."""
    ec2 = boto3.client(
        "ec2",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m5.large")[
        "Instances"
    ][0]["InstanceId"]
    settings = dataclasses.replace(
        StepSettings.from_env(),
        vault_addr=stand.url,
        vault_jwt_path=str(stand.state / "jwt" / "cct-steps"),
        vault_k8s_role="cct-steps",
    )
    with vault_credentials("aws", settings) as creds:
        assert set(creds.values) == {
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        }
        assert creds.values["aws_secret_access_key"] not in repr(creds)
        session = boto3.session.Session(
            region_name="us-east-1",
            aws_access_key_id=creds.values["aws_access_key_id"],
            aws_secret_access_key=creds.values["aws_secret_access_key"],
            aws_session_token=creds.values["aws_session_token"],
        )
        session.client("ec2", endpoint_url=moto_url).stop_instances(InstanceIds=[instance])
    state = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] in {"stopping", "stopped"}
    log = stand.log.read_text()
    assert creds.values["aws_secret_access_key"] not in log
    wrong_role = dataclasses.replace(
        settings,
        vault_k8s_role="collector",
        vault_jwt_path=str(stand.state / "jwt" / "collector"),
    )
    with pytest.raises(AccessDenied), vault_credentials("azure", wrong_role):
        raise AssertionError("a handler's role was issued the steps' Azure credentials")


def test_local_agent_renders_a_handler_dsn_the_handler_can_use(
    stand: Stand, granted_dsn: str, tmp_path: Path
) -> None:
    """`cct vault-dsn` plays the Vault Agent sidecar: the collector's DSN file holds a fresh
    user of its own group role, written 0600, read the way handlers read `CCT_PG_DSN_FILE`."""
    info = psycopg.conninfo.conninfo_to_dict(granted_dsn)
    out = tmp_path / "creds" / "pg-dsn"
    flags = {
        "--addr": stand.url,
        "--handler": "collector",
        "--jwt-path": str(stand.state / "jwt" / "collector"),
        "--out": str(out),
        "--pg-host": str(info["host"]),
        "--pg-port": str(info["port"]),
        "--dbname": str(info["dbname"]),
    }
    subprocess.run(
        [CCT, "vault-dsn", "--once", *(part for kv in flags.items() for part in kv)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert out.stat().st_mode & 0o777 == 0o600
    dsn = DsnSource(path=out).read()
    user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    assert user != "cct" and _user_exists(granted_dsn, str(user))
    with psycopg.connect(dsn) as conn:
        conn.execute("select count(*) from resource_inventory").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from policy_decisions").fetchone()
    # The password is in the file only, never in the command's output.
    password = str(psycopg.conninfo.conninfo_to_dict(dsn)["password"])
    assert password not in stand.log.read_text()
