"""A stand-in for `cct step NAME`, to drive the local backend's control flow (retries,
failures, approval) without clouds. Invoked as `python fake_step.py step NAME`.

FAKE_STEP_DIR: where each call is logged (`calls.jsonl`: step, exit code, input).
FAKE_STEP_PLAN: JSON `{step: [exit code of call 1, call 2, ...]}`; missing = 0.
FAKE_APPROVE_STATUS: what `approve` reports (default `approved`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    step = sys.argv[2]
    document = json.loads(sys.stdin.read())
    log = Path(os.environ["FAKE_STEP_DIR"]) / "calls.jsonl"
    previous = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    attempt = sum(1 for call in previous if call["step"] == step)
    plan = json.loads(os.environ.get("FAKE_STEP_PLAN", "{}")).get(step, [])
    code = plan[attempt] if attempt < len(plan) else 0
    with log.open("a") as fh:
        fh.write(json.dumps({"step": step, "exit": code, "input": document}) + "\n")
    if code != 0:
        print(
            json.dumps(
                {"error": {"type": "Fake", "message": f"{step} broke", "retryable": code == 75}}
            )
        )
        return code
    if step == "approve":
        print(json.dumps({"status": os.environ.get("FAKE_APPROVE_STATUS", "approved")}))
    else:
        print(json.dumps({"step": step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
