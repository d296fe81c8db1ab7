#!/usr/bin/env python3
"""Re-vendor the Helm charts the bundle installs, from git checkouts of their public sources.

    scripts/vendor_charts.py MIRROR_ROOT

MIRROR_ROOT holds bare-ish git directories named `<owner>+<repo>/repo` (one per source below).
Each chart is exported at its release tag, stripped to what Helm renders (Chart.yaml, values,
templates, crds, files, LICENSE), and written as `charts/<name>-<version>.tgz` with a fixed
mtime and owner, so the same tag always gives the same bytes. charts/SOURCES.md records the
source, tag, commit, licence and sha256 of each archive: upgrading a chart is a reviewed diff
of that file (and of the pin in components/). Maintainer tool: nothing at deploy time runs it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "charts"
KEEP = ("Chart.yaml", "values.yaml", "values.schema.json", ".helmignore", "LICENSE")
KEEP_DIRS = ("templates/", "crds/", "files/", "charts/")


@dataclass(frozen=True)
class Source:
    name: str
    version: str
    repo: str  # owner/name on GitHub
    tag: str
    path: str  # the chart's directory inside the repository ("" for the root)
    licence: str
    # Source trees that carry a placeholder version (set by the project's release job).
    set_version: bool = False
    # Charts of Chart.yaml's `dependencies`, packed under `charts/` as a packaged chart has
    # them: Helm refuses a chart whose dependency is missing, even one whose condition is off.
    dependencies: tuple[Source, ...] = ()
    # Files at the chart's root its templates read with .Files.Get.
    files: tuple[str, ...] = ()


SOURCES = (
    Source(
        "argo-workflows", "0.45.26", "argoproj/argo-helm", "argo-workflows-0.45.26",
        "charts/argo-workflows", "Apache-2.0",
    ),
    Source(
        "cloudnative-pg", "0.26.0", "cloudnative-pg/charts", "cloudnative-pg-v0.26.0",
        "charts/cloudnative-pg", "Apache-2.0",
        dependencies=(
            # Chart.yaml: `cluster` "0.0" (alias monitoring), the newest 0.0.x at the release.
            Source(
                "cluster", "0.0.5", "cloudnative-pg/grafana-dashboards", "cluster-v0.0.5",
                "charts/cluster", "Apache-2.0", files=("grafana-dashboard.json",),
            ),
        ),
    ),
    Source(
        "strimzi-kafka-operator", "0.48.0", "strimzi/strimzi-kafka-operator", "0.48.0",
        "packaging/helm-charts/helm3/strimzi-kafka-operator", "Apache-2.0", set_version=True,
    ),
    Source(
        "grafana", "10.1.4", "grafana/helm-charts", "grafana-10.1.4", "charts/grafana",
        "Apache-2.0",
    ),
    Source("vault", "0.31.0", "hashicorp/vault-helm", "v0.31.0", "", "MPL-2.0"),
)  # fmt: skip


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def archive(src: Source, mirror: Path) -> tuple[bytes, list[tuple[Source, str]]]:
    """The chart's archive and the (source, commit) of it and each dependency inside it."""
    buf = io.BytesIO()
    # mtime=0 in the gzip header and in every member: identical input, identical archive.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        commits = [(src, _add_chart(tar, src, mirror, f"{src.name}/"))]
        for dep in src.dependencies:
            commits.append((dep, _add_chart(tar, dep, mirror, f"{src.name}/charts/{dep.name}/")))
    return buf.getvalue(), commits


def _add_chart(tar: tarfile.TarFile, src: Source, mirror: Path, dest: str) -> str:
    repo = mirror / src.repo.replace("/", "+") / "repo"
    commit = git(repo, "rev-parse", f"{src.tag}^{{commit}}").decode().strip()
    prefix = f"{src.path}/" if src.path else ""
    names = git(repo, "ls-tree", "-r", "--name-only", commit, "--", src.path or ".").decode()
    chart_files = {n.removeprefix(prefix): n for n in names.splitlines()}
    # A chart in a subdirectory ships under its repository's licence file.
    chart_files.setdefault("LICENSE", "LICENSE")
    for rel, path in sorted(chart_files.items()):
        if not (rel in KEEP or rel in src.files or rel.startswith(KEEP_DIRS)):
            continue
        data = git(repo, "show", f"{commit}:{path}")
        if rel == "Chart.yaml" and src.set_version:
            data = _set_version(data, src.version)
        info = tarfile.TarInfo(f"{dest}{rel}")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    return commit


def _set_version(chart_yaml: bytes, version: str) -> bytes:
    lines = []
    for line in chart_yaml.decode().splitlines():
        pinned = line.startswith(("version:", "appVersion:"))
        lines.append(f"{line.split(':')[0]}: {version}" if pinned else line)
    return ("\n".join(lines) + "\n").encode()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    mirror = Path(argv[0])
    CHARTS.mkdir(exist_ok=True)
    rows = []
    for src in SOURCES:
        data, commits = archive(src, mirror)
        out = CHARTS / f"{src.name}-{src.version}.tgz"
        out.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        for part, commit in commits:
            name = f"`{out.name}`" if part is src else f"  inside: `charts/{part.name}`"
            rows.append(
                f"| {name} | github.com/{part.repo} `{part.path or '.'}` | `{part.tag}` "
                f"| `{commit[:12]}` | {part.licence} | "
                + (f"`{digest[:16]}` |" if part is src else "(in the archive) |")
            )
        print(f"{out.name}: {len(data)} bytes, sha256 {digest}")
    (CHARTS / "SOURCES.md").write_text(
        "# Vendored Helm charts\n\n"
        "Installed from these files (never from a chart repository). Written by\n"
        "`scripts/vendor_charts.py` from each project's git history at its release tag, stripped\n"
        "to what Helm renders; the licence file of the source is inside each archive.\n\n"
        "| archive | source | tag | commit | licence | sha256 (prefix) |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
