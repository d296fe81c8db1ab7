"""The Processor against the real PostgreSQL, the shipped policies and mapping, and the Argo
backend talking to the fake Kubernetes API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg_pool import ConnectionPool

from lambdas.events.cloudevents import decode, encode
from lambdas.policy import PolicyRequest, evaluate, load_policy_set
from lambdas.policy.workflow import MAX_PARAMETER_CHARS, workflow_findings
from lambdas.store.db import open_pool
from lambdas.store.runs import NewRun, create_run
from lambdas.trigger.argo import ArgoBackend, KubeSettings, api_client
from lambdas.trigger.core import workflow_name
from lambdas.trigger.mapping import load_mapping, parse_mapping
from lambdas.trigger.processor import Processor
from tests.support.services import ROOT
from tests.trigger.events import RDS, event_bytes, event_doc, labels
from tests.trigger.fake_kube import FakeKube

TOKEN = "kube-token"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _deny_prod(workflow: dict[str, Any]) -> str | None:
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    return "production needs a change request" if params["environment"] == "prod" else None


@pytest.fixture(scope="module")
def pool(pg_dsn: str) -> Iterator[ConnectionPool]:
    p = open_pool(pg_dsn, application_name="cct-trigger-test")
    yield p
    p.close()


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(TOKEN, deny=_deny_prod) as fake:
        yield fake


def make_processor(kube: FakeKube, pool: ConnectionPool, tmp_path: Path, **kw: Any) -> Processor:
    """A Processor on the shipped mapping and policies, the Argo backend on `kube`."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    kube_settings = KubeSettings("cct-system", api_url=kube.url, token_file=str(token))
    return Processor(
        load_mapping(ROOT / "policies" / "playbooks.yaml"),
        load_policy_set(ROOT / "policies" / "optimization"),
        ArgoBackend(api_client(kube_settings), "cct-system", 5.0),
        connection=pool.connection,
        stopping=threading.Event(),
        **{"clock": lambda: NOW, "max_backoff_s": 1.0, **kw},
    )


@pytest.fixture
def processor(kube: FakeKube, pool: ConnectionPool, tmp_path: Path) -> Processor:
    return make_processor(kube, pool, tmp_path)


def run_row(pg_dsn: str, run_id: str) -> dict[str, Any] | None:
    with psycopg.connect(pg_dsn) as conn:
        cur = conn.execute(
            "select state, reason, backend, event_id, playbook, parameters, billing_account_id,"
            " account_id from optimization_runs where run_id = %s",
            (run_id,),
        )
        row = cur.fetchone()
        names = [c.name for c in cur.description or ()]
    return dict(zip(names, row, strict=True)) if row else None


def decision(pg_dsn: str, run_id: str) -> tuple[str, str, list[str]] | None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "select source, verdict, policy_ids from policy_decisions where decision_id = %s",
            (f"{run_id}/precheck",),
        ).fetchone()
    return (row[0], row[1], list(row[2])) if row else None


def test_allowed_anomaly_is_prechecked_recorded_and_submitted(
    processor: Processor, kube: FakeKube, pg_dsn: str, uid: str
) -> None:
    raw = event_bytes(uid)
    run_id = workflow_name(decode(raw).incident, "stop-idle-compute")
    handled = processor.handle(raw)
    assert (handled.outcome, handled.run_id) == ("created", run_id)
    assert kube.created_names() == [run_id]
    row = run_row(pg_dsn, run_id)
    assert row is not None
    assert (row["state"], row["backend"], row["playbook"]) == (
        "submitted",
        "argo",
        "stop-idle-compute",
    )
    # The dashboards' account is the anomaly's billing account; the run acts in (and the
    # blast radius counts it in) the linked account.
    assert (row["billing_account_id"], row["account_id"]) == (
        labels(uid)["billing_account_id"],
        labels(uid)["sub_account_id"],
    )
    assert row["parameters"]["event-id"] == decode(raw).id
    assert decision(pg_dsn, run_id) == ("precheck", "allow", [])


def test_the_same_event_twice_makes_one_workflow(
    processor: Processor, kube: FakeKube, uid: str
) -> None:
    raw = event_bytes(uid)
    assert processor.handle(raw).outcome == "created"
    assert processor.handle(raw).outcome == "already_exists"
    assert len(kube.created_names()) == 1
    assert [code for _, code in kube.attempts] == [201, 409]


def test_an_event_whose_run_was_named_after_the_event_id_keeps_that_run(
    processor: Processor, kube: FakeKube, pg_dsn: str, uid: str
) -> None:
    """Releases before the incident-based name named a run after its event id. After an
    upgrade Alertmanager re-sends the firing alerts; the event's new name collided with its
    own row on (event_id, playbook), a store error that stops the trigger."""
    raw = event_bytes(uid)
    event = decode(raw)
    earlier = workflow_name(event.id, "stop-idle-compute")
    with psycopg.connect(pg_dsn) as conn:
        create_run(
            conn,
            NewRun(
                run_id=earlier,
                event_id=event.id,
                playbook="stop-idle-compute",
                backend="argo",
                state="submitted",
                reason=None,
                parameters={"dry-run": "true", "account-id": labels(uid)["sub_account_id"]},
            ),
        )
    handled = processor.handle(raw)
    assert (handled.outcome, handled.run_id) == ("created", earlier)
    assert kube.created_names() == [earlier]
    assert run_row(pg_dsn, workflow_name(event.incident, "stop-idle-compute")) is None


def test_precheck_denial_is_recorded_and_never_submitted(
    processor: Processor, kube: FakeKube, pg_dsn: str, uid: str
) -> None:
    raw = event_bytes(uid, service_name=RDS)
    handled = processor.handle(raw)
    assert handled.outcome == "precheck_denied"
    assert handled.reason == (
        "stop-idle-compute is not an allowed action for aws Amazon Relational Database Service"
    )
    assert processor.handle(raw).outcome == "settled"
    assert kube.attempts == []
    row = run_row(pg_dsn, str(handled.run_id))
    assert row is not None and row["state"] == "denied"
    assert decision(pg_dsn, str(handled.run_id)) == (
        "precheck",
        "deny",
        ["allowed-actions/databases"],
    )


def test_admission_denial_is_recorded_once_and_not_retried(
    processor: Processor, kube: FakeKube, pg_dsn: str, uid: str
) -> None:
    raw = event_bytes(uid, env="prod")
    handled = processor.handle(raw)
    assert handled.outcome == "denied"
    row = run_row(pg_dsn, str(handled.run_id))
    assert row is not None and row["state"] == "denied"
    assert row["reason"].endswith("denied the request: production needs a change request")
    assert processor.handle(raw).outcome == "settled"
    assert [code for _, code in kube.attempts] == [403]


def test_unavailable_api_is_retried_until_it_answers(
    processor: Processor, kube: FakeKube, uid: str
) -> None:
    kube.fail_next = 2
    assert processor.handle(event_bytes(uid)).outcome == "created"
    assert [code for _, code in kube.attempts] == [503, 503, 201]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"specversion": "1.0"}', "attribute 'id' is missing"),
        (event_bytes("p", resource_id=""), "lacks labels needed by rule idle-nonprod-compute"),
    ],
)
def test_poison_goes_to_the_dead_letter_topic_with_a_reason(
    processor: Processor, kube: FakeKube, raw: bytes, reason: str
) -> None:
    handled = processor.handle(raw)
    assert handled.outcome == "dead_letter"
    assert handled.reason is not None and reason in handled.reason
    assert kube.attempts == []


def test_resolutions_and_unmapped_anomalies_start_nothing(
    processor: Processor, kube: FakeKube, uid: str
) -> None:
    assert processor.handle(event_bytes(uid, 0, "resolved")).outcome == "resolved"
    assert processor.handle(event_bytes(uid, level="service")).outcome == "unmapped"
    assert kube.attempts == []


def seed_runs(pg_dsn: str, account: str, count: int, uid: str) -> None:
    """Earlier runs that act in `account`, as the trigger creates them, ten minutes old."""
    with psycopg.connect(pg_dsn) as conn:
        for n in range(count):
            run = NewRun(
                run_id=f"seed-{uid}-{n}",
                event_id=f"seed-{uid}-{n}",
                playbook="rightsize-compute",
                backend="argo",
                state="submitted",
                reason=None,
                parameters={"dry-run": "false", "account-id": account},
            )
            create_run(conn, run)
            conn.execute(
                "update optimization_runs set created_at = %s where run_id = %s",
                (NOW - timedelta(minutes=10), run.run_id),
            )


@pytest.mark.parametrize(
    "case",
    [(4, "allow", "created"), (5, "require-approval", "created"), (20, "deny", "precheck_denied")],
)
def test_recent_actions_in_the_account_feed_the_blast_radius_rules(
    processor: Processor, pg_dsn: str, uid: str, case: tuple[int, str, str]
) -> None:
    earlier, verdict, outcome = case
    account = f"acct-{uid}"
    seed_runs(pg_dsn, account, earlier, uid)
    doc = yaml.safe_load((ROOT / "policies" / "playbooks.yaml").read_text())
    doc["defaults"]["dry_run"] = False
    schema = json.loads((ROOT / "policies" / "playbooks.schema.json").read_text())
    processor.mapping = parse_mapping(doc, schema, "test")

    # A small impact (the real detector never alerts below $2/h, whose monthly impact is
    # above the automatic-approval limit), so that only the blast radius decides.
    doc = event_doc(uid, 0, "firing", sub_account_id=account)
    doc["data"]["annotations"]["delta_usd_per_hour"] = "0.50"
    handled = processor.handle(encode(doc))

    assert handled.outcome == outcome
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "select verdict, input from policy_decisions where decision_id = %s",
            (f"{handled.run_id}/precheck",),
        ).fetchone()
    assert row is not None
    assert row[0] == verdict
    assert row[1]["recent_actions"] == {account: earlier}


def _admission_shape(workflow: dict[str, Any]) -> str | None:
    """The admission webhook's shape check of a trigger-made Workflow (its template approved)."""
    ref = workflow["spec"]["workflowTemplateRef"]["name"]
    return "; ".join(workflow_findings(workflow, [ref])) or None


@pytest.mark.parametrize("protected", [False, True])
def test_a_resource_with_many_long_tags_is_governed_not_refused_for_its_shape(
    pool: ConnectionPool, pg_dsn: str, uid: str, tmp_path: Path, protected: bool
) -> None:
    # 50 ordinary tags of 80 characters (within the collector's 64 x 1024) make a tags
    # parameter over the webhook's 4096 characters, which refused the whole workflow. The
    # trigger cuts the set to fit, never the tags a policy reads: a protection tag sorting
    # after 50 others still denies.
    lab = labels(uid)
    tags = {f"aa-{n:02d}": "v" * 80 for n in range(50)}
    if protected:
        tags["cct.io/protect"] = "true"
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "insert into resource_inventory (provider, resource_id, billing_account_id,"
            " sub_account_id, region_id, service_name, resource_type, state, tags,"
            " last_event_id, last_event_time)"
            " values (%s, %s, %s, %s, %s, %s, %s, 'running', %s, %s, now())",
            (
                lab["provider"],
                lab["resource_id"],
                lab["billing_account_id"],
                lab["sub_account_id"],
                lab["region_id"],
                lab["service_name"],
                lab["resource_type"],
                json.dumps(tags),
                f"seed-{uid}",
            ),
        )
    with FakeKube(TOKEN, deny=_admission_shape) as kube:
        handled = make_processor(kube, pool, tmp_path).handle(event_bytes(uid))
        created = [body for (_, name), body in kube.objects.items() if name == handled.run_id]
    # (a dev instance: the mapping runs it as a dry run, which the protection allows)
    assert handled.outcome == "created", handled.reason
    [workflow] = created
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    sent = json.loads(params["tags"])
    assert len(params["tags"]) <= MAX_PARAMETER_CHARS
    # As many as fit, the alert's own tag labels kept.
    assert 40 <= len(sent) < 52 and sent["team"] == lab["team"]
    assert ("cct.io/protect" in sent) is protected
    # What the webhook decides on these parameters for a real run: the protection holds.
    request = replace(PolicyRequest.from_parameters(params), dry_run=False)
    verdict = evaluate(load_policy_set(ROOT / "policies" / "optimization"), request, NOW, {})
    assert ("protected-resources/protect-tag" in verdict.policy_ids) is protected
