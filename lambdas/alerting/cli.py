"""`cct alertmanager render`: print the Alertmanager configuration the bundle deploys.

The defaults are the bundle's (namespace `cct-system`, the bridge's Service port, the token file
Alertmanager mounts); tests/infra/test_alertmanager_cli.py keeps them equal to components/.
`--stack NAME` takes the namespace a Pulumi stack deploys into (its `Pulumi.NAME.yaml`
`cct:namespace`, else the project default), so the output is exactly what `pulumi up` would
ship for that stack (the test compares it with the built stacks' ConfigMap). This is the one
renderer: lambdas/ never imports the bundle, and the bundle calls the same function.
`--settings FILE` (YAML mapping of AlertRoutingSettings fields) overrides the timings, dimensions
or URLs; an unknown or invalid key is an error that names it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import yaml

from lambdas.alerting.config import (
    AlertingConfigError,
    AlertRoutingSettings,
    bundle_routing,
    render_alertmanager_config,
)

# Mirrors of the bundle's constants (lambdas never imports components); a test checks them.
DEFAULT_NAMESPACE = "cct-system"
DEFAULT_BRIDGE_PORT = 8080
DEFAULT_TOKEN_FILE = "/etc/alertmanager/secrets/bridge-token"  # noqa: S105 - a path, not a token
REPO = Path(__file__).resolve().parents[2]

_TUPLES = ("dimensions", "zenduty_severities")


def _overrides(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of settings", param_hint="--settings")
    fields = {f.name for f in dataclasses.fields(AlertRoutingSettings)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise click.BadParameter(
            f"unknown setting(s) {', '.join(unknown)} in {path}; "
            f"known: {', '.join(sorted(fields))}",
            param_hint="--settings",
        )
    return {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in data.items()}


def stack_namespace(stack: str, root: Path = REPO) -> str:
    """The namespace the Pulumi stack `stack` deploys into, read from its stack file."""
    stack_file = root / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        known = sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))
        raise click.BadParameter(
            f"no {stack_file.name} (known stacks: {', '.join(known)})", param_hint="--stack"
        )
    config = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
    if "cct:namespace" in config:
        return str(config["cct:namespace"])
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    return str(project["config"]["namespace"]["default"])


@click.group()
def alertmanager() -> None:
    """Alertmanager configuration."""


@alertmanager.command("render")
@click.option("--namespace", default=DEFAULT_NAMESPACE, show_default=True, help="CCT namespace.")
@click.option(
    "--stack",
    default=None,
    help="A Pulumi stack (dev, prod, ...): its namespace, instead of --namespace.",
)
@click.option(
    "--bridge-port",
    type=int,
    default=DEFAULT_BRIDGE_PORT,
    show_default=True,
    help="Port of the bridge's Service.",
)
@click.option(
    "--token-file",
    default=DEFAULT_TOKEN_FILE,
    show_default=True,
    help="Bridge bearer-token file inside the Alertmanager container.",
)
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML mapping of AlertRoutingSettings fields overriding the bundle's routing.",
)
def render(
    namespace: str,
    stack: str | None,
    bridge_port: int,
    token_file: str,
    settings_file: Path | None,
) -> None:
    """Print the Alertmanager YAML the bundle deploys (check it with `amtool check-config`)."""
    if stack is not None:
        namespace = stack_namespace(stack)
    try:
        settings = bundle_routing(namespace, bridge_port, token_file)
        if settings_file is not None:
            settings = dataclasses.replace(settings, **_overrides(settings_file))
    except (AlertingConfigError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(render_alertmanager_config(settings), nl=False)
