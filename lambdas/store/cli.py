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
    """Apply every pending migration. Safe to run any number of times."""
    try:
        applied = migrate(dsn or pg_dsn())
    except (MigrationError, SettingsError) as exc:
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
