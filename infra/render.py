"""Print what a stack deploys, without deploying it.

    python -m infra.render alertmanager [--stack dev]     (`make render-alertmanager`)

The text comes from the same function the Pulumi program feeds the Alertmanager component
(`infra.generated.alertmanager_config`), for the stack's namespace as its config resolves it
(the stack file's `cct:namespace`, else the project default), so a reviewer or an operator can
diff, `amtool check-config` or route-test exactly what `pulumi up` would ship.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from infra.generated import alertmanager_config

ROOT = Path(__file__).resolve().parents[1]


class RenderError(ValueError):
    """The stack named on the command line cannot be rendered."""


def stack_namespace(stack: str, root: Path = ROOT) -> str:
    stack_file = root / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        known = sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))
        raise RenderError(f"--stack {stack!r}: no {stack_file.name} (known stacks: {known})")
    config = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
    if "cct:namespace" in config:
        return str(config["cct:namespace"])
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    return str(project["config"]["namespace"]["default"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.render", description="Print what a stack deploys."
    )
    parser.add_argument("what", choices=["alertmanager"], help="which generated file")
    parser.add_argument("--stack", default="dev", help="stack name (Pulumi.<stack>.yaml)")
    args = parser.parse_args(argv)
    try:
        namespace = stack_namespace(args.stack)
    except RenderError as exc:
        print(f"infra.render: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(alertmanager_config(namespace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
