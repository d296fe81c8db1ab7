"""`cct serve vault-dev`: a local stand-in that speaks Vault's HTTP API for exactly the paths
CCT uses, so the handlers and workflow steps run their real hvac code on this machine.

Why a stand-in: no Vault server can be built or installed here (see docs/remediation.md).
What it keeps of Vault: Kubernetes-auth login per role (the role's token file plays the pod's
service-account token), a token with the role's policies (the bundle's own `vault_access`,
written by `python -m infra.local_vault`), per-path capabilities, dynamic PostgreSQL users
made and dropped with the bundle's statements, AWS credentials from the simulator's STS,
leases that expire, renew up to their max TTL and revoke (a revoked token's leases go too).
What it does not do: storage, sealing, audit devices, any other path. Never deploy it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from lambdas.common.edge import BodyTimeout, read_body, timeout_response
from lambdas.common.httpshell import Site, add_ops_routes, serve_until_stopped, signal_stop
from lambdas.common.settings import SettingsError, env_float, env_int, env_str, pg_dsn
from lambdas.vaultdev.core import (
    TOKEN_TTL_S,
    AccessTable,
    Book,
    Lease,
    PermissionDenied,
    VaultDevError,
    parse_duration,
)
from lambdas.vaultdev.engines import (
    AwsStsEngine,
    AzureEngine,
    CloudDirectory,
    Engine,
    GcpTokenEngine,
    PostgresEngine,
)

log = logging.getLogger("cct.vaultdev")
REPO = Path(__file__).resolve().parents[2]
LEASE_TTL_S = 900
LEASE_MAX_TTL_S = 3600
ROOT_ROLE = "root"


@dataclass(frozen=True)
class VaultDevSettings:
    """
    host, port: CCT_VAULTDEV_HOST (127.0.0.1: a stand-in never listens beyond this machine)
        and CCT_VAULTDEV_PORT (18200, Vault's 8200 moved into the local range).
    config_file: CCT_VAULTDEV_CONFIG, the JSON `python -m infra.local_vault` writes: the
        access table (role -> exact paths and capabilities) and the engines' roles.
    state_dir: CCT_VAULTDEV_STATE_DIR (`.local/vault-dev`, relative paths from the repo): the
        per-role login token files `jwt/<role>` (0600), which stand for each pod's
        service-account token, and `jwt/root`, an operator token that may only revoke leases.
    pg_dsn: the PostgreSQL owner's DSN (CCT_PG_DSN / CCT_PG_DSN_FILE), Vault's connection user.
    aws_endpoint_url: CCT_AWS_ENDPOINT_URL, the AWS simulator; unset disables `aws/`.
    lease_ttl_s / lease_max_ttl_s: CCT_VAULTDEV_LEASE_TTL_S (900) and
        CCT_VAULTDEV_LEASE_MAX_TTL_S (3600), the bundle's default and max lease TTLs.
    header_timeout_s / body_timeout_s: CCT_VAULTDEV_HEADER_TIMEOUT_S and
        CCT_VAULTDEV_BODY_TIMEOUT_S (10 s each): a client slower than that to send its headers
        or body has its connection closed (the body with a 408), as on every CCT handler.
    azure / gcp: where the Azure and GCP engines make credentials when the local cloud
        simulators run: CCT_VAULTDEV_AZURE_URL with CCT_VAULTDEV_AZURE_CREDENTIAL_FILE (JSON
        tenant, client_id, client_secret of Vault's own application), CCT_VAULTDEV_GCP_URL
        with CCT_VAULTDEV_GCP_CREDENTIAL_FILE (Vault's service account token) and
        CCT_VAULTDEV_GCP_PROJECT; unset, those engines return opaque values.
    """

    host: str
    port: int
    config_file: Path
    state_dir: Path
    pg_dsn: str = field(repr=False)
    aws_endpoint_url: str | None
    lease_ttl_s: int
    lease_max_ttl_s: int
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    azure: CloudDirectory | None = None
    gcp: CloudDirectory | None = None

    @classmethod
    def from_env(cls) -> VaultDevSettings:
        def path(name: str, default: str) -> Path:
            p = Path(env_str(name, default))
            return p if p.is_absolute() else REPO / p

        ttl = env_int("CCT_VAULTDEV_LEASE_TTL_S", LEASE_TTL_S)
        max_ttl = env_int("CCT_VAULTDEV_LEASE_MAX_TTL_S", LEASE_MAX_TTL_S)
        if not 0 < ttl <= max_ttl:
            raise SettingsError(
                "CCT_VAULTDEV_LEASE_TTL_S must be positive and at most CCT_VAULTDEV_LEASE_MAX_TTL_S"
            )
        return cls(
            host=env_str("CCT_VAULTDEV_HOST", "127.0.0.1"),
            port=env_int("CCT_VAULTDEV_PORT", 18200),
            config_file=path("CCT_VAULTDEV_CONFIG", ".local/vault-dev/config.json"),
            state_dir=path("CCT_VAULTDEV_STATE_DIR", ".local/vault-dev"),
            pg_dsn=pg_dsn(),
            aws_endpoint_url=os.environ.get("CCT_AWS_ENDPOINT_URL") or None,
            lease_ttl_s=ttl,
            lease_max_ttl_s=max_ttl,
            header_timeout_s=env_float("CCT_VAULTDEV_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=env_float("CCT_VAULTDEV_BODY_TIMEOUT_S", 10.0),
            # Each variable by its full name, so `cct settings` lists it.
            azure=_directory(
                "AZURE",
                os.environ.get("CCT_VAULTDEV_AZURE_URL", ""),
                os.environ.get("CCT_VAULTDEV_AZURE_CREDENTIAL_FILE", ""),
                "",
            ),
            gcp=_directory(
                "GCP",
                os.environ.get("CCT_VAULTDEV_GCP_URL", ""),
                os.environ.get("CCT_VAULTDEV_GCP_CREDENTIAL_FILE", ""),
                os.environ.get("CCT_VAULTDEV_GCP_PROJECT", ""),
            ),
        )


def _directory(cloud: str, url: str, credential: str, project: str) -> CloudDirectory | None:
    if not url:
        return None
    if not Path(credential).is_file():
        name = f"CCT_VAULTDEV_{cloud}_CREDENTIAL_FILE"
        raise SettingsError(f"{name}={credential!r}: not a file (needed with {cloud} URL)")
    return CloudDirectory(url.rstrip("/"), credential, project)


@dataclass(frozen=True)
class Config:
    access: AccessTable
    database_roles: dict[str, str]
    aws_roles: dict[str, str]
    azure_roles: frozenset[str]
    gcp_rolesets: frozenset[str]

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise SettingsError(f"CCT_VAULTDEV_CONFIG={str(path)!r}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise SettingsError(f"CCT_VAULTDEV_CONFIG={str(path)!r}: not JSON: {exc}") from None
        try:
            return cls(
                access=AccessTable.from_json(data["access"]),
                database_roles=dict(data.get("database_roles", {})),
                aws_roles=dict(data.get("aws_roles", {})),
                azure_roles=frozenset(data.get("azure_roles", [])),
                gcp_rolesets=frozenset(data.get("gcp_rolesets", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SettingsError(f"CCT_VAULTDEV_CONFIG={str(path)!r}: {exc}") from None


def write_login_tokens(state_dir: Path, roles: list[str]) -> dict[str, str]:
    """One login token per role in `state_dir/jwt/<role>` (0600), kept across restarts so
    running handlers can log in again; returns role -> digest of its token."""
    directory = state_dir / "jwt"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    digests = {}
    for role in roles:
        file = directory / role
        if not file.exists():
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"vault-dev.{role}.{secrets.token_urlsafe(32)}\n")
        digests[role] = _digest(file.read_text().strip())
    return digests


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cct_vaultdev_requests",
            "Requests by endpoint kind and status.",
            ["kind", "status"],
            registry=self.registry,
        )
        self.leases = Counter(
            "cct_vaultdev_leases",
            "Lease events by engine and event (issued, renewed, revoked, expired).",
            ["engine", "event"],
            registry=self.registry,
        )


Handler = Callable[[web.Request, str, dict[str, Any]], Awaitable[web.Response]]


class VaultDev:
    def __init__(
        self,
        settings: VaultDevSettings,
        config: Config,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.config = config
        self.clock = clock
        self.book = Book()
        self.metrics = Metrics()
        self.login_digests = write_login_tokens(settings.state_dir, sorted(config.access.roles))
        # An operator token, as `vault server -dev` prints one: for revoking by hand and for
        # tests; kept in a 0600 file, never logged.
        self.root_digest = write_login_tokens(settings.state_dir, [ROOT_ROLE])[ROOT_ROLE]
        self.engines: dict[str, Engine] = {}
        if config.database_roles:
            self.engines["database"] = PostgresEngine(settings.pg_dsn, config.database_roles)
        if config.aws_roles and settings.aws_endpoint_url:
            self.engines["aws"] = AwsStsEngine(settings.aws_endpoint_url, config.aws_roles)
        if config.azure_roles:
            self.engines["azure"] = AzureEngine(config.azure_roles, settings.azure)
        self.gcp = GcpTokenEngine(config.gcp_rolesets, settings.gcp)

    # --- responses -------------------------------------------------------------------
    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"errors": [message]}, status=status)

    @staticmethod
    def _secret(data: dict[str, Any], lease: Lease | None = None) -> web.Response:
        return web.json_response(
            {
                "request_id": str(uuid.uuid4()),
                "lease_id": lease.lease_id if lease else "",
                "renewable": lease.renewable if lease else False,
                "lease_duration": lease.ttl if lease else 0,
                "data": data,
                "wrap_info": None,
                "warnings": None,
                "auth": None,
            }
        )

    # --- request entry ---------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.Response:
        path = request.match_info["path"].strip("/")
        kind = path.split("/", 1)[0] or "root"
        try:
            response = await self._route(request, path)
        except BodyTimeout as exc:
            response = timeout_response({"errors": [str(exc)]})
        except VaultDevError as exc:
            response = self._error(exc.status, str(exc))
        except LookupError as exc:
            response = self._error(400, str(exc))
        self.metrics.requests.labels(kind, str(response.status)).inc()
        if response.status >= 400:
            log.info(
                "vault-dev refused",
                extra={"path": path, "method": request.method, "status": response.status},
            )
        return response

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            raw = await read_body(request, self.settings.body_timeout_s)
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise VaultDevError(400, "failed to parse JSON input") from None
        if not isinstance(body, dict):
            raise VaultDevError(400, "JSON input must be an object")
        return body

    # One branch per Vault path CCT uses reads as the routing table it is.
    async def _route(self, request: web.Request, path: str) -> web.Response:  # noqa: PLR0911
        method = request.method
        if path == "sys/health":
            return web.json_response(
                {"initialized": True, "sealed": False, "standby": False, "version": "vault-dev"}
            )
        body = await self._body(request)
        if path == "auth/kubernetes/login" and method in {"POST", "PUT"}:
            return self._login(body)
        now = self.clock()
        header = request.headers.get("X-Vault-Token", "")
        if not header:
            raise VaultDevError(403, "missing client token")
        digest = _digest(header)
        if secrets.compare_digest(digest, self.root_digest):
            return await self._root(path, body, now)
        token = self.book.token(digest, now)
        if not self.config.access.allows(token.role, path, method):
            raise PermissionDenied
        if path == "auth/token/lookup-self":
            return self._secret(
                {
                    "accessor": token.accessor,
                    "policies": [f"cct-{token.role}"],
                    "ttl": int(token.expires_at - now),
                    "meta": {"role": token.role},
                }
            )
        if path == "auth/token/renew-self":
            renewed = self.book.renew_token(digest, now)
            return web.json_response(
                {"auth": self._auth(header, token.role, renewed.accessor, renewed.expires_at - now)}
            )
        if path == "auth/token/revoke-self":
            self.book.revoke_token(digest)
            for lease in self.book.leases_of(token.accessor):
                await self._revoke(lease, "revoked")
            return web.Response(status=204)
        if path == "sys/leases/renew":
            return await self._renew(body, token.accessor, now)
        if path == "sys/leases/revoke":
            lease = self.book.owned_lease(str(body.get("lease_id", "")), token.accessor, now)
            await self._revoke(lease, "revoked")
            return web.Response(status=204)
        return await self._read_secret(path, method, body, token.accessor, now)

    async def _root(self, path: str, body: dict[str, Any], now: float) -> web.Response:
        """The operator may revoke any lease; it obtains no credentials itself."""
        if path != "sys/leases/revoke":
            raise PermissionDenied
        lease = self.book.leases.get(str(body.get("lease_id", "")))
        if lease is None:
            raise VaultDevError(400, "lease not found")
        await self._revoke(lease, "revoked")
        return web.Response(status=204)

    def _auth(self, client_token: str, role: str, accessor: str, ttl: float) -> dict[str, Any]:
        return {
            "client_token": client_token,
            "accessor": accessor,
            "policies": [f"cct-{role}"],
            "token_policies": [f"cct-{role}"],
            "metadata": {"role": role, "service_account_name": role},
            "lease_duration": int(ttl),
            "renewable": True,
        }

    def _login(self, body: dict[str, Any]) -> web.Response:
        role, jwt = body.get("role"), body.get("jwt")
        if not isinstance(role, str) or not isinstance(jwt, str) or not role or not jwt:
            raise VaultDevError(400, "missing role or jwt")
        expected = self.login_digests.get(role)
        # Unknown role and wrong token get the same answer, compared in constant time.
        if expected is None or not secrets.compare_digest(expected, _digest(jwt.strip())):
            raise PermissionDenied
        client_token = "hvs.dev" + secrets.token_urlsafe(32)
        token = self.book.issue_token(_digest(client_token), role, self.clock())
        log.info("vault-dev login", extra={"role": role, "accessor": token.accessor})
        return web.json_response(
            {"auth": self._auth(client_token, role, token.accessor, TOKEN_TTL_S), "data": None}
        )

    async def _read_secret(
        self, path: str, method: str, body: dict[str, Any], owner: str, now: float
    ) -> web.Response:
        parts = path.split("/")
        if len(parts) != 3:
            raise VaultDevError(404, f"no handler for route {path!r}")
        mount, kind, role = parts
        if mount == "gcp" and kind == "token" and method == "GET":
            token = await asyncio.to_thread(self.gcp.token, role, self.settings.lease_ttl_s)
            return self._secret(token)
        engine_kind = {("database", "creds"), ("aws", "sts"), ("azure", "creds")}
        if (mount, kind) not in engine_kind or mount not in self.engines:
            raise VaultDevError(404, f"no handler for route {path!r}")
        engine = self.engines[mount]
        ttl = parse_duration(body.get("ttl"), self.settings.lease_ttl_s)
        ttl = min(ttl, self.settings.lease_max_ttl_s)
        handle, data = await asyncio.to_thread(engine.issue, role, ttl)
        lease = self.book.add_lease(
            path=path,
            owner=owner,
            engine=mount,
            handle=f"{role}\n{handle}",
            ttl=ttl,
            max_ttl=self.settings.lease_max_ttl_s,
            renewable=mount != "aws",
            now=now,
        )
        self.metrics.leases.labels(mount, "issued").inc()
        log.info("vault-dev lease issued", extra={"lease_id": lease.lease_id})
        return self._secret(data, lease)

    async def _renew(self, body: dict[str, Any], owner: str, now: float) -> web.Response:
        lease_id = str(body.get("lease_id", ""))
        increment = body.get("increment")
        seconds = parse_duration(increment, 0) if increment not in (None, "", 0) else None
        lease = self.book.renew_lease(lease_id, owner, seconds, now)
        role, _, handle = lease.handle.partition("\n")
        await asyncio.to_thread(self.engines[lease.engine].renew, role, handle, lease.expires_at)
        self.metrics.leases.labels(lease.engine, "renewed").inc()
        return web.json_response(
            {
                "lease_id": lease.lease_id,
                "renewable": True,
                "lease_duration": int(lease.expires_at - now),
            }
        )

    async def _revoke(self, lease: Lease, event: str) -> None:
        self.book.pop_lease(lease.lease_id)
        role, _, handle = lease.handle.partition("\n")
        await asyncio.to_thread(self.engines[lease.engine].revoke, role, handle)
        self.metrics.leases.labels(lease.engine, event).inc()
        log.info(f"vault-dev lease {event}", extra={"lease_id": lease.lease_id})

    async def expire_once(self) -> int:
        expired = self.book.expired(self.clock())
        for lease in expired:
            try:
                await self._revoke(lease, "expired")
            except Exception as exc:
                # Put it back: the next sweep tries again rather than forgetting a live user.
                self.book.leases[lease.lease_id] = lease
                log.warning(
                    "vault-dev revoke failed",
                    extra={"lease_id": lease.lease_id, "error": type(exc).__name__},
                )
        return len(expired)

    async def _sweeper(self, app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(1.0)
                await self.expire_once()

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    def app(self) -> web.Application:
        # Every request CCT makes is a few hundred bytes.
        app = web.Application(client_max_size=64 * 1024)
        app.cleanup_ctx.append(self._sweeper)
        add_ops_routes(app, self.metrics.registry)
        app.router.add_route("*", "/v1/{path:.*}", self.dispatch)
        return app


def serve() -> None:
    """`cct serve vault-dev`."""
    try:
        settings = VaultDevSettings.from_env()
        config = Config.load(settings.config_file)
    except SettingsError as exc:
        raise SystemExit(f"cct serve vault-dev: {exc}") from None
    server = VaultDev(settings, config)
    log.info(
        "vault-dev starting (a local stand-in for Vault; never deploy it)",
        extra={"settings": repr(settings), "roles": sorted(config.access.roles)},
    )
    site = Site(server.app(), settings.host, settings.port, None, settings.header_timeout_s)

    async def main() -> None:
        await serve_until_stopped([site], signal_stop())

    asyncio.run(main())
