"""Every remediation action, by name (`lambdas.steps.registry.ACTIONS`).

Importing the provider modules registers their actions; the mapping is read-only.
"""

from __future__ import annotations

from types import MappingProxyType

from lambdas.steps import action as _action
from lambdas.steps.providers import aws, azure, gcp

ACTIONS: MappingProxyType[str, _action.Action] = MappingProxyType(_action._ACTIONS)

# The provider modules are imported for their registrations.
PROVIDER_MODULES = (aws, azure, gcp)
