"""What each PostgreSQL handler may do, table by table.

Every handler has a group role `cct_<handler>` (no login) holding exactly the privileges its
store calls need; the users Vault issues for the handler join that role and nothing else.
`cct db migrate` applies this table after the migrations, as the schema owner, so the grants
always match the schema of the release. A new store call on another table needs its entry
here; the handlers' rotation tests run them as these roles against the real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

# handler -> table -> privileges. SELECT accompanies every UPDATE: `on conflict do update`,
# `select ... for update` and an update's where clause all read the table.
HANDLER_PRIVILEGES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    # lambdas.store.inventory and store.pricing.aload_price_book.
    "collector": {
        "resource_inventory": ("select", "insert", "update"),
        "resource_events": ("select", "insert"),
        "ingest_dead_letters": ("insert",),
        "price_catalog": ("select",),
        "cost_reconciliation": ("select",),
        "container_deletions": ("select", "insert", "update"),
    },
    # lambdas.store.billing
    "billing-loader": {
        "billing_loads": ("select", "insert", "update"),
        "billing_hourly": ("select", "insert", "delete"),
        "cost_reconciliation": ("select", "insert", "update"),
        "ingest_dead_letters": ("insert",),
    },
    # lambdas.store.anomalies (incident rows, adopted after a restart; change events for
    # attribution and, with the inventory, the new-resource fast path and resource labels)
    "detector": {
        "anomalies": ("select", "insert", "update"),
        "resource_events": ("select",),
        "resource_inventory": ("select",),
    },
    # lambdas.store.runs and store.decisions (the pre-check)
    "trigger": {
        "optimization_runs": ("select", "insert", "update"),
        "policy_decisions": ("select", "insert"),
        # The policy pre-check reads the resource's tags (lambdas/trigger/processor.py).
        "resource_inventory": ("select",),
    },
    # lambdas.store.decisions
    "admission": {
        "policy_decisions": ("select", "insert"),
    },
}
# Read-only roles -> the schemas whose every view they may select: Grafana reads the
# `reporting` views only (docs/results-store.md), never the tables behind them, which hold
# policy decisions, actors and raw dead-lettered payloads.
READER_SCHEMAS: Mapping[str, tuple[str, ...]] = {"grafana": ("reporting",)}
# Tables whose inserts draw from a sequence (bigserial).
SEQUENCES: Mapping[str, str] = {"ingest_dead_letters": "ingest_dead_letters_id_seq"}


class GrantError(RuntimeError):
    """A handler's group role is missing and this login may not create it."""


def group_role(handler: str) -> str:
    return f"cct_{handler.replace('-', '_')}"


def vault_role_statements(grant_role: str) -> tuple[list[str], list[str]]:
    """Creation and revocation statements of a Vault database-engine role whose users join
    `grant_role`, with Vault's `{{name}}`, `{{password}}` and `{{expiration}}` placeholders.
    One source for the bundle (components.vault configures Vault with them) and for the
    local Vault stand-in and the tests, which run them on a real PostgreSQL."""
    creation = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        f'GRANT "{grant_role}" TO "{{{{name}}}}";',
    ]
    return creation, ['DROP ROLE IF EXISTS "{{name}}";']


def apply_grants(conn: psycopg.Connection[Any]) -> None:
    """Make every handler's group role hold exactly its HANDLER_PRIVILEGES in the public
    schema (revoking anything else first), in one transaction. Run as the schema owner.
    Missing roles are created when this login may (local development); in the cluster
    CloudNativePG creates them."""
    with conn.transaction():
        for handler, tables in HANDLER_PRIVILEGES.items():
            role = sql.Identifier(group_role(handler))
            if not _exists(conn, group_role(handler)):
                _create(conn, group_role(handler))
            conn.execute(sql.SQL("revoke all on all tables in schema public from {}").format(role))
            conn.execute(
                sql.SQL("revoke all on all sequences in schema public from {}").format(role)
            )
            for table, privileges in sorted(tables.items()):
                conn.execute(
                    sql.SQL("grant {} on table {} to {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                        sql.Identifier(table),
                        role,
                    )
                )
                if table in SEQUENCES and "insert" in privileges:
                    conn.execute(
                        sql.SQL("grant usage on sequence {} to {}").format(
                            sql.Identifier(SEQUENCES[table]), role
                        )
                    )
        for reader, schemas in READER_SCHEMAS.items():
            role = sql.Identifier(group_role(reader))
            if not _exists(conn, group_role(reader)):
                _create(conn, group_role(reader))
            conn.execute(sql.SQL("revoke all on all tables in schema public from {}").format(role))
            for schema in schemas:
                # Applied after every migration, so views a later migration adds are covered.
                name = sql.Identifier(schema)
                conn.execute(sql.SQL("grant usage on schema {} to {}").format(name, role))
                conn.execute(
                    sql.SQL("grant select on all tables in schema {} to {}").format(name, role)
                )


def _exists(conn: psycopg.Connection[Any], role: str) -> bool:
    return conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone() is not None


def _create(conn: psycopg.Connection[Any], role: str) -> None:
    try:
        with conn.transaction():
            conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
    except psycopg.errors.DuplicateObject:
        pass  # created meanwhile by a migration of another database of this server
    except psycopg.errors.InsufficientPrivilege:
        raise GrantError(
            f"group role {role} does not exist and this login may not create it"
            " (the deployment creates it as a CloudNativePG managed role)"
        ) from None
