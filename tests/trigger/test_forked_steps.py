"""The local backend's `fork` step runner gives what `cct step NAME` gives: the same exit
code and JSON for the same input, a timeout that kills the step, and a clear failure when
the step dies or writes no JSON, while the runner goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import lambdas.steps.cli
from lambdas.steps.playbooks import EXIT_INVALID_INPUT, EXIT_OK, EXIT_PERMANENT, EXIT_RETRYABLE
from lambdas.trigger.core import WorkflowRun
from lambdas.trigger.local import LocalBackend, run_forked

CCT = str(Path(sys.executable).with_name("cct"))


def cct_step(step: str, document: Any) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [CCT, "step", step],
        input=json.dumps(document).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"run_id": "r1", "playbook": "no-such-playbook", "parameters": {}, "previous": {}},
        {"run_id": "r1", "playbook": "stop-idle-compute", "parameters": [], "previous": {}},
        {"run_id": "x" * 100_000, "playbook": "stop-idle-compute", "parameters": {}},
    ],
)
def test_fork_gives_what_the_entrypoint_gives(document: dict[str, Any]) -> None:
    code, output = cct_step("analyze", document)
    assert code == EXIT_INVALID_INPUT
    result = run_forked("analyze", document, 60)
    assert (result.exit_code, result.output) == (code, output)


def test_a_step_past_its_timeout_is_killed_and_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lambdas.steps.cli, "run", lambda *_: time.sleep(60))
    began = time.monotonic()
    result = run_forked("verify", {}, 0.5)
    assert time.monotonic() - began < 10
    assert result.exit_code == EXIT_RETRYABLE
    assert "timed out" in result.error_message


def test_a_step_that_dies_fails_permanently_and_the_runner_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(*_: object) -> None:
        raise MemoryError("boom")

    monkeypatch.setattr(lambdas.steps.cli, "run", crash)
    result = run_forked("plan", {}, 30)
    assert result.exit_code == EXIT_PERMANENT
    assert result.output == {}
    monkeypatch.setattr(lambdas.steps.cli, "run", lambda *_: os._exit(EXIT_RETRYABLE))
    assert run_forked("plan", {}, 30).exit_code == EXIT_RETRYABLE


def test_large_output_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    big = {"blob": "y" * 1_000_000}  # far beyond a pipe's buffer
    monkeypatch.setattr(lambdas.steps.cli, "run", lambda *_: (EXIT_OK, big))
    result = run_forked("analyze", {}, 30)
    assert result.ok and result.output == big


def test_the_backend_runs_a_playbook_with_forked_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.jsonl"

    def step(name: str, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with calls.open("a") as fh:  # from the child: the parent reads it afterwards
            fh.write(json.dumps({"step": name, "previous": sorted(document["previous"])}) + "\n")
        return EXIT_OK, {"status": "approved"} if name == "approve" else {"step": name}

    monkeypatch.setattr(lambdas.steps.cli, "run", step)
    backend = LocalBackend(step_runner="fork")
    run = WorkflowRun("r1", "e1", "stop-idle-compute", "rule", MappingProxyType({}))
    assert backend.submit(run).detail == "completed"
    seen = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [s["step"] for s in seen] == [
        "analyze",
        "plan",
        "approve",
        "execute",
        "verify",
        "record",
    ]
    assert seen[-1]["previous"] == ["analyze", "approve", "execute", "plan", "verify"]
    assert [name for name, _ in backend.timings] == [s["step"] for s in seen]
