"""The local stack's billing CronJob: `cct billing load` on a schedule and on demand, over a
drop directory that plays the providers' export buckets.

In the cluster a CronJob runs `cct billing load <export location>` for each provider's export
(docs/ingestion.md). Here the exports are a local directory, one subdirectory per format
(`focus/`, `aws-cur2/`, `azure-actual/`, `azure-amortized/`, `gcp-bigquery/`, the loader's
`--format` names); each file or directory under it is one delivery. This process runs the
same command, as a CronJob pod would (a fresh `cct billing load` process per delivery):

- on demand: a new or changed delivery (name, size, mtime) is loaded within `poll_s`; a POST
  to `/run` loads every delivery now;
- on a schedule: every `interval_s` every delivery is loaded again (the loader is idempotent:
  an unchanged delivery writes nothing and reconciliation runs again), as the CronJob does.

The last run (when, why, each delivery's exit code and report) is served at `/status`, read
by `cct status`; `/healthz` answers while the loop runs. Exit 65 (a broken file: the loader
dead-lettered it) is not retried until the file changes; exit 75 (retry) is retried on the
next poll.

    python -m lambdas.devstack.billing_drop --port 18089 --drop-dir DIR [--interval-s 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lambdas.billing.adapters import ADAPTERS
from lambdas.devstack.simbase import HttpError, Request, Response
from lambdas.devstack.simbase import serve as serve_http

log = logging.getLogger(__name__)
EXIT_INVALID = 65


def _fingerprint(path: Path) -> tuple[int, int]:
    """(total size, newest mtime) of a delivery: a file or every file under a directory."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


@dataclass
class Outcome:
    delivery: str
    format: str
    exit_code: int
    # The loader's JSON report (load id, files, rows read and rejected, reconciled) or the
    # last lines of its error output.
    report: Any
    seconds: float


@dataclass
class Run:
    started_at: float
    trigger: str  # schedule | new-delivery | request
    outcomes: list[Outcome] = field(default_factory=list)
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return all(o.exit_code == 0 for o in self.outcomes)


@dataclass
class BillingDrop:
    drop_dir: Path
    command: list[str]
    interval_s: float = 300.0
    poll_s: float = 2.0
    env: dict[str, str] = field(default_factory=dict)
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # delivery -> (size, mtime)
    runs: int = 0
    last: Run | None = None
    next_scheduled: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)
    requested: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliveries(self) -> dict[str, tuple[str, Path, tuple[int, int]]]:
        """delivery name -> (format, path, fingerprint)."""
        found: dict[str, tuple[str, Path, tuple[int, int]]] = {}
        for fmt in ADAPTERS:
            folder = self.drop_dir / fmt
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith("."):  # a copy in progress, by convention
                    continue
                found[f"{fmt}/{path.name}"] = (fmt, path, _fingerprint(path))
        return found

    def load(self, fmt: str, path: Path, name: str) -> Outcome:
        started = time.monotonic()
        proc = subprocess.run(
            [*self.command, "billing", "load", "--format", fmt, str(path)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **self.env},
            timeout=600,
        )
        report: Any
        try:
            report = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"stderr": proc.stderr[-2000:]}
        if proc.returncode != 0:
            report = {"stderr": proc.stderr[-2000:]}
        outcome = Outcome(name, fmt, proc.returncode, report, round(time.monotonic() - started, 3))
        log.info("billing load %s: exit %d", name, proc.returncode)
        return outcome

    def tick(self, now: float) -> Run | None:
        """One pass: what to load now, and why; None if nothing is due."""
        found = self.deliveries()
        with self.lock:
            requested, self.requested = self.requested, False
        if requested:
            trigger, due = "request", list(found)
        elif now >= self.next_scheduled:
            trigger, due = "schedule", list(found)
        else:
            trigger = "new-delivery"
            due = [n for n, (_, _, fp) in found.items() if self.seen.get(n) != fp]
            if not due:
                return None
        run = Run(time.time(), trigger)
        for name in due:
            fmt, path, fingerprint = found[name]
            outcome = self.load(fmt, path, name)
            run.outcomes.append(outcome)
            # A broken file is not retried until it changes; a retryable failure is.
            if outcome.exit_code in (0, EXIT_INVALID):
                self.seen[name] = fingerprint
        if trigger == "schedule":
            self.next_scheduled = now + self.interval_s
        run.finished_at = time.time()
        with self.lock:
            self.runs += 1
            self.last = run
        return run

    def loop(self, stop: threading.Event) -> None:
        self.next_scheduled = time.monotonic()
        while not stop.is_set():
            try:
                self.tick(time.monotonic())
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("billing drop pass failed: %s", exc)
            self.wake.wait(self.poll_s)
            self.wake.clear()

    def request(self) -> None:
        with self.lock:
            self.requested = True
        self.wake.set()

    def status(self) -> dict[str, Any]:
        with self.lock:
            last = self.last
            return {
                "drop_dir": str(self.drop_dir),
                "formats": list(ADAPTERS),
                "interval_s": self.interval_s,
                "runs": self.runs,
                "next_scheduled_in_s": round(max(0.0, self.next_scheduled - time.monotonic()), 1),
                "last_run": None
                if last is None
                else {
                    "started_at": last.started_at,
                    "finished_at": last.finished_at,
                    "trigger": last.trigger,
                    "ok": last.ok,
                    "outcomes": [asdict(o) for o in last.outcomes],
                },
            }


def serve(drop: BillingDrop, host: str, port: int) -> None:
    """GET /status, POST /run (and the shared /healthz, /metrics) until SIGTERM."""

    def app(req: Request) -> Response:
        if req.method == "GET" and req.path == "/status":
            return 200, {}, drop.status()
        if req.method == "POST" and req.path == "/run":
            drop.request()
            return 202, {}, {"requested": True}
        raise HttpError(404, {"error": "not found"})

    def metrics() -> str:
        status = drop.status()
        last = status["last_run"] or {}
        return (
            f"cct_billing_drop_runs_total {status['runs']}\n"
            f"cct_billing_drop_last_run_ok {int(bool(last.get('ok')))}\n"
        )

    stop = threading.Event()
    worker = threading.Thread(target=drop.loop, args=(stop,), daemon=True)
    worker.start()
    try:
        serve_http(app, host, port, metrics, "billing drop")
    finally:
        stop.set()
        drop.wake.set()
        worker.join(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="billing_drop", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18089)
    parser.add_argument("--drop-dir", type=Path, required=True)
    parser.add_argument("--interval-s", type=float, default=300.0)
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--cct", default=str(Path(sys.executable).parent / "cct"))
    args = parser.parse_args(argv)
    if args.interval_s <= 0 or args.poll_s <= 0:
        parser.error("--interval-s and --poll-s must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for fmt in ADAPTERS:
        (args.drop_dir / fmt).mkdir(parents=True, exist_ok=True)
    drop = BillingDrop(args.drop_dir, [args.cct], args.interval_s, args.poll_s)
    serve(drop, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
