"""The engine's semantics on small hand-written policy sets (table tests), and the shipped
policies' own test suites run through pytest."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from lambdas.policy import PolicyRequest, evaluate, explain, parse_policy_files
from lambdas.policy.policyset import PolicySet
from lambdas.policy.testing import run_tests

SHIPPED = Path(__file__).parents[2] / "policies" / "optimization"
NOW = datetime.fromisoformat("2026-03-03T10:00:00-05:00")  # a Tuesday, 10:00 New York


def policy_set(
    *rules: dict[str, object], calendars: list[dict[str, object]] | None = None
) -> PolicySet:
    doc = {
        "apiVersion": "cct.io/v1",
        "kind": "OptimizationPolicy",
        "metadata": {"name": "t", "description": "test"},
        "spec": {"rules": list(rules), **({"calendars": calendars} if calendars else {})},
    }
    return parse_policy_files({"t.yaml": yaml.safe_dump(doc).encode()})


def rule(rule_id: str, effect: str = "deny", **extra: object) -> dict[str, object]:
    return {"id": rule_id, "description": rule_id, "effect": effect, "reason": rule_id, **extra}


def request(**overrides: object) -> PolicyRequest:
    params: dict[str, object] = {
        "provider": "aws",
        "service": "ec2",
        "resource-id": "i-1",
        "resource-type": "m5.large",
        "action": "rightsize-compute",
        "environment": "dev",
        "account-id": "111",
        "estimated-monthly-impact-usd": 10,
    }
    params.update(overrides)
    return PolicyRequest.from_parameters(params)


def test_no_rules_means_allow() -> None:
    verdict = evaluate(policy_set(), request(), NOW, {})
    assert (verdict.decision, verdict.policy_ids, verdict.reasons) == ("allow", (), ())


@pytest.mark.parametrize(
    ("effects", "decision"),
    [
        (["require-approval"], "require-approval"),
        (["deny"], "deny"),
        (["require-approval", "deny"], "deny"),
        (["deny", "require-approval", "require-approval"], "deny"),
    ],
)
def test_deny_beats_require_approval(effects: list[str], decision: str) -> None:
    rules = [rule(f"r{i}", effect) for i, effect in enumerate(effects)]
    verdict = evaluate(policy_set(*rules), request(), NOW, {})
    assert verdict.decision == decision
    # Every match is reported, deny first, then by id.
    assert [m.effect for m in verdict.matches] == sorted(effects, key=lambda e: e != "deny")


@pytest.mark.parametrize(
    ("match", "matches"),
    [
        ({"providers": ["aws"]}, True),
        ({"providers": ["gcp"]}, False),
        ({"services": ["EC2"]}, True),
        ({"services": ["ec2"], "environments": ["prod"]}, False),
        ({"services": [" EC2 "]}, True),  # policy values ignore case and spaces, as requests'
        ({"servicesNotIn": ["rds", "s3"]}, True),  # every service but these
        ({"servicesNotIn": ["rds", "EC2"]}, False),
        ({"servicesNotIn": [" ec2 "]}, False),
        ({"servicesNotIn": ["rds"], "environments": ["prod"]}, False),  # keys still all hold
        ({"servicesNotIn": ["rds"], "providers": ["aws"]}, True),
        ({"accounts": ["111", "222"]}, True),
        ({"regions": ["us-east-1"]}, False),
        ({"teams": ["web"]}, False),
        ({"resourceTypes": ["m5.large"]}, True),
        ({"actions": ["stop-idle-compute"]}, False),
        ({"tags": {"owner": "*"}}, True),
        ({"tags": {"owner": ["alice", "bob"]}}, True),
        ({"tags": {"owner": "carol"}}, False),
        ({"tags": {"missing": "*"}}, False),
    ],
)
def test_selectors(match: dict[str, object], matches: bool) -> None:
    verdict = evaluate(
        policy_set(rule("r", match=match)), request(tags='{"owner": "Alice"}'), NOW, {}
    )
    assert (verdict.decision == "deny") is matches


def test_outside_business_hours_condition() -> None:
    calendars = [
        {
            "name": "c",
            "default": True,
            "timezone": "Asia/Tokyo",
            "weekdays": ["mon"],
            "hours": {"start": "09:00", "end": "17:00"},
        }
    ]
    night_only = policy_set(rule("r", when={"businessHours": False}), calendars=calendars)
    # 10:00 New York on Tuesday is 00:00 Wednesday in Tokyo: not a working day there.
    assert evaluate(night_only, request(), NOW, {}).decision == "deny"
    monday_noon_tokyo = datetime.fromisoformat("2026-03-02T12:00:00+09:00")
    assert evaluate(night_only, request(), monday_noon_tokyo, {}).decision == "allow"


def test_blast_radius_counts_only_the_request_account() -> None:
    limited = policy_set(rule("r", when={"accountActionsLastHour": {"atLeast": 3}}))
    assert evaluate(limited, request(), NOW, {"999": 50}).decision == "allow"
    assert evaluate(limited, request(), NOW, {"111": 2}).decision == "allow"
    assert evaluate(limited, request(), NOW, {"111": 3}).decision == "deny"


@pytest.mark.parametrize(
    ("resource_type", "action", "denied"),
    [
        ("Volume", "delete-unattached-volume", False),
        ("VOLUME", "Delete-Unattached-Volume", False),
        ("Instance", "stop-idle-compute", False),
        ("Instance", "delete-unattached-volume", True),  # a routing mistake
        ("Volume", "rightsize-compute", True),
        ("NatGateway", "rightsize-compute", True),  # a type no playbook was reviewed for
    ],
)
def test_action_not_allowed_on_resource_type(resource_type: str, action: str, denied: bool) -> None:
    table = {"Volume": ["delete-unattached-volume"], "Instance": ["stop-idle-compute"]}
    reviewed = policy_set(rule("r", when={"actionNotAllowedOn": table}))
    req = request(**{"resource-type": resource_type, "action": action})
    assert (evaluate(reviewed, req, NOW, {}).decision == "deny") is denied


def test_explain_says_why_an_action_is_not_allowed_on_a_resource_type() -> None:
    table = {"Volume": ["delete-unattached-volume"]}
    reviewed = policy_set(rule("r", when={"actionNotAllowedOn": table}))
    _, (on_volume,) = explain(reviewed, request(**{"resource-type": "Volume"}), NOW, {})
    assert on_volume.steps == (
        "match: action 'rightsize-compute' is not one allowed on resource type 'Volume' "
        "['delete-unattached-volume']",
    )
    _, (unknown,) = explain(reviewed, request(), NOW, {})
    assert unknown.steps == ("match: resource type 'm5.large' is not one of the listed ['volume']",)


@pytest.mark.parametrize("service", ["ec2", "EC2", " Amazon Elastic Compute Cloud "])
def test_services_not_in_is_the_complement_of_services(service: str) -> None:
    listed = ["ec2", "Amazon Elastic Compute Cloud"]
    named = policy_set(rule("named", match={"services": listed}))
    others = policy_set(rule("others", match={"servicesNotIn": listed}))
    for req in (request(service=service), request(service="lambda")):
        assert (evaluate(named, req, NOW, {}).decision == "deny") is not (
            evaluate(others, req, NOW, {}).decision == "deny"
        )
    assert evaluate(others, request(service=service), NOW, {}).decision == "allow"
    assert evaluate(others, request(service="lambda"), NOW, {}).decision == "deny"


def test_explain_says_whether_a_service_is_excluded() -> None:
    others = policy_set(rule("r", match={"servicesNotIn": ["rds", "S3"]}))
    _, (lambda_trace,) = explain(others, request(service="lambda"), NOW, {})
    assert lambda_trace.steps == (
        "match: service 'lambda' is not one of the excluded ['rds', 's3']",
    )
    _, (s3_trace,) = explain(others, request(service="S3 "), NOW, {})
    assert s3_trace.steps == ("no match: service 'S3 ' is one of the excluded ['rds', 's3']",)
    assert s3_trace.reason is None


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(policy_set(), request(), datetime(2026, 3, 3, 10), {})


def test_explain_shows_each_check_and_where_a_rule_stopped() -> None:
    rules = [
        rule("hit", match={"providers": ["aws"]}, when={"impactAboveUsd": 5}),
        rule("miss", match={"providers": ["aws"], "environments": ["prod"]}),
    ]
    verdict, traces = explain(policy_set(*rules), request(), NOW, {})
    assert verdict.policy_ids == ("t/hit",)
    by_id = {t.policy_id: t for t in traces}
    assert by_id["t/hit"].steps == (
        "match: provider 'aws' is in ['aws']",
        "match: |impact| $10.00/month > $5.00",
    )
    assert by_id["t/miss"].steps == (
        "match: provider 'aws' is in ['aws']",
        "no match: environment 'dev' is not in ['prod']",
    )
    assert by_id["t/miss"].reason is None


def test_shipped_policy_suites_pass() -> None:
    report = run_tests(SHIPPED)
    assert report.errors == ()
    failures = [f for r in report.results for f in r.failures]
    assert failures == []
    assert len(report.results) >= 50
