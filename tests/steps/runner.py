"""A small local runner for tests: runs a playbook's steps in order, exactly as the contract in
docs/architecture.md ("How a local backend runs a playbook") describes.

By default each step is a `cct step NAME` subprocess, the real entrypoint. Starting Python
with boto3, psycopg and jsonschema costs seconds per step on the shared 2-core machine, so
tests that check cloud behaviour rather than the process boundary pass `inprocess=True`,
which calls the same `lambdas.steps.cli.run` with the same environment and captures the
same (redacted) JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambdas.common.logging import JsonFormatter
from lambdas.steps.cli import run as run_in_process
from lambdas.steps.playbooks import EXIT_OK, EXIT_RETRYABLE, PLAYBOOKS
from lambdas.steps.redact import REDACTOR, RedactingFormatter

CCT = str(Path(sys.executable).with_name("cct"))


@dataclass
class StepRun:
    step: str
    exit_code: int
    output: dict[str, Any]
    stderr: str


@dataclass
class RunResult:
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[StepRun] = field(default_factory=list)
    awaiting_approval: bool = False
    failed_step: str | None = None

    @property
    def text(self) -> str:
        """Everything the steps printed, for leak checks."""
        return "\n".join(json.dumps(r.output) + "\n" + r.stderr for r in self.runs)


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[io.StringIO]:
    saved = dict(os.environ)
    os.environ.update(env)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(RedactingFormatter(JsonFormatter()))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # what `cct step` logs at by default
    try:
        yield buffer
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
        os.environ.clear()
        os.environ.update(saved)


def call_step(
    step: str, doc: dict[str, Any], env: dict[str, str], inprocess: bool = False
) -> StepRun:
    if inprocess:
        with _environment(env) as logs:
            code, output = run_in_process(step, doc)
        # The CLI redacts its stdout the same way.
        output = json.loads(REDACTOR(json.dumps(output, default=str)))
        return StepRun(step, code, output, logs.getvalue())
    proc = subprocess.run(
        [CCT, "step", step],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    try:
        output = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{step} printed no JSON: {proc.stdout!r}\n{proc.stderr}") from exc
    return StepRun(step, proc.returncode, output, proc.stderr)


def run_playbook(
    playbook: str,
    run_id: str,
    parameters: dict[str, Any],
    env: dict[str, str],
    *,
    approval: dict[str, Any] | None = None,
    resume: RunResult | None = None,
    inprocess: bool = False,
) -> RunResult:
    """Run the playbook; with `resume`, continue a run that stopped awaiting approval."""
    result = RunResult(outputs=dict(resume.outputs) if resume else {})
    steps = PLAYBOOKS[playbook].steps
    if resume is not None:
        steps = steps[steps.index("approve") :]
        result.outputs.pop("approve", None)
    retry = PLAYBOOKS[playbook].retry
    for step in steps:
        doc: dict[str, Any] = {
            "run_id": run_id,
            "playbook": playbook,
            "parameters": parameters,
            "previous": dict(result.outputs),
        }
        if approval is not None:
            doc["approval"] = approval
        attempt = 0
        while True:
            run = call_step(step, doc, env, inprocess)
            result.runs.append(run)
            if run.exit_code != EXIT_RETRYABLE or attempt >= retry.limit:
                break
            attempt += 1  # tests retry at once; the delay policy is checked on its own
        if run.exit_code != EXIT_OK:
            result.failed_step = step
            failure = {
                "step": step,
                "exit_code": run.exit_code,
                "message": run.output.get("error", {}).get("message", ""),
            }
            result.runs.append(call_step("record", {**doc, "failure": failure}, env, inprocess))
            return result
        result.outputs[step] = run.output
        if step == "approve" and run.output["status"] == "awaiting_approval":
            result.awaiting_approval = True
            return result
    return result
