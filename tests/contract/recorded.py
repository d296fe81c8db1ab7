"""The detector's recorded alerts (`detector_alerts.json`, written by `capture.py` from the
real detector's output) for the consumers' tests: Alertmanager routing, bridge, trigger."""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from tests.contract.capture import RECORDING


@cache
def _recording() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(RECORDING.read_text()))


def recorded_alerts() -> list[dict[str, Any]]:
    """Every recorded alert (labels and annotations), as the detector posted it."""
    return copy.deepcopy(list(_recording()))


# A recorded alert per kind of anomaly: (level, resource_type, env) of the alert.
KINDS = {
    "dev-instance": ("resource", "Instance", "dev"),
    "prod-instance": ("resource", "Instance", "prod"),
    "database": ("resource", "DBInstance", "prod"),
    "volume": ("resource", "Volume", "prod"),
    "azure-vm": ("resource", "Microsoft.Compute/virtualMachines", "staging"),
    "diffuse-service": ("service", None, None),
}


def recorded_alert(kind: str, uid: str = "") -> dict[str, Any]:
    """The recorded alert of one kind; `{uid}` in its values becomes `uid` (tests keep their
    resources, accounts and fingerprints apart with it)."""
    level, rtype, env = KINDS[kind]
    for alert in _recording():
        labels = alert["labels"]
        if (labels["level"], labels.get("resource_type"), labels.get("env")) == (
            level,
            rtype,
            env,
        ):
            text = json.dumps(alert).replace("{uid}", uid or "0")
            found: dict[str, Any] = json.loads(text)
            return found
    raise KeyError(f"no recorded alert of kind {kind!r}; regenerate with tests.contract.capture")
