"""`cct alertmanager render` prints what the bundle deploys, and amtool accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from components.alertmanager import SECRETS_DIR
from components.handlers import HTTP_PORT
from infra.generated import BRIDGE_TOKEN_FILE, alertmanager_config
from lambdas.alerting import cli as alerting_cli
from lambdas.cli import cli
from tests.infra.harness import BuiltStack


def test_the_command_defaults_are_the_bundles() -> None:
    assert alerting_cli.DEFAULT_BRIDGE_PORT == HTTP_PORT
    assert f"{SECRETS_DIR}/{BRIDGE_TOKEN_FILE}" == alerting_cli.DEFAULT_TOKEN_FILE
    assert alerting_cli.DEFAULT_NAMESPACE == "cct-system"  # Pulumi.yaml's default namespace


def test_render_prints_the_bundles_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["alertmanager", "render", "--namespace", "team-a"])
    assert result.exit_code == 0, result.output
    assert result.output == alertmanager_config("team-a")  # what collect() deploys
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(result.output)
    check = subprocess.run(["amtool", "check-config", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_settings_file_overrides_and_names_bad_keys(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("repeat_interval: 1h\nzenduty_severities: [critical, warning]\n")
    result = CliRunner().invoke(cli, ["alertmanager", "render", "--settings", str(good)])
    assert result.exit_code == 0, result.output
    assert "repeat_interval: 1h" in result.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("group_wiat: 0s\n")
    result = CliRunner().invoke(cli, ["alertmanager", "render", "--settings", str(unknown)])
    assert result.exit_code != 0
    assert "group_wiat" in result.output
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("group_interval: 0s\n")
    result = CliRunner().invoke(cli, ["alertmanager", "render", "--settings", str(invalid)])
    assert result.exit_code != 0
    assert "group_interval" in result.output


def test_help_describes_the_command() -> None:
    result = CliRunner().invoke(cli, ["alertmanager", "render", "--help"])
    assert result.exit_code == 0
    assert "--settings" in result.output and "--namespace" in result.output


def _deployed(built: BuiltStack) -> str:
    (config,) = [
        r
        for r in built.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"]["name"] == "alertmanager-config"
    ]
    return str(config.inputs["data"]["alertmanager.yml"])


@pytest.mark.parametrize(("stack", "variant"), [("dev", "dev-off"), ("prod", "prod-all")])
def test_render_for_a_stack_prints_what_the_stack_deploys(
    stacks: dict[str, BuiltStack], stack: str, variant: str
) -> None:
    result = CliRunner().invoke(cli, ["alertmanager", "render", "--stack", stack])
    assert result.exit_code == 0, result.output
    assert result.output == _deployed(stacks[variant])


def test_an_unknown_stack_is_named() -> None:
    result = CliRunner().invoke(cli, ["alertmanager", "render", "--stack", "nope"])
    assert result.exit_code == 2
    assert "no Pulumi.nope.yaml" in result.output
