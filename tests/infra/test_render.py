"""`python -m infra.render alertmanager` prints exactly what a stack deploys, and the real
amtool accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra.render import main
from tests.infra.harness import BuiltStack


def _deployed(built: BuiltStack) -> str:
    (config,) = [
        r
        for r in built.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"]["name"] == "alertmanager-config"
    ]
    return str(config.inputs["data"]["alertmanager.yml"])


@pytest.mark.parametrize(("stack", "variant"), [("dev", "dev-off"), ("prod", "prod-all")])
def test_render_prints_what_the_stack_deploys(
    stacks: dict[str, BuiltStack], stack: str, variant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alertmanager", "--stack", stack]) == 0
    assert capsys.readouterr().out == _deployed(stacks[variant])


def test_amtool_accepts_the_rendered_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alertmanager"]) == 0
    config = tmp_path / "alertmanager.yml"
    config.write_text(capsys.readouterr().out)
    result = subprocess.run(
        ["amtool", "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unknown_stack_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alertmanager", "--stack", "nope"]) == 2
    assert "no Pulumi.nope.yaml" in capsys.readouterr().err
