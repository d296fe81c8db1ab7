"""The GitHub Actions workflow shipped for users' policy repositories: it triggers on
policy changes, and the commands it runs pass on the shipped policies."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
WORKFLOW = ROOT / "docs" / "gitops" / "policy-check.yml"


def load() -> dict[object, object]:
    doc: dict[object, object] = yaml.safe_load(WORKFLOW.read_text())
    return doc


def test_runs_on_pull_requests_that_touch_policies() -> None:
    doc = load()
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert isinstance(on, dict)
    assert "policies/**" in on["pull_request"]["paths"]
    assert doc["permissions"] == {"contents": "read"}


def test_its_commands_pass_on_the_shipped_policies() -> None:
    job = load()["jobs"]["policies"]  # type: ignore[index]
    commands = [step["run"] for step in job["steps"] if "run" in step]
    assert [shlex.split(c)[:3] for c in commands] == [
        ["cct", "policy", "validate"],
        ["cct", "policy", "test"],
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in commands:
        proc = subprocess.run(
            shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"


def test_the_schemas_are_visible_under_policies_without_a_second_copy() -> None:
    link = ROOT / "policies" / "schema"
    assert link.is_symlink()
    # Relative, so it resolves in every checkout; the package directory is the only copy.
    assert os.readlink(link) == "../lambdas/policy/schema"
    assert link.resolve() == (ROOT / "lambdas" / "policy" / "schema").resolve()
    assert sorted(p.name for p in link.iterdir()) == [
        "optimization-policy.schema.json",
        "policy-tests.schema.json",
    ]


def test_the_workflow_checks_the_schema_copy_under_policies() -> None:
    job = load()["jobs"]["policies"]  # type: ignore[index]
    validate = next(shlex.split(s["run"]) for s in job["steps"] if "validate" in s.get("run", ""))
    at = validate.index("--schemas")
    assert (ROOT / validate[at + 1]).resolve() == (ROOT / "policies" / "schema").resolve()
