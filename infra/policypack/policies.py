"""The pack's policies: each check of `checks` wrapped as a pulumi_policy policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.policypack.checks import RESOURCE_CHECKS, Check, check_default_deny


def _resource_validator(check: Check) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        for problem in check.function(args.resource_type, args.props):
            report(f"{args.urn}: {problem}", args.urn)

    return validate


def _default_deny(args: StackValidationArgs, report: ReportViolation) -> None:
    resources: list[tuple[str, Any]] = [(r.resource_type, r.props) for r in args.resources]
    for problem in check_default_deny(resources):
        report(problem, None)


POLICIES: list[Policy] = [
    *(
        ResourceValidationPolicy(
            name=check.name,
            description=check.description,
            validate=_resource_validator(check),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
        for check in RESOURCE_CHECKS
    ),
    StackValidationPolicy(
        name="k8s-default-deny",
        description="Every namespace has a default-deny NetworkPolicy.",
        validate=_default_deny,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
]
