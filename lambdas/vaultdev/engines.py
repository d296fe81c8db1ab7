"""The secrets engines of the local Vault stand-in, each doing for real what Vault's does
where this machine can: PostgreSQL users created and dropped with the bundle's own statements;
AWS credentials from the cloud simulator's STS; Azure and GCP in their engines' documented
response shapes (no Azure AD or Google IAM runs here, so those values are opaque and only the
local simulators accept them)."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from lambdas.store.grants import vault_role_statements


class Engine(Protocol):
    name: str

    def issue(self, role: str, ttl: int) -> tuple[str, dict[str, Any]]:
        """Create one credential; returns (revocation handle, the response's `data`)."""
        ...

    def renew(self, role: str, handle: str, expires_at: float) -> None: ...

    def revoke(self, role: str, handle: str) -> None: ...


def _password() -> str:
    # Vault's default password policy: 20 characters, letters and digits, and a dash.
    alphabet = string.ascii_letters + string.digits
    return "A1a-" + "".join(secrets.choice(alphabet) for _ in range(16))


def _pg_time(epoch: float) -> str:
    # The format Vault renders {{expiration}} in.
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S+0000")


@dataclass
class PostgresEngine:
    """Vault's database engine with the PostgreSQL plugin: `roles` maps a Vault database
    role to the group role its users join (the bundle's `database_roles`)."""

    admin_dsn: str
    roles: dict[str, str]
    name: str = "database"

    def _run(self, statements: list[str], values: dict[str, str]) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn, conn.transaction():
            for template in statements:
                # Textual substitution, as Vault does; the values are generated here from a
                # safe alphabet (letters, digits, dashes), never taken from a caller.
                rendered = template
                for key, value in values.items():
                    rendered = rendered.replace("{{" + key + "}}", value)
                conn.execute(rendered.encode())

    def _grant_role(self, role: str) -> str:
        try:
            return self.roles[role]
        except KeyError:
            raise LookupError(f"unknown database role {role!r}") from None

    def issue(self, role: str, ttl: int) -> tuple[str, dict[str, Any]]:
        creation, _ = vault_role_statements(self._grant_role(role))
        # Vault's username template for PostgreSQL: v-<auth>-<role>-<random>-<time>, at most
        # 63 bytes; only letters, digits and dashes, so the statements' quoting is safe.
        user = f"v-dev-{role[:24]}-{secrets.token_hex(6)}-{int(datetime.now(UTC).timestamp())}"
        password = _password()
        expires = datetime.now(UTC).timestamp() + ttl
        self._run(creation, {"name": user, "password": password, "expiration": _pg_time(expires)})
        return user, {"username": user, "password": password}

    def renew(self, role: str, handle: str, expires_at: float) -> None:
        # Vault's default renew statement for PostgreSQL.
        self._run(
            ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';"],
            {"name": handle, "expiration": _pg_time(expires_at)},
        )

    def revoke(self, role: str, handle: str) -> None:
        _, revocation = vault_role_statements(self._grant_role(role))
        # Open sessions of the user end first, as Vault's default PostgreSQL revocation does,
        # so a revoked credential cannot keep working through a pooled connection.
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                (handle,),
            )
        self._run(revocation, {"name": handle})


@dataclass
class AwsStsEngine:
    """Vault's AWS engine with `credential_type = assumed_role`: `aws/sts/<role>` assumes the
    role's IAM role through STS. `roles` maps a Vault role to the IAM role ARN (the simulator
    creates the roles; `make up` does it)."""

    endpoint_url: str
    roles: dict[str, str]
    region: str = "us-east-1"
    name: str = "aws"

    def issue(self, role: str, ttl: int) -> tuple[str, dict[str, Any]]:
        import boto3

        try:
            arn = self.roles[role]
        except KeyError:
            raise LookupError(f"unknown AWS role {role!r}") from None
        sts = boto3.client(
            "sts",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="vault-dev",
            aws_secret_access_key="vault-dev",  # noqa: S106 - the simulator's own identity
        )
        creds = sts.assume_role(
            RoleArn=arn,
            RoleSessionName=f"vault-dev-{secrets.token_hex(4)}",
            DurationSeconds=max(900, min(ttl, 43200)),
        )["Credentials"]
        return creds["AccessKeyId"], {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "session_token": creds["SessionToken"],
            "arn": arn,
        }

    def renew(self, role: str, handle: str, expires_at: float) -> None:
        raise LookupError("STS credentials are not renewable")

    def revoke(self, role: str, handle: str) -> None:
        # Vault cannot revoke STS credentials either; they expire on their own.
        return None


def _post_json(url: str, body: Any, headers: dict[str, str], form: bool = False) -> Any:
    import json
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
    ctype = "application/x-www-form-urlencoded" if form else "application/json"
    req = urllib.request.Request(  # noqa: S310 - the configured cloud simulator
        url, data=data, headers={**headers, "Content-Type": ctype}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - configured URL
        raw = resp.read()
    return json.loads(raw) if raw else {}


@dataclass(frozen=True)
class CloudDirectory:
    """Where an Azure or GCP engine makes its credentials, when a cloud simulator runs:
    `url` (Azure: the tenant's login and Microsoft Graph host; GCP: the IAM Credentials
    host) and Vault's own credential there (`credential_file`: Azure, JSON
    {tenant, client_id, client_secret} of Vault's application; GCP, Vault's service
    account's access token), plus the GCP project whose service accounts the rolesets use."""

    url: str
    credential_file: str
    project: str = ""

    def credential(self) -> str:
        from pathlib import Path

        return Path(self.credential_file).read_text().strip()


@dataclass
class AzureEngine:
    """`azure/creds/<role>`: a service principal's client id and secret. With a directory
    (the local Azure simulator) the application is created per lease through Microsoft
    Graph and deleted on revoke, as Vault's Azure engine does; without one the values are
    opaque."""

    roles: frozenset[str]
    directory: CloudDirectory | None = None
    name: str = "azure"

    def _graph(self, method: str, path: str, body: Any = None) -> Any:
        import json
        import urllib.request

        assert self.directory is not None
        own = json.loads(self.directory.credential())
        token = _post_json(
            f"{self.directory.url}/{own['tenant']}/oauth2/v2.0/token",
            {
                "grant_type": "client_credentials",
                "client_id": own["client_id"],
                "client_secret": own["client_secret"],
                "scope": "https://graph.microsoft.com/.default",
            },
            {},
            form=True,
        )["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        if method == "POST":
            return _post_json(f"{self.directory.url}{path}", body, headers)
        req = urllib.request.Request(  # noqa: S310 - the configured cloud simulator
            f"{self.directory.url}{path}", headers=headers, method=method
        )
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - configured URL
            return None

    def issue(self, role: str, ttl: int) -> tuple[str, dict[str, Any]]:
        if role not in self.roles:
            raise LookupError(f"unknown Azure role {role!r}")
        if self.directory is not None:
            app = self._graph("POST", "/v1.0/applications", {"displayName": f"vault-{role}"})
            cred = self._graph(
                "POST",
                f"/v1.0/applications/{app['id']}/addPassword",
                {"passwordCredential": {"displayName": f"vault-{role}"}},
            )
            return app["id"], {"client_id": app["appId"], "client_secret": cred["secretText"]}
        client_id = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-4{secrets.token_hex(2)[1:]}"
        client_id += f"-a{secrets.token_hex(2)[1:]}-{secrets.token_hex(6)}"
        return client_id, {"client_id": client_id, "client_secret": secrets.token_urlsafe(30)}

    def renew(self, role: str, handle: str, expires_at: float) -> None:
        return None

    def revoke(self, role: str, handle: str) -> None:
        if self.directory is not None:
            self._graph("DELETE", f"/v1.0/applications/{handle}")


@dataclass
class GcpTokenEngine:
    """`gcp/token/<roleset>`: an OAuth2 access token of the roleset's service account; not
    leased (Vault cannot revoke Google access tokens). With a directory (the local GCP
    simulator) the token is minted by IAM Credentials' generateAccessToken for
    `<roleset>@<project>.iam.gserviceaccount.com`; without one it is opaque."""

    rolesets: frozenset[str]
    directory: CloudDirectory | None = None
    name: str = "gcp"

    def token(self, roleset: str, ttl: int) -> dict[str, Any]:
        if roleset not in self.rolesets:
            raise LookupError(f"unknown GCP roleset {roleset!r}")
        ttl = min(ttl, 3600)
        expires = int(datetime.now(UTC).timestamp()) + ttl
        if self.directory is not None:
            account = f"{roleset}@{self.directory.project}.iam.gserviceaccount.com"
            scope = ["https://www.googleapis.com/auth/cloud-platform"]
            doc = _post_json(
                f"{self.directory.url}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
                {"scope": scope, "lifetime": f"{ttl}s"},
                {"Authorization": f"Bearer {self.directory.credential()}"},
            )
            expire = datetime.fromisoformat(doc["expireTime"].replace("Z", "+00:00"))
            expires = int(expire.timestamp())
            return {"token": doc["accessToken"], "expires_at_seconds": expires, "token_ttl": ttl}
        return {
            "token": "ya29.vault-dev-" + secrets.token_urlsafe(40),
            "expires_at_seconds": expires,
            "token_ttl": ttl,
        }
