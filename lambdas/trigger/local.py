"""Local backend, for development and tests: runs the playbook's step entrypoints
(`cct step NAME`, the same ones the WorkflowTemplates name) in order, following
docs/architecture.md "How a local backend runs a playbook".

Two ways to run a step (`step_runner`):
- `process`: `<command> step NAME` as a subprocess, exactly what a step pod runs. Every step
  pays an interpreter start-up and the steps' imports (psycopg, hvac, boto3): about 1 s of
  CPU, 2 to 8 s of wall time on a busy 2-core machine, six or seven times per playbook.
- `fork`: the process imports the step code once (`preload_steps`), then forks a child per
  step that calls the same function `cct step NAME` calls (`lambdas.steps.cli.run`) and
  writes the same JSON. A step still runs in a process of its own (a crash, a leaked
  connection or a hung call ends with it; the timeout kills it), without the start-up.

Idempotence: the steps themselves are idempotent per run (a repeated `execute` finds the
change already made), and the trigger never resubmits a run whose row is already in a final
state, so a redelivered event does not run a finished playbook again.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lambdas.steps.playbooks import EXIT_OK, EXIT_PERMANENT, EXIT_RETRYABLE, PLAYBOOKS, Playbook
from lambdas.trigger.admission import AdmissionClient
from lambdas.trigger.backends import Submission
from lambdas.trigger.core import WorkflowRun

log = logging.getLogger("cct.trigger.local")


@dataclass(frozen=True)
class StepResult:
    step: str
    exit_code: int
    output: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def error_message(self) -> str:
        error = self.output.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        return f"step {self.step} exited {self.exit_code}"


# `CCT_STEPENV_<NAME>=value` in the trigger's environment becomes `<NAME>=value` in each
# step's: a step pod has an identity of its own (e.g. its Kafka user), which the local
# backend's step processes would otherwise inherit from the trigger.
STEP_ENV_PREFIX = "CCT_STEPENV_"


def step_environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if not k.startswith(STEP_ENV_PREFIX)}
    env.update(
        {
            k.removeprefix(STEP_ENV_PREFIX): v
            for k, v in environ.items()
            if k.startswith(STEP_ENV_PREFIX)
        }
    )
    return env


StepRunner = Literal["process", "fork"]
STEP_RUNNERS: tuple[StepRunner, ...] = ("process", "fork")


def preload_steps() -> None:
    """Import what every step needs, once, before forking steps from this process."""
    import lambdas.steps.cli
    import lambdas.steps.cloud
    import lambdas.steps.steps
    from lambdas.steps.providers import aws

    lambdas.steps.cli.redact_logging()
    aws.warm()


def run_forked(step: str, document: dict[str, Any], timeout_s: float) -> StepResult:
    """Run one step in a forked child of this (single-threaded) process: the child calls
    `lambdas.steps.cli.run` and writes the redacted JSON output to a pipe, as `cct step`
    writes it to stdout; the exit code is the child's."""
    from lambdas.steps.cli import output_text, run

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the runner's code
        code = EXIT_PERMANENT
        try:
            os.close(read_fd)
            code, output = run(step, document)
            with os.fdopen(write_fd, "w") as out:
                out.write(output_text(output))
        except BaseException:  # the child must always reach os._exit
            log.exception("forked step crashed", extra={"step": step})
        finally:
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    timed_out = False
    with os.fdopen(read_fd, "rb", buffering=0) as pipe, selectors.DefaultSelector() as sel:
        sel.register(pipe, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            if not sel.select(min(left, 1.0)):
                continue
            chunk = pipe.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return StepResult(step, EXIT_RETRYABLE, {"error": {"message": f"timed out ({step})"}})
    return _result(step, os.waitstatus_to_exitcode(status), b"".join(chunks))


def _result(step: str, exit_code: int, stdout: bytes) -> StepResult:
    try:
        output = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError:
        output = {"error": {"message": f"step {step} wrote non-JSON output"}}
        return StepResult(step, exit_code or 1, output)
    if not isinstance(output, dict):
        output = {"error": {"message": f"step {step} wrote a non-object"}}
    return StepResult(step, exit_code, output)


class LocalBackend:
    name: Literal["local"] = "local"

    def __init__(
        self,
        command: Sequence[str] = ("cct",),
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        admission: AdmissionClient | None = None,
        step_runner: StepRunner = "process",
    ) -> None:
        self.command = list(command)
        # `fork` runs the steps in children of this process, with this process's
        # environment: only a runner started with the step environment may use it.
        self.step_runner = step_runner
        if step_runner == "fork":
            preload_steps()
        # Seconds each step took, in order (with retries), for the outcome and benchmarks.
        self.timings: list[tuple[str, float]] = []
        # Plays the API server's call to the admission webhook (lambdas/trigger/admission.py).
        self.admission = admission
        self.env = dict(env) if env is not None else step_environment(os.environ)
        self.sleep = sleep

    def submit(self, run: WorkflowRun) -> Submission:
        """Run every step; detail is `completed`, `awaiting_approval` or `failed`, or the
        webhook's message when admission denied the workflow."""
        if self.admission is not None:
            denial = self.admission.review(run)
            if denial is not None:
                return Submission("denied", denial)
        playbook = PLAYBOOKS[run.playbook]
        previous: dict[str, Any] = {}
        for step in playbook.steps:
            document = {
                "run_id": run.run_id,
                "playbook": run.playbook,
                "parameters": dict(run.parameters),
                "previous": dict(previous),
            }
            result = self._with_retries(playbook, step, document)
            if not result.ok:
                self._record_failure(document, result)
                return Submission("created", "failed", failure=result.error_message)
            previous[step] = result.output
            if step == "approve" and result.output.get("status") == "awaiting_approval":
                # The run waits for a person; `cct step approve` resumes it later.
                return Submission("created", "awaiting_approval")
        return Submission("created", "completed")

    def _with_retries(self, playbook: Playbook, step: str, document: dict[str, Any]) -> StepResult:
        attempt = 0
        while True:
            began = time.monotonic()
            result = self._run(step, document, playbook.step_timeout_s[step])
            self.timings.append((step, round(time.monotonic() - began, 3)))
            if result.exit_code != EXIT_RETRYABLE or attempt >= playbook.retry.limit:
                return result
            attempt += 1
            delay = playbook.retry.delay(attempt)
            log.info(
                "step asked to be retried",
                extra={"run_id": document["run_id"], "step": step, "attempt": attempt},
            )
            self.sleep(delay)

    def _run(self, step: str, document: dict[str, Any], timeout_s: float) -> StepResult:
        if self.step_runner == "fork":
            return run_forked(step, document, timeout_s)
        try:
            proc = subprocess.run(
                [*self.command, "step", step],
                input=json.dumps(document).encode(),
                stdout=subprocess.PIPE,
                # The steps log JSON lines on stderr; they go straight to ours.
                stderr=None,
                timeout=timeout_s,
                env=self.env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return StepResult(step, EXIT_RETRYABLE, {"error": {"message": f"timed out ({step})"}})
        return _result(step, proc.returncode, proc.stdout)

    def _record_failure(self, document: dict[str, Any], result: StepResult) -> None:
        """What Argo's onExit handler does: `cct step record` once, with the failure."""
        failure = {
            "step": result.step,
            "exit_code": result.exit_code,
            "message": result.error_message,
        }
        recorded = self._run("record", {**document, "failure": failure}, 60)
        if not recorded.ok:
            log.error(
                "recording the failed run failed too",
                extra={"run_id": document["run_id"], "error": recorded.error_message},
            )
