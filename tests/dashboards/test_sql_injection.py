"""Tag values are attacker-controlled (anyone who can tag a cloud resource picks them) and
reach the panels' SQL through Grafana's template variables. Every SQL query of every
dashboard runs against the real PostgreSQL with hostile values, interpolated exactly as
Grafana does, and must match only what it names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dashboards import build
from dashboards import interpolate as grafana
from dashboards.common import FILTER_NAMES, sql_matches
from dashboards.model import Dashboard, SqlQuery
from lambdas.store.db import connect
from tests.dashboards.test_panels import _seed_results, reporting_reader
from tests.store import seed

# Quotes that would end a '...' literal, dollar-quote delimiters, backslashes, comments,
# a value ending in $ (next to a closing delimiter), regex metacharacters, non-ASCII.
HOSTILE = [
    # With the old `'^(${team:regex})$'` these two matched every row (`or true` is folded
    # before the broken regex is ever compiled).
    "' or true or x ~ '",
    "' or true or team ~ '",
    "' or true or '",
    "x'; drop table reporting.costs; --",
    "o'brien",
    "$$ or true or $$",
    "$$",
    "a$",
    "$",
    "\\",
    "\\'",
    "' -- ",
    "$q$ or true or $q$",
    "(.*)|",
    "ü'é",
]


def _filter_sql(value_sets: list[list[str]]) -> list[str]:
    return [
        grafana.sql(
            f"select x from t where {sql_matches('x', 'team')} order by x",
            grafana.Context(
                values={"team": values},
                all_values={"team": ".*"},
                start=datetime(2026, 1, 1, tzinfo=UTC),
                end=datetime(2026, 1, 2, tzinfo=UTC),
            ),
        )
        for values in value_sets
    ]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_matches_itself_and_nothing_else(pg_dsn: str, value: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("create temp table t (x text)")
        for row in (value, "other", "web", ""):
            conn.execute("insert into t values (%s)", (row,))
        one, several, everything = (
            [r[0] for r in conn.execute(q.encode()).fetchall()]
            for q in _filter_sql([[value], [value, "web"], [grafana.ALL]])
        )
    assert one == [value]
    assert several == sorted([value, "web"])
    assert everything == sorted([value, "other", "web", ""])


@pytest.fixture(scope="module")
def seeded(pg_dsn: str) -> Iterator[tuple[seed.Scope, datetime, str]]:
    scope = seed.Scope(uuid.uuid4().hex[:10])
    now = datetime.now(UTC).replace(microsecond=0)
    with connect(pg_dsn) as conn:
        _seed_results(conn, scope, now)
    with reporting_reader(pg_dsn, f"grafana_inj_{scope.uid}") as role:
        yield scope, now, role


def _queries(d: Dashboard) -> list[SqlQuery]:
    found = [q for p in d.panels() for q in p.queries if isinstance(q, SqlQuery)]
    return found + [a.query for a in d.annotations]


def _run(dsn: str, role: str, q: SqlQuery, ctx: grafana.Context) -> list[tuple[Any, ...]]:
    with connect(dsn) as conn:
        conn.execute(f"set local role {role}")
        rows = conn.execute(grafana.sql(q.sql, ctx).encode()).fetchall()
        conn.rollback()
    return rows


def _filtered(q: SqlQuery) -> bool:
    return any(f"${{{v}:" in q.sql for v in FILTER_NAMES)


# The dashboards whose SQL filters on tag values (the cost overview queries only PromQL).
WITH_SQL_FILTERS = sorted(d.uid for d in build.DASHBOARDS if any(map(_filtered, _queries(d))))


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("uid", WITH_SQL_FILTERS)
def test_every_panel_query_treats_hostile_values_as_data(
    uid: str, value: str, seeded: tuple[seed.Scope, datetime, str], pg_dsn: str
) -> None:
    """Each filter set to a hostile value returns what a value that exists nowhere returns
    (no rows, or empty aggregates), never an error and never every row."""
    _, now, role = seeded
    d = next(x for x in build.DASHBOARDS if x.uid == uid)
    names = {v.name for v in d.variables}

    def context(selected: str) -> grafana.Context:
        values: dict[str, list[str]] = {v: [grafana.ALL] for v in names}
        values.update(basis=["reconciled"], window=["1d"])
        values.update({v: [selected] for v in FILTER_NAMES})
        return grafana.Context(
            values={k: v for k, v in values.items() if k in names},
            all_values={v: ".*" for v in names},
            start=now - timedelta(days=30),
            end=now,
            interval="3600s",
            rate_interval="3600s",
        )

    hostile, absent = context(value), context(f"no-such-{uuid.uuid4().hex}")
    for q in filter(_filtered, _queries(d)):
        assert _run(pg_dsn, role, q, hostile) == _run(pg_dsn, role, q, absent), q.sql
