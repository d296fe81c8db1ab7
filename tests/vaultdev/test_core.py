"""The stand-in's rules as tables: capabilities per method, exact paths, leases and tokens."""

from __future__ import annotations

import pytest

from infra.local_vault import render
from lambdas.vaultdev.core import (
    TOKEN_MAX_TTL_S,
    TOKEN_TTL_S,
    AccessTable,
    Book,
    PermissionDenied,
    VaultDevError,
    parse_duration,
)

TABLE = AccessTable.from_json(render()["access"])


@pytest.mark.parametrize(
    ("role", "path", "method", "allowed"),
    [
        ("collector", "database/creds/cct-collector", "GET", True),
        # Another handler's database role: never.
        ("collector", "database/creds/cct-trigger", "GET", False),
        ("detector", "database/creds/cct-collector", "GET", False),
        # Read-only grant does not allow writes.
        ("collector", "database/creds/cct-collector", "POST", False),
        ("cct-steps", "aws/sts/cct-remediation", "POST", True),
        ("cct-steps", "aws/sts/cct-remediation", "GET", False),
        ("cct-steps", "aws/sts/cct-billing-read", "POST", False),
        ("billing-loader", "aws/sts/cct-billing-read", "POST", True),
        ("billing-loader", "aws/sts/cct-remediation", "POST", False),
        ("cct-steps", "azure/creds/cct-remediation", "GET", True),
        ("cct-steps", "gcp/token/cct-remediation", "GET", True),
        ("cct-steps", "sys/leases/revoke", "PUT", True),
        ("cct-steps", "auth/token/revoke-self", "POST", True),
        # Handlers have no token self-management in the bundle's policies.
        ("collector", "auth/token/revoke-self", "POST", False),
        ("cct-steps", "database/creds/cct-collector", "GET", False),
        # The bridge has no Vault role at all.
        ("bridge", "database/creds/cct-bridge", "GET", False),
        # Paths are exact: a prefix or a suffix is not the path.
        ("collector", "database/creds/cct-collector/x", "GET", False),
        ("collector", "database/creds", "GET", False),
    ],
)
def test_access_follows_the_bundle_policies(
    role: str, path: str, method: str, allowed: bool
) -> None:
    assert TABLE.allows(role, path, method) is allowed


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "non-empty JSON object"),
        ({"a": []}, "non-empty list"),
        ({"a": [{"path": "x/*", "capabilities": ["read"]}]}, "must be exact"),
        ({"a": [{"path": "x", "capabilities": ["sudo"]}]}, "invalid"),
        ({"a": [{"path": "x", "capabilities": ["read"], "extra": 1}]}, "{path, capabilities}"),
    ],
)
def test_invalid_access_tables(data: object, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("*", r"\*").replace("{", r"\{")):
        AccessTable.from_json(data)


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 7), ("", 7), (30, 30), ("90s", 90), ("15m", 900), ("1h", 3600)]
)
def test_durations(value: str | int | None, seconds: int) -> None:
    assert parse_duration(value, 7) == seconds


@pytest.mark.parametrize("value", ["abc", "-5", "0", "5d", "99999999999"])
def test_bad_durations(value: str) -> None:
    with pytest.raises(VaultDevError):
        parse_duration(value, 7)


def test_leases_expire_renew_to_max_and_belong_to_their_token() -> None:
    book = Book()
    lease = book.add_lease(
        path="database/creds/cct-collector",
        owner="tok-a",
        engine="database",
        handle="h",
        ttl=60,
        max_ttl=100,
        renewable=True,
        now=0,
    )
    assert lease.lease_id.startswith("database/creds/cct-collector/")
    with pytest.raises(VaultDevError):
        book.renew_lease(lease.lease_id, "tok-b", None, now=10)
    renewed = book.renew_lease(lease.lease_id, "tok-a", 500, now=50)
    assert renewed.expires_at == 100  # capped at the max TTL
    assert book.expired(99) == []
    assert [x.lease_id for x in book.expired(100)] == [lease.lease_id]
    with pytest.raises(VaultDevError):
        book.owned_lease(lease.lease_id, "tok-a", now=101)


def test_tokens_expire_and_renew_up_to_their_max() -> None:
    book = Book()
    book.issue_token("d", "collector", now=0)
    assert book.renew_token("d", now=TOKEN_TTL_S - 1).expires_at == 2 * TOKEN_TTL_S - 1
    late = TOKEN_MAX_TTL_S - 10
    book.tokens["d"] = book.tokens["d"].__class__(
        accessor="x", role="collector", expires_at=late + 5, max_expires_at=TOKEN_MAX_TTL_S
    )
    assert book.renew_token("d", now=late).expires_at == TOKEN_MAX_TTL_S
    with pytest.raises(PermissionDenied):
        book.token("d", now=TOKEN_MAX_TTL_S)
    with pytest.raises(PermissionDenied):
        book.token("unknown", now=0)
