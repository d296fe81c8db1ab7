"""The local backend's control flow (docs/architecture.md "How a local backend runs a
playbook"), driven by a stand-in step command; the real steps run in test_local_backend."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from lambdas.events.cloudevents import decode
from lambdas.policy import load_policy_set
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.store.db import open_pool
from lambdas.trigger.core import WorkflowRun, plan_run
from lambdas.trigger.local import LocalBackend
from lambdas.trigger.mapping import load_mapping
from lambdas.trigger.processor import Processor
from tests.support.services import ROOT
from tests.trigger.events import event_bytes

FAKE = str(Path(__file__).with_name("fake_step.py"))


def a_run() -> WorkflowRun:
    event = decode(event_bytes("flow"))
    rule = load_mapping(ROOT / "policies" / "playbooks.yaml").select(event.labels)
    assert rule is not None
    return plan_run(event, rule)


def backend(tmp_path: Path, plan: dict[str, list[int]], approve: str = "approved") -> LocalBackend:
    env = {
        **os.environ,
        "FAKE_STEP_DIR": str(tmp_path),
        "FAKE_STEP_PLAN": json.dumps(plan),
        "FAKE_APPROVE_STATUS": approve,
    }
    return LocalBackend(command=[sys.executable, FAKE], env=env, sleep=lambda _: None)


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_steps_run_in_order_each_seeing_the_previous_outputs(tmp_path: Path) -> None:
    run = a_run()
    assert backend(tmp_path, {}).submit(run).detail == "completed"
    seen = calls(tmp_path)
    assert [c["step"] for c in seen] == list(PLAYBOOKS["stop-idle-compute"].steps)
    assert seen[0]["input"]["parameters"] == dict(run.parameters)
    assert seen[0]["input"]["run_id"] == run.run_id
    assert list(seen[-1]["input"]["previous"]) == [
        "analyze",
        "plan",
        "approve",
        "execute",
        "verify",
    ]
    assert seen[3]["input"]["previous"]["approve"] == {"status": "approved"}


def test_retryable_exits_are_retried_then_succeed(tmp_path: Path) -> None:
    assert backend(tmp_path, {"plan": [75, 75]}).submit(a_run()).detail == "completed"
    assert [c["exit"] for c in calls(tmp_path) if c["step"] == "plan"] == [75, 75, 0]


def test_a_failing_step_stops_the_run_and_record_gets_the_failure(tmp_path: Path) -> None:
    submission = backend(tmp_path, {"execute": [1]}).submit(a_run())
    assert (submission.detail, submission.failure) == ("failed", "execute broke")
    seen = calls(tmp_path)
    assert [c["step"] for c in seen] == ["analyze", "plan", "approve", "execute", "record"]
    assert seen[-1]["input"]["failure"] == {
        "step": "execute",
        "exit_code": 1,
        "message": "execute broke",
    }


def test_retries_run_out(tmp_path: Path) -> None:
    limit = PLAYBOOKS["stop-idle-compute"].retry.limit
    submission = backend(tmp_path, {"analyze": [75] * (limit + 1)}).submit(a_run())
    assert (submission.detail, submission.failure) == ("failed", "analyze broke")
    assert [c["step"] for c in calls(tmp_path)] == ["analyze"] * (limit + 1) + ["record"]


def test_awaiting_approval_stops_before_execute(tmp_path: Path) -> None:
    submission = backend(tmp_path, {}, approve="awaiting_approval").submit(a_run())
    assert submission.detail == "awaiting_approval"
    assert [c["step"] for c in calls(tmp_path)] == ["analyze", "plan", "approve"]


def test_a_failed_local_run_is_settled_failed_even_if_record_could_not_write(
    tmp_path: Path, pg_dsn: str, uid: str
) -> None:
    # The stand-in `record` writes nothing: the trigger itself must leave the row failed.
    local = backend(tmp_path, {"verify": [65]})
    pool = open_pool(pg_dsn, application_name="cct-trigger-test")
    try:
        processor = Processor(
            load_mapping(ROOT / "policies" / "playbooks.yaml"),
            load_policy_set(ROOT / "policies" / "optimization"),
            local,
            connection=pool.connection,
            stopping=threading.Event(),
        )
        handled = processor.handle(event_bytes(uid))
        with pool.connection() as conn:
            row = conn.execute(
                "select state, reason, backend from optimization_runs where run_id = %s",
                (handled.run_id,),
            ).fetchone()
        assert processor.handle(event_bytes(uid)).outcome == "settled"
    finally:
        pool.close()
    assert handled.outcome == "created"
    assert row == ("failed", "verify broke", "local")
