"""`cct policy validate|test|explain`, as a pull request's CI runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lambdas.policy.cli import policy

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "policies" / "optimization"
CCT = Path(sys.executable).with_name("cct")


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    target = tmp_path / "optimization"
    shutil.copytree(SHIPPED, target)
    return target


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(policy, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cct_policy_test_passes_on_the_shipped_policies() -> None:
    proc = subprocess.run(
        [str(CCT), "policy", "test", "--policies", str(SHIPPED)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("0 failed, 0 errors")


def test_validate_reports_counts() -> None:
    code, out, _ = run("validate", "--policies", str(SHIPPED))
    assert code == 0
    assert out == "ok: 7 policies, 17 rules, 3 calendars, 7 test suites\n"


def test_a_wrong_expectation_fails_with_a_precise_message(policy_copy: Path) -> None:
    suite = policy_copy / "tests" / "blast-radius.test.yaml"
    doc = yaml.safe_load(suite.read_text())
    doc["cases"][2]["expect"]["verdict"] = "allow"
    doc["cases"][2]["expect"]["reasons"] = ["something else"]
    suite.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = run("test", "--policies", str(policy_copy))
    assert code == 1
    assert err.splitlines() == [
        "FAIL tests/blast-radius.test.yaml: case 3 'the 6th action needs approval': "
        "verdict: expected allow, got require-approval",
        "FAIL tests/blast-radius.test.yaml: case 3 'the 6th action needs approval': "
        "reasons differ:",
        "    missing: 'something else'",
        "    unexpected: 'account 123456789012 already had 5 actions in the last hour "
        "(automatic limit 5)'",
    ]
    assert out.endswith("80 passed, 1 failed, 0 errors\n")


def test_a_policy_without_tests_and_tests_without_a_policy_are_errors(policy_copy: Path) -> None:
    (policy_copy / "tests" / "change-freeze.test.yaml").rename(
        policy_copy / "tests" / "old-freeze.test.yaml"
    )
    code, _, err = run("test", "--policies", str(policy_copy))
    assert code == 1
    assert "ERROR change-freeze.yaml: no test cases; add tests/change-freeze.test.yaml" in err
    assert "ERROR tests/old-freeze.test.yaml: no policy file old-freeze.yaml to test" in err


def test_an_invalid_suite_is_reported_by_validate_and_test(policy_copy: Path) -> None:
    suite = policy_copy / "tests" / "impact-limits.test.yaml"
    suite.write_text(suite.read_text().replace("verdict: allow", "verdict: maybe", 1))
    message = (
        "tests/impact-limits.test.yaml: cases[0].expect.verdict: 'maybe' is not one of "
        "['allow', 'deny', 'require-approval']"
    )
    code, _, err = run("validate", "--policies", str(policy_copy))
    assert (code, message in err) == (1, True)
    code, _, err = run("test", "--policies", str(policy_copy))
    assert (code, f"ERROR {message}" in err) == (1, True)


def test_invalid_policies_fail_validate_with_the_loader_errors(policy_copy: Path) -> None:
    target = policy_copy / "impact-limits.yaml"
    target.write_text(target.read_text().replace("impactAboveUsd: 1000", "impactAboveUsd: -1"))
    code, _, err = run("validate", "--policies", str(policy_copy))
    assert code == 1
    assert (
        "impact-limits.yaml: document 1: spec.rules[0].when.impactAboveUsd: "
        "-1 is less than the minimum of 0"
    ) in err


def test_explain_a_test_case(tmp_path: Path) -> None:
    case = {
        "now": "2026-03-03T10:00:00-05:00",
        "recentActions": 6,
        "input": {
            "provider": "aws",
            "service": "rds",
            "resource-id": "db-1",
            "resource-type": "DBInstance",
            "action": "rightsize-database",
            "environment": "staging",
            "account-id": "42",
            "estimated-monthly-impact-usd": 300,
        },
    }
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(case))
    code, out, _ = run("explain", str(path), "--policies", str(SHIPPED))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "verdict: deny  (at 2026-03-03T10:00:00-05:00, 6 recent actions)"
    assert "MATCH critical-services/aws-databases [deny]" in lines
    assert "MATCH blast-radius/approval-after-five-per-hour [require-approval]" in lines
    assert "-     production-approval/production [require-approval]" in lines
    assert (
        "        no match: environment 'staging' is not in "
        "['prod', 'prod-eu', 'prod-us', 'production']" in lines
    )


def test_explain_a_workflow_manifest_as_json(tmp_path: Path) -> None:
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "cct-stop-idle-compute-0123456789ab"},
        "spec": {
            "workflowTemplateRef": {"name": "cct-stop-idle-compute"},
            "arguments": {
                "parameters": [
                    {"name": "provider", "value": "aws"},
                    {"name": "service", "value": "ec2"},
                    {"name": "resource-id", "value": "i-1"},
                    {"name": "resource-type", "value": "Instance"},
                    {"name": "action", "value": "stop-idle-compute"},
                    {"name": "environment", "value": "dev"},
                    {"name": "account-id", "value": "42"},
                    {"name": "tags", "value": '{"cct.io/protect": "true"}'},
                    {"name": "estimated-monthly-impact-usd", "value": "70.08"},
                ]
            },
        },
    }
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    code, out, _ = run(
        "explain", str(path), "--policies", str(SHIPPED), "--now", "2026-02-01T12:00:00Z", "--json"
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "deny"
    assert doc["policy_ids"] == ["protected-resources/protect-tag"]
    assert len(doc["rules"]) == 17


def test_explain_rejects_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("provider: aws\n")
    code, _, err = run("explain", str(path), "--policies", str(SHIPPED))
    assert code == 1
    assert "missing parameter(s): service, resource-id" in err


def test_validate_fails_when_the_schema_copy_drifts(tmp_path: Path) -> None:
    copy = tmp_path / "schema"
    shutil.copytree(ROOT / "policies" / "schema", copy)  # follows the symlink: real files
    # Reformatting is not drift: only the schema's meaning is compared.
    stale = copy / "optimization-policy.schema.json"
    stale.write_text(json.dumps(json.loads(stale.read_text()), indent=4))
    code, out, _ = run("validate", "--policies", str(SHIPPED), "--schemas", str(copy))
    assert (code, out.startswith("ok: 7 policies")) == (0, True)
    doc = json.loads(stale.read_text())
    doc["$defs"]["conditions"]["properties"].pop("actionNotAllowedOn")
    stale.write_text(json.dumps(doc))
    (copy / "policy-tests.schema.json").unlink()
    code, _, err = run("validate", "--policies", str(SHIPPED), "--schemas", str(copy))
    assert code == 1
    assert err.splitlines()[1:] == [
        f"{stale}: differs from the schema this cct enforces; replace it with "
        "lambdas/policy/schema/optimization-policy.schema.json of this CCT version",
        f"{copy / 'policy-tests.schema.json'}: cannot read: No such file or directory",
    ]
