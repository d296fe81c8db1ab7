"""Anomalies and attribution: when cost jumped, what is still open, which resources carry the
increase, and the change events (and who made them) behind it."""

from __future__ import annotations

from dashboards.common import (
    ANOMALIES_UID,
    COST_OVERVIEW_UID,
    FILTER_NAMES,
    FILTERS,
    OPTIMIZATIONS_UID,
    SQL_FILTER,
    run_rate,
)
from dashboards.model import (
    COUNT,
    PERCENT,
    SECONDS,
    USD_PER_HOUR,
    Annotation,
    Dashboard,
    Link,
    Panel,
    PromQuery,
    Row,
    SqlQuery,
)

_TO_COST = Link(
    "Cost overview for this account",
    COST_OVERVIEW_UID,
    ("var-billing_account=${__data.fields.billing_account_id}",),
)
_TO_OPTIMIZATIONS = Link(
    "Optimizations for this account",
    OPTIMIZATIONS_UID,
    ("var-billing_account=${__data.fields.billing_account_id}",),
)
_DELTA_UNIT = (("delta_usd_per_hour", USD_PER_HOUR),)

ANOMALY_MARKS = Annotation(
    "Cost anomalies",
    SqlQuery(
        f"""select started_at as time,
       coalesce(resolved_at, now()) as timeend,
       severity || ' ' || rule || ': ' || dimensions_text
         || ' (+' || round(delta_usd_per_hour, 2) || ' $/h)' as text,
       severity || ',' || rule as tags
  from reporting.anomalies
 where $__timeFilter(started_at) and {SQL_FILTER}
 order by started_at""",
    ),
)

DASHBOARD = Dashboard(
    uid=ANOMALIES_UID,
    title="CCT / Anomalies and attribution",
    description="Cost anomalies, their ranked contributors and the change events behind them.",
    variables=FILTERS,
    carried_vars=FILTER_NAMES,
    annotations=(ANOMALY_MARKS,),
    time_from="now-7d",
    rows=(
        Row(
            "Overview",
            (
                Panel(
                    "Open anomalies",
                    "stat",
                    (
                        SqlQuery(
                            "select count(*) as open_anomalies from reporting.anomalies"
                            f" where is_open and {SQL_FILTER}"
                        ),
                    ),
                    unit=COUNT,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Excess run-rate of open anomalies",
                    "stat",
                    (
                        SqlQuery(
                            "select coalesce(sum(delta_usd_per_hour), 0) as excess"
                            f" from reporting.anomalies where is_open and {SQL_FILTER}"
                        ),
                    ),
                    unit=USD_PER_HOUR,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Anomalies started in range",
                    "stat",
                    (
                        SqlQuery(
                            "select count(*) as started from reporting.anomalies"
                            f" where $__timeFilter(started_at) and {SQL_FILTER}"
                        ),
                    ),
                    unit=COUNT,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Median time to resolve",
                    "stat",
                    (
                        SqlQuery(
                            "select coalesce(percentile_cont(0.5) within group"
                            " (order by duration_s), 0) as median_open_s"
                            " from reporting.anomalies"
                            f" where not is_open and $__timeFilter(started_at) and {SQL_FILTER}"
                        ),
                    ),
                    unit=SECONDS,
                    width=6,
                    height=4,
                ),
            ),
        ),
        Row(
            "Timeline",
            (
                Panel(
                    "Anomalies started per hour, by severity",
                    "timeseries",
                    (
                        SqlQuery(
                            f"""select $__timeGroupAlias(started_at, '1h', 0),
       severity as metric,
       count(*) as value
  from reporting.anomalies
 where $__timeFilter(started_at) and {SQL_FILTER}
 group by 1, 2
 order by 1""",
                            format="time_series",
                        ),
                    ),
                    unit=COUNT,
                    bars=True,
                    stacked=True,
                ),
                Panel(
                    "Run-rate by account (anomalies marked)",
                    "timeseries",
                    (
                        PromQuery(
                            f"sum by (billing_account_id) ({run_rate('reconciled')})",
                            legend="{{billing_account_id}}",
                        ),
                    ),
                    unit=USD_PER_HOUR,
                    links=(
                        Link(
                            "Cost overview for this account",
                            COST_OVERVIEW_UID,
                            ("var-billing_account=${__field.labels.billing_account_id}",),
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Open anomalies",
            (
                Panel(
                    "Open anomalies, largest excess first",
                    "table",
                    (
                        SqlQuery(
                            f"""select started_at, severity, rule, level,
       provider, billing_account_id, dimensions_text as dimensions,
       expected_usd_per_hour as expected,
       observed_usd_per_hour as observed,
       delta_usd_per_hour as delta,
       deviation, top_contributor, change_event_count as change_events, fingerprint
  from reporting.anomalies
 where is_open and {SQL_FILTER}
 order by delta_usd_per_hour desc
 limit 100"""
                        ),
                    ),
                    column_units=(
                        ("expected", USD_PER_HOUR),
                        ("observed", USD_PER_HOUR),
                        ("delta", USD_PER_HOUR),
                    ),
                    width=24,
                    height=9,
                    links=(_TO_COST, _TO_OPTIMIZATIONS),
                ),
            ),
        ),
        Row(
            "Attribution",
            (
                Panel(
                    "Ranked contributors",
                    "table",
                    (
                        SqlQuery(
                            f"""select started_at, billing_account_id, rank, level, contributor,
       share, delta_usd_per_hour, fingerprint
  from reporting.anomaly_contributors
 where $__timeFilter(started_at) and {SQL_FILTER}
 order by started_at desc, fingerprint, rank
 limit 200"""
                        ),
                    ),
                    column_units=(*_DELTA_UNIT, ("share", PERCENT)),
                    links=(_TO_COST,),
                ),
                # One incident per root cause: the service, team and account rises a
                # resource's anomaly explains are its context, not incidents of their own.
                Panel(
                    "What each anomaly explains (its service, team and account)",
                    "table",
                    (
                        SqlQuery(
                            f"""select started_at, anomaly, level, aggregate, rule,
       expected_usd_per_hour as expected, observed_usd_per_hour as observed,
       delta_usd_per_hour, billing_account_id, fingerprint
  from reporting.anomaly_ancestors
 where $__timeFilter(started_at) and {SQL_FILTER}
 order by started_at desc, fingerprint, position
 limit 200"""
                        ),
                    ),
                    column_units=(
                        *_DELTA_UNIT,
                        ("expected", USD_PER_HOUR),
                        ("observed", USD_PER_HOUR),
                    ),
                    links=(_TO_COST,),
                ),
                Panel(
                    "Change events and actors behind anomalies",
                    "table",
                    (
                        SqlQuery(
                            f"""select event_time, actor, action, resource_id, pulumi_stack,
       delta_usd_per_hour, started_at as anomaly_started, billing_account_id, fingerprint
  from reporting.anomaly_change_events
 where $__timeFilter(started_at) and {SQL_FILTER}
 order by started_at desc, event_time desc
 limit 200"""
                        ),
                    ),
                    column_units=_DELTA_UNIT,
                    width=24,
                    links=(_TO_COST,),
                ),
                Panel(
                    "Largest run-rate changes (all change events)",
                    "table",
                    (
                        SqlQuery(
                            f"""select event_time, actor, action, provider, billing_account_id,
       service_name, resource_id, team, env, pulumi_stack,
       usd_per_hour_before, usd_per_hour_after, delta_usd_per_hour
  from reporting.change_events
 where $__timeFilter(event_time) and {SQL_FILTER}
 order by abs(delta_usd_per_hour) desc, event_time desc
 limit 50"""
                        ),
                    ),
                    column_units=(
                        *_DELTA_UNIT,
                        ("usd_per_hour_before", USD_PER_HOUR),
                        ("usd_per_hour_after", USD_PER_HOUR),
                    ),
                    width=16,
                    links=(_TO_COST,),
                ),
                Panel(
                    "Actors who added the most run-rate",
                    "barchart",
                    (
                        SqlQuery(
                            f"""select actor, sum(delta_usd_per_hour) as added_usd_per_hour
  from reporting.change_events
 where $__timeFilter(event_time) and {SQL_FILTER} and delta_usd_per_hour > 0
 group by actor
 order by 2 desc
 limit 10"""
                        ),
                    ),
                    unit=USD_PER_HOUR,
                    width=8,
                ),
            ),
        ),
    ),
)
