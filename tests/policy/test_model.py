"""Building a PolicyRequest from Workflow parameters, as Argo passes them (all strings)."""

from __future__ import annotations

import pytest

from lambdas.policy import InvalidRequestError, PolicyRequest

PARAMS = {
    "provider": "aws",
    "service": "Amazon Relational Database Service",
    "resource-id": "db-orders",
    "resource-type": "db.r6g.2xlarge",
    "action": "rightsize-database",
    "environment": "prod",
    "team": "web",
    "account-id": "123456789012",
    "region": "us-east-1",
    "tags": '{"cct.io/protect":"false","team":"web"}',
    "estimated-monthly-impact-usd": "412.50",
    "dry-run": "false",
    "event-id": "4f2a",
}


def test_workflow_parameters_parse() -> None:
    request = PolicyRequest.from_parameters(PARAMS)
    assert request.tags == {"cct.io/protect": "false", "team": "web"}
    assert request.estimated_monthly_impact_usd == 412.5
    assert request.dry_run is False
    assert PolicyRequest.from_parameters(request.to_parameters()) == request


def test_parameters_the_policies_do_not_read_are_ignored() -> None:
    request = PolicyRequest.from_parameters({**PARAMS, "target-sku": "db.r6g.large"})
    assert request == PolicyRequest.from_parameters(PARAMS)


def test_optional_parameters_default() -> None:
    required = {
        k: v
        for k, v in PARAMS.items()
        if k not in {"team", "region", "tags", "dry-run", "event-id"}
    }
    request = PolicyRequest.from_parameters(required)
    assert (request.team, request.region, dict(request.tags), request.dry_run) == (
        "",
        "",
        {},
        False,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"account-id": None}, "missing parameter(s): account-id"),
        ({"action": None, "provider": None}, "missing parameter(s): provider, action"),
        ({"action": ""}, "parameter action must not be empty"),
        (
            {"estimated-monthly-impact-usd": "a lot"},
            "estimated-monthly-impact-usd='a lot' is not a number",
        ),
        (
            {"estimated-monthly-impact-usd": "nan"},
            "estimated-monthly-impact-usd='nan' is not a finite number",
        ),
        ({"estimated-monthly-impact-usd": "inf"}, "is not a finite number"),
        ({"dry-run": "yes"}, "parameter dry-run='yes' must be true or false"),
        ({"tags": "{not json"}, "parameter tags is not valid JSON"),
        ({"tags": '["a"]'}, "parameter tags must be a JSON object of string values"),
        ({"tags": '{"n": 1}'}, "parameter tags: value of 'n' must be a string"),
        ({"provider": ["aws"]}, "parameter provider must be a string, got list"),
    ],
)
def test_bad_parameters_name_the_problem(change: dict[str, object], message: str) -> None:
    params: dict[str, object] = {k: v for k, v in PARAMS.items() if change.get(k, "") is not None}
    params.update({k: v for k, v in change.items() if v is not None})
    with pytest.raises(InvalidRequestError) as err:
        PolicyRequest.from_parameters(params)
    assert message in str(err.value)
