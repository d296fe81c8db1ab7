"""The action registry meta-test: every entry declares a valid parameter schema, its exact
permissions in the provider's own spelling, and its functions; every playbook has an action
for every provider."""

from __future__ import annotations

import re

import jsonschema
import pytest

from lambdas.steps.action import Action
from lambdas.steps.errors import InvalidInput
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.steps.registry import ACTIONS

PERMISSION = {
    # IAM actions: service prefix and an API action name.
    "aws": re.compile(r"^(ec2|s3|rds|cloudwatch):[A-Z][A-Za-z]+$"),
    # Azure RBAC operations: provider namespace, resource types, and read/write/delete/action.
    "azure": re.compile(r"^Microsoft\.[A-Za-z]+(/[A-Za-z]+)+/(read|write|delete|action)$"),
    # GCP IAM permissions: service.resource.verb.
    "gcp": re.compile(r"^[a-z]+\.[a-zA-Z]+\.[a-zA-Z]+$"),
}


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_action_declares_schema_permissions_and_functions(name: str) -> None:
    action = ACTIONS[name]
    assert isinstance(action, Action)
    assert action.name == name
    assert name.split(".", maxsplit=1)[0] == action.provider
    jsonschema.Draft202012Validator.check_schema(dict(action.schema))
    assert action.schema["type"] == "object"
    assert action.schema["additionalProperties"] is False
    assert "resource_id" in action.schema["required"]
    assert set(action.schema["required"]) <= set(action.schema["properties"])
    assert action.permissions, f"{name} declares no permissions"
    assert len(set(action.permissions)) == len(action.permissions)
    for permission in action.permissions:
        assert PERMISSION[action.provider].match(permission), permission
    assert action.price_unit in ("hour", "gib_month")
    assert action.service_name
    assert action.description
    assert callable(action.read) and callable(action.apply) and callable(action.is_done)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_schema_rejects_unknown_parameters(name: str) -> None:
    with pytest.raises(InvalidInput, match="Additional properties"):
        ACTIONS[name].validate({"resource_id": "x", "surprise": 1})


def test_every_playbook_has_an_action_per_provider() -> None:
    used = set()
    for playbook in PLAYBOOKS.values():
        assert set(playbook.actions) == {"aws", "azure", "gcp"}
        for provider, action_name in playbook.actions.items():
            assert ACTIONS[action_name].provider == provider
            used.add(action_name)
    assert used == set(ACTIONS), "every registered action belongs to a playbook"


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        ACTIONS["x"] = ACTIONS["aws.ec2.resize_instance"]  # type: ignore[index]
