"""The local stack's generated secrets reach `pulumi config set` on stdin, never as arguments:
arguments are visible to every local user and quoted in errors, and a token that starts with
'-' was read as a flag (a CI run failed with `unknown shorthand flag`, the token in its log)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    loader = importlib.machinery.SourceFileLoader("cluster_under_test", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    loader.exec_module(module)
    root = tmp_path / "checkout"
    (root / ".local" / "cluster").mkdir(parents=True)
    (root / "Pulumi.local.yaml").write_text("config:\n  cct:environment: local\n")
    for name, path in {
        "ROOT": root,
        "SECRETS": root / ".local" / "secrets",
        "STACK_CONFIG": root / ".local" / "cluster" / "Pulumi.local.yaml",
        "STATE": root / ".local" / "cluster" / "state",
        "PULUMI_HOME": root / ".local" / "cluster" / "pulumi-home",
    }.items():
        monkeypatch.setattr(module, name, path)
    yield module
    del sys.modules[spec.name]


def test_generated_secrets_go_to_pulumi_on_stdin(
    cluster: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "-TONwblxlZMigxvKdiJTwOtOTtf_0GsELwtrJT3_i68"  # the shape that failed
    monkeypatch.setattr(cluster.secrets, "token_urlsafe", lambda n: token)
    calls: list[tuple[list[str], str | None]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        stdin = kw.get("input")
        assert stdin is None or isinstance(stdin, str)
        calls.append((cmd, stdin))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cluster.subprocess, "run", run)
    cluster.ensure_stack()
    sets = [(cmd, stdin) for cmd, stdin in calls if cmd[1:3] == ["config", "set"]]
    secret = [(cmd, stdin) for cmd, stdin in sets if "--secret" in cmd]
    assert sorted(cmd[4] for cmd, _ in secret) == [
        "cct:fluentbitToken",
        "cct:secretSeed",
        "cct:zendutyIntegrationKey",
    ]
    assert all(stdin == token for _, stdin in secret)
    assert not any(token in " ".join(cmd) for cmd, _ in calls)
    # Plain settings still go as arguments.
    assert any("cct:webhookCaFile" in cmd for cmd, _ in sets)
