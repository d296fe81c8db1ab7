"""Pipeline health: is CCT itself keeping up? Ingest rate and rejects, detection cycle time,
end-to-end latency, Kafka consumer lag, admission latency and dead letters, from the handlers'
own `/metrics` (names in docs/architecture.md, "Results store and dashboards")."""

from __future__ import annotations

from dashboards.common import ANOMALIES_UID, PIPELINE_UID, PROVIDER, sql_matches
from dashboards.model import (
    COUNT,
    PER_SECOND,
    SECONDS,
    Dashboard,
    Link,
    Panel,
    PromQuery,
    QueryVariable,
    Row,
    SqlQuery,
)

# The handlers' series carry the namespace they were scraped from, so one Grafana can watch
# several CCT installations (and tests can isolate theirs).
NAMESPACE = QueryVariable(
    "namespace",
    "Namespace",
    'label_values({__name__=~"cct_(collector|billing|detector|bridge|trigger|admission)_.+"},'
    " namespace)",
)
NS = 'namespace=~"$namespace"'
_SQL_PROVIDER = sql_matches("provider", "provider")


def _rate(metric: str, by: str, extra: str = "") -> str:
    matchers = ", ".join(m for m in (NS, extra) if m)
    return f"sum by ({by}) (rate({metric}{{{matchers}}}[$__rate_interval]))"


def _quantiles(histogram: str, *quantiles: float) -> tuple[PromQuery, ...]:
    return tuple(
        PromQuery(
            f"histogram_quantile({q}, {_rate(histogram + '_bucket', 'le')})",
            legend=f"p{round(q * 100)}",
        )
        for q in quantiles
    )


DASHBOARD = Dashboard(
    uid=PIPELINE_UID,
    title="CCT / Pipeline health",
    description="Throughput, latency, lag and dead letters of CCT's own handlers.",
    variables=(NAMESPACE, PROVIDER),
    carried_vars=("provider",),
    time_from="now-6h",
    refresh="30s",
    rows=(
        Row(
            "Ingestion",
            (
                Panel(
                    "Resource events accepted per second, by provider",
                    "timeseries",
                    (
                        PromQuery(
                            _rate(
                                "cct_collector_events_total",
                                "provider",
                                'provider=~"$provider", outcome="accepted"',
                            ),
                            legend="{{provider}}",
                        ),
                    ),
                    unit=PER_SECOND,
                    width=8,
                ),
                Panel(
                    "Collector rejects per second, by reason",
                    "timeseries",
                    (
                        PromQuery(
                            _rate("cct_collector_rejected_total", "reason"),
                            legend="{{reason}}",
                        ),
                    ),
                    unit=PER_SECOND,
                    width=8,
                    description="Every rejected event or batch is kept in ingest_dead_letters.",
                ),
                Panel(
                    "Dead letters per hour, by source and reason",
                    "timeseries",
                    (
                        SqlQuery(
                            """select $__timeGroupAlias(received_at, '1h', 0),
       source || ' ' || reason as metric,
       count(*) as value
  from reporting.ingest_dead_letters
 where $__timeFilter(received_at)
 group by 1, 2
 order by 1""",
                            format="time_series",
                        ),
                    ),
                    unit=COUNT,
                    bars=True,
                    stacked=True,
                    width=8,
                    description="The billing loader writes one row per file with rejected rows.",
                ),
                Panel(
                    "Time since the last billing load",
                    "stat",
                    (
                        SqlQuery(
                            "select coalesce(extract(epoch from now() - max(loaded_at)), 0)"
                            " as since_last_load_s from reporting.billing_loads"
                            f" where {_SQL_PROVIDER}"
                        ),
                    ),
                    unit=SECONDS,
                    width=8,
                    description="Exports arrive hours to days late; days without a load are not.",
                ),
                Panel(
                    "Current billing deliveries",
                    "table",
                    (
                        SqlQuery(
                            f"""select provider, billing_account_id, billing_period, files,
       rows_read, loaded_at, load_id
  from reporting.billing_loads
 where status = 'current' and {_SQL_PROVIDER}
 order by loaded_at desc
 limit 100"""
                        ),
                    ),
                    width=24,
                ),
            ),
        ),
        Row(
            "Detection",
            (
                Panel(
                    "Detection cycle time",
                    "timeseries",
                    _quantiles("cct_detector_cycle_seconds", 0.5, 0.95, 0.99),
                    unit=SECONDS,
                    description="One cycle reads the rollup series and scores every group.",
                ),
                Panel(
                    "End-to-end latency: resource event to alert",
                    "timeseries",
                    _quantiles("cct_detector_event_to_alert_seconds", 0.5, 0.95),
                    unit=SECONDS,
                    description=("From the cloud event's time to the alert reaching Alertmanager."),
                    links=(Link("Anomalies", ANOMALIES_UID),),
                ),
            ),
        ),
        Row(
            "Routing and admission",
            (
                Panel(
                    "Kafka consumer lag (trigger)",
                    "timeseries",
                    (
                        PromQuery(
                            "sum by (topic, partition)"
                            f" (cct_trigger_consumer_lag_messages{{{NS}}})",
                            legend="{{topic}}/{{partition}}",
                        ),
                    ),
                    unit=COUNT,
                    width=8,
                ),
                Panel(
                    "Admission review latency",
                    "timeseries",
                    _quantiles("cct_admission_request_duration_seconds", 0.5, 0.99),
                    unit=SECONDS,
                    width=8,
                ),
                Panel(
                    "Dead letters and refused alerts per second",
                    "timeseries",
                    (
                        PromQuery(
                            _rate("cct_trigger_events_total", "outcome", 'outcome="dead_letter"'),
                            legend="trigger to {{outcome}} topic",
                        ),
                        PromQuery(
                            _rate("cct_bridge_rejected_total", "reason"),
                            legend="bridge refused: {{reason}}",
                        ),
                        PromQuery(
                            f"sum(rate(cct_bridge_produce_failures_total{{{NS}}}[$__rate_interval]))",
                            legend="bridge: Kafka did not acknowledge",
                        ),
                    ),
                    unit=PER_SECOND,
                    width=8,
                ),
                Panel(
                    "Rejected ingest input, by source and reason",
                    "table",
                    (
                        SqlQuery(
                            """select source, reason, count(*) as rejected,
       max(received_at) as last_seen, (array_agg(detail order by received_at desc))[1] as example
  from reporting.ingest_dead_letters
 where $__timeFilter(received_at)
 group by source, reason
 order by rejected desc"""
                        ),
                    ),
                    width=24,
                ),
            ),
        ),
    ),
)
