"""`record` as Argo's exit handler: a failed or stopped workflow is recorded as failed with
Argo's message; a succeeded one is left as the record step wrote it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lambdas.steps.cli import input_from_env
from tests.steps.conftest import exit_handler_env
from tests.steps.runner import call_step


def test_exit_handler_records_a_failed_workflow(
    step_env: Callable[..., dict[str, str]], db: Any, uid: str
) -> None:
    run_id = f"cct-stop-idle-compute-{uid}"
    env = step_env("http://127.0.0.1:9")
    failed = call_step(
        "record",
        input_from_env(exit_handler_env(run_id, "Failed")),
        env,
        inprocess=True,
    )
    assert failed.exit_code == 0, failed.output
    state, reason, backend = db(
        "select state, reason, backend from optimization_runs where run_id = %s", run_id
    )[0]
    assert (state, backend) == ("failed", "local")
    assert reason.startswith("workflow failed: workflow Failed: ") and "OOMKilled" in reason

    ok = call_step(
        "record",
        input_from_env(exit_handler_env(f"{run_id}-ok", "Succeeded")),
        env,
        inprocess=True,
    )
    assert ok.output == {"state": "succeeded", "noop": True}
    assert db("select 1 from optimization_runs where run_id = %s", f"{run_id}-ok") == []


def test_record_without_outputs_or_failure_is_refused(
    step_env: Callable[..., dict[str, str]], uid: str
) -> None:
    doc = {
        "run_id": f"cct-x-{uid}",
        "playbook": "storage-tiering",
        "parameters": {"provider": "aws", "resource-id": "bucket-1"},
        "previous": {},
    }
    run = call_step("record", doc, step_env("http://127.0.0.1:9"), inprocess=True)
    assert run.exit_code == 1
    assert "needs the plan" in run.output["error"]["message"]


def test_garbage_on_stdin_exits_65(step_env: Callable[..., dict[str, str]]) -> None:
    import subprocess

    from tests.steps.runner import CCT

    proc = subprocess.run(
        [CCT, "step", "plan"],
        input="not json",
        capture_output=True,
        text=True,
        env={**step_env("http://127.0.0.1:9")},
        timeout=60,
    )
    assert proc.returncode == 65
    assert "stdin is not JSON" in proc.stdout


def test_unreachable_database_is_retryable(
    step_env: Callable[..., dict[str, str]], uid: str
) -> None:
    env = {
        **step_env("http://127.0.0.1:9"),
        "CCT_PG_DSN": "postgresql://cct@127.0.0.1:9/cct",
    }
    doc = {
        "run_id": f"cct-x-{uid}",
        "playbook": "storage-tiering",
        "parameters": {"provider": "aws", "resource-id": "bucket-1"},
        "previous": {
            "analyze": {
                "action": "aws.s3.put_lifecycle_tiering",
                "applicable": False,
                "reason": "x",
                "state": {},
                "metrics": {},
                "resource": {},
            }
        },
    }
    run = call_step("plan", doc, env, inprocess=True)
    assert run.exit_code == 75
    assert run.output["error"]["retryable"] is True
