"""The README's config table is exactly what scripts/config_table.py renders from Pulumi.yaml."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.infra.harness import ROOT, project_config


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "config_table", ROOT / "scripts" / "config_table.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_matches_pulumi_yaml() -> None:
    generator = _generator()
    readme = (ROOT / "README.md").read_text()
    assert generator.replace_table(readme, generator.render()) == readme, (
        "README.md's config table is stale: run `python scripts/config_table.py --write`"
    )


def test_table_lists_every_key() -> None:
    table = _generator().render()
    for key in project_config():
        assert f"| `cct:{key}` |" in table
    assert "| `cct:fluentbitToken` | string | **required** | yes |" in table
