"""Policy test suites: every policy file `X.yaml` has `tests/X.test.yaml` with cases.

A case gives an input (Workflow parameters), the time and the account's recent actions, and
the exact expected verdict and reasons. Cases run against the policies of their own file
(plus the set-wide calendars), so a suite states what its policy decides, independent of
the other files. Failures name the file, the case and what differed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from lambdas.policy.engine import evaluate
from lambdas.policy.loader import load_policy_set, policy_files, schema_error, yaml_error
from lambdas.policy.model import InvalidRequestError, PolicyRequest
from lambdas.policy.policyset import PolicySet

TESTS_DIR = "tests"
SUFFIX = ".test.yaml"


@dataclass(frozen=True)
class CaseResult:
    suite: str
    case: str
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class TestReport:
    results: tuple[CaseResult, ...]
    errors: tuple[str, ...]  # problems with the suites themselves (missing, invalid)

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.passed for r in self.results)


def parse_time(text: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{where}: {text!r} has no UTC offset")
    return moment


def run_tests(policy_dir: Path) -> TestReport:
    """Load the policy set of `policy_dir` and run every suite in `policy_dir/tests`."""
    policy_set = load_policy_set(policy_dir)
    errors: list[str] = []
    results: list[CaseResult] = []
    tests_dir = policy_dir / TESTS_DIR
    suites = {p.name[: -len(SUFFIX)]: p for p in sorted(tests_dir.glob(f"*{SUFFIX}"))}
    for path in policy_files(policy_dir):
        names = {p.name for p in policy_set.policies if p.source == path.name}
        suite = suites.pop(path.stem, None)
        if suite is None:
            errors.append(f"{path.name}: no test cases; add {TESTS_DIR}/{path.stem}{SUFFIX}")
            continue
        suite_results, suite_errors = run_suite(suite, policy_set.only(names))
        results.extend(suite_results)
        errors.extend(suite_errors)
    errors.extend(
        f"{TESTS_DIR}/{p.name}: no policy file {stem}.yaml to test" for stem, p in suites.items()
    )
    return TestReport(tuple(results), tuple(errors))


def run_suite(path: Path, policy_set: PolicySet) -> tuple[list[CaseResult], list[str]]:
    label = f"{TESTS_DIR}/{path.name}"
    try:
        doc = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as exc:
        return [], [f"{label}: {yaml_error(exc)}"]
    problem = schema_error(doc, "policy-tests")
    if problem is not None:
        return [], [f"{label}: {problem}"]
    defaults = doc.get("defaults", {})
    results = []
    for index, case in enumerate(doc["cases"]):
        where = f"{label}: case {index + 1} {case['name']!r}"
        results.append(
            CaseResult(label, case["name"], tuple(_run_case(policy_set, defaults, case, where)))
        )
    return results, []


def _run_case(
    policy_set: PolicySet, defaults: Mapping[str, Any], case: Mapping[str, Any], where: str
) -> list[str]:
    now_text = case.get("now", defaults.get("now"))
    if now_text is None:
        return [f"{where}: no `now` in the case or the suite's defaults"]
    try:
        now = parse_time(now_text, "now")
        request = PolicyRequest.from_parameters(
            {**defaults.get("input", {}), **case.get("input", {})}
        )
    except (ValueError, InvalidRequestError) as exc:
        return [f"{where}: invalid case: {exc}"]
    recent = case.get("recentActions", defaults.get("recentActions", 0))
    verdict = evaluate(policy_set, request, now, {request.account_id: recent})
    expect = case["expect"]
    failures = []
    if verdict.decision != expect["verdict"]:
        failures.append(f"{where}: verdict: expected {expect['verdict']}, got {verdict.decision}")
    got_reasons = list(verdict.reasons)
    if got_reasons != expect["reasons"]:
        missing = [r for r in expect["reasons"] if r not in got_reasons]
        extra = [r for r in got_reasons if r not in expect["reasons"]]
        detail = (
            "".join(
                [f"\n    missing: {r!r}" for r in missing]
                + [f"\n    unexpected: {r!r}" for r in extra]
            )
            or f"\n    same reasons, different order: got {got_reasons!r}"
        )
        failures.append(f"{where}: reasons differ:{detail}")
    if "policyIds" in expect and list(verdict.policy_ids) != expect["policyIds"]:
        failures.append(
            f"{where}: policy ids: expected {expect['policyIds']!r}, "
            f"got {list(verdict.policy_ids)!r}"
        )
    return failures
