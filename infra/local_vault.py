"""The local Vault stand-in's configuration, derived from the bundle's own Vault wiring.

`python -m infra.local_vault OUT.json [--account-id ID]` writes what `cct serve vault-dev`
enforces: each service account's exact paths and capabilities (`infra.stack.vault_access`),
the database roles and the group roles their users join (`infra.stack.database_roles`), and
the AWS roles the steps and the billing loader assume. Deriving it here, instead of writing a
second table, means a policy the bundle narrows is narrowed locally in the same commit.
Every cloud is switched on, so every path the cluster could grant is exercised locally.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.stack import BILLING_READ_ROLE, PREFIX, database_roles, vault_access

# moto's default account, which the local AWS simulator answers as.
SIMULATOR_ACCOUNT_ID = "123456789012"
REMEDIATION_ROLE = f"{PREFIX}-remediation"


@dataclass(frozen=True)
class _AllClouds:
    """The only settings `vault_access` and `database_roles` read: which clouds are on."""

    aws: bool = True
    azure: bool = True
    gcp: bool = True


def render(account_id: str = SIMULATOR_ACCOUNT_ID) -> dict[str, Any]:
    settings: Any = _AllClouds()
    access = {
        role: [{"path": g.path, "capabilities": sorted(g.capabilities)} for g in grants]
        for role, grants in sorted(vault_access(settings).items())
    }
    return {
        "access": access,
        "database_roles": database_roles(settings),
        "aws_roles": {
            role: f"arn:aws:iam::{account_id}:role/{role}"
            for role in (REMEDIATION_ROLE, BILLING_READ_ROLE)
        },
        "azure_roles": [REMEDIATION_ROLE],
        "gcp_rolesets": [REMEDIATION_ROLE],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local_vault",
        description="Write the local Vault stand-in's configuration from the bundle's policies.",
    )
    parser.add_argument("out", type=Path, help="where to write the JSON (0600)")
    parser.add_argument("--account-id", default=SIMULATOR_ACCOUNT_ID, help="AWS account id")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(render(args.account_id), fh, indent=2, sort_keys=True)
    print(f"local Vault configuration written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
