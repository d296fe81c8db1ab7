"""`record` publishes one `io.cct.optimization.completed` CloudEvent per finished run to the
real Kafka broker; the id is stable per run and final state, so a retried `record` repeats
it instead of inventing a second result."""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

from lambdas.steps.cli import input_from_env
from lambdas.steps.results import result_event_id
from tests.routing.helpers import events_of, read_topic
from tests.steps.cloud_cases import CASES, params, recordings
from tests.steps.conftest import exit_handler_env
from tests.steps.replay import Replay
from tests.steps.runner import call_step, run_playbook
from tests.support.kafka import handler_env

Serve = Callable[..., AbstractContextManager[Replay]]


def _kafka_env(bootstrap: str, topic: str) -> dict[str, str]:
    return {**handler_env(bootstrap, "steps"), "CCT_STEP_RESULTS_TOPIC": topic}


def test_a_finished_run_publishes_one_cloudevent_and_a_retry_repeats_its_id(
    *,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_case: Any,
    db: Any,
    kafka_bootstrap: str,
    uid: str,
) -> None:
    case = next(c for c in CASES if c.recording == "gcp_stop_instance.json")
    seed_case(case)
    run_id = f"cct-{case.playbook}-results-{uid}"
    topic = f"cct.test.results.{uid}"
    parameters = params(case, uid)
    with replay(*recordings(case)) as r:
        env = {**step_env(r.base_url), **_kafka_env(kafka_bootstrap, topic)}
        result = run_playbook(case.playbook, run_id, parameters, env, inprocess=True)
    assert result.failed_step is None, result.runs[-1]

    (record,) = read_topic(kafka_bootstrap, topic, 1)
    assert record.key == run_id.encode()
    (event,) = events_of([record])
    assert result.outputs["record"]["event_id"] == event["id"]
    assert event["id"] == result_event_id(run_id, "succeeded")
    assert {k: event[k] for k in ("specversion", "source", "type", "subject")} == {
        "specversion": "1.0",
        "source": "/cct/steps",
        "type": "io.cct.optimization.completed",
        "subject": run_id,
    }
    assert event["time"].endswith("Z") and event["datacontenttype"] == "application/json"
    state, reason, est, verified = db(
        "select state, reason, estimated_monthly_saving_usd, verified_monthly_saving_usd"
        " from optimization_runs where run_id = %s",
        run_id,
    )[0]
    assert event["data"] == {
        "run_id": run_id,
        "playbook": case.playbook,
        "state": state,
        "reason": reason,
        "provider": "gcp",
        "resource_id": case.resource_id,
        "action": "gcp.compute.stop_instance",
        "outcome": "changed",
        "dry_run": False,
        "estimated_monthly_saving_usd": str(est),
        "verified_monthly_saving_usd": str(verified),
    }
    assert Decimal(event["data"]["verified_monthly_saving_usd"]) == Decimal(case.saving)

    # A retried record (its pod lost after the broker acknowledged) writes the same rows and
    # produces the same id again: consumers deduplicate on it.
    doc = {
        "run_id": run_id,
        "playbook": case.playbook,
        "parameters": parameters,
        "previous": result.outputs,
    }
    again = call_step("record", doc, env, inprocess=True)
    assert again.exit_code == 0, again.output
    records = read_topic(kafka_bootstrap, topic, 2)
    assert [e["id"] for e in events_of(records)] == [event["id"]] * 2
    assert {e["data"]["state"] for e in events_of(records)} == {"succeeded"}


def test_the_exit_handler_publishes_the_failure_and_a_succeeded_workflow_nothing(
    step_env: Callable[..., dict[str, str]], kafka_bootstrap: str, uid: str
) -> None:
    run_id = f"cct-stop-idle-compute-results-{uid}"
    topic = f"cct.test.results.{uid}"
    env = {**step_env("http://127.0.0.1:9"), **_kafka_env(kafka_bootstrap, topic)}

    ok = call_step(
        "record", input_from_env(exit_handler_env(f"{run_id}-ok", "Succeeded")), env, True
    )
    failed = call_step("record", input_from_env(exit_handler_env(run_id, "Failed")), env, True)

    assert (ok.exit_code, failed.exit_code) == (0, 0), (ok.output, failed.output)
    events = events_of(read_topic(kafka_bootstrap, topic, 1))
    assert [(e["subject"], e["id"]) for e in events] == [
        (run_id, result_event_id(run_id, "failed"))
    ]
    assert events[0]["data"]["state"] == "failed"
    assert "OOMKilled" in events[0]["data"]["reason"]
    assert events[0]["data"]["action"] is None


def test_an_unreachable_broker_is_retryable_and_the_run_stays_recorded(
    step_env: Callable[..., dict[str, str]], db: Any, kafka_bootstrap: str, uid: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    run_id = f"cct-stop-idle-compute-nobroker-{uid}"
    topic = f"cct.test.results.{uid}"
    doc = input_from_env(exit_handler_env(run_id, "Failed"))
    env = {
        **step_env("http://127.0.0.1:9"),
        **_kafka_env(closed, topic),
        "CCT_STEP_RESULTS_PUBLISH_TIMEOUT_S": "5",
    }

    down = call_step("record", doc, env, inprocess=True)

    assert down.exit_code == 75, down.output
    assert down.output["error"]["retryable"] is True
    assert topic in down.output["error"]["message"]
    assert db("select state from optimization_runs where run_id = %s", run_id) == [("failed",)]

    # The retry, with the broker back, publishes what was recorded.
    up = call_step("record", doc, {**env, "CCT_KAFKA_BOOTSTRAP": kafka_bootstrap}, True)
    assert up.exit_code == 0, up.output
    (event,) = events_of(read_topic(kafka_bootstrap, topic, 1))
    assert event["id"] == up.output["event_id"] == result_event_id(run_id, "failed")
    assert event["data"]["state"] == "failed"
