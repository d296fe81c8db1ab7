"""The `cct` command.

Subcommands live next to the code they drive and are imported only when used, so
`cct --help` stays fast and one area's heavy imports never slow another's. To add a command,
add one line to COMMANDS (a click command or group) or to HANDLERS (`cct serve NAME`, a
function taking no arguments that runs the handler until it is stopped).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# name -> ("module:attribute", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("lambdas.store.cli:db", "Manage the PostgreSQL schema."),
    "alertmanager": (
        "lambdas.alerting.cli:alertmanager",
        "Render the Alertmanager configuration the bundle deploys.",
    ),
    "backtest": (
        "lambdas.backtest.cli:backtest_cmd",
        "Run the anomaly detector over FOCUS exports (CSV/Parquet) and report.",
    ),
    "sample-data": (
        "lambdas.backtest.cli:sample_data",
        "Generate a labeled multi-cloud FOCUS sample with injected anomalies.",
    ),
    "step": ("lambdas.steps.cli:step", "Run one remediation workflow step (JSON in, JSON out)."),
    "billing": ("lambdas.billing.cli:billing", "Load FOCUS billing exports and reconcile."),
    "vault-dsn": (
        "lambdas.vaultdev.agent:vault_dsn",
        "Render a handler's DSN file from Vault locally, as Vault Agent does in the cluster.",
    ),
    "prices": ("lambdas.pricing.cli:prices", "Load the providers' public price lists."),
    "policy": ("lambdas.policy.cli:policy", "Validate, test and explain optimization policies."),
    "status": (
        "lambdas.devstack.status:status",
        "Health and lag of every part of the local stack (`make up`).",
    ),
    "settings": (
        "lambdas.common.settings_table:settings_cmd",
        "Every CCT_* setting: handler, default, meaning (docs/settings.md).",
    ),
}

# handler -> ("module:function", one-line help)
HANDLERS: dict[str, tuple[str, str]] = {
    "admission": ("lambdas.admission.server:serve", "Policy admission webhook for workflows."),
    "bridge": ("lambdas.bridge.server:serve", "Alertmanager webhooks to Kafka CloudEvents."),
    "collector": ("lambdas.collector.service:main", "Resource events to run-rate in seconds."),
    "detector": ("lambdas.detector.service:serve", "Cost anomaly detection every few seconds."),
    "trigger": ("lambdas.trigger.service:serve", "Kafka anomaly events to workflows."),
    "vault-dev": (
        "lambdas.vaultdev.server:serve",
        "Local stand-in speaking Vault's API for CCT's paths (development only).",
    ),
}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            cmd = _load(self.lazy[cmd_name][0])
            if not isinstance(cmd, click.Command):
                raise click.ClickException(f"{self.lazy[cmd_name][0]} is not a click command")
            return cmd
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        rows += [
            (name, cmd.get_short_help_str())
            for name, cmd in sorted(self.commands.items())
            if name not in self.lazy
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cct")
def cli() -> None:
    """CCT: cloud cost tracking with seconds-scale anomaly detection and governed remediation."""


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("handler", type=click.Choice(sorted(HANDLERS)) if HANDLERS else str)
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
def serve(handler: str, log_level: str) -> None:
    """Run one of CCT's long-running handlers until it is stopped.

    Settings come from CCT_* environment variables (`cct settings`, docs/settings.md).
    """
    from lambdas.common.logging import configure

    if handler not in HANDLERS:
        raise click.BadParameter(f"unknown handler {handler!r}; known: {sorted(HANDLERS)}")
    configure(log_level)
    _load(HANDLERS[handler][0])()


def main() -> None:
    sys.exit(cli.main(prog_name="cct", standalone_mode=True))


if __name__ == "__main__":
    main()
