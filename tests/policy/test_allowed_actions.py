"""`allowed-actions.yaml`'s catch-all against the rules it completes.

`other-services` denies real actions on every service the other rules do not name, with
`servicesNotIn`. The language cannot refer to another rule's list, so the policy repeats the
names: these tests fail when a service is added to one place and not the other (a service
named only by a rule would be denied by the catch-all too; one excluded only by the catch-all
would act unrestricted).
"""

from __future__ import annotations

from pathlib import Path

from lambdas.policy import load_policy_set
from lambdas.policy.policyset import Policy, Rule

SHIPPED = Path(__file__).parents[2] / "policies" / "optimization"
CATCH_ALL = "allowed-actions/other-services"


def allowed_actions() -> Policy:
    (policy,) = (p for p in load_policy_set(SHIPPED).policies if p.name == "allowed-actions")
    return policy


def services(rule: Rule) -> frozenset[str]:
    return next((v for attribute, v in rule.match.fields if attribute == "service"), frozenset())


def test_the_catch_all_excludes_exactly_the_services_the_other_rules_name() -> None:
    policy = allowed_actions()
    (catch_all,) = (r for r in policy.rules if r.policy_id == CATCH_ALL)
    others = [r for r in policy.rules if r is not catch_all]
    # Every other rule is about named services: one without `services` would apply to every
    # service, and "the services no rule names" would mean nothing.
    assert all(services(r) for r in others), [r.policy_id for r in others if not services(r)]
    named = frozenset().union(*(services(r) for r in others))
    (excluded,) = (v for attribute, v in catch_all.match.excluded if attribute == "service")
    assert sorted(named - excluded) == [], "named by a rule but denied by the catch-all"
    assert sorted(excluded - named) == [], "excluded by the catch-all but named by no rule"


def test_the_catch_all_denies_real_actions_only_and_selects_on_service_alone() -> None:
    (catch_all,) = (r for r in allowed_actions().rules if r.policy_id == CATCH_ALL)
    assert catch_all.effect == "deny"
    assert catch_all.when.dry_run is False
    assert (catch_all.match.fields, catch_all.match.tags) == ((), ())
    assert [attribute for attribute, _ in catch_all.match.excluded] == ["service"]
