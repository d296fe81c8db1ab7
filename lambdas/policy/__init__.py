"""Optimization policies as code: the policy language, its loader and the pure engine.

Public API (stable; other areas code against it, see docs/architecture.md "Admission policies"):

    from lambdas.policy import PolicyRequest, Verdict, load_policy_set, evaluate

    policy_set = load_policy_set("policies/optimization")
    request = PolicyRequest.from_parameters(workflow_parameters)
    verdict = evaluate(policy_set, request, now=datetime.now(UTC), recent_actions={"1234": 3})
    verdict.decision, verdict.policy_ids, verdict.reasons
"""

from lambdas.policy.engine import RuleTrace, evaluate, explain
from lambdas.policy.loader import PolicyLoadError, load_policy_set, parse_policy_files
from lambdas.policy.model import InvalidRequestError, PolicyRequest, RuleMatch, Verdict
from lambdas.policy.policyset import PolicySet

__all__ = [
    "InvalidRequestError",
    "PolicyLoadError",
    "PolicyRequest",
    "PolicySet",
    "RuleMatch",
    "RuleTrace",
    "Verdict",
    "evaluate",
    "explain",
    "load_policy_set",
    "parse_policy_files",
]
