"""The services script is idempotent and says what it found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_up_again_is_a_no_op_and_status_is_healthy(services: dict[str, Any]) -> None:
    again = run("up")
    assert again.returncode == 0, again.stderr
    for name in services:
        assert f"{name}: already running" in again.stdout
    status = run("status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(" healthy ") == len(services)


def test_unknown_service_is_named() -> None:
    result = run("up", "nosuchdb")
    assert result.returncode != 0
    assert "unknown service(s) ['nosuchdb']" in result.stderr + result.stdout
