"""Render Alertmanager's configuration from stack settings.

Routing, for `alertname="CostAnomaly"`:
- every anomaly goes to the bridge (which puts it on Kafka for the trigger);
- critical anomalies also go to Zenduty.

Secrets never appear in the rendered YAML. The bridge's bearer token is a file Alertmanager
reads (`http_config.authorization.credentials_file`). The Zenduty integration key is part of
Zenduty's webhook URL; Alertmanager 0.25 (the release this repository runs and checks against)
rejects `webhook_configs.url_file` ("field url_file not found"), so a URL with the key would
have to be written into the config. Instead Alertmanager posts critical groups to the
bridge's Zenduty relay endpoint (same bearer token), and the bridge forwards the unchanged
payload to the Zenduty URL it reads from its own secret file, answering 2xx only after
Zenduty did, so Alertmanager's retries still cover every failure.

Timings are seconds-scale: measured on Alertmanager 0.25, `group_wait: 0s` delivers a new
group in milliseconds and `group_interval: 1s` adds alerts to an existing group within a
second (shared/notes/victoriametrics-alertmanager.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from lambdas import contract

ALERTNAME = contract.ALERTNAME
BRIDGE_RECEIVER = "cct-bridge"
ZENDUTY_RECEIVER = "zenduty"
NULL_RECEIVER = "null"

# The contract's dimension labels: the level plus the labels that identify what the anomaly
# is about. One group per distinct dimension set.
DEFAULT_DIMENSIONS = contract.DIMENSION_LABELS

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$|^0$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class AlertingConfigError(ValueError):
    """The routing settings are inconsistent. Fix the stack configuration."""


@dataclass(frozen=True)
class AlertRoutingSettings:
    """What the Alertmanager configuration needs to know about the stack.

    bridge_url: the bridge's webhook endpoint, e.g. `http://cct-bridge.cct-system:8080/v1/alerts`.
    zenduty_relay_url: the bridge's Zenduty relay endpoint (`.../v1/relay/zenduty`).
    token_file: path, inside the Alertmanager container, of the bridge's bearer token.
    dimensions: labels that identify an anomaly's subject; grouping and inhibition use them.
    group_wait: delay before a new group's first notification. 0s: the detector already
        debounces, and every second here is a second of detection latency.
    group_interval: delay before an existing group announces new or resolved alerts. 1s is
        the smallest Alertmanager accepts (0 is rejected) and bounds the added latency.
    repeat_interval: re-announce still-firing groups. The bridge's events carry a stable id,
        so a repeat never starts a second workflow; it only re-pages Zenduty.
    zenduty_severities: severities that page a human.
    """

    bridge_url: str
    zenduty_relay_url: str
    token_file: str
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    group_wait: str = "0s"
    group_interval: str = "1s"
    repeat_interval: str = "4h"
    zenduty_severities: tuple[str, ...] = ("critical",)

    def __post_init__(self) -> None:
        for name in ("bridge_url", "zenduty_relay_url"):
            url = getattr(self, name)
            if not url.startswith(("http://", "https://")):
                raise AlertingConfigError(f"{name}={url!r} must be an http(s) URL")
        if not self.token_file.startswith("/"):
            raise AlertingConfigError(f"token_file={self.token_file!r} must be an absolute path")
        for name in ("group_wait", "group_interval", "repeat_interval"):
            if not _DURATION.match(getattr(self, name)):
                raise AlertingConfigError(
                    f"{name}={getattr(self, name)!r} is not a duration like 1s or 4h"
                )
        if self.group_interval in ("0", "0s"):
            raise AlertingConfigError("group_interval must be positive (Alertmanager rejects 0)")
        bad = [d for d in self.dimensions if not _LABEL.match(d)]
        if bad or not self.dimensions:
            raise AlertingConfigError(f"dimensions must be label names, got {bad or '[]'}")
        unknown = set(self.zenduty_severities) - {"info", "warning", "critical"}
        if unknown or not self.zenduty_severities:
            raise AlertingConfigError(f"zenduty_severities has unknown values {sorted(unknown)}")


def _webhook(url: str, token_file: str) -> dict[str, Any]:
    return {
        "url": url,
        "send_resolved": True,
        # 0 = no limit: the bridge turns every alert into its own event, none may be cut.
        "max_alerts": 0,
        "http_config": {"authorization": {"type": "Bearer", "credentials_file": token_file}},
    }


def build_alertmanager_config(settings: AlertRoutingSettings) -> dict[str, Any]:
    group_by = ["alertname", *settings.dimensions]
    timings = {
        "group_wait": settings.group_wait,
        "group_interval": settings.group_interval,
        "repeat_interval": settings.repeat_interval,
    }
    severities = "|".join(settings.zenduty_severities)
    return {
        "route": {
            # Alerts that are not CCT's have nowhere to go in this Alertmanager.
            "receiver": NULL_RECEIVER,
            "group_by": group_by,
            **timings,
            "routes": [
                {
                    "receiver": ZENDUTY_RECEIVER,
                    "matchers": [f'alertname="{ALERTNAME}"', f'severity=~"{severities}"'],
                    # Paging a human must not stop the anomaly from reaching the trigger.
                    "continue": True,
                },
                {"receiver": BRIDGE_RECEIVER, "matchers": [f'alertname="{ALERTNAME}"']},
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": [f'alertname="{ALERTNAME}"', 'severity="critical"'],
                "target_matchers": [f'alertname="{ALERTNAME}"', 'severity="warning"'],
                # Only a critical of the same source: a team over its critical budget
                # (vmalert) used to mute the detector's warning on that team, which carries
                # the cause and starts its playbook, from every receiver, the bridge too.
                "equal": [*settings.dimensions, contract.SOURCE_LABEL],
            }
        ],
        "receivers": [
            {"name": NULL_RECEIVER},
            {
                "name": ZENDUTY_RECEIVER,
                "webhook_configs": [_webhook(settings.zenduty_relay_url, settings.token_file)],
            },
            {
                "name": BRIDGE_RECEIVER,
                "webhook_configs": [_webhook(settings.bridge_url, settings.token_file)],
            },
        ],
    }


def bundle_routing(namespace: str, bridge_port: int, token_file: str) -> AlertRoutingSettings:
    """The routing the bundle deploys: the bridge's Service in `namespace` receives every alert.

    One function for the bundle (infra/generated.py) and `cct alertmanager render`, so the
    command prints exactly what the stack deploys.
    """
    bridge = f"http://bridge.{namespace}.svc:{bridge_port}"
    return AlertRoutingSettings(
        bridge_url=f"{bridge}/v1/alerts",
        zenduty_relay_url=f"{bridge}/v1/relay/zenduty",
        token_file=token_file,
    )


def render_alertmanager_config(settings: AlertRoutingSettings) -> str:
    """Alertmanager YAML (checked by `amtool check-config` in tests/routing)."""
    header = "# Generated by lambdas.alerting.config; edit the stack settings, not this file.\n"
    return header + yaml.safe_dump(build_alertmanager_config(settings), sort_keys=False)
