"""The local Vault stand-in's pure core: who may call which path, tokens and leases.

No I/O and no clock of its own (the time is passed in), so every rule is tested with tables.
The rules follow Vault's where CCT relies on them: a token carries the policies of the role
it logged in with; a policy path grants capabilities on exactly that path (the bundle's
policies have no wildcards, `components.vault`); GET needs `read`, POST/PUT need `update`
(or `create`); leases expire at their TTL, renew up to their max TTL, and revoke at once.
Stricter than Vault on one point: a token may renew or revoke only the leases it obtained,
so one handler can never end another handler's credentials.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

_DURATION = re.compile(r"^(\d+)([smh]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
CAPABILITIES = frozenset({"create", "read", "update", "delete", "list"})
# Mirrors components.vault: short-lived by design.
TOKEN_TTL_S = 900
TOKEN_MAX_TTL_S = 3600


class VaultDevError(Exception):
    """A request Vault would refuse; `status` is the HTTP status Vault answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PermissionDenied(VaultDevError):
    def __init__(self) -> None:
        # Vault says no more than this, so a caller cannot probe which paths exist.
        super().__init__(403, "permission denied")


def parse_duration(value: str | int | None, default: int) -> int:
    """Vault's TTL forms CCT uses: seconds as an integer, or `90s`, `15m`, `1h`."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise VaultDevError(400, f"invalid duration {value!r}")
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0 or seconds > 10 * 365 * 86400:
        raise VaultDevError(400, f"duration {value!r} out of range")
    return seconds


def capability_for(method: str) -> frozenset[str]:
    """The capabilities any one of which lets `method` through, as Vault maps them."""
    if method in {"GET", "HEAD"}:
        return frozenset({"read"})
    if method in {"POST", "PUT"}:
        return frozenset({"update", "create"})
    if method == "DELETE":
        return frozenset({"delete"})
    if method == "LIST":
        return frozenset({"list"})
    raise VaultDevError(405, f"method {method} not allowed")


@dataclass(frozen=True)
class AccessTable:
    """Role (the Kubernetes service account in the cluster) -> path -> capabilities."""

    roles: Mapping[str, Mapping[str, frozenset[str]]]

    @classmethod
    def from_json(cls, data: object) -> AccessTable:
        """`{"<role>": [{"path": "...", "capabilities": ["read"]}, ...]}`, the shape
        `infra.local_vault` writes from the bundle's own `vault_access`."""
        if not isinstance(data, dict) or not data:
            raise ValueError("access table must be a non-empty JSON object of roles")
        roles: dict[str, dict[str, frozenset[str]]] = {}
        for role, grants in data.items():
            if not isinstance(grants, list) or not grants:
                raise ValueError(f"role {role!r}: grants must be a non-empty list")
            paths: dict[str, frozenset[str]] = {}
            for grant in grants:
                if not isinstance(grant, dict) or set(grant) != {"path", "capabilities"}:
                    raise ValueError(f"role {role!r}: each grant is {{path, capabilities}}")
                path, caps = grant["path"], frozenset(grant["capabilities"])
                if not isinstance(path, str) or "*" in path or "+" in path:
                    raise ValueError(f"role {role!r}: path {path!r} must be exact")
                if not caps or not caps <= CAPABILITIES:
                    raise ValueError(f"role {role!r}: capabilities {sorted(caps)} invalid")
                paths[path] = paths.get(path, frozenset()) | caps
            roles[str(role)] = paths
        return cls(roles)

    def allows(self, role: str, path: str, method: str) -> bool:
        granted = self.roles.get(role, {}).get(path.strip("/"), frozenset())
        return bool(granted & capability_for(method))


# Paths every token may use on itself, as Vault's default policy grants (the bundle's roles
# set token_no_default_policy, yet Vault still lets a token look itself up and revoke itself
# only through the policy; CCT's steps have `auth/token/revoke-self` granted explicitly).
SELF_PATHS = frozenset({"auth/token/lookup-self"})


@dataclass(frozen=True)
class Token:
    accessor: str
    role: str
    expires_at: float
    max_expires_at: float


@dataclass(frozen=True)
class Lease:
    lease_id: str
    owner: str  # the accessor of the token that obtained it
    engine: str
    handle: str  # what the engine needs to revoke it (a user name, an access key id)
    ttl: int
    max_expires_at: float
    expires_at: float
    renewable: bool


@dataclass
class Book:
    """Tokens and leases. Token values are never stored: only their accessor, keyed by a
    digest the caller's value maps to (see server), so a memory dump leaks no usable token."""

    tokens: dict[str, Token] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)

    def issue_token(self, digest: str, role: str, now: float) -> Token:
        token = Token(
            accessor=secrets.token_hex(12),
            role=role,
            expires_at=now + TOKEN_TTL_S,
            max_expires_at=now + TOKEN_MAX_TTL_S,
        )
        self.tokens[digest] = token
        return token

    def token(self, digest: str, now: float) -> Token:
        token = self.tokens.get(digest)
        if token is None or token.expires_at <= now:
            self.tokens.pop(digest, None)
            raise PermissionDenied
        return token

    def renew_token(self, digest: str, now: float) -> Token:
        token = self.token(digest, now)
        renewed = replace(token, expires_at=min(now + TOKEN_TTL_S, token.max_expires_at))
        self.tokens[digest] = renewed
        return renewed

    def revoke_token(self, digest: str) -> Token | None:
        return self.tokens.pop(digest, None)

    def add_lease(
        self,
        *,
        path: str,
        owner: str,
        engine: str,
        handle: str,
        ttl: int,
        max_ttl: int,
        renewable: bool,
        now: float,
    ) -> Lease:
        lease = Lease(
            lease_id=f"{path.strip('/')}/{secrets.token_urlsafe(18)}",
            owner=owner,
            engine=engine,
            handle=handle,
            ttl=min(ttl, max_ttl),
            max_expires_at=now + max_ttl,
            expires_at=now + min(ttl, max_ttl),
            renewable=renewable,
        )
        self.leases[lease.lease_id] = lease
        return lease

    def owned_lease(self, lease_id: str, owner: str, now: float) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is None or lease.expires_at <= now:
            raise VaultDevError(400, "lease not found or lease is not renewable")
        if lease.owner != owner:
            # Vault would allow it with the sys/leases capability; CCT's roles never need
            # another role's lease, so it is refused like a missing lease (no probing).
            raise VaultDevError(400, "lease not found or lease is not renewable")
        return lease

    def renew_lease(self, lease_id: str, owner: str, increment: int | None, now: float) -> Lease:
        lease = self.owned_lease(lease_id, owner, now)
        if not lease.renewable:
            raise VaultDevError(400, "lease is not renewable")
        ttl = increment if increment is not None else lease.ttl
        renewed = replace(lease, expires_at=min(now + ttl, lease.max_expires_at))
        self.leases[lease_id] = renewed
        return renewed

    def pop_lease(self, lease_id: str) -> Lease | None:
        return self.leases.pop(lease_id, None)

    def expired(self, now: float) -> list[Lease]:
        """Leases past their expiry, removed from the book: the caller revokes them."""
        gone = [lease for lease in self.leases.values() if lease.expires_at <= now]
        for lease in gone:
            del self.leases[lease.lease_id]
        for digest in [d for d, t in self.tokens.items() if t.expires_at <= now]:
            del self.tokens[digest]
        return gone

    def leases_of(self, owner: str) -> Iterable[Lease]:
        return [lease for lease in self.leases.values() if lease.owner == owner]
