"""Property-based tests of the engine: it never crashes, the same input gives the same
verdict, deny always wins, and more rules never make a verdict more lenient."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdas.policy import (
    InvalidRequestError,
    PolicyRequest,
    evaluate,
    load_policy_set,
    parse_policy_files,
)
from lambdas.policy.model import SEVERITY
from lambdas.policy.policyset import PolicySet

SHIPPED_DIR = Path(__file__).parents[2] / "policies" / "optimization"
SHIPPED = load_policy_set(SHIPPED_DIR)
SHIPPED_FILES = {p.name: p.read_bytes() for p in sorted(SHIPPED_DIR.glob("*.yaml"))}
RELOADED = parse_policy_files(SHIPPED_FILES)

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
    "Australia/Lord_Howe",
]
SERVICES = [
    "rds",
    "Amazon Relational Database Service",
    "ec2",
    "ebs",
    "s3",
    "sql",
    "Azure SQL Database",
    "BigQuery",
    "Cloud SQL",
    "Compute Engine",
    "lambda",
]
ACTIONS = [
    "rightsize-compute",
    "stop-idle-compute",
    "delete-unattached-volume",
    "storage-tiering",
    "rightsize-database",
    "terminate",
]
RESOURCE_TYPES = [
    "Instance",
    "Volume",
    "DBInstance",
    "Microsoft.Compute/disks",
    "compute.googleapis.com/Disk",
    "Bucket",
]
ENVS = ["prod", "Production", "prod-eu", "staging", "dev", ""]
TEAMS = ["payments", "web", "data", ""]
ACCOUNTS = ["111", "222", "333"]
text = st.text(alphabet="abcxyz-_./:0123456789 ", min_size=1, max_size=12)

nows = st.builds(
    lambda naive, zone: naive.replace(tzinfo=ZoneInfo(zone)),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)),
    st.sampled_from(ZONES),
)
requests = st.builds(
    PolicyRequest,
    provider=st.sampled_from(["aws", "azure", "gcp", "AWS"]),
    service=st.one_of(st.sampled_from(SERVICES), text),
    resource_id=text,
    resource_type=st.one_of(st.sampled_from(RESOURCE_TYPES), text),
    action=st.one_of(st.sampled_from(ACTIONS), text),
    environment=st.one_of(st.sampled_from(ENVS), text),
    account_id=st.sampled_from(ACCOUNTS),
    estimated_monthly_impact_usd=st.floats(-1e7, 1e7, allow_nan=False),
    team=st.sampled_from(TEAMS),
    region=st.sampled_from(["us-east-1", "westeurope", ""]),
    tags=st.dictionaries(
        st.sampled_from(["cct.io/protect", "legal-hold", "team", "owner"]),
        st.sampled_from(["true", "false", "TRUE", "x"]),
        max_size=3,
    ),
    dry_run=st.booleans(),
)
recents = st.dictionaries(st.sampled_from(ACCOUNTS), st.integers(0, 40), max_size=3)


def check_consistent(
    verdict_set: PolicySet, req: PolicyRequest, now: datetime, recent: dict[str, int]
) -> str:
    verdict = evaluate(verdict_set, req, now, recent)
    worst = max((SEVERITY[m.effect] for m in verdict.matches), default=0)
    assert SEVERITY[verdict.decision] == worst
    assert len(verdict.policy_ids) == len(verdict.reasons) == len(set(verdict.policy_ids))
    keys = [(-SEVERITY[m.effect], m.policy_id) for m in verdict.matches]
    assert keys == sorted(keys)
    return verdict.decision


@settings(max_examples=300, deadline=None)
@given(requests, nows, recents)
def test_shipped_set_never_crashes_and_is_consistent(
    req: PolicyRequest, now: datetime, recent: dict[str, int]
) -> None:
    check_consistent(SHIPPED, req, now, recent)


@settings(max_examples=200, deadline=None)
@given(requests, nows, recents)
def test_same_input_same_verdict_in_any_time_zone(
    req: PolicyRequest, now: datetime, recent: dict[str, int]
) -> None:
    first = evaluate(SHIPPED, req, now, recent)
    assert evaluate(SHIPPED, req, now, recent) == first
    assert evaluate(SHIPPED, req, now.astimezone(UTC), dict(recent)) == first
    assert evaluate(RELOADED, req, now, recent) == first


def _doc(name: str, rules: list[dict[str, Any]]) -> bytes:
    return yaml.safe_dump(
        {
            "apiVersion": "cct.io/v1",
            "kind": "OptimizationPolicy",
            "metadata": {"name": name, "description": name},
            "spec": {"rules": rules},
        }
    ).encode()


CATCH_ALL_DENY = _doc(
    "zz-deny", [{"id": "all", "description": "d", "effect": "deny", "reason": "no"}]
)
CATCH_ALL_APPROVAL = _doc(
    "zz-approve", [{"id": "all", "description": "d", "effect": "require-approval", "reason": "ask"}]
)
WITH_DENY = parse_policy_files({**SHIPPED_FILES, "zz.yaml": CATCH_ALL_DENY})
WITH_APPROVAL = parse_policy_files({**SHIPPED_FILES, "zz.yaml": CATCH_ALL_APPROVAL})


@settings(max_examples=200, deadline=None)
@given(requests, nows, recents)
def test_deny_takes_precedence(req: PolicyRequest, now: datetime, recent: dict[str, int]) -> None:
    base = evaluate(SHIPPED, req, now, recent)
    denied = evaluate(WITH_DENY, req, now, recent)
    assert denied.decision == "deny"
    assert "zz-deny/all" in denied.policy_ids
    approval = evaluate(WITH_APPROVAL, req, now, recent)
    assert approval.decision == ("deny" if base.decision == "deny" else "require-approval")


# Random rules drawn from the language itself.
selectors = st.fixed_dictionaries(
    {},
    optional={
        "providers": st.lists(
            st.sampled_from(["aws", "azure", "gcp"]), min_size=1, max_size=2, unique=True
        ),
        "services": st.lists(st.sampled_from(SERVICES), min_size=1, max_size=3, unique=True),
        "servicesNotIn": st.lists(st.sampled_from(SERVICES), min_size=1, max_size=3, unique=True),
        "actions": st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2, unique=True),
        "environments": st.lists(
            st.sampled_from([e for e in ENVS if e]), min_size=1, max_size=2, unique=True
        ),
        "teams": st.lists(
            st.sampled_from([t for t in TEAMS if t]), min_size=1, max_size=2, unique=True
        ),
        "tags": st.dictionaries(
            st.sampled_from(["cct.io/protect", "owner"]),
            st.sampled_from(["true", "*"]),
            min_size=1,
            max_size=2,
        ),
    },
).filter(lambda match: not {"services", "servicesNotIn"} <= match.keys())  # the schema refuses both
conditions = st.fixed_dictionaries(
    {},
    optional={
        "businessHours": st.booleans(),
        "impactAboveUsd": st.floats(0, 1e5, allow_nan=False),
        "actionNotIn": st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2, unique=True),
        "actionNotAllowedOn": st.dictionaries(
            st.sampled_from(RESOURCE_TYPES),
            st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2, unique=True),
            min_size=1,
            max_size=2,
        ),
        "dryRun": st.booleans(),
        "accountActionsLastHour": st.builds(lambda n: {"atLeast": n}, st.integers(1, 30)),
        "freezeWindows": st.just(
            [{"name": "f", "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00+02:00"}]
        ),
    },
).filter(bool)
rules = st.lists(
    st.builds(
        lambda i, effect, match, when: {
            "id": f"r{i}",
            "description": "d",
            "effect": effect,
            "reason": "{provider} {service} {action} {impact_usd}",
            **({"match": match} if match else {}),
            **({"when": when} if when else {}),
        },
        st.integers(0, 10_000),
        st.sampled_from(["deny", "require-approval"]),
        selectors,
        st.one_of(st.none(), conditions),
    ),
    max_size=6,
    unique_by=lambda r: r["id"],
)
CALENDAR = {
    "calendars": [
        {
            "name": "c",
            "default": True,
            "timezone": "Europe/Berlin",
            "weekdays": ["mon", "fri"],
            "hours": {"start": "09:00", "end": "17:30"},
            "holidays": ["2026-05-01"],
        }
    ]
}


@settings(max_examples=120, deadline=None)
@given(rules, requests, nows, recents, st.data())
def test_random_policies_never_crash_and_more_rules_are_never_more_lenient(
    generated: list[dict[str, Any]],
    req: PolicyRequest,
    now: datetime,
    recent: dict[str, int],
    data: st.DataObject,
) -> None:
    doc = yaml.safe_load(_doc("random", generated))
    doc["spec"].update(CALENDAR)
    full = parse_policy_files({"r.yaml": yaml.safe_dump(doc).encode()})
    decision = check_consistent(full, req, now, recent)
    if generated:
        drop = data.draw(st.integers(0, len(generated) - 1))
        doc["spec"]["rules"] = [r for i, r in enumerate(generated) if i != drop]
        fewer = parse_policy_files({"r.yaml": yaml.safe_dump(doc).encode()})
        assert SEVERITY[evaluate(fewer, req, now, recent).decision] <= SEVERITY[decision]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            sorted(
                {
                    "provider",
                    "service",
                    "resource-id",
                    "resource-type",
                    "action",
                    "environment",
                    "account-id",
                    "estimated-monthly-impact-usd",
                    "tags",
                    "dry-run",
                    "team",
                    "x",
                }
            )
        ),
        st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none(), st.floats()),
    )
)
def test_parameter_parsing_fails_only_with_invalid_request(params: dict[str, Any]) -> None:
    try:
        request = PolicyRequest.from_parameters(params)
    except InvalidRequestError:
        return
    assert PolicyRequest.from_parameters(request.to_parameters()) == request


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=4, unique=True), requests, nows)
def test_services_not_in_selects_exactly_the_requests_services_does_not(
    listed: list[str], req: PolicyRequest, now: datetime
) -> None:
    def denies(match: dict[str, Any]) -> bool:
        rule = {"id": "r", "description": "d", "effect": "deny", "reason": "x", "match": match}
        policy_set = parse_policy_files({"r.yaml": _doc("n", [rule])})
        return evaluate(policy_set, req, now, {}).decision == "deny"

    assert denies({"services": listed}) is not denies({"servicesNotIn": listed})
