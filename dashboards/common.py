"""What the CCT dashboards share: the filter variables, how each datasource applies them, and
the dashboard uids that links point at."""

from __future__ import annotations

from dashboards.model import QueryVariable

COST_OVERVIEW_UID = "cct-cost-overview"
ANOMALIES_UID = "cct-anomalies"
OPTIMIZATIONS_UID = "cct-optimizations"
PIPELINE_UID = "cct-pipeline"

# The rollup series exists for every group that has (or had) a live resource, so its label
# values are the set of providers, accounts, teams and environments CCT knows.
_ROLLUP = "cct_cost_rate_rollup_usd_per_hour"

PROVIDER = QueryVariable("provider", "Provider", f"label_values({_ROLLUP}, provider)")
BILLING_ACCOUNT = QueryVariable(
    "billing_account",
    "Billing account",
    f'label_values({_ROLLUP}{{provider=~"$provider"}}, billing_account_id)',
)
_IN_ACCOUNT = f'{_ROLLUP}{{provider=~"$provider", billing_account_id=~"$billing_account"}}'
TEAM = QueryVariable("team", "Team", f"label_values({_IN_ACCOUNT}, team)")
ENV = QueryVariable("env", "Environment", f"label_values({_IN_ACCOUNT}, env)")
FILTERS = (PROVIDER, BILLING_ACCOUNT, TEAM, ENV)
FILTER_NAMES = tuple(v.name for v in FILTERS)

# PromQL label matchers for series that carry all four dimensions.
PROM_FILTER = (
    'provider=~"$provider", billing_account_id=~"$billing_account", team=~"$team", env=~"$env"'
)


def run_rate(basis: str, offset: str = "") -> str:
    """The collector's rollup run-rate on `basis` ("reconciled", "list" or a variable), with
    a group's list rate where it has no series on that basis: the collector writes a
    reconciled series only for groups with a billing factor, so without this every group
    not yet billed (all Azure and GCP accounts when only the AWS export is loaded) vanished
    from the reconciled view instead of showing its estimate."""
    at = f" offset {offset}" if offset else ""

    def on(b: str) -> str:
        return f'cct_cost_rate_rollup_usd_per_hour{{basis="{b}", {PROM_FILTER}}}{at}'

    return f"({on(basis)} or ignoring(basis) {on('list')})"


# For series that only carry provider and account (estimate error, unpriced resources).
PROM_ACCOUNT_FILTER = 'provider=~"$provider", billing_account_id=~"$billing_account"'


def sql_matches(column: str, var: str) -> str:
    """`column` matches the variable's selection, as SQL safe for any tag value.

    Grafana's All is the custom value `.*`, which it inserts unformatted, so one anchored
    regex covers All, one value and several values (`:regex` escapes each value and joins
    them with |). `:regex` does not escape quotes, so a value inside '...' could end the
    literal (`' or true or '` made every row match): the pattern is dollar-quoted instead.
    It is `$$(...)$$` with the variable between the parentheses: `:regex` puts a backslash
    before every `$` of a value, so the text between the delimiters can never contain `$$`,
    and the parentheses keep a value's escaped `$` from touching the closing delimiter.
    """
    return f"{column} ~ ('^' || $$(${{{var}:regex}})$$ || '$')"


# The filter for the `reporting` views, whose dimension columns are never null ('' when
# unknown). Grafana's database role only reads the `reporting` views.
SQL_FILTER = " and ".join(
    sql_matches(column, var)
    for column, var in (
        ("provider", "provider"),
        ("billing_account_id", "billing_account"),
        ("team", "team"),
        ("env", "env"),
    )
)
