"""`cct billing load` / `cct billing reconcile` (the billing CronJob's entry points)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime

import click
import psycopg

from lambdas.billing.adapters import ADAPTERS
from lambdas.billing.focus import BillingFileError
from lambdas.billing.loader import BillingSettings, load, reconcile
from lambdas.common.vm import VMError

EXIT_INVALID = 65
EXIT_RETRY = 75


@click.group()
def billing() -> None:
    """Billing exports: load (idempotent, supersedes earlier deliveries) and reconcile."""


@billing.command("load")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(ADAPTERS),
    default="focus",
    show_default=True,
    help="Input format; native formats are converted to FOCUS first.",
)
@click.option("--no-reconcile", is_flag=True, help="Skip reconciliation after loading.")
@click.argument("locations", nargs=-1, required=True)
def load_cmd(fmt: str, no_reconcile: bool, locations: tuple[str, ...]) -> None:
    """Load one delivery: files, directories or s3://bucket/key|prefix/ (all parts of one
    export). Exit 65 for a broken file (dead-lettered), 75 when a retry may help."""
    try:
        report = load(BillingSettings.from_env(), locations, fmt, reconcile_after=not no_reconcile)
    except BillingFileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    except (VMError, psycopg.OperationalError) as exc:
        click.echo(f"error (retry): {exc}", err=True)
        sys.exit(EXIT_RETRY)
    if report.rows_rejected:
        click.echo(f"rejected {report.rows_rejected:,} of {report.rows_read:,} rows:", err=True)
        for reason, n in sorted(report.rejections.items(), key=lambda kv: -kv[1]):
            examples = "; ".join(report.rejection_examples.get(reason, []))
            click.echo(
                f"  {n:,} rows: {reason}" + (f" (e.g. {examples})" if examples else ""), err=True
            )
        if report.incomplete_hours:
            click.echo(
                f"  {len(report.incomplete_hours)} hour(s) incomplete, "
                f"first {report.incomplete_hours[0]}",
                err=True,
            )
    click.echo(json.dumps(asdict(report), default=str))


@billing.command("reconcile")
@click.option("--provider", required=True, type=click.Choice(["aws", "azure", "gcp"]))
@click.option("--billing-account-id", "account", required=True)
def reconcile_cmd(provider: str, account: str) -> None:
    """Recompute the reconciliation factors of one billing account."""
    settings = BillingSettings.from_env()
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        results = reconcile(conn, settings, {(provider, account)}, datetime.now(UTC))
    click.echo(json.dumps(results, default=str))
