"""Every panel's query, run against the real VictoriaMetrics and PostgreSQL after seeding
them with realistic data, with the template variables substituted as Grafana would; each
returns data of the shape its panel expects.

SQL runs under a role that may only read the `reporting` schema, as Grafana's role does.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dashboards import build
from dashboards import interpolate as grafana
from dashboards.common import ANOMALIES_UID, COST_OVERVIEW_UID
from dashboards.cost_overview import RUN_RATE
from dashboards.model import Dashboard, Panel, PromQuery, QueryVariable, SqlQuery
from lambdas.billing.loader import LoadReport
from lambdas.common.vm import VictoriaMetrics
from lambdas.store.db import connect
from tests.dashboards import seed_detector, seed_vm
from tests.store import seed

LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
FIELD_LABEL = re.compile(r"\$\{__field\.labels\.(\w+)\}")
DATA_FIELD = re.compile(r"\$\{__data\.fields\.(\w+)\}")


@dataclass(frozen=True)
class Seeded:
    scope: seed.Scope
    now: datetime
    reader_role: str
    bill: LoadReport
    # The account of the detector's series and incidents (its own: its spend would change
    # the cost totals the cost tests check).
    detected: seed_detector.DetectorRows


@pytest.fixture(scope="module")
def seeded(
    vm: VictoriaMetrics,
    vm_url: str,
    alertmanager_url: str,
    pg_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Seeded]:
    scope = seed.Scope(uuid.uuid4().hex[:10])
    now_s = time.time()
    now = datetime.fromtimestamp(now_s, UTC).replace(microsecond=0)
    account = f'{{billing_account_id="{scope.account}"}}'
    collector = seed_vm.Collector(scope, now_s)
    vm.import_lines(collector.lines({}, seed_vm.HISTORY - seed_vm.MINUTE, seed_vm.LOADED_AGO))
    # The reconciliation reads the list-basis estimate: it must be searchable first.
    seed_vm.wait_until_visible(vm, account, 2 * len(seed_vm.GROUPS), now_s)
    bill = seed_vm.load_bill(pg_dsn, vm, scope, now_s, tmp_path_factory.mktemp("bill"))
    factors = seed_vm.saved_factors(pg_dsn, scope)
    vm.import_lines(collector.lines(factors, seed_vm.LOADED_AGO, 0))
    vm.import_samples(seed_vm.pipeline_samples(scope, now_s))
    # The anomaly rows are the real detector's, on series of this account.
    detected = seed_detector.run_detector(vm, vm_url, alertmanager_url, pg_dsn, f"{scope.uid}d")
    with connect(pg_dsn) as conn:
        _seed_results(conn, scope, now)
    seed.dead_letter(pg_dsn, now - timedelta(minutes=30))
    seed.dead_letter(pg_dsn, now - timedelta(hours=2))
    with reporting_reader(pg_dsn, f"grafana_{scope.uid}") as role:
        seed_vm.wait_until_visible(vm, account, seed_vm.cost_series(), now_s)
        seed_vm.wait_until_visible(vm, f'{{namespace="{seed_vm.namespace(scope)}"}}', 30, now_s)
        # The dashboards are read as of after the detector's incidents began.
        end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        yield Seeded(scope, end, role, bill, detected)


@contextmanager
def reporting_reader(pg_dsn: str, role: str) -> Iterator[str]:
    """A role that may only read the `reporting` views, as Grafana's login, for the block."""
    with connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"create role {role} nologin")
        conn.execute(f"grant usage on schema reporting to {role}")
        conn.execute(f"grant select on all tables in schema reporting to {role}")
    try:
        yield role
    finally:
        with connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role {role}")


_REASONS = {
    "denied": ("production databases are never resized automatically",),
    "awaiting_approval": ("impact above $100/month needs approval",),
}


def _seed_results(conn: psycopg.Connection[Any], s: seed.Scope, now: datetime) -> None:
    """A month of runs, decisions and actions, as the handlers write."""
    u = s.uid
    seed.resource_event(
        conn,
        s,
        f"evt-stop-{u}",
        now - timedelta(hours=8),
        before=3.1,
        after=0.0,
        actor="arn:aws:sts::123456789012:assumed-role/cct-remediation/run-1",
        action="StopInstances",
    )
    for i, (state, days_ago) in enumerate(
        (
            ("succeeded", 2),
            ("succeeded", 12),
            ("denied", 3),
            ("awaiting_approval", 1),
            ("failed", 6),
            ("dry_run", 4),
            ("running", 0),
        )
    ):
        created = now - timedelta(days=days_ago, hours=1)
        final = state not in {"awaiting_approval", "running"}
        run_id = seed.run(
            conn,
            s,
            f"{i}{u}",
            state,
            created,
            finished_at=created + timedelta(minutes=20) if final else None,
            verified="95.50" if state == "succeeded" and days_ago > 5 else None,
            reasons=_REASONS.get(state, ()),
        )
        if state == "denied":
            seed.decision(
                conn,
                s,
                f"adm-{run_id}",
                "deny",
                created,
                run_id=run_id,
                reasons=_REASONS[state],
            )
        if state == "awaiting_approval":
            seed.decision(
                conn,
                s,
                f"{run_id}/precheck",
                "require-approval",
                created,
                run_id=run_id,
                reasons=_REASONS[state],
            )


def _context(d: Dashboard, s: Seeded, **selected: list[str]) -> grafana.Context:
    values: dict[str, list[str]] = {v.name: [grafana.ALL] for v in d.variables}
    values.update(basis=["reconciled"], window=["1d"])
    accounts = [s.scope.account, s.detected.account]
    values.update(billing_account=accounts, namespace=[seed_vm.namespace(s.scope)])
    values.update(selected)
    values = {k: v for k, v in values.items() if k in {v.name for v in d.variables}}
    span_s = int((s.now - _start(d, s.now)).total_seconds())
    step = max(15, span_s // 300)
    return grafana.Context(
        values=values,
        all_values={v.name: ".*" for v in d.variables},
        start=_start(d, s.now),
        end=s.now,
        interval=f"{step}s",
        rate_interval=f"{max(step + 15, 60)}s",
    )


def _start(d: Dashboard, now: datetime) -> datetime:
    return now - timedelta(seconds=grafana.duration_s(d.time_from.removeprefix("now-")))


def _run_prom(vm: VictoriaMetrics, q: PromQuery, ctx: grafana.Context) -> list[dict[str, Any]]:
    expr = grafana.promql(q.expr, ctx)
    if q.instant:
        return vm.query(expr, time_s=ctx.end.timestamp())
    step = grafana.duration_s(ctx.interval)
    return vm.query_range(expr, ctx.start.timestamp(), ctx.end.timestamp(), f"{step}s")


def _run_sql(
    dsn: str, role: str, q: SqlQuery, ctx: grafana.Context
) -> tuple[list[str], list[tuple[Any, ...]]]:
    with connect(dsn) as conn:
        conn.execute(f"set local role {role}")
        cur = conn.execute(grafana.sql(q.sql, ctx).encode())
        columns = [c.name for c in cur.description or ()]
        rows = cur.fetchall()
        conn.rollback()
    return columns, rows


def _number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _check_prom(panel: Panel, q: PromQuery, result: list[dict[str, Any]]) -> None:
    where = f"{panel.title}: {q.expr}"
    assert result, f"{where}: no data"
    if q.instant:
        assert all(_number(r["value"][1]) for r in result), where
        if panel.kind == "stat":
            assert len(result) == 1, f"{where}: a stat needs one value, got {len(result)}"
    else:
        assert all(r["values"] and all(_number(v) for _, v in r["values"]) for r in result), where
    for label in LEGEND_LABEL.findall(q.legend or ""):
        assert all(r["metric"].get(label) for r in result), f"{where}: no label {label} to show"
    for link in panel.links:
        for label in FIELD_LABEL.findall(" ".join(link.params)) + DATA_FIELD.findall(
            " ".join(link.params)
        ):
            assert all(label in r["metric"] for r in result), f"{where}: no label {label}"


def _check_sql(panel: Panel, q: SqlQuery, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    where = f"{panel.title}: {q.sql}"
    assert rows, f"{where}: no rows"
    if q.format == "time_series":
        assert columns[0] == "time", where
        assert all(_number(r[0]) or isinstance(r[0], datetime) for r in rows), where
        values = [c for c in columns[1:] if c != "metric"]
        assert values and all(_number(r[columns.index(c)]) for r in rows for c in values), where
    elif panel.kind == "stat":
        assert len(rows) == 1 and len(columns) == 1 and _number(rows[0][0]), where
    elif panel.kind in {"piechart", "barchart"}:
        assert len(columns) == 2, where
        assert all(isinstance(r[0], str) and _number(r[1]) for r in rows), where
    for column, _ in panel.column_units:
        assert column in columns, f"{where}: unit for missing column {column}"
    for link in panel.links:
        for field in DATA_FIELD.findall(" ".join(link.params)):
            assert field in columns, f"{where}: link needs column {field}"


@pytest.mark.parametrize("uid", sorted(d.uid for d in build.DASHBOARDS))
def test_every_panel_query_returns_data_of_its_shape(
    uid: str, seeded: Seeded, vm: VictoriaMetrics, pg_dsn: str
) -> None:
    d = next(x for x in build.DASHBOARDS if x.uid == uid)
    ctx = _context(d, seeded)
    for panel in d.panels():
        for q in panel.queries:
            if isinstance(q, PromQuery):
                _check_prom(panel, q, _run_prom(vm, q, ctx))
            else:
                _check_sql(panel, q, *_run_sql(pg_dsn, seeded.reader_role, q, ctx))


@pytest.mark.parametrize("uid", sorted(d.uid for d in build.DASHBOARDS))
def test_annotations_return_time_and_text(uid: str, seeded: Seeded, pg_dsn: str) -> None:
    d = next(x for x in build.DASHBOARDS if x.uid == uid)
    ctx = _context(d, seeded)
    for annotation in d.annotations:
        columns, rows = _run_sql(pg_dsn, seeded.reader_role, annotation.query, ctx)
        assert {"time", "timeend", "text", "tags"} <= set(columns)
        # The detector's three incidents (seed_detector): i-old, i-new and the search team.
        assert len(rows) == 3 and all(r[columns.index("text")] for r in rows)


@pytest.mark.parametrize("uid", sorted(d.uid for d in build.DASHBOARDS))
def test_narrower_selections_filter_rows_and_series(
    uid: str, seeded: Seeded, vm: VictoriaMetrics, pg_dsn: str
) -> None:
    """One provider and two teams (multi-select, regex-escaped): every query still runs, and
    nothing outside the selection comes back."""
    s = seeded.scope
    d = next(x for x in build.DASHBOARDS if x.uid == uid)
    ctx = _context(d, seeded, provider=["aws"], team=[s.team, s.other_team], env=["prod"])
    for panel in d.panels():
        for q in panel.queries:
            if isinstance(q, PromQuery):
                for r in _run_prom(vm, q, ctx):
                    assert r["metric"].get("provider", "aws") == "aws", panel.title
                    assert r["metric"].get("env", "prod") == "prod", panel.title
            else:
                columns, rows = _run_sql(pg_dsn, seeded.reader_role, q, ctx)
                for name, allowed in (("provider", {"aws"}), ("team", {s.team, s.other_team})):
                    if name in columns:
                        assert {r[columns.index(name)] for r in rows} <= allowed, panel.title


def _label_values_args(query: str) -> tuple[str | None, str]:
    m = re.fullmatch(r"label_values\((?:(.*),\s*)?(\w+)\)", query)
    assert m, query
    return m.group(1), m.group(2)


@pytest.mark.parametrize("uid", sorted(d.uid for d in build.DASHBOARDS))
def test_variables_offer_the_seeded_values(uid: str, seeded: Seeded, vm: VictoriaMetrics) -> None:
    s = seeded.scope
    expected = {
        "provider": "gcp",
        "billing_account": s.account,
        "team": s.other_team,
        "env": "staging",
        "namespace": seed_vm.namespace(s),
    }
    d = next(x for x in build.DASHBOARDS if x.uid == uid)
    ctx = _context(d, seeded)
    for v in d.variables:
        if isinstance(v, QueryVariable):
            match, label = _label_values_args(grafana.promql(v.query, ctx))
            values = seed_vm.label_values(
                vm, label, match, ctx.start.timestamp(), ctx.end.timestamp()
            )
            assert expected[v.name] in values, (v.name, values[:20])


def _factors(s: Seeded) -> dict[str, float]:
    return {str(r["service_name"]): float(str(r["factor"])) for r in s.bill.reconciled}


def test_the_loaded_bill_reconciles_to_the_collector_s_estimate(seeded: Seeded) -> None:
    """The seed's bill is loaded by the real loader, reconciled against the real rollup."""
    assert seeded.bill.rows_rejected == 0 and seeded.bill.loaded
    billed = {g[1] for g in seed_vm.GROUPS if g[0] not in seed_vm.UNBILLED}
    assert _factors(seeded) == pytest.approx(dict.fromkeys(billed, seed_vm.RECONCILED), rel=1e-3)


def test_the_estimate_error_panels_show_the_last_load_hours_after_it(
    seeded: Seeded, vm: VictoriaMetrics
) -> None:
    """The loader writes one error sample per load; a daily load must not leave the panels
    empty between loads (seeded: loaded two hours before the dashboard's now)."""
    d = next(x for x in build.DASHBOARDS if x.uid == COST_OVERVIEW_UID)
    ctx = _context(d, seeded)
    expected = {k: v - 1 for k, v in _factors(seeded).items()}
    [row] = [r for r in d.rows if r.title == "Estimate accuracy"]
    for panel in row.panels:
        [q] = panel.queries
        assert isinstance(q, PromQuery)
        result = _run_prom(vm, q, ctx)
        got = {r["metric"]["service_name"]: r for r in result}
        assert set(got) == set(expected), panel.title
        for service, r in got.items():
            if q.instant:
                assert abs(float(r["value"][1])) == pytest.approx(abs(expected[service]), rel=1e-3)
                continue
            loaded_ms = (seeded.now.timestamp() - seed_vm.LOADED_AGO) * 1000
            after = [float(v) for t, v in r["values"] if t * 1000 >= loaded_ms]
            assert after and after == pytest.approx([expected[service]] * len(after), rel=1e-3)


@pytest.mark.parametrize("basis", ["reconciled", "list"])
def test_a_group_without_a_billing_factor_shows_its_list_rate(
    basis: str, seeded: Seeded, vm: VictoriaMetrics
) -> None:
    # The GCP group has no reconciled series (no bill, as the collector writes it): on the
    # reconciled basis it counts at its list rate instead of vanishing from the totals.
    d = next(x for x in build.DASHBOARDS if x.uid == COST_OVERVIEW_UID)
    ctx = _context(d, seeded, basis=[basis], billing_account=[seeded.scope.account])
    [total] = vm.query(grafana.promql(f"sum({RUN_RATE})", ctx), time_s=ctx.end.timestamp())
    factors = _factors(seeded) if basis == "reconciled" else {}
    expected = sum(g[5] * factors.get(g[1], 1.0) for g in seed_vm.GROUPS)
    assert float(total["value"][1]) == pytest.approx(expected, rel=1e-6)


def _table(seeded: Seeded, pg_dsn: str, title: str, **selected: list[str]) -> list[dict[str, Any]]:
    """One anomalies-dashboard panel's rows, as Grafana's reporting role reads them."""
    d = next(x for x in build.DASHBOARDS if x.uid == ANOMALIES_UID)
    [panel] = [p for p in d.panels() if p.title == title]
    [q] = panel.queries
    assert isinstance(q, SqlQuery)
    columns, rows = _run_sql(pg_dsn, seeded.reader_role, q, _context(d, seeded, **selected))
    return [dict(zip(columns, r, strict=True)) for r in rows]


def test_the_anomaly_panels_show_the_detector_s_incidents_with_their_causes_and_context(
    seeded: Seeded, pg_dsn: str
) -> None:
    """The rows are the real detector's (seed_detector): resource-level incidents list no
    contributors and keep what they explain as ancestors; the team-level one names only its
    team. Before migration 0704 the contributors panel was empty for the resources, their
    context shown nowhere, and a drill-down to the account hid the team's incident."""
    det = seeded.detected
    mine = [det.account]
    open_ = _table(seeded, pg_dsn, "Open anomalies, largest excess first", billing_account=mine)
    by_level = {r["level"]: r["dimensions"] for r in open_}
    assert len(open_) == 2, [(r["level"], r["dimensions"], r["rule"]) for r in open_]
    assert "resource_id=i-old," in by_level["resource"]
    assert by_level["team"] == f"team={det.other_team}"
    assert all(r["billing_account_id"] == det.account for r in open_)

    ranked = _table(seeded, pg_dsn, "Ranked contributors", billing_account=mine)
    by_anomaly: dict[str, list[dict[str, Any]]] = {}
    for r in ranked:
        by_anomaly.setdefault(r["fingerprint"], []).append(r)
    own = {
        r["contributor"].split("resource_id=")[1].split(",")[0]: r
        for rows in by_anomaly.values()
        for r in rows
        if len(rows) == 1
    }
    assert set(own) == {"i-old", "i-new"}  # each resource its own one contributor
    assert all(r["rank"] == 1 and r["share"] == 1.0 for r in own.values())
    assert float(own["i-old"]["delta_usd_per_hour"]) == pytest.approx(50.0)
    [team_rows] = [rows for rows in by_anomaly.values() if len(rows) > 1]
    assert [r["rank"] for r in team_rows] == list(range(1, len(team_rows) + 1))
    assert all("i-batch-" in r["contributor"] for r in team_rows)

    explains = _table(
        seeded,
        pg_dsn,
        "What each anomaly explains (its service, team and account)",
        billing_account=mine,
    )
    old = [r for r in explains if "resource_id=i-old" in r["anomaly"]]
    assert [r["level"] for r in old] == ["service", "team", "account"]
    # EC2 in the account also carries the batch team's +18 $/h; i-old's team only its own.
    assert [float(r["delta_usd_per_hour"]) for r in old[:2]] == [118.0, 100.0]

    events = _table(
        seeded, pg_dsn, "Change events and actors behind anomalies", billing_account=mine
    )
    assert {(e["resource_id"], e["actor"]) for e in events} >= {
        ("i-old", "arn:aws:iam::1:user/alice"),
        ("i-new", "arn:aws:iam::1:user/alice"),
    }

    # The team's incident shows under its account and env, which only its resources name.
    drilled = _table(
        seeded, pg_dsn, "Open anomalies, largest excess first", billing_account=mine, env=["prod"]
    )
    assert f"team={det.other_team}" in {r["dimensions"] for r in drilled}
    [median] = _table(seeded, pg_dsn, "Median time to resolve", billing_account=mine)
    assert median["median_open_s"] > 0  # i-new, resolved after its deletion
