"""`cct vault-dsn`: what the Vault Agent sidecar does for a handler, done locally with hvac.

In the cluster Vault Agent logs in with the pod's service-account token, reads
`database/creds/cct-<handler>`, renders the DSN file the handler reads (`CCT_PG_DSN_FILE`),
renews the lease and renders the next user before the old one ends. Locally no sidecar runs,
so this command does the same against any Vault-speaking server (normally
`cct serve vault-dev`), with the same kubernetes-auth login the steps use. The handler then
runs unchanged with `CCT_PG_DSN_FILE` pointing at the file. The DSN's password never reaches
a log; the file is written 0600 and replaced atomically so a reader never sees half of it.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

import click
import hvac
import hvac.exceptions

log = logging.getLogger("cct.vaultdev.agent")


def render_dsn(creds: dict[str, Any], host: str, port: int, dbname: str, sslmode: str) -> str:
    """The same URI shape as the bundle's Vault Agent template (`pg_dsn_template`): username
    and password URL-escaped so any generated character is safe."""
    user = urllib.parse.quote(str(creds["username"]), safe="")
    password = urllib.parse.quote(str(creds["password"]), safe="")
    return f"postgresql://{user}:{password}@{host}:{port}/{dbname}?sslmode={sslmode}\n"


def write_private(path: Path, text: str) -> None:
    """Write 0600 and rename into place, as Vault Agent's template sink does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def login(addr: str, role: str, jwt_path: Path, mount: str = "kubernetes") -> hvac.Client:
    client = hvac.Client(url=addr)
    client.auth.kubernetes.login(role=role, jwt=jwt_path.read_text().strip(), mount_point=mount)
    return client


def issue(client: hvac.Client, db_role: str, out: Path, where: tuple[str, int, str, str]) -> Any:
    """Read fresh credentials, render them into `out`; returns the secret (lease id etc.)."""
    secret = client.secrets.database.generate_credentials(db_role)
    write_private(out, render_dsn(secret["data"], *where))
    log.info(
        "DSN rendered",
        extra={"file": str(out), "lease_duration": secret["lease_duration"]},
    )
    return secret


@click.command("vault-dsn")
@click.option("--addr", envvar="VAULT_ADDR", default="http://127.0.0.1:18200", show_default=True)
@click.option("--handler", required=True, help="collector, detector, trigger, admission, ...")
@click.option("--jwt-path", type=click.Path(path_type=Path), required=True, help="login token")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="DSN file to write")
@click.option("--pg-host", default="127.0.0.1", show_default=True)
@click.option("--pg-port", default=55432, show_default=True, type=int)
@click.option("--dbname", default="cct", show_default=True)
@click.option("--sslmode", default="disable", show_default=True)
@click.option("--once", is_flag=True, help="render one DSN and exit (no renewal loop)")
def vault_dsn(
    *,
    addr: str,
    handler: str,
    jwt_path: Path,
    out: Path,
    pg_host: str,
    pg_port: int,
    dbname: str,
    sslmode: str,
    once: bool,
) -> None:
    """Render a handler's PostgreSQL DSN from Vault and keep it current (local Vault Agent)."""
    logging.basicConfig(level=logging.INFO)
    role = f"cct-{handler}"
    where = (pg_host, pg_port, dbname, sslmode)
    client = login(addr, handler, jwt_path)
    secret = issue(client, role, out, where)
    while not once:
        # Renew at two thirds of the lease; once Vault stops extending it (max TTL), render
        # the next user first and let the old lease run out, as Vault Agent does.
        time.sleep(max(1.0, secret["lease_duration"] * 2 / 3))
        try:
            client.auth.token.renew_self()
            renewed = client.sys.renew_lease(lease_id=secret["lease_id"])
            if renewed["lease_duration"] < secret["lease_duration"]:
                secret = issue(client, role, out, where)
        except hvac.exceptions.VaultError as exc:
            log.warning("renewal failed, logging in again", extra={"error": type(exc).__name__})
            client = login(addr, handler, jwt_path)
            secret = issue(client, role, out, where)
