"""The local workflow backend as Argo behaves: creating a workflow is quick and idempotent,
running it happens elsewhere.

`LocalBackend` runs a whole playbook inside `submit`, so the trigger's consumer waits for
every step (minutes with retries) and each anomaly behind it waits too. This backend keeps
Argo's split instead: `submit` asks admission (as the API server would), then creates the
workflow object as a file in a state directory with O_EXCL (a second create of the same
run is `already_exists`, as Argo's 409), and starts a runner process that executes the
playbook with `LocalBackend` and writes the outcome next to the object. The trigger goes on
to the next event at once.

A trigger that crashed between creating the object and starting its runner leaves an object
without a live runner and without an outcome: the redelivered event finds it and starts the
runner again (the steps are idempotent per run), so nothing is lost.

    python -m lambdas.trigger.detached <state_dir>/<run_id>.json     (the runner)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from lambdas.trigger.admission import AdmissionClient
from lambdas.trigger.backends import RetryableSubmitError, Submission
from lambdas.trigger.core import WorkflowRun
from lambdas.trigger.local import LocalBackend, StepRunner, step_environment


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class DetachedLocalBackend:
    name: Literal["local"] = "local"

    def __init__(
        self,
        state_dir: Path,
        command: Sequence[str] = ("cct",),
        admission: AdmissionClient | None = None,
        env: Mapping[str, str] | None = None,
        step_runner: StepRunner = "process",
    ) -> None:
        self.state_dir = state_dir
        self.command = list(command)
        # How the runner runs each step (`lambdas.trigger.local`): `fork` saves a Python
        # start-up per step; `process` runs `command` as a pod would.
        self.step_runner = step_runner
        self.admission = admission
        self.env = dict(env) if env is not None else step_environment(os.environ)
        # Runner processes this backend started; finished ones are reaped on each submit.
        self.runners: list[subprocess.Popen[bytes]] = []
        state_dir.mkdir(parents=True, exist_ok=True)

    def reap(self, wait: bool = False) -> None:
        """Collect finished runners (all of them, waiting, with `wait`)."""
        if wait:
            for proc in self.runners:
                proc.wait()
        self.runners = [p for p in self.runners if p.poll() is None]

    def paths(self, run_id: str) -> tuple[Path, Path, Path]:
        """The workflow object, its runner's pid file and its outcome."""
        base = self.state_dir / run_id
        return base.with_suffix(".json"), base.with_suffix(".pid"), base.with_suffix(".done")

    def submit(self, run: WorkflowRun) -> Submission:
        self.reap()
        if self.admission is not None:
            denial = self.admission.review(run)
            if denial is not None:
                return Submission("denied", denial)
        obj, pid_file, done = self.paths(run.run_id)
        document = {
            "run_id": run.run_id,
            "event_id": run.event_id,
            "playbook": run.playbook,
            "rule_id": run.rule_id,
            "parameters": dict(run.parameters),
            "command": self.command,
            "step_runner": self.step_runner,
            "created_at": time.time(),
        }
        try:
            fd = os.open(obj, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            if not done.exists() and not self._runner_alive(pid_file):
                self._start_runner(obj, pid_file)
            return Submission("already_exists")
        except OSError as exc:
            raise RetryableSubmitError(f"cannot create the workflow object: {exc}") from exc
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh)
        self._start_runner(obj, pid_file)
        return Submission("created", "started")

    @staticmethod
    def _runner_alive(pid_file: Path) -> bool:
        try:
            return _alive(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            return False

    def _start_runner(self, obj: Path, pid_file: Path) -> None:
        log = obj.with_suffix(".log")
        with open(log, "ab") as out:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "lambdas.trigger.detached", str(obj)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise RetryableSubmitError(f"cannot start the workflow runner: {exc}") from exc
        self.runners.append(proc)
        pid_file.write_text(str(proc.pid))


def run_object(obj: Path) -> dict[str, Any]:
    """Execute one stored workflow with the local backend; the outcome document."""
    doc = json.loads(obj.read_text())
    run = WorkflowRun(
        run_id=doc["run_id"],
        event_id=doc["event_id"],
        playbook=doc["playbook"],
        rule_id=doc["rule_id"],
        parameters=MappingProxyType({str(k): str(v) for k, v in doc["parameters"].items()}),
    )
    backend = LocalBackend(command=doc["command"], step_runner=doc.get("step_runner", "process"))
    started = time.time()
    submission = backend.submit(run)
    return {
        "run_id": run.run_id,
        "detail": submission.detail,
        "failure": submission.failure,
        "started_at": started,
        "steps": [{"step": step, "seconds": seconds} for step, seconds in backend.timings],
        "finished_at": time.time(),
    }


def main(argv: list[str] | None = None) -> int:
    from lambdas.common.logging import configure

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lambdas.trigger.detached <workflow object>", file=sys.stderr)
        return 64
    configure("INFO")
    obj = Path(args[0])
    outcome = run_object(obj)
    done = obj.with_suffix(".done")
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome))
    tmp.rename(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
