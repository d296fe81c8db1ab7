from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from lambdas.cli import COMMANDS, cli


def test_help_lists_every_registered_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in [*COMMANDS, "serve"]:
        assert name in result.output


def test_every_registered_command_loads_and_has_help() -> None:
    for name in COMMANDS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, f"cct {name} --help failed: {result.output}"


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lambdas.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "CCT" in out.stdout
