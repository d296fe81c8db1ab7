"""The detached local backend: creating a workflow returns at once and is idempotent; the
runner process runs the playbook's steps and writes the outcome; a workflow whose runner
never started (a trigger crash between create and start) is started by the redelivery."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import MappingProxyType

from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.trigger.core import WorkflowRun
from lambdas.trigger.detached import DetachedLocalBackend

FAKE_STEP = str(Path(__file__).with_name("fake_step.py"))


def run(run_id: str) -> WorkflowRun:
    return WorkflowRun(
        run_id=run_id,
        event_id=f"evt-{run_id}",
        playbook="stop-idle-compute",
        rule_id="test",
        parameters=MappingProxyType({"resource-id": "i-0123456789abcdef0"}),
    )


def backend(tmp_path: Path, **env: str) -> DetachedLocalBackend:
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    return DetachedLocalBackend(
        tmp_path / "workflows",
        command=[sys.executable, FAKE_STEP],
        env={**os.environ, "FAKE_STEP_DIR": str(calls), **env},
    )


def wait_done(path: Path, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    outcome: dict[str, object] = json.loads(path.read_text())
    return outcome


def steps_called(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls" / "calls.jsonl"
    return [json.loads(line)["step"] for line in log.read_text().splitlines()]


def test_create_returns_at_once_and_a_second_create_is_already_exists(tmp_path: Path) -> None:
    b = backend(tmp_path)
    started = time.monotonic()
    first = b.submit(run("r1"))
    assert first.outcome == "created"
    assert time.monotonic() - started < 5, "submit waited for the playbook"
    again = b.submit(run("r1"))
    assert again.outcome == "already_exists"
    outcome = wait_done(b.paths("r1")[2])
    assert outcome["detail"] == "completed" and outcome["failure"] is None
    assert steps_called(tmp_path) == list(PLAYBOOKS["stop-idle-compute"].steps)
    assert b.submit(run("r1")).outcome == "already_exists"
    b.reap(wait=True)
    # Finished: the redelivery started nothing.
    assert steps_called(tmp_path) == list(PLAYBOOKS["stop-idle-compute"].steps)


def test_a_created_workflow_without_a_runner_is_started_by_the_redelivery(
    tmp_path: Path,
) -> None:
    b = backend(tmp_path)
    obj, pid_file, done = b.paths("r2")
    obj.write_text(
        json.dumps(
            {
                "run_id": "r2",
                "event_id": "evt-r2",
                "playbook": "stop-idle-compute",
                "rule_id": "test",
                "parameters": {"resource-id": "i-0123456789abcdef0"},
                "command": b.command,
                "created_at": 0,
            }
        )
    )
    assert not pid_file.exists()
    assert b.submit(run("r2")).outcome == "already_exists"
    assert wait_done(done)["detail"] == "completed"
    b.reap(wait=True)


def test_a_failed_step_is_recorded_by_the_runner(tmp_path: Path) -> None:
    b = backend(tmp_path, FAKE_STEP_PLAN=json.dumps({"analyze": [1]}))
    assert b.submit(run("r3")).outcome == "created"
    outcome = wait_done(b.paths("r3")[2])
    assert outcome["detail"] == "failed" and "analyze broke" in str(outcome["failure"])
    b.reap(wait=True)
    assert steps_called(tmp_path) == ["analyze", "record"]


def test_the_zygote_forks_runners_that_outlive_it(tmp_path: Path) -> None:
    """With the fork step runner, a warm zygote forks each runner: the first submit while it
    warms starts a runner process as before, later ones are forked; killing the zygote (as
    when the trigger dies) leaves a running workflow running and the next submit restarts it."""
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {**os.environ, "FAKE_STEP_DIR": str(calls)}
    b = DetachedLocalBackend(
        tmp_path / "workflows", command=[sys.executable, FAKE_STEP], env=env, step_runner="fork"
    )
    assert b.zygote is not None
    # The object's runner is `process` so the fake step script stands in for `cct step`.
    b.step_runner = "process"
    assert b.submit(run("warming")).outcome == "created"
    deadline = time.monotonic() + 120
    while not b.zygote.warm():
        assert time.monotonic() < deadline, "the zygote never became ready"
        time.sleep(0.5)
    assert b.submit(run("forked")).outcome == "created"
    pid = int(b.paths("forked")[1].read_text())
    assert pid not in {p.pid for p in b.runners}, "the runner was not forked by the zygote"
    b.zygote.stop()
    for name in ("warming", "forked"):
        assert wait_done(b.paths(name)[2])["detail"] == "completed"
    assert b.submit(run("restarted")).outcome == "created"
    assert wait_done(b.paths("restarted")[2])["detail"] == "completed"
    b.reap(wait=True)
    b.zygote.stop()
