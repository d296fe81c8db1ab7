"""What the components deploy that the other areas generate (docs/architecture.md section 9).

`infra.generated.collect` fills a `Content` from the areas' own generators and files; the
deployment tests build the stacks from exactly that, so a change in an area shows up in the
bundle's tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi


@dataclass(frozen=True)
class RemediationPermissions:
    """Exact cloud permissions of the remediation actions registry, per provider."""

    aws: tuple[str, ...]
    azure: tuple[str, ...]
    gcp: tuple[str, ...]


@dataclass(frozen=True)
class Forwarder:
    """One cloud's forwarder package and its entry point."""

    archive: pulumi.Archive
    entry_point: str


@dataclass(frozen=True)
class Content:
    fluentbit_files: Mapping[str, str]
    fluentbit_main: str
    vmalert_rules: Mapping[str, str]
    alertmanager_config: str
    # Path, inside the Alertmanager container, of the bridge token file the config names.
    alertmanager_token_file: str
    workflow_templates: Sequence[Mapping[str, Any]]
    remediation: RemediationPermissions
    # filename -> YAML: the optimization policies (admission, trigger pre-check) and the
    # anomaly-to-playbook mapping with its schema (trigger).
    policies: Mapping[str, str]
    playbooks: Mapping[str, str]
    dashboards: Mapping[str, str]
    grafana_datasources: Mapping[str, Any]
    grafana_dashboard_providers: Mapping[str, Any]
    forwarders: Mapping[str, Forwarder]
    aws_event_pattern: Mapping[str, Any]
    gcp_log_filter: str
    # Labels the trigger puts on its Workflows; the admission webhook selects on them.
    workflow_labels: Mapping[str, str]
