"""`cct policy validate|test|explain`: the policy checks a pull request runs."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from lambdas.policy.engine import explain
from lambdas.policy.loader import (
    SCHEMAS,
    PolicyLoadError,
    load_policy_set,
    schema,
    schema_error,
    yaml_error,
)
from lambdas.policy.model import InvalidRequestError, PolicyRequest
from lambdas.policy.testing import SUFFIX, TESTS_DIR, parse_time, run_tests
from lambdas.policy.workflow import workflow_parameters

DEFAULT_DIR = "policies/optimization"
_DIR_OPTION = click.option(
    "--policies",
    "policy_dir",
    envvar="CCT_POLICY_DIR",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Policy directory (or one file) [env: CCT_POLICY_DIR].",
)


@click.group()
def policy() -> None:
    """Validate, test and explain optimization policies."""


@policy.command()
@_DIR_OPTION
@click.option(
    "--schemas",
    "schema_dir",
    type=click.Path(path_type=Path),
    help="Also check that this directory holds this cct's JSON Schemas unchanged (the copy "
    "editors validate against, e.g. policies/schema).",
)
def validate(policy_dir: Path, schema_dir: Path | None) -> None:
    """Check every policy file and test suite against its schema and cross-field rules."""
    try:
        policy_set = load_policy_set(policy_dir)
    except PolicyLoadError as exc:
        raise click.ClickException(f"invalid policies:\n{exc}") from exc
    problems = [] if schema_dir is None else _stale_schemas(schema_dir)
    suites = sorted((policy_dir / TESTS_DIR).glob(f"*{SUFFIX}")) if policy_dir.is_dir() else []
    for suite in suites:
        try:
            problem = schema_error(yaml.safe_load(suite.read_bytes()), "policy-tests")
        except yaml.YAMLError as exc:
            problem = yaml_error(exc)
        if problem is not None:
            problems.append(f"{TESTS_DIR}/{suite.name}: {problem}")
    if problems:
        raise click.ClickException("invalid schemas or test suites:\n" + "\n".join(problems))
    click.echo(
        f"ok: {len(policy_set.policies)} policies, {len(policy_set.rules)} rules, "
        f"{len(policy_set.calendars)} calendars, {len(suites)} test suites"
    )


@policy.command("test")
@_DIR_OPTION
def test_cmd(policy_dir: Path) -> None:
    """Run every policy's test cases; exit 1 with each difference on failure."""
    try:
        report = run_tests(policy_dir)
    except PolicyLoadError as exc:
        raise click.ClickException(f"invalid policies:\n{exc}") from exc
    for result in report.results:
        for failure in result.failures:
            click.echo(f"FAIL {failure}", err=True)
    for error in report.errors:
        click.echo(f"ERROR {error}", err=True)
    passed = sum(r.passed for r in report.results)
    failed = len(report.results) - passed
    click.echo(f"{passed} passed, {failed} failed, {len(report.errors)} errors")
    if not report.ok:
        sys.exit(1)


@policy.command("explain")
@click.argument("input_file", metavar="INPUT", type=click.File("rb"))
@_DIR_OPTION
@click.option("--now", "now_text", help="Decision time, RFC 3339 with offset [default: now].")
@click.option(
    "--recent-actions",
    type=click.IntRange(min=0),
    help="Actions in the request's account in the last hour [default: from INPUT, else 0].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and traces as JSON.")
def explain_cmd(
    input_file: Any,
    policy_dir: Path,
    now_text: str | None,
    recent_actions: int | None,
    as_json: bool,
) -> None:
    """Show which rules match INPUT and why.

    INPUT (a file, or - for stdin) is YAML or JSON: a test case (`input`, optional `now` and
    `recentActions`), a bare map of Workflow parameters, or an Argo Workflow manifest.
    """
    try:
        doc = yaml.safe_load(input_file.read())
        params, case_now, case_recent = _input(doc)
        request = PolicyRequest.from_parameters(params)
        text = now_text or case_now
        now = parse_time(text, "--now") if text else datetime.now(UTC)
        policy_set = load_policy_set(policy_dir)
    except (yaml.YAMLError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    recent = recent_actions if recent_actions is not None else case_recent
    verdict, traces = explain(policy_set, request, now, {request.account_id: recent})
    if as_json:
        out = {
            **verdict.to_dict(),
            "now": now.isoformat(),
            "recent_actions": recent,
            "rules": [
                {
                    "policy_id": t.policy_id,
                    "effect": t.effect,
                    "matched": t.matched,
                    "checks": list(t.steps),
                    "reason": t.reason,
                }
                for t in traces
            ],
        }
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"verdict: {verdict.decision}  (at {now.isoformat()}, {recent} recent actions)")
    for trace in traces:
        mark = "MATCH" if trace.matched else "-    "
        click.echo(f"{mark} {trace.policy_id} [{trace.effect}]")
        for step in trace.steps or ("match: no conditions",):
            click.echo(f"        {step}")
        if trace.reason:
            click.echo(f"        => {trace.reason}")


def _stale_schemas(schema_dir: Path) -> list[str]:
    """A schema copy that differs from the engine's would let an editor accept what CI
    rejects (or the reverse), so it must match, up to JSON formatting."""
    problems = []
    for name in SCHEMAS:
        path = schema_dir / f"{name}.schema.json"
        try:
            copy = json.loads(path.read_bytes())
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
            continue
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: not JSON: {exc}")
            continue
        if copy != schema(name):
            problems.append(
                f"{path}: differs from the schema this cct enforces; replace it with "
                f"lambdas/policy/schema/{name}.schema.json of this CCT version"
            )
    return problems


def _input(doc: Any) -> tuple[dict[str, Any], str | None, int]:
    if not isinstance(doc, dict):
        raise InvalidRequestError("INPUT must be a YAML/JSON object")
    if doc.get("kind") == "Workflow":
        return workflow_parameters(doc), None, 0
    if "input" in doc:
        if not isinstance(doc["input"], dict):
            raise InvalidRequestError("INPUT: `input` must be an object")
        recent = doc.get("recentActions", 0)
        if not isinstance(recent, int) or recent < 0:
            raise InvalidRequestError("INPUT: recentActions must be a non-negative integer")
        return doc["input"], doc.get("now"), recent
    return doc, None, 0
