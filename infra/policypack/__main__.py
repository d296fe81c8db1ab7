"""Entry point of the CrossGuard pack: `pulumi preview --policy-pack infra/policypack`.

The policy host runs this file from its own directory; the checks live in the repository's
`infra.policypack` package (so the tests run the same code), hence the repository root on the
import path.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pulumi_policy import PolicyPack

from infra.policypack.policies import POLICIES

PolicyPack(name="cct-invariants", policies=POLICIES)
