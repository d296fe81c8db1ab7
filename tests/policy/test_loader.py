"""The policy language's validation: every shipped file is valid, every invalid fixture fails
with exactly its expected error (testdata/invalid/NAME.yaml + NAME.error)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from lambdas.policy import PolicyLoadError, load_policy_set, parse_policy_files
from lambdas.policy.loader import schema

HERE = Path(__file__).parent
INVALID = sorted((HERE / "testdata" / "invalid").glob("*.yaml"))
SHIPPED = Path(__file__).parents[2] / "policies" / "optimization"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_policy_fails_with_its_exact_error(path: Path) -> None:
    expected = path.with_suffix(".error").read_text().rstrip("\n")
    with pytest.raises(PolicyLoadError) as err:
        load_policy_set(path)
    assert str(err.value) == expected


def test_every_invalid_fixture_has_an_expected_error() -> None:
    errors = sorted((HERE / "testdata" / "invalid").glob("*.error"))
    assert [p.stem for p in errors] == [p.stem for p in INVALID]
    assert len(INVALID) >= 20


@pytest.mark.parametrize("name", ["optimization-policy", "policy-tests"])
def test_schemas_are_valid_draft_2020_12_and_closed(name: str) -> None:
    doc = schema(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)

    def walk(node: object, where: str) -> None:
        # Every object with declared properties is closed (free-form maps use a schema for
        # additionalProperties, never `true`).
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, where
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(doc, name)


def test_shipped_policies_load() -> None:
    policy_set = load_policy_set(SHIPPED)
    names = {p.name for p in policy_set.policies}
    assert names == {
        "allowed-actions",
        "blast-radius",
        "change-freeze",
        "critical-services",
        "impact-limits",
        "production-approval",
        "protected-resources",
    }
    assert all(p.description and p.owner for p in policy_set.policies)
    assert all(r.description for r in policy_set.rules)
    assert policy_set.default_calendar is not None
    assert policy_set.default_calendar.name == "company-default"


def test_errors_from_several_files_are_all_reported() -> None:
    bad = (
        b"apiVersion: cct.io/v1\nkind: OptimizationPolicy\nmetadata: {name: a}\nspec: {rules: []}\n"
    )
    with pytest.raises(PolicyLoadError) as err:
        parse_policy_files({"a.yaml": bad, "b.yaml": b"[1]"})
    assert err.value.errors == [
        "a.yaml: document 1: metadata: 'description' is a required property",
        "b.yaml: document 1: (document): [1] is not of type 'object'",
    ]


def test_a_directory_without_policies_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match=r"no policy files \(\*\.yaml\) found"):
        load_policy_set(tmp_path)
    with pytest.raises(PolicyLoadError, match="no such file or directory"):
        load_policy_set(tmp_path / "missing")


def test_fingerprint_changes_with_content_only() -> None:
    doc = (SHIPPED / "blast-radius.yaml").read_bytes()
    first = parse_policy_files({"x.yaml": doc}).fingerprint
    assert parse_policy_files({"x.yaml": doc}).fingerprint == first
    assert parse_policy_files({"x.yaml": doc + b"\n# comment\n"}).fingerprint != first
