"""The `reporting` views return what the dashboards show, from rows shaped like the handlers'
(a policy decision: the real webhook's record)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from lambdas.admission.review import Context, decide
from lambdas.contract import tag_values
from lambdas.policy import load_policy_set
from lambdas.store.anomalies import change_events
from lambdas.store.db import connect
from lambdas.store.decisions import record_decision
from lambdas.store.runs import create_run, recent_actions
from lambdas.trigger.processor import new_run
from tests.admission.support import SHIPPED, params, review, workflow
from tests.store import seed

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def scope(pg_dsn: str, uid: str) -> seed.Scope:
    return seed.Scope(uid)


def _rows(conn: psycopg.Connection, sql: str, account: str) -> list[dict[str, object]]:
    cur = conn.execute(sql, {"account": account})
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_anomalies_flatten_dimensions_and_rank_contributors(pg_dsn: str, scope: seed.Scope) -> None:
    started = NOW - timedelta(hours=2)
    with connect(pg_dsn) as conn:
        seed.anomaly(conn, scope, f"open-{scope.uid}", started)
        seed.anomaly(
            conn,
            scope,
            f"done-{scope.uid}",
            started - timedelta(days=1),
            resolved_at=started - timedelta(hours=20),
        )
        rows = _rows(
            conn,
            "select * from reporting.anomalies where billing_account_id = %(account)s"
            " order by started_at desc",
            scope.account,
        )
        contributors = _rows(
            conn,
            "select fingerprint, rank, resource_id, share, delta_usd_per_hour"
            " from reporting.anomaly_contributors where billing_account_id = %(account)s"
            " and is_open order by rank",
            scope.account,
        )
    assert [r["is_open"] for r in rows] == [True, False]
    open_ = rows[0]
    assert open_["delta_usd_per_hour"] == Decimal("6.500000")
    assert open_["team"] == scope.team and open_["region_id"] == ""
    assert open_["top_contributor"] == (
        f"region_id=us-east-1, resource_id=i-open-{scope.uid}-a, service_name=AmazonEC2"
    )
    assert open_["dimensions_text"] == (
        f"billing_account_id={scope.account}, env=prod, provider=aws,"
        f" service_name=AmazonEC2, team={scope.team}"
    )
    assert rows[1]["duration_s"] == Decimal(4 * 3600)
    assert [(c["rank"], c["share"]) for c in contributors] == [(1, 0.7), (2, 0.3)]


def test_malformed_contributors_blank_a_cell_not_the_query(pg_dsn: str, scope: seed.Scope) -> None:
    with connect(pg_dsn) as conn:
        seed.anomaly(
            conn,
            scope,
            f"odd-{scope.uid}",
            NOW,
            contributors=[
                {"labels": {"resource_id": "i-1"}, "share": "most of it"},
                "not-an-object",
            ],
            change_events=[42],
        )
        contributors = _rows(
            conn,
            "select rank, resource_id, share from reporting.anomaly_contributors"
            " where billing_account_id = %(account)s order by rank",
            scope.account,
        )
        events = _rows(
            conn,
            "select event_id, actor, delta_usd_per_hour from reporting.anomaly_change_events"
            " where billing_account_id = %(account)s",
            scope.account,
        )
    assert contributors == [
        {"rank": 1, "resource_id": "i-1", "share": None},
        {"rank": 2, "resource_id": "", "share": None},
    ]
    assert events == [{"event_id": "", "actor": "", "delta_usd_per_hour": Decimal(0)}]


def test_change_events_fill_missing_fields_from_resource_events(
    pg_dsn: str, scope: seed.Scope
) -> None:
    with connect(pg_dsn) as conn:
        seed.resource_event(
            conn,
            scope,
            f"evt-{scope.uid}",
            NOW - timedelta(minutes=5),
            before=0.1,
            after=2.5,
            actor="bob@example.com",
            action="compute.instances.insert",
        )
        seed.anomaly(
            conn,
            scope,
            f"fp-{scope.uid}",
            NOW,
            change_events=[{"event_id": f"evt-{scope.uid}", "event_time": "garbage"}],
        )
        (row,) = _rows(
            conn,
            "select event_id, actor, action, event_time, delta_usd_per_hour"
            " from reporting.anomaly_change_events where billing_account_id = %(account)s",
            scope.account,
        )
        (change,) = _rows(
            conn,
            "select team, env, delta_usd_per_hour from reporting.change_events"
            " where billing_account_id = %(account)s",
            scope.account,
        )
    assert row == {
        "event_id": f"evt-{scope.uid}",
        "actor": "bob@example.com",
        "action": "compute.instances.insert",
        "event_time": NOW - timedelta(minutes=5),
        "delta_usd_per_hour": Decimal("2.400000"),
    }
    assert change == {"team": scope.team, "env": "prod", "delta_usd_per_hour": Decimal("2.400000")}


def test_savings_by_team_and_month(pg_dsn: str, scope: seed.Scope) -> None:
    this_month = NOW.replace(day=1, hour=12, minute=0, second=0)
    last_month = (this_month - timedelta(days=3)).replace(day=2)
    with connect(pg_dsn) as conn:
        u = scope.uid
        seed.run(
            conn,
            scope,
            f"a-{u}",
            "succeeded",
            last_month,
            finished_at=last_month,
            estimated="100.00",
            verified="80.00",
        )
        seed.run(
            conn,
            scope,
            f"b-{u}",
            "succeeded",
            this_month,
            finished_at=this_month,
            estimated="50.00",
            verified="45.00",
        )
        seed.run(
            conn,
            scope,
            f"c-{u}",
            "succeeded",
            this_month,
            finished_at=this_month,
            estimated="30.00",
            verified=None,
        )
        seed.run(
            conn,
            scope,
            f"d-{u}",
            "succeeded",
            this_month,
            finished_at=this_month,
            estimated="7.00",
            verified="7.00",
            team=scope.other_team,
        )
        # Saves nothing: a dry run, a failure, one still running.
        seed.run(conn, scope, f"e-{u}", "dry_run", this_month, finished_at=this_month)
        seed.run(conn, scope, f"f-{u}", "failed", this_month, finished_at=this_month)
        seed.run(conn, scope, f"g-{u}", "running", this_month)
        rows = _rows(
            conn,
            "select month, team, runs, unverified_runs, estimated_monthly_saving_usd as est,"
            " verified_monthly_saving_usd as ver from reporting.savings_by_team_month"
            " where billing_account_id = %(account)s order by month, team",
            scope.account,
        )
    month = lambda t: t.replace(day=1, hour=0, minute=0, second=0)  # noqa: E731
    assert rows == [
        {
            "month": month(last_month),
            "team": scope.team,
            "runs": 1,
            "unverified_runs": 0,
            "est": Decimal("100.00"),
            "ver": Decimal("80.00"),
        },
        {
            "month": month(this_month),
            "team": scope.team,
            "runs": 2,
            "unverified_runs": 1,
            "est": Decimal("80.00"),
            "ver": Decimal("45.00"),
        },
        {
            "month": month(this_month),
            "team": scope.other_team,
            "runs": 1,
            "unverified_runs": 0,
            "est": Decimal("7.00"),
            "ver": Decimal("7.00"),
        },
    ]


def test_pending_approvals_carry_the_newest_reasons(pg_dsn: str, scope: seed.Scope) -> None:
    with connect(pg_dsn) as conn:
        run_id = seed.run(
            conn, scope, f"p-{scope.uid}", "awaiting_approval", NOW - timedelta(hours=3)
        )
        seed.decision(
            conn,
            scope,
            f"{run_id}/precheck",
            "require-approval",
            NOW - timedelta(hours=3),
            run_id=run_id,
            reasons=("old reason",),
        )
        seed.decision(
            conn,
            scope,
            f"adm-{scope.uid}",
            "require-approval",
            NOW - timedelta(hours=2),
            run_id=run_id,
            reasons=("prod needs a human",),
        )
        # A denial for a workflow the trigger never recorded: dimensions come from its input,
        # the billing account from the collector's inventory of its resource (the input
        # names only the linked account it acts in).
        seed.inventory(conn, scope, f"i-deny-{scope.uid}", "running", NOW)
        seed.decision(
            conn, scope, f"deny-{scope.uid}", "deny", NOW, reasons=("account frozen", "over budget")
        )
        pending = _rows(
            conn,
            "select run_id, reasons, policy_ids, age_s from reporting.pending_approvals"
            " where billing_account_id = %(account)s",
            scope.account,
        )
        denials = _rows(
            conn,
            "select team, env, provider, reasons, policy_ids, run_id"
            " from reporting.policy_decisions"
            " where billing_account_id = %(account)s and verdict = 'deny'",
            scope.account,
        )
    assert len(pending) == 1
    assert pending[0]["reasons"] == "prod needs a human"
    assert pending[0]["policy_ids"] == "prod-guard/0"
    # Seeded three hours back; a slow run may take many minutes to get here.
    assert 3 * 3600 <= float(str(pending[0]["age_s"])) < 4 * 3600
    assert denials == [
        {
            "team": scope.team,
            "env": "prod",
            "provider": "aws",
            "run_id": "",
            "reasons": "account frozen; over budget",
            "policy_ids": "prod-guard/0, prod-guard/1",
        },
    ]


def test_actions_join_their_run(pg_dsn: str, scope: seed.Scope) -> None:
    with connect(pg_dsn) as conn:
        run_id = seed.run(conn, scope, f"r-{scope.uid}", "succeeded", NOW, finished_at=NOW)
        (row,) = _rows(
            conn,
            "select run_id, playbook, action, team, outcome, before_state ->> 'sku' as before,"
            " after_state ->> 'sku' as after"
            " from reporting.optimization_actions where billing_account_id = %(account)s",
            scope.account,
        )
    assert row == {
        "run_id": run_id,
        "playbook": "rightsize-compute",
        "action": "aws.ec2.resize_instance",
        "team": scope.team,
        "outcome": "changed",
        "before": "m5.2xlarge",
        "after": "m5.large",
    }


def test_a_run_shows_under_its_anomaly_s_billing_account_and_counts_where_it_acts(
    pg_dsn: str, scope: seed.Scope
) -> None:
    """The detector's alert names a billing account (the AWS payer) and the linked account
    the resource is in. The dashboards filter runs by the billing account; the pre-check's
    blast-radius count is per account acted in. Before migration 0705 the trigger wrote the
    linked account into billing_account_id, and a selected billing account showed none of
    its runs."""
    planned = seed.planned_run(scope, f"acct-{scope.uid}", dry_run=False)
    assert planned.billing_account_id == scope.account
    assert planned.account_id == f"{scope.account}-sub"
    since = datetime.now(UTC) - timedelta(minutes=5)
    with connect(pg_dsn) as conn:
        create_run(conn, new_run(planned, "local", "allow", ()))
        shown = _rows(
            conn,
            "select run_id, billing_account_id from reporting.optimization_runs"
            " where billing_account_id = %(account)s",
            scope.account,
        )
        counted = recent_actions(conn, planned.account_id, since)
        not_counted = recent_actions(conn, scope.account, since)
    assert shown == [{"run_id": planned.run_id, "billing_account_id": scope.account}]
    assert (counted, not_counted) == (1, 0)


def test_views_run_under_parallel_plans(pg_dsn: str, scope: seed.Scope) -> None:
    """Large tables get parallel plans; every function a view calls must allow them."""
    with connect(pg_dsn) as conn:
        seed.anomaly(conn, scope, f"par-{scope.uid}", NOW)
        conn.execute("set local force_parallel_mode = on")
        conn.execute("set local parallel_setup_cost = 0")
        conn.execute("set local parallel_tuple_cost = 0")
        views = [
            r[0]
            for r in conn.execute(
                "select viewname from pg_views where schemaname = 'reporting'"
            ).fetchall()
        ]
        for view in views:
            conn.execute(f"select * from reporting.{view}").fetchall()
    assert "anomaly_change_events" in views


def test_a_hand_submitted_workflow_s_decision_shows_its_dimensions(pg_dsn: str, uid: str) -> None:
    # The record is the real webhook's (no run row: nobody but a human created it), so the
    # view reads the parameters where the producer puts them.
    p = params(environment="prod", team=f"team-{uid}", resource_id=f"i-{uid}")
    ctx = Context(
        now=NOW,
        policy_set=load_policy_set(SHIPPED),
        recent_actions={},
        failure_mode="closed",
        approval_templates=frozenset({"cct-rightsize-compute"}),
    )
    outcome = decide(review(workflow(f"manual-{uid}", p)), ctx)
    assert outcome.record is not None
    with connect(pg_dsn) as conn:
        record_decision(conn, outcome.record)
        [row] = _rows(
            conn,
            "select provider, billing_account_id, team, env, resource_id"
            " from reporting.policy_decisions where billing_account_id = %(account)s",
            p["account-id"],
        )
    assert row == {
        "provider": p["provider"],
        "billing_account_id": p["account-id"],
        "team": f"team-{uid}",
        "env": "prod",
        "resource_id": f"i-{uid}",
    }


def test_tag_keys_match_in_any_case_as_the_collector_reads_them(
    pg_dsn: str, scope: seed.Scope
) -> None:
    # The collector labels a resource tagged Team=web team="web" (contract.tag_values); the
    # SQL side read tags ->> 'team' and found nothing, so team-level attribution missed the
    # event and the change events panel showed no team or env.
    tags = {"Team": scope.team, "ENV": scope.env}
    at = NOW - timedelta(minutes=5)
    with connect(pg_dsn) as conn:
        seed.resource_event(conn, scope, f"ev-{scope.uid}", at, before=None, after=2.0, tags=tags)
        found = change_events(
            conn,
            {"billing_account_id": scope.account, "team": scope.team},
            since=at - timedelta(minutes=1),
            until=at + timedelta(minutes=1),
        )
        [row] = _rows(
            conn,
            "select team, env from reporting.change_events where billing_account_id = %(account)s",
            scope.account,
        )
    assert [e.event_id for e in found] == [f"ev-{scope.uid}"]
    assert row == {"team": scope.team, "env": scope.env} == tag_values(tags)


def test_malformed_ancestors_blank_a_cell_not_the_query(pg_dsn: str, scope: seed.Scope) -> None:
    with connect(pg_dsn) as conn:
        seed.anomaly(
            conn,
            scope,
            f"odd-{scope.uid}",
            NOW,
            level="resource",
            contributors=[],
            ancestors=[{"level": "team", "labels": "oops", "delta_usd_per_hour": "lots"}, 7],
        )
        seed.anomaly(conn, scope, f"scalar-{scope.uid}", NOW - timedelta(hours=1))
        conn.execute(
            "update anomalies set ancestors = '\"not a list\"'::jsonb where fingerprint = %s",
            (f"scalar-{scope.uid}",),
        )
        rows = _rows(
            conn,
            "select fingerprint, position, level, aggregate, delta_usd_per_hour"
            " from reporting.anomaly_ancestors where billing_account_id = %(account)s"
            " order by position",
            scope.account,
        )
        counts = _rows(
            conn,
            "select fingerprint, ancestor_count from reporting.anomalies"
            " where billing_account_id = %(account)s order by fingerprint",
            scope.account,
        )
    assert rows == [
        {
            "fingerprint": f"odd-{scope.uid}",
            "position": 1,
            "level": "team",
            "aggregate": "",
            "delta_usd_per_hour": None,
        },
        {
            "fingerprint": f"odd-{scope.uid}",
            "position": 2,
            "level": "",
            "aggregate": "",
            "delta_usd_per_hour": None,
        },
    ]
    assert [c["ancestor_count"] for c in counts] == [2, 0]


def _resource(account: str, rid: str, env: str = "prod") -> dict[str, object]:
    labels = {"billing_account_id": account, "provider": "aws", "resource_id": rid, "env": env}
    return {"level": "resource", "labels": labels, "share": 0.05, "delta_usd_per_hour": 1.5}


@pytest.mark.parametrize(
    ("contributors", "ancestors", "shown"),
    [
        # Its listed resources agree: the team shows under their account and env.
        ([_resource("A", "i-1"), _resource("A", "i-2")], [], ("A", "prod", "aws")),
        # An account ancestor agrees with them; a team ancestor names no account.
        (
            [_resource("A", "i-1")],
            [{"level": "account", "labels": {"billing_account_id": "A"}}, {"labels": {}}],
            ("A", "prod", "aws"),
        ),
        # Two accounts, two envs, one provider: the account and env only under All.
        ([_resource("A", "i-1"), _resource("B", "i-2", "dev")], [], ("", "", "aws")),
        # Nothing listed, or nothing usable: ''.
        ([], [], ("", "", "")),
        (["x", {"labels": "y"}, 3], ["z"], ("", "", "")),
    ],
)
def test_a_team_anomaly_takes_the_account_and_env_its_resources_share(
    pg_dsn: str,
    uid: str,
    contributors: list[object],
    ancestors: list[object],
    shown: tuple[str, str, str],
) -> None:
    """A team-level anomaly's dimensions are {team} only (a team spans accounts); the view
    fills the filter columns from what its contributors and ancestors agree on."""
    s = seed.Scope(uid)
    with connect(pg_dsn) as conn:
        seed.anomaly(
            conn,
            s,
            f"team-{uid}",
            NOW,
            level="team",
            dimensions={"team": s.team},
            contributors=contributors,
            ancestors=ancestors,
        )
        [row] = _rows(
            conn,
            "select billing_account_id, env, provider, team from reporting.anomalies"
            " where fingerprint = %(account)s",
            f"team-{uid}",
        )
    assert (row["billing_account_id"], row["env"], row["provider"]) == shown
    assert row["team"] == s.team
