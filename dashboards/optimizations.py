"""Optimizations and savings: what the remediation workflows did, what policy stopped, what
waits for a human, and whether the promised savings showed up."""

from __future__ import annotations

from dashboards.common import (
    ANOMALIES_UID,
    COST_OVERVIEW_UID,
    FILTER_NAMES,
    FILTERS,
    OPTIMIZATIONS_UID,
    SQL_FILTER,
)
from dashboards.model import (
    COUNT,
    SECONDS,
    USD,
    Dashboard,
    Link,
    Panel,
    Row,
    SqlQuery,
)

# Savings are monthly amounts per month a run finished, so the chart covers every month the
# time range touches.
_MONTHS_IN_RANGE = (
    "month >= date_trunc('month', $__timeFrom()::timestamptz) and month <= $__timeTo()::timestamptz"
)
_TO_COST = Link(
    "Cost overview for this account",
    COST_OVERVIEW_UID,
    ("var-billing_account=${__data.fields.billing_account_id}",),
)
_TO_ANOMALIES = Link(
    "Anomalies for this account",
    ANOMALIES_UID,
    ("var-billing_account=${__data.fields.billing_account_id}",),
)
_SAVING_UNITS = (
    ("estimated_monthly_saving_usd", USD),
    ("verified_monthly_saving_usd", USD),
)

DASHBOARD = Dashboard(
    uid=OPTIMIZATIONS_UID,
    title="CCT / Optimizations and savings",
    description="Remediation runs, policy denials, pending approvals and verified savings.",
    variables=FILTERS,
    carried_vars=FILTER_NAMES,
    time_from="now-30d",
    rows=(
        Row(
            "Summary",
            (
                Panel(
                    "Verified monthly savings (runs finished in range)",
                    "stat",
                    (
                        SqlQuery(
                            "select coalesce(sum(verified_monthly_saving_usd), 0) as verified"
                            " from reporting.optimization_runs where state = 'succeeded'"
                            f" and $__timeFilter(finished_at) and {SQL_FILTER}"
                        ),
                    ),
                    unit=USD,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Estimated monthly savings (runs finished in range)",
                    "stat",
                    (
                        SqlQuery(
                            "select coalesce(sum(estimated_monthly_saving_usd), 0) as estimated"
                            " from reporting.optimization_runs where state = 'succeeded'"
                            f" and $__timeFilter(finished_at) and {SQL_FILTER}"
                        ),
                    ),
                    unit=USD,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Awaiting approval",
                    "stat",
                    (
                        SqlQuery(
                            "select count(*) as awaiting from reporting.optimization_runs"
                            f" where state = 'awaiting_approval' and {SQL_FILTER}"
                        ),
                    ),
                    unit=COUNT,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Denied by policy in range",
                    "stat",
                    (
                        SqlQuery(
                            "select count(*) as denied from reporting.policy_decisions"
                            " where verdict = 'deny' and $__timeFilter(decided_at)"
                            f" and {SQL_FILTER}"
                        ),
                    ),
                    unit=COUNT,
                    width=6,
                    height=4,
                ),
            ),
        ),
        Row(
            "Runs",
            (
                Panel(
                    "Runs by state",
                    "piechart",
                    (
                        SqlQuery(
                            f"""select state, count(*) as runs
  from reporting.optimization_runs
 where $__timeFilter(created_at) and {SQL_FILTER}
 group by state
 order by state"""
                        ),
                    ),
                    unit=COUNT,
                    width=8,
                ),
                Panel(
                    "Runs started per day, by state",
                    "timeseries",
                    (
                        SqlQuery(
                            f"""select $__timeGroupAlias(created_at, '1d', 0),
       state as metric,
       count(*) as value
  from reporting.optimization_runs
 where $__timeFilter(created_at) and {SQL_FILTER}
 group by 1, 2
 order by 1""",
                            format="time_series",
                        ),
                    ),
                    unit=COUNT,
                    bars=True,
                    stacked=True,
                    width=16,
                ),
                Panel(
                    "Recent runs",
                    "table",
                    (
                        SqlQuery(
                            f"""select created_at, run_id, playbook, state, reason, provider,
       billing_account_id, account_id, resource_id, team, env,
       estimated_monthly_saving_usd, verified_monthly_saving_usd, finished_at
  from reporting.optimization_runs
 where $__timeFilter(created_at) and {SQL_FILTER}
 order by created_at desc
 limit 200"""
                        ),
                    ),
                    column_units=_SAVING_UNITS,
                    width=24,
                    links=(_TO_ANOMALIES,),
                ),
            ),
        ),
        Row(
            "Policy and approvals",
            (
                Panel(
                    "Denials with policy reasons",
                    "table",
                    (
                        SqlQuery(
                            f"""select decided_at, source, playbook, billing_account_id,
       resource_id, team, env, policy_ids, reasons, run_id
  from reporting.policy_decisions
 where verdict = 'deny' and $__timeFilter(decided_at) and {SQL_FILTER}
 order by decided_at desc
 limit 200"""
                        ),
                    ),
                    links=(_TO_COST,),
                ),
                Panel(
                    "Pending approvals, oldest first",
                    "table",
                    (
                        SqlQuery(
                            f"""select created_at, age_s as waiting, run_id, playbook,
       billing_account_id, resource_id, team, env,
       estimated_monthly_saving_usd, policy_ids, reasons
  from reporting.pending_approvals
 where {SQL_FILTER}
 order by created_at"""
                        ),
                    ),
                    column_units=(("waiting", SECONDS), ("estimated_monthly_saving_usd", USD)),
                    links=(_TO_COST,),
                ),
            ),
        ),
        Row(
            "Savings",
            (
                Panel(
                    "Estimated vs verified monthly savings, by month finished",
                    "timeseries",
                    (
                        SqlQuery(
                            f"""select month as time,
       sum(estimated_monthly_saving_usd) as "Estimated",
       sum(verified_monthly_saving_usd) as "Verified"
  from reporting.savings_by_team_month
 where {_MONTHS_IN_RANGE} and {SQL_FILTER}
 group by month
 order by month""",
                            format="time_series",
                        ),
                    ),
                    unit=USD,
                    bars=True,
                ),
                Panel(
                    "Savings by team and month",
                    "table",
                    (
                        SqlQuery(
                            f"""select month, team, env, provider, billing_account_id, runs,
       unverified_runs, estimated_monthly_saving_usd, verified_monthly_saving_usd
  from reporting.savings_by_team_month
 where {_MONTHS_IN_RANGE} and {SQL_FILTER}
 order by month desc, verified_monthly_saving_usd desc"""
                        ),
                    ),
                    column_units=_SAVING_UNITS,
                ),
                Panel(
                    "Actions with before and after state",
                    "table",
                    (
                        SqlQuery(
                            f"""select executed_at, run_id, playbook, action, resource_id, outcome,
       dry_run, reason, before_state::text as before_state,
       after_state::text as after_state,
       estimated_monthly_saving_usd, verified_monthly_saving_usd
  from reporting.optimization_actions
 where $__timeFilter(executed_at) and {SQL_FILTER}
 order by executed_at desc
 limit 200"""
                        ),
                    ),
                    column_units=_SAVING_UNITS,
                    width=24,
                ),
            ),
        ),
    ),
)
