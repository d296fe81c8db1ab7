"""Build the real deployment toolchain from source: Pulumi CLI, Python language host,
Kubernetes provider, kube-apiserver; unpack Debian's etcd. Used by `scripts/cluster build`.

Every version is pinned in `PINS` below and nowhere else. Each part is built in its own
wrapper module under .local/cluster/src/<part> (the upstream modules cannot be `go install`ed:
they carry replace directives, or are split into staging modules), into .local/cluster/bin.
A part is rebuilt only when its stamp (the pin it was built from) is missing or differs.
After a build, SHA256SUMS beside the binaries records what was produced.

Go's module and build caches live under .local/go, so one CI run reuses them across the
parts and a developer can delete them with the rest of .local (GOFLAGS=-modcacherw keeps the
module cache deletable). Downloads go through the Go module proxy and Debian's archive only.
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
CLUSTER = LOCAL / "cluster"
BIN = CLUSTER / "bin"
SRC = CLUSTER / "src"
BUILD_LOGS = CLUSTER / "log"
GO_HOME = LOCAL / "go"
GO = Path(os.environ.get("CCT_GO", "/usr/local/go/bin/go"))

# The one place versions are pinned. Changing a value rebuilds that part on the next run.
PINS: dict[str, str] = {
    "pulumi": "v3.276.0",
    # The last sdk/v3 release that still contains the Python language host; its newer home
    # (a separate module) is not served by the proxy.
    "language-python": "v3.79.0",
    "kubernetes-provider": "v4.0.0-20260115033456-f47bc2d6f199",
    "kube-apiserver": "v1.34.2",
    # Same release as the API server: it finalizes deleted namespaces, collects garbage and
    # turns Deployments into (never scheduled) Pods, as in a real control plane.
    "kube-controller-manager": "v1.34.2",
    "etcd-server": "etcd-server",  # Debian's package, whatever the release ships (3.4 here)
}
# A fork the Pulumi CLI itself pins (its go.mod replace), which `go get` cannot see from here.
CLIPBOARD_FORK = "github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e"
# sdk/v3 v3.79.0's pinned golang.org/x/text no longer builds with current Go without this.
OLD_X_TEXT = "golang.org/x/text v0.3.6"


class BuildError(RuntimeError):
    """A part failed to build; the message names its log. Retrying helps only for downloads."""


# Disk a build of every Go part takes, measured on a clean CI-like run (2026-12): the module
# cache 2.8 GiB and the build cache 8.5 GiB under .local/go, the sources and binaries 0.7 GiB
# under .local/cluster, and room for the linker's temporary files.
GO_BUILD_DISK_BYTES = 13 * 2**30


def say(msg: str) -> None:
    print(f"cluster build: {msg}", flush=True)


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOPATH=str(GO_HOME),
        GOMODCACHE=str(GO_HOME / "pkg" / "mod"),
        GOCACHE=str(GO_HOME / "cache"),
        GOFLAGS="-modcacherw",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOPROXY=env.get("GOPROXY", "https://proxy.golang.org"),
    )
    env["PATH"] = f"{GO.parent}:{env.get('PATH', '')}"
    return env


def sh(cmd: list[str], log: Path, cwd: Path | None = None) -> str:
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(
            cmd, cwd=cwd, env=go_env(), stdout=subprocess.PIPE, stderr=fh, text=True, check=False
        )
        fh.write(proc.stdout)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])}... failed ({proc.returncode}); log: {log}")
    return proc.stdout


def wrapper_module(part: str, requires: list[str], replaces: list[str]) -> Path:
    """A fresh module directory whose go.mod requires and replaces exactly what is given."""
    work = SRC / part
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    lines = [f"module cct.local/build/{part}", "", "go 1.24", ""]
    lines += [f"require {r}" for r in requires]
    lines += [f"replace {r}" for r in replaces]
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    return work


def go_build(  # noqa: PLR0917 - one call per part, read side by side
    work: Path, package: str, version: str, out: Path, log: Path, ldflags: str = ""
) -> None:
    # `go get` of a bare package upgrades its module to the latest release: name the pin.
    sh([str(GO), "get", f"{package}@{version}"], log, work)
    flags = f"-s -w {ldflags}".strip()
    sh([str(GO), "build", "-trimpath", f"-ldflags={flags}", "-o", str(out), package], log, work)


def mod_dir(module: str, version: str, log: Path) -> Path:
    out = sh([str(GO), "mod", "download", "-json", f"{module}@{version}"], log, SRC)
    return Path(json.loads(out)["Dir"])


# ------------------------------------------------------------------- the parts
def build_pulumi(log: Path) -> None:
    v = PINS["pulumi"]
    work = wrapper_module(
        "pulumi",
        [f"github.com/pulumi/pulumi/pkg/v3 {v}", f"github.com/pulumi/pulumi/sdk/v3 {v}"],
        [f"github.com/atotto/clipboard => {CLIPBOARD_FORK}"],
    )
    go_build(
        work,
        "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi",
        v,
        BIN / "pulumi",
        log,
        f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={v}",
    )


def build_language_python(log: Path) -> None:
    v = PINS["language-python"]
    work = wrapper_module(
        "language-python",
        [f"github.com/pulumi/pulumi/sdk/v3 {v}"],
        [f"golang.org/x/text => {OLD_X_TEXT}"],
    )
    go_build(
        work,
        "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python",
        v,
        BIN / "pulumi-language-python",
        log,
        f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={v}",
    )
    # The host runs the program through this script, taken from the CLI's own SDK release.
    sdk = mod_dir("github.com/pulumi/pulumi/sdk/v3", PINS["pulumi"], log)
    exec_script = BIN / "pulumi-language-python-exec"
    shutil.copyfile(sdk / "python" / "cmd" / "pulumi-language-python-exec", exec_script)
    exec_script.chmod(0o755)


def build_kubernetes_provider(log: Path) -> None:
    module = "github.com/pulumi/pulumi-kubernetes/provider/v4"
    v = PINS["kubernetes-provider"]
    # main.go embeds two generated files; a writable copy of the module gets them from the
    # checked-in schema.json / terraform-mapping.json, and the wrapper replaces the module.
    pristine = mod_dir(module, v, log)
    copy = SRC / "kubernetes-provider-module"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(pristine, copy)
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | 0o200)
    cmd_dir = copy / "cmd" / "pulumi-resource-kubernetes"
    for name in ("schema", "terraform-mapping"):
        shutil.copyfile(cmd_dir / f"{name}.json", cmd_dir / f"{name}-embed.json")
    work = wrapper_module("kubernetes-provider", [f"{module} {v}"], [f"{module} => {copy}"])
    # Copy the upstream module's own replace directives: a wrapper does not inherit them.
    upstream = (copy / "go.mod").read_text()
    # (Not the ones pointing into its own repository: outside it, the published modules serve.)
    replaces = [r for r in _replace_lines(upstream) if not r.split("=>")[1].strip().startswith(".")]
    if replaces:
        with open(work / "go.mod", "a") as fh:
            fh.write("".join(f"replace {r}\n" for r in replaces))
    go_build(
        work,
        f"{module}/cmd/pulumi-resource-kubernetes",
        v,
        BIN / "pulumi-resource-kubernetes",
        log,
        f"-X {module}/pkg/version.Version={_pseudo_to_semver(v)}",
    )


def build_kube_apiserver(log: Path) -> None:
    _build_kubernetes_command("kube-apiserver", log)


def build_kube_controller_manager(log: Path) -> None:
    _build_kubernetes_command("kube-controller-manager", log)


def _build_kubernetes_command(command: str, log: Path) -> None:
    v = PINS[command]
    staging_v = "v0." + v.removeprefix("v1.")
    gomod = mod_dir("k8s.io/kubernetes", v, log) / "go.mod"
    # k8s.io/kubernetes replaces its staging modules with ./staging/...; each is published as
    # its own module at v0.<minor>.<patch>, so the wrapper points every one at that release.
    staging = [
        r.split("=>")[0].strip()
        for r in _replace_lines(gomod.read_text())
        if "./staging/" in r.split("=>")[1]
    ]
    if not staging:
        raise BuildError(f"no staging replaces found in {gomod}")
    work = wrapper_module(
        command,
        [f"k8s.io/kubernetes {v}"],
        [f"{m} => {m} {staging_v}" for m in staging],
    )
    major, minor = v.removeprefix("v").split(".")[:2]
    base = "k8s.io/component-base/version"
    go_build(
        work,
        f"k8s.io/kubernetes/cmd/{command}",
        v,
        BIN / command,
        log,
        f"-X {base}.gitVersion={v} -X {base}.gitMajor={major} -X {base}.gitMinor={minor} "
        f"-X {base}.gitTreeState=clean",
    )


def fetch_etcd(log: Path) -> None:
    """Debian's etcd-server, unpacked under .local (no system install needed to run it)."""
    debs = CLUSTER / "deb"
    debs.mkdir(parents=True, exist_ok=True)
    for p in debs.glob("*.deb"):
        p.unlink()
    try:
        sh(["apt-get", "download", PINS["etcd-server"]], log, debs)
    except BuildError:
        sh(["apt-get", "update", "-qq"], log, debs)
        sh(["apt-get", "download", PINS["etcd-server"]], log, debs)
    deb = next(debs.glob("etcd-server_*.deb"))
    root = CLUSTER / "etcd-root"
    if root.exists():
        shutil.rmtree(root)
    sh(["dpkg-deb", "-x", str(deb), str(root)], log)
    shutil.copyfile(root / "usr" / "bin" / "etcd", BIN / "etcd")
    (BIN / "etcd").chmod(0o755)
    (BIN / "etcd.deb-version").write_text(deb.name + "\n")


def _replace_lines(gomod: str) -> list[str]:
    """The `old => new` bodies of a go.mod's replace directives (single and block form)."""
    out: list[str] = []
    block = False
    for raw in gomod.splitlines():
        line = raw.split("//")[0].strip()
        if line.startswith("replace ("):
            block = True
        elif block and line == ")":
            block = False
        elif block and "=>" in line:
            out.append(line)
        elif line.startswith("replace ") and "=>" in line:
            out.append(line.removeprefix("replace ").strip())
    return out


def _pseudo_to_semver(v: str) -> str:
    return v.removeprefix("v")


@dataclass(frozen=True)
class Part:
    name: str
    outputs: tuple[str, ...]
    build: Callable[[Path], None]


PARTS = (
    Part("pulumi", ("pulumi",), build_pulumi),
    Part(
        "language-python",
        ("pulumi-language-python", "pulumi-language-python-exec"),
        build_language_python,
    ),
    Part("kubernetes-provider", ("pulumi-resource-kubernetes",), build_kubernetes_provider),
    Part("kube-apiserver", ("kube-apiserver",), build_kube_apiserver),
    Part("kube-controller-manager", ("kube-controller-manager",), build_kube_controller_manager),
    Part("etcd-server", ("etcd",), fetch_etcd),
)


def stamp(part: Part) -> Path:
    return BIN / f".{part.name}.pin"


def is_current(part: Part) -> bool:
    return (
        all((BIN / o).exists() for o in part.outputs)
        and stamp(part).exists()
        and stamp(part).read_text().strip() == PINS[part.name]
    )


def missing() -> list[Part]:
    return [p for p in PARTS if not is_current(p)]


def tree_bytes(path: Path) -> int:
    """Disk used under `path` (allocated blocks, as du counts them); 0 when it is missing."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def check_disk(todo: list[Part]) -> None:
    """Refuse to start a Go build that cannot fit: a full disk halfway through leaves a
    traceback from whichever write failed first, and a half-filled cache behind. What the
    caches already hold counts towards the need (a rebuild of one part reuses them)."""
    if all(p.name == "etcd-server" for p in todo):
        return
    need = GO_BUILD_DISK_BYTES - tree_bytes(GO_HOME)
    probe = next(p for p in (GO_HOME, LOCAL, ROOT) if p.exists())
    free = shutil.disk_usage(probe).free
    if free < need:
        gib = 2**30
        raise BuildError(
            f"not enough disk to build {', '.join(p.name for p in todo)}: needs about "
            f"{need / gib:.1f} GiB free on the disk of {probe} (Go's module and build caches in "
            f"{GO_HOME.relative_to(ROOT)}, the binaries in {BIN.relative_to(ROOT)}), "
            f"{free / gib:.1f} GiB free. Free some space (old checkouts' .local directories "
            "hold about 13 GiB each) and run again"
        )


def _build_one(part: Part) -> float:
    try:
        return _build_part(part)
    except OSError as exc:
        # A full disk or a permission problem: name the part and the path, not a traceback.
        raise BuildError(str(exc)) from exc


def _build_part(part: Part) -> float:
    log = BUILD_LOGS / f"build-{part.name}.log"
    log.write_text(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {PINS[part.name]}\n")
    started = time.monotonic()
    say(f"{part.name} {PINS[part.name]}: building (log: {log.relative_to(ROOT)})")
    part.build(log)
    seconds = time.monotonic() - started
    stamp(part).write_text(PINS[part.name] + "\n")
    with open(log, "a") as fh:
        fh.write(f"# built in {seconds:.1f}s\n")
    say(f"{part.name}: built in {seconds:.0f}s")
    return seconds


def build_jobs() -> int:
    """How many parts build side by side (CCT_BUILD_JOBS). Each `go build` already uses every
    core, and the Kubernetes and Pulumi builds take several GB of memory each, so a small
    machine builds one at a time; a bigger one overlaps downloads with compiling."""
    raw = os.environ.get("CCT_BUILD_JOBS", "")
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise BuildError(f"CCT_BUILD_JOBS must be a whole number, not {raw!r}") from None
    return 1 if (os.cpu_count() or 1) <= 4 else 4


def build(parallel: int | None = None) -> dict[str, float]:
    """Build every part that is missing; returns seconds per part built (for the benchmark)."""
    for d in (BIN, SRC, BUILD_LOGS):
        d.mkdir(parents=True, exist_ok=True)
    todo = missing()
    if not todo:
        say("all parts current")
        write_checksums()
        return {}
    if not GO.exists() and any(p.name != "etcd-server" for p in todo):
        raise BuildError(f"Go not found at {GO} (set CCT_GO)")
    check_disk(todo)
    started = time.monotonic()
    # Parts are independent: run them side by side (downloads overlap with compiling).
    with ThreadPoolExecutor(max_workers=parallel or build_jobs()) as pool:
        futures = {p.name: pool.submit(_build_one, p) for p in todo}
        times: dict[str, float] = {}
        errors: list[str] = []
        for name, fut in futures.items():
            try:
                times[name] = fut.result()
            except BuildError as exc:
                errors.append(f"{name}: {exc}")
    total = time.monotonic() - started
    summary = {"wall_seconds": round(total, 1), "parts": {k: round(v, 1) for k, v in times.items()}}
    (BUILD_LOGS / "build-times.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_checksums()
    if errors:
        raise BuildError("; ".join(errors))
    say(f"built {', '.join(times)} in {total:.0f}s wall")
    return times


def write_checksums() -> None:
    lines = []
    for part in PARTS:
        for o in part.outputs:
            path = BIN / o
            if path.exists():
                h = hashlib.sha256(path.read_bytes()).hexdigest()
                lines.append(f"{h}  {o}  {part.name}={PINS[part.name]}\n")
    (BIN / "SHA256SUMS").write_text("".join(lines))


if __name__ == "__main__":
    try:
        build()
    except BuildError as exc:
        print(f"cluster build: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
