"""The toolchain build says up front when the disk cannot hold it, and a full disk mid-build is
a BuildError naming the file, never a traceback (a CI run once died that way)."""

from __future__ import annotations

import errno
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster_build.py"


@pytest.fixture
def cb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("cluster_build_under_test", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    # Everything the build writes goes under a throwaway root.
    root = tmp_path / "checkout"
    local = root / ".local"
    for name, path in {
        "ROOT": root,
        "LOCAL": local,
        "CLUSTER": local / "cluster",
        "BIN": local / "cluster" / "bin",
        "SRC": local / "cluster" / "src",
        "BUILD_LOGS": local / "cluster" / "log",
        "GO_HOME": local / "go",
    }.items():
        monkeypatch.setattr(module, name, path)
    root.mkdir()
    monkeypatch.setattr(module, "GO", Path(sys.executable))  # "Go is installed"
    yield module
    del sys.modules[spec.name]


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: SimpleNamespace(free=free))


def _record_builds(cb: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []

    def build(part: Any) -> float:
        started.append(part.name)
        return 0.0

    monkeypatch.setattr(cb, "_build_part", build)
    return started


def test_a_go_build_that_cannot_fit_is_refused_before_it_starts(
    cb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, 2 * 2**30)
    started = _record_builds(cb, monkeypatch)
    with pytest.raises(cb.BuildError) as err:
        cb.build(parallel=1)
    message = str(err.value)
    assert "not enough disk to build pulumi, language-python" in message
    assert "needs about 13.0 GiB free" in message
    assert "2.0 GiB free" in message
    assert started == []


def test_what_the_caches_already_hold_counts_towards_the_need(
    cb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cb.GO_HOME / "cache"
    cache.mkdir(parents=True)
    (cache / "blob").write_bytes(b"\0" * (4 << 20))
    held = cb.tree_bytes(cb.GO_HOME)
    assert held >= 4 << 20
    _free(monkeypatch, cb.GO_BUILD_DISK_BYTES - held + 1)
    started = _record_builds(cb, monkeypatch)
    cb.build(parallel=1)
    assert started == [p.name for p in cb.PARTS]


def test_etcd_alone_needs_no_go_disk(cb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, 0)
    monkeypatch.setattr(cb, "missing", lambda: [p for p in cb.PARTS if p.name == "etcd-server"])
    monkeypatch.setattr(cb, "_build_part", lambda part: 0.0)
    cb.build(parallel=1)


def test_a_full_disk_mid_build_is_a_build_error_naming_the_file(
    cb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, cb.GO_BUILD_DISK_BYTES)

    def full(log: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(log))

    parts = tuple(cb.Part(p.name, p.outputs, full) for p in cb.PARTS[:2])
    monkeypatch.setattr(cb, "PARTS", parts)
    with pytest.raises(cb.BuildError) as err:
        cb.build(parallel=1)
    message = str(err.value)
    assert message.startswith("pulumi: [Errno 28] No space left on device: ")
    assert "build-pulumi.log" in message
    assert "language-python: [Errno 28]" in message
