"""The settings table (`cct settings`, docs/settings.md) is complete and current: every
`CCT_*` variable read under lambdas/ is read by a settings dataclass (or a shared helper of
lambdas/common/settings.py) that says what it means, and the docs page is the generated one."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from click.testing import CliRunner

from lambdas.cli import cli
from lambdas.common import settings_table
from lambdas.common.settings_table import (
    dynamic_reads,
    reads_outside_settings,
    render_markdown,
    settings,
)

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "settings.md"


def test_the_docs_page_is_current() -> None:
    assert PAGE.read_text() == render_markdown(), (
        "docs/settings.md is stale: run `cct settings --markdown > docs/settings.md`"
    )


def test_every_variable_is_read_in_a_settings_dataclass() -> None:
    outside = [
        f"{r.path.relative_to(ROOT)}:{r.line} reads {r.name}" for r in reads_outside_settings()
    ]
    assert outside == [], "read these in the handler's settings dataclass:\n" + "\n".join(outside)


def test_every_variable_is_read_by_its_full_name() -> None:
    assert [f"{path.relative_to(ROOT)}:{line}" for path, line in dynamic_reads()] == []


def test_every_setting_says_what_it_means() -> None:
    table = settings()
    assert len(table) > 100
    assert [s.name for s in table if not s.meaning] == []


def test_the_http_handlers_bind_loopback_by_default() -> None:
    defaults = {s.name: s.default for s in settings()}
    for handler in ("COLLECTOR", "DETECTOR", "BRIDGE", "TRIGGER", "ADMISSION", "VAULTDEV"):
        assert defaults[f"CCT_{handler}_HOST"] == "'127.0.0.1'", handler
        assert f"CCT_{handler}_HEADER_TIMEOUT_S" in defaults, handler


def test_a_read_outside_a_dataclass_is_found(tmp_path: Path, monkeypatch: object) -> None:
    """The check sees the usual ways of reading the environment, and not a dict lookup."""
    module = tmp_path / "lambdas" / "stray.py"
    module.parent.mkdir()
    module.write_text(
        textwrap.dedent(
            """
            import os
            from dataclasses import dataclass
            from lambdas.common.settings import env_int

            A = os.environ.get("CCT_STRAY_A")
            B = os.environ["CCT_STRAY_B"]
            C = env_int("CCT_STRAY_C", 1)
            D = {"CCT_STRAY_D": 1}["CCT_STRAY_D"]

            @dataclass(frozen=True)
            class StraySettings:
                e: int

                @classmethod
                def from_env(cls):
                    # CCT_STRAY_E: what E means.
                    return cls(e=env_int("CCT_STRAY_E", 2))
            """
        )
    )
    ast.parse(module.read_text())
    monkeypatch.setattr(settings_table, "LAMBDAS", module.parent)  # type: ignore[attr-defined]
    assert sorted(r.name for r in reads_outside_settings()) == [
        "CCT_STRAY_A",
        "CCT_STRAY_B",
        "CCT_STRAY_C",
    ]
    [stray] = settings()
    assert (stray.name, stray.handler, stray.default, stray.meaning) == (
        "CCT_STRAY_E",
        "stray",
        "2",
        "CCT_STRAY_E: what E means.",
    )


def test_cct_settings_prints_the_table() -> None:
    result = CliRunner().invoke(cli, ["settings", "--handler", "bridge"])
    assert result.exit_code == 0, result.output
    assert "CCT_BRIDGE_PORT" in result.output and "18083" in result.output
    assert "CCT_COLLECTOR_PORT" not in result.output


# One name for one thing several parts read, deliberately not under one handler's prefix:
CROSS_HANDLER = {
    # the policies directory (admission, trigger, `cct policy`) and the playbooks file beside it;
    "CCT_POLICY_DIR",
    "CCT_PLAYBOOKS_FILE",
    # the AWS endpoint (moto here): the steps and the Vault stand-in call the same AWS;
    "CCT_AWS_ENDPOINT_URL",
    # the broker and the results store, shared by every handler that uses them (each with its
    # own identity: KafkaAuth, the Vault-rendered DSN).
    "CCT_KAFKA_BOOTSTRAP",
    "CCT_PG_DSN",
}


def test_the_served_handlers_name_their_settings_after_themselves() -> None:
    prefixes = {
        "collector": "CCT_COLLECTOR_",
        "detector": "CCT_DETECTOR_",
        "bridge": "CCT_BRIDGE_",
        "trigger": "CCT_TRIGGER_",
        "admission": "CCT_ADMISSION_",
        "vaultdev": "CCT_VAULTDEV_",
        "steps": "CCT_STEP_",
    }
    stray = [
        f"{s.handler}: {s.name}"
        for s in settings()
        if s.handler in prefixes
        and not s.name.startswith(prefixes[s.handler])
        and s.name not in CROSS_HANDLER
    ]
    assert stray == []
