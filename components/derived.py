"""Secrets CCT generates for its own pieces (tokens between handlers, database logins, the
Grafana admin), derived from one stack secret instead of a random-value provider.

HMAC-SHA256(seed, purpose) gives each purpose its own 128-bit value, the same on every
`pulumi up` (so a second run changes nothing) and different for every purpose and every
seed: rotating `cct:secretSeed` rotates them all. The values are as secret as the seed; they
live in Kubernetes Secrets and in the (encrypted) stack state, as a generated password would.
No provider is involved, so the cluster side deploys wherever the Kubernetes provider runs.
"""

from __future__ import annotations

import hashlib
import hmac

import pulumi

# 32 hex characters: 128 bits, and safe unescaped in URLs, DSNs and basic-auth headers.
LENGTH = 32


def derive(seed: str, purpose: str) -> str:
    """The value for `purpose` under `seed` (pure; tested without Pulumi)."""
    if not seed:
        raise ValueError("the secret seed is empty")
    if not purpose:
        raise ValueError("a derived secret needs a purpose")
    return hmac.new(seed.encode(), purpose.encode(), hashlib.sha256).hexdigest()[:LENGTH]


def derived_secret(seed: pulumi.Input[str], purpose: str) -> pulumi.Output[str]:
    """`derive` on a (secret) seed; the result is a secret Output."""
    return pulumi.Output.secret(pulumi.Output.from_input(seed).apply(lambda s: derive(s, purpose)))
