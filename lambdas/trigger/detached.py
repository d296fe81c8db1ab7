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

With the `fork` step runner the backend also keeps a zygote: a process that has imported and
warmed the step code once and forks each runner on request (the runner double-forks into its
own session, so it outlives the zygote and the trigger as an Argo workflow outlives the
trigger's pod). A runner then starts in milliseconds instead of a Python start-up and the
steps' imports (4 to 11 s on a busy 2-core machine). While the zygote is starting, or if it
died, runners start as processes of their own, as before.

    python -m lambdas.trigger.detached <state_dir>/<run_id>.json     (the runner)
    python -m lambdas.trigger.detached --zygote                       (reads object paths)
"""

from __future__ import annotations

import json
import logging
import os
import select
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
from lambdas.trigger.local import LocalBackend, StepRunner, preload_steps, step_environment

log = logging.getLogger("cct.trigger.detached")

ZYGOTE_FLAG = "--zygote"
# How long the backend waits for the zygote to name a runner it forked.
ZYGOTE_REPLY_S = 5.0


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


class Zygote:
    """The backend's handle on its zygote process (see the module docstring)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False

    def start(self) -> None:
        self.stop()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lambdas.trigger.detached", ZYGOTE_FLAG],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("workflow zygote not started", extra={"error": str(exc)})
            self.proc = None

    def _line(self, timeout_s: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline() if readable else None

    def warm(self) -> bool:
        """Whether the zygote is ready to fork runners (a dead one is started again)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
            return False
        if not self.ready:
            self.ready = self._line(0) == b"ready\n"
        return self.ready

    def spawn(self, obj: Path) -> int | None:
        """Fork a runner for `obj`; its pid, or None when the zygote cannot (not warm yet,
        dead, or silent) and the caller must start the runner itself."""
        if not self.warm():
            return None
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{obj}\n".encode())
            self.proc.stdin.flush()
            reply = self._line(ZYGOTE_REPLY_S)
            if reply is None:
                raise OSError("no reply")
            return int(reply)
        except (OSError, ValueError) as exc:
            log.warning("workflow zygote failed, restarting it", extra={"error": str(exc)})
            self.stop()
            return None

    def stop(self) -> None:
        """Kill the zygote (never its runners: they are in sessions of their own)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.proc = None
        self.ready = False


def zygote() -> int:
    """Warm the step code, then fork a runner for every object path read from stdin,
    answering each with the runner's pid."""
    from lambdas.common.logging import configure

    configure("INFO")
    preload_steps()
    os.write(1, b"ready\n")
    for line in sys.stdin.buffer:
        obj = Path(line.decode().strip())
        child = os.fork()
        if child == 0:
            os.setsid()
            runner = os.fork()
            if runner:
                os.write(1, f"{runner}\n".encode())
                os._exit(0)
            _run_forked_runner(obj)
        os.waitpid(child, 0)
    return 0


def _run_forked_runner(obj: Path) -> None:
    """The runner, in a grandchild of the zygote: output to the object's log, never returns."""
    code = 1
    try:
        fd = os.open(obj.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = main([str(obj)])
    except BaseException:  # the runner must always reach os._exit
        log.exception("workflow runner crashed", extra={"object": str(obj)})
    finally:
        logging.shutdown()
        os._exit(code)


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
        self.zygote = Zygote(self.env) if step_runner == "fork" else None
        if self.zygote is not None:
            self.zygote.start()

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
        pid = self.zygote.spawn(obj) if self.zygote is not None else None
        if pid is not None:
            pid_file.write_text(str(pid))
            return
        with open(obj.with_suffix(".log"), "ab") as out:
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
    if args == [ZYGOTE_FLAG]:
        return zygote()
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
