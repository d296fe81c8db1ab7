"""Collects the generated content from the other areas' own generators and files
(docs/architecture.md section 9) for one stack's settings."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pulumi
import yaml

from components.alertmanager import SECRETS_DIR as ALERTMANAGER_SECRETS_DIR
from components.handlers import HTTP_PORT
from components.kafka import ca_secret, user_secret
from components.vault import CA_CONFIG_MAP as VAULT_CA_CONFIG_MAP
from infra.config import Settings
from infra.content import Content, Forwarder, RemediationPermissions
from infra.stack import STEPS_SERVICE_ACCOUNT
from lambdas.alerting.config import bundle_routing, render_alertmanager_config
from lambdas.detector.rules import RulesSettings, load_budgets, render_vmalert_rules
from lambdas.forwarders.aws import event_pattern
from lambdas.forwarders.gcp import log_sink_filter
from lambdas.ingest.fluentbit import CONFIG_FILE, FluentBitSettings, render_config
from lambdas.steps.action import Action
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.steps.registry import ACTIONS
from lambdas.steps.templates import workflow_template

ROOT = Path(__file__).resolve().parents[1]
BRIDGE_TOKEN_FILE = "bridge-token"  # noqa: S105 - a file name, not a token
# The trigger labels every Workflow it creates so (lambdas/trigger/argo.py).
WORKFLOW_LABELS = {"app.kubernetes.io/managed-by": "cct-trigger"}

# Platform entry points around the forwarders' plain functions. The forwarders themselves
# use only the standard library; these shims add what each platform's runtime needs.
GCP_MAIN = '''"""Cloud Functions (gen2) entry point for CCT's audit-log forwarder."""
import functions_framework

from lambdas.forwarders.gcp import entry_point as forward


@functions_framework.cloud_event
def entry_point(cloud_event):
    forward(cloud_event)
'''
AZURE_FUNCTION_APP = '''"""Azure Functions (Python v2 model) entry point of CCT's forwarder."""
import json

import azure.functions as func

from lambdas.forwarders.azure import main

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="forward", methods=["POST"])
def forward(req: func.HttpRequest) -> func.HttpResponse:
    status, body = main(req.get_body())
    return func.HttpResponse(
        json.dumps(body), status_code=status, mimetype="application/json"
    )
'''
AZURE_HOST = json.dumps({"version": "2.0"})
GCP_REQUIREMENTS = "functions-framework==3.8.3\n"
AZURE_REQUIREMENTS = "azure-functions==1.23.0\n"


def remediation_permissions(actions: Iterable[Action]) -> RemediationPermissions:
    """The union of every registered action's permissions, per provider, sorted."""
    by_provider: dict[str, set[str]] = {"aws": set(), "azure": set(), "gcp": set()}
    for action in actions:
        by_provider[action.provider].update(action.permissions)
    return RemediationPermissions(
        aws=tuple(sorted(by_provider["aws"])),
        azure=tuple(sorted(by_provider["azure"])),
        gcp=tuple(sorted(by_provider["gcp"])),
    )


def _forwarder_package(extra: dict[str, pulumi.Asset | pulumi.Archive]) -> pulumi.AssetArchive:
    return pulumi.AssetArchive(
        {
            "lambdas/__init__.py": pulumi.FileAsset(str(ROOT / "lambdas" / "__init__.py")),
            "lambdas/forwarders": pulumi.FileArchive(str(ROOT / "lambdas" / "forwarders")),
            **extra,
        }
    )


def _yaml_files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.glob("*.yaml"))}


def alertmanager_config(namespace: str) -> str:
    """The Alertmanager configuration a stack deploys into `namespace` (also printed by
    `cct alertmanager render --stack NAME`)."""
    return render_alertmanager_config(
        bundle_routing(namespace, HTTP_PORT, f"{ALERTMANAGER_SECRETS_DIR}/{BRIDGE_TOKEN_FILE}")
    )


def collect(settings: Settings) -> Content:
    ns = settings.namespace
    budgets = load_budgets(ROOT / settings.budgets_file) if settings.budgets_file else ()
    dashboards = ROOT / "dashboards"
    provisioning = dashboards / "provisioning"
    return Content(
        fluentbit_files=render_config(
            FluentBitSettings(collector_host=f"collector.{ns}.svc", collector_port=HTTP_PORT)
        ),
        fluentbit_main=CONFIG_FILE,
        vmalert_rules={"budgets.yaml": render_vmalert_rules(RulesSettings(budgets=budgets))},
        alertmanager_config=alertmanager_config(ns),
        alertmanager_token_file=f"{ALERTMANAGER_SECRETS_DIR}/{BRIDGE_TOKEN_FILE}",
        workflow_templates=[
            workflow_template(
                p,
                ns,
                image=settings.image,
                service_account=STEPS_SERVICE_ACCOUNT,
                kafka_secrets=(user_secret("steps"), ca_secret()),
                vault_ca_config_map=VAULT_CA_CONFIG_MAP,
            )
            for p in PLAYBOOKS.values()
        ],
        remediation=remediation_permissions(ACTIONS.values()),
        policies=_yaml_files(ROOT / "policies" / "optimization"),
        playbooks={
            name: (ROOT / "policies" / name).read_text()
            for name in ("playbooks.yaml", "playbooks.schema.json")
        },
        dashboards={p.name: p.read_text() for p in sorted(dashboards.glob("*.json"))},
        grafana_datasources=yaml.safe_load((provisioning / "datasources" / "cct.yaml").read_text()),
        grafana_dashboard_providers=yaml.safe_load(
            (provisioning / "dashboards" / "cct.yaml").read_text()
        ),
        forwarders={
            "aws": Forwarder(_forwarder_package({}), "lambdas.forwarders.aws.lambda_handler"),
            "azure": Forwarder(
                _forwarder_package(
                    {
                        "function_app.py": pulumi.StringAsset(AZURE_FUNCTION_APP),
                        "host.json": pulumi.StringAsset(AZURE_HOST),
                        "requirements.txt": pulumi.StringAsset(AZURE_REQUIREMENTS),
                    }
                ),
                "forward",
            ),
            "gcp": Forwarder(
                _forwarder_package(
                    {
                        "main.py": pulumi.StringAsset(GCP_MAIN),
                        "requirements.txt": pulumi.StringAsset(GCP_REQUIREMENTS),
                    }
                ),
                "entry_point",
            ),
        },
        aws_event_pattern=event_pattern(),
        gcp_log_filter=log_sink_filter(),
        workflow_labels=WORKFLOW_LABELS,
    )
