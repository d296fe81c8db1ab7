"""Cost overview: run-rate (seconds fresh, estimated) against billed cost (hours to days late,
authoritative) by every dimension, the biggest movers, and how far the estimate is off."""

from __future__ import annotations

from dashboards.common import (
    ANOMALIES_UID,
    COST_OVERVIEW_UID,
    FILTER_NAMES,
    FILTERS,
    PIPELINE_UID,
    PROM_ACCOUNT_FILTER,
    PROM_FILTER,
    run_rate,
)
from dashboards.model import (
    COUNT,
    PERCENT,
    USD,
    USD_PER_HOUR,
    CustomVariable,
    Dashboard,
    Link,
    Panel,
    PromQuery,
    Row,
)

BASIS = CustomVariable("basis", "Run-rate basis", ("reconciled", "list"))
WINDOW = CustomVariable("window", "Movers over", ("1d", "1h", "6h", "7d"))

# Reconciled where the group has a billing factor, its list rate where it has none.
RUN_RATE = run_rate("$basis")
# One sample per billed hour at ChargePeriodStart: the newest hour within the last hour of
# the graph's step is that hour's cost, i.e. an average $/h comparable with the run-rate.
BILLED_HOURLY = f"last_over_time(cct_billed_cost_usd{{{PROM_FILTER}}}[1h])"
HOURS_PER_MONTH = 730
# The billing loader writes one error sample per load (a delivery is daily, or as rare as the
# month's invoice), and the collector applies the latest factor however old: show the latest
# within a month, not only a sample from the last five minutes.
ESTIMATE_ERROR = f"last_over_time(cct_cost_estimate_error_ratio{{{PROM_ACCOUNT_FILTER}}}[31d])"

_DIMENSIONS = (
    ("provider", "provider", ()),
    (
        "billing account",
        "billing_account_id",
        ("var-billing_account=${__field.labels.billing_account_id}",),
    ),
    ("service", "service_name", ()),
    ("region", "region_id", ()),
    ("team", "team", ("var-team=${__field.labels.team}",)),
)


def _by(label: str) -> Panel:
    title, dim, params = next(d for d in _DIMENSIONS if d[1] == label)
    links = (Link(f"Anomalies for this {title}", ANOMALIES_UID, params),) if params else ()
    return Panel(
        f"Run-rate vs billed by {title}",
        "timeseries",
        (
            PromQuery(f"sum by ({dim}) ({RUN_RATE})", legend=f"{{{{{dim}}}}} run-rate"),
            PromQuery(f"sum by ({dim}) ({BILLED_HOURLY})", legend=f"{{{{{dim}}}}} billed"),
        ),
        unit=USD_PER_HOUR,
        description=(
            "Run-rate: the estimate from resource events, seconds fresh. Billed: the cost of "
            "each billed hour from the FOCUS export, which arrives hours to days later."
        ),
        links=links,
    )


_MOVER_KEYS = "provider, billing_account_id, service_name, team"
_NOW = f"sum by ({_MOVER_KEYS}) ({RUN_RATE})"
_BEFORE = f"sum by ({_MOVER_KEYS}) ({run_rate('$basis', '$window')})"
# A group that did not exist $window ago moved by its whole run-rate.
_CHANGE = f"({_NOW} - ({_BEFORE} or {_NOW} * 0))"
_MOVER_LINKS = (
    Link(
        "Anomalies for this account",
        ANOMALIES_UID,
        ("var-billing_account=${__data.fields.billing_account_id}",),
    ),
)

DASHBOARD = Dashboard(
    uid=COST_OVERVIEW_UID,
    title="CCT / Cost overview",
    description="Run-rate against billed cost by provider, account, service, region and team.",
    variables=(*FILTERS, BASIS, WINDOW),
    carried_vars=FILTER_NAMES,
    rows=(
        Row(
            "Now",
            (
                Panel(
                    "Run-rate",
                    "stat",
                    (PromQuery(f"sum({RUN_RATE})", instant=True),),
                    unit=USD_PER_HOUR,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Projected month at this run-rate",
                    "stat",
                    (PromQuery(f"sum({RUN_RATE}) * {HOURS_PER_MONTH}", instant=True),),
                    unit=USD,
                    width=6,
                    height=4,
                ),
                Panel(
                    "Billed, last 7 days",
                    "stat",
                    (
                        PromQuery(
                            f"sum(sum_over_time(cct_billed_cost_usd{{{PROM_FILTER}}}[7d]))",
                            instant=True,
                        ),
                    ),
                    unit=USD,
                    width=6,
                    height=4,
                    description="Only hours the billing exports already cover.",
                ),
                Panel(
                    "Unpriced resources",
                    "stat",
                    (
                        PromQuery(
                            f"sum(cct_cost_rate_unpriced_resources{{{PROM_ACCOUNT_FILTER}}})",
                            instant=True,
                        ),
                    ),
                    unit=COUNT,
                    width=6,
                    height=4,
                    description=(
                        "Live resources whose SKU is missing from the price catalog: their cost "
                        "is not in the run-rate (never counted as $0)."
                    ),
                    links=(Link("Ingestion health", PIPELINE_UID),),
                ),
            ),
        ),
        Row("Run-rate vs billed", tuple(_by(dim) for _, dim, _ in _DIMENSIONS)),
        Row(
            "Top movers",
            (
                Panel(
                    "Top risers over $window",
                    "table",
                    (
                        PromQuery(
                            f"sort_desc(topk(10, {_CHANGE} > 0))", instant=True, format="table"
                        ),
                    ),
                    unit=USD_PER_HOUR,
                    links=_MOVER_LINKS,
                ),
                Panel(
                    "Top fallers over $window",
                    "table",
                    (PromQuery(f"sort(bottomk(10, {_CHANGE} < 0))", instant=True, format="table"),),
                    unit=USD_PER_HOUR,
                    links=_MOVER_LINKS,
                ),
            ),
        ),
        Row(
            "Estimate accuracy",
            (
                Panel(
                    "Estimate error (billed / estimated - 1)",
                    "timeseries",
                    (
                        PromQuery(
                            ESTIMATE_ERROR,
                            legend="{{billing_account_id}} {{service_name}}",
                        ),
                    ),
                    unit=PERCENT,
                    description="From reconciliation with the billing exports, per service: the"
                    " latest load's value, held until the next load.",
                ),
                Panel(
                    "Largest estimate errors now (absolute)",
                    "bargauge",
                    (
                        PromQuery(
                            f"topk(10, abs({ESTIMATE_ERROR}))",
                            legend="{{provider}} {{billing_account_id}} {{service_name}}",
                            instant=True,
                        ),
                    ),
                    unit=PERCENT,
                ),
            ),
        ),
    ),
)
