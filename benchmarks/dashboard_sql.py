"""Median latency of every SQL panel query at production-like volume, with the dashboard
indexes of migration 0600 (the account one as 0704 redefines it) and, as the baseline in the
same run, without them.

    .venv/bin/python benchmarks/dashboard_sql.py [--scale 0.5]   (also part of `make bench`)

Creates a private database (dropped at the end) on the PostgreSQL of .local/services.json or
CCT_PG_ADMIN_DSN, fills it with generate_series (scale 1.0: 1M resource events, 100k
anomalies shaped like the detector's rows, 100k runs, 200k decisions and the succeeded runs'
actions, over 300 accounts, one row per minute back from now: about two years of events but
only ten weeks of anomalies and runs, far denser than real), then runs each panel's SQL as
Grafana would send it, once for All accounts and once drilled down to one account. Figures on
a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from dashboards import build
from dashboards import interpolate as grafana
from dashboards.model import Dashboard, SqlQuery
from lambdas.store.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
INDEXES_0600 = (
    "anomalies_started_idx",
    "anomalies_resolved_idx",
    "anomalies_account_idx",
    "optimization_runs_created_idx",
    "optimization_runs_finished_idx",
    "optimization_runs_awaiting_idx",
    "policy_decisions_run_idx",
    "optimization_actions_executed_idx",
    "resource_events_account_idx",
    "resource_inventory_deleted_idx",
    "billing_hourly_hour_idx",
)
REPEAT = 5
# A query slower than this is timed once; the baseline gives up after BASELINE_LIMIT_S (some
# plans without the indexes are quadratic) and reports the limit as a lower bound.
SLOW_S = 3.0
BASELINE_LIMIT_S = 20


def admin_dsn() -> str:
    dsn = os.environ.get("CCT_PG_ADMIN_DSN")
    if dsn:
        return dsn
    return str(json.loads((ROOT / ".local/services.json").read_text())["postgres"]["dsn"])


def fill(conn: psycopg.Connection, scale: float) -> None:
    n = {
        k: int(v * scale)
        for k, v in {
            "events": 1_000_000,
            "anomalies": 100_000,
            "runs": 100_000,
            "decisions": 200_000,
        }.items()
    }
    conn.execute(
        """insert into resource_events (event_id, provider, resource_id, billing_account_id,
               sub_account_id, region_id, service_name, resource_type, action, actor,
               event_time, tags, usd_per_hour_before, usd_per_hour_after)
           select 'e' || i, 'aws', 'i-' || (i %% 50000), 'acct-' || (i %% 300), 'sub',
                  'us-east-1', 'AmazonEC2', 'instance', 'RunInstances', 'user-' || (i %% 40),
                  now() - (i %% 1051200) * interval '1 minute',
                  jsonb_build_object('team', 'team-' || (i %% 25), 'env', 'prod'),
                  (i %% 7) * 0.1, (i %% 11) * 0.1
             from generate_series(1, %s) i""",
        (n["events"],),
    )
    # Shaped like the detector's rows (one incident per root cause): nine in ten at a
    # resource, with no contributors and its service, team and account as ancestors; one in
    # ten at a team, {team} only, with its ten largest resources as contributors.
    conn.execute(
        """insert into anomalies (fingerprint, started_at, resolved_at, rule, level, severity,
               dimensions, expected_usd_per_hour, observed_usd_per_hour, deviation,
               contributors, change_events, ancestors)
           select 'fp' || i, now() - (i %% 1051200) * interval '1 minute',
                  case when i %% 50 = 0 then null
                       else now() - (i %% 1051200) * interval '1 minute' + interval '2 hours' end,
                  'day0_step', case when team then 'team' else 'resource' end,
                  (array['info','warning','critical'])[1 + i %% 3],
                  case when team then jsonb_build_object('team', 'team-' || (i %% 25))
                       else jsonb_build_object('provider', 'aws',
                                               'billing_account_id', 'acct-' || (i %% 300),
                                               'team', 'team-' || (i %% 25), 'env', 'prod',
                                               'service_name', 'AmazonEC2',
                                               'resource_id', 'i-' || i) end,
                  10, 16, 0.6,
                  case when team then (
                      select jsonb_agg(jsonb_build_object('level', 'resource', 'labels',
                                 jsonb_build_object('provider', 'aws',
                                     'billing_account_id', 'acct-' || (i %% 300),
                                     'env', 'prod', 'resource_id', 'i-' || i || '-' || k),
                                 'share', 0.05, 'delta_usd_per_hour', 0.3))
                        from generate_series(1, 10) k)
                       else '[]'::jsonb end,
                  jsonb_build_array(jsonb_build_object('event_id', 'e' || i, 'actor', 'alice')),
                  case when team then '[]'::jsonb else (
                      select jsonb_agg(jsonb_build_object('level', lvl, 'labels',
                                 jsonb_build_object('billing_account_id', 'acct-' || (i %% 300)),
                                 'delta_usd_per_hour', 6))
                        from unnest(array['service', 'team', 'account']) lvl) end
             from generate_series(1, %s) i, lateral (select i %% 10 = 0 as team) t""",
        (n["anomalies"],),
    )
    conn.execute(
        """insert into optimization_runs (run_id, event_id, playbook, backend, state, provider,
               billing_account_id, resource_id, team, environment, estimated_monthly_saving_usd,
               verified_monthly_saving_usd, created_at, updated_at, finished_at)
           select 'run' || i, 'ev' || i, 'rightsize-compute', 'argo',
                  (array['succeeded','denied','awaiting_approval','failed','dry_run',
                         'succeeded'])[1 + i %% 6],
                  'aws', 'acct-' || (i %% 300), 'i-' || i, 'team-' || (i %% 25), 'prod', 100, 90,
                  now() - (i %% 1051200) * interval '1 minute',
                  now() - (i %% 1051200) * interval '1 minute',
                  case when i %% 6 = 2 then null
                       else now() - (i %% 1051200) * interval '1 minute' end
             from generate_series(1, %s) i""",
        (n["runs"],),
    )
    conn.execute(
        """insert into policy_decisions (decision_id, source, run_id, verdict, policy_ids,
               reasons, input, decided_at, account_id)
           select 'd' || i, 'admission', 'run' || (i / 2),
                  (array['allow','deny','require-approval'])[1 + i %% 3],
                  array['p/1'], array['a reason'], jsonb_build_object('team', 'team-1'),
                  now() - (i %% 1051200) * interval '1 minute', 'acct-' || (i %% 300)
             from generate_series(2, %s) i""",
        (n["decisions"],),
    )
    conn.execute(
        """insert into optimization_actions (run_id, action, resource_id, dry_run, outcome,
               executed_at)
           select run_id, 'resize', resource_id, false, 'changed', created_at
             from optimization_runs where state = 'succeeded'"""
    )
    conn.execute("analyze")


def sql_queries(d: Dashboard) -> list[tuple[str, SqlQuery]]:
    out = [(p.title, q) for p in d.panels() for q in p.queries if isinstance(q, SqlQuery)]
    return out + [(f"annotation: {a.name}", a.query) for a in d.annotations]


def _median_ms(conn: psycopg.Connection, text: bytes) -> float:
    times: list[float] = []
    while len(times) < REPEAT and sum(times) < SLOW_S * 1000:
        t0 = time.perf_counter()
        conn.execute(text).fetchall()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(dsn: str) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(with indexes, without) per query. The two are measured back to back, the baseline
    inside a transaction that drops the 0600 indexes and is rolled back, so load from other
    processes on the machine hits both alike."""
    now = datetime.now(UTC)
    out = {}
    with psycopg.connect(dsn) as conn:
        for d in build.DASHBOARDS:
            names = [v.name for v in d.variables]
            start = now - timedelta(seconds=grafana.duration_s(d.time_from.removeprefix("now-")))
            for scope, account in (("all accounts", grafana.ALL), ("one account", "acct-7")):
                values = {n: [grafana.ALL] for n in names}
                if "billing_account" in values:
                    values["billing_account"] = [account]
                ctx = grafana.Context(values, {n: ".*" for n in names}, start, now)
                for title, q in sql_queries(d):
                    text = grafana.sql(q.sql, ctx).encode()
                    indexed = _median_ms(conn, text)
                    conn.commit()
                    conn.execute(f"set local statement_timeout = '{BASELINE_LIMIT_S}s'")
                    for index in INDEXES_0600:
                        conn.execute(f"drop index {index}")
                    try:
                        baseline = _median_ms(conn, text)
                    except psycopg.errors.QueryCanceled:
                        baseline = BASELINE_LIMIT_S * 1000.0
                    conn.rollback()
                    out[(d.uid, title, scope)] = (indexed, baseline)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args()
    admin = admin_dsn()
    # A prefix of its own, so no other benchmark's cleanup can mistake it for theirs.
    name = f"cct_dashbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = admin.rsplit("/", 1)[0] + f"/{name}"
    # `timeout` and Ctrl-C end the run through `finally`, which drops the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"database {name}", flush=True)
    try:
        migrate(dsn)
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            fill(conn, args.scale)
        print(f"filled in {time.perf_counter() - t0:.1f} s (scale {args.scale})", flush=True)
        results = measure(dsn)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')
    print(f"\n{'dashboard / panel':<72} {'scope':<13} {'idx ms':>8} {'no-idx ms':>10} {'ratio':>6}")
    for (uid, title, scope), (ms, base) in sorted(results.items(), key=lambda kv: -kv[1][1]):
        limit = ">" if base >= BASELINE_LIMIT_S * 1000 else " "
        print(
            f"{uid + ' / ' + title:<72.72} {scope:<13} {ms:8.1f} {limit}{base:9.1f}"
            f" {limit}{base / ms:5.1f}"
        )
    indexed = [v[0] for v in results.values()]
    baseline = [v[1] for v in results.values()]
    print(
        f"\nmedian over all {len(results)} queries: {statistics.median(indexed):.1f} ms with the"
        f" indexes, {statistics.median(baseline):.1f} ms without; slowest {max(indexed):.1f} ms"
        f" vs {max(baseline):.1f} ms"
    )


if __name__ == "__main__":
    main()
