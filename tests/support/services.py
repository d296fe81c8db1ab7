"""Connection settings for the real local services, read from .local/services.json.

A test that needs a service gets it through a fixture in tests/conftest.py. If the service is
not reachable the test fails, naming the service and how to start it: the suite never skips
because something is missing.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_FILE = ROOT / ".local" / "services.json"


def load_settings() -> dict[str, dict[str, Any]]:
    if not SETTINGS_FILE.exists():
        pytest.fail(
            f"{SETTINGS_FILE} is missing: start the real services with `make services`",
            pytrace=False,
        )
    data: dict[str, dict[str, Any]] = json.loads(SETTINGS_FILE.read_text())
    return data


def require(settings: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    entry = settings.get(name)
    if entry is None:
        pytest.fail(
            f"service {name!r} is not in {SETTINGS_FILE}; run `make services`", pytrace=False
        )
    with socket.socket() as s:
        s.settimeout(1.0)
        if s.connect_ex(("127.0.0.1", int(entry["port"]))) != 0:
            pytest.fail(
                f"service {name!r} is not reachable on 127.0.0.1:{entry['port']}; "
                f"run `make services` (log: .local/log/{name}.log)",
                pytrace=False,
            )
    return entry
