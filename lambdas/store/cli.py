"""`cct db ...`: schema management."""

from __future__ import annotations

import click

from lambdas.common.settings import SettingsError, pg_dsn
from lambdas.store.migrate import MigrationError, discover, migrate


@click.group()
def db() -> None:
    """Manage CCT's PostgreSQL schema (CCT_PG_DSN selects the database)."""


@db.command("migrate")
@click.option("--dsn", envvar="CCT_PG_DSN", help="PostgreSQL DSN [env: CCT_PG_DSN].")
def migrate_cmd(dsn: str | None) -> None:
    """Apply every pending migration, then the handlers' grants (lambdas.store.grants).
    Safe to run any number of times."""
    from lambdas.store.db import StoreError, connect, translate_errors
    from lambdas.store.grants import GrantError, apply_grants

    try:
        applied = migrate(dsn or pg_dsn())
        with (
            connect(dsn or pg_dsn(), application_name="cct-migrate") as conn,
            translate_errors("grant the handlers' roles"),
        ):
            apply_grants(conn)
    except (MigrationError, SettingsError, StoreError, GrantError) as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("schema is up to date")


@db.command("list")
def list_cmd() -> None:
    """List the migrations this release ships."""
    for m in discover():
        click.echo(f"{m.version:04d}_{m.name}")


def _keep_days(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for value in values:
        relation, sep, days = value.partition("=")
        if not sep or not days.strip().isdigit():
            raise click.BadParameter(f"{value!r} is not RELATION=DAYS (e.g. resource_events=90)")
        parsed[relation.strip()] = int(days)
    return parsed


@db.command("retention")
@click.option("--dsn", envvar="CCT_PG_DSN", help="PostgreSQL DSN [env: CCT_PG_DSN].")
@click.option(
    "--set",
    "updates",
    multiple=True,
    callback=_keep_days,
    metavar="RELATION=DAYS",
    help="Change how many days RELATION keeps its finished rows, then apply. Repeatable.",
)
@click.option("--dry-run", is_flag=True, help="Only count the rows that would be deleted.")
@click.option("--show", is_flag=True, help="Print the retention setting and exit.")
def retention_cmd(dsn: str | None, updates: dict[str, int], dry_run: bool, show: bool) -> None:
    """Delete finished rows older than the retention setting (run daily as a CronJob).

    Open anomalies, unfinished workflow runs and live resources are never deleted.
    """
    from datetime import UTC, datetime

    from lambdas.store.db import StoreError, connect
    from lambdas.store.results import RetentionError, apply_retention, load_policy, set_policy

    try:
        with connect(dsn or pg_dsn(), application_name="cct-retention", autocommit=True) as conn:
            if updates:
                set_policy(conn, updates)
            if show:
                for relation, days in sorted(load_policy(conn).items()):
                    click.echo(f"{relation}\t{days} days")
                return
            results = apply_retention(conn, datetime.now(UTC), dry_run=dry_run)
    except (RetentionError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    except StoreError as exc:
        hint = " (transient; retry)" if exc.retryable else ""
        raise click.ClickException(f"{exc}{hint}") from exc
    verb = "would delete" if dry_run else "deleted"
    for r in results:
        click.echo(
            f"{r.relation}: {verb} {r.deleted} rows older than {r.cutoff:%Y-%m-%dT%H:%M:%SZ}"
            f" (keep {r.keep_days} days)"
        )
