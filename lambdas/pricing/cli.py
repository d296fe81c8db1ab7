"""`cct prices load`: fill the price catalog from the providers' public price sources."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import psycopg

from lambdas.common.settings import pg_dsn
from lambdas.pricing.sources import PriceSourceError, Rejects, parse
from lambdas.store.pricing import upsert_prices

log = logging.getLogger(__name__)

MAX_PAGES = 10_000  # a guard against a NextPageLink loop


def _read(location: str) -> Any:
    if location.startswith("https://"):
        with urllib.request.urlopen(location, timeout=60) as resp:  # noqa: S310 - https only
            return json.load(resp)
    return json.loads(Path(location).read_text())


def documents(location: str) -> Iterator[Any]:
    """A file or an https URL; Azure's paged API is followed through NextPageLink and GCP's
    through nextPageToken."""
    doc = _read(location)
    yield doc
    pages = 1
    while isinstance(doc, dict) and pages < MAX_PAGES:
        if link := doc.get("NextPageLink"):
            # A page names the next one: never a local path (a fetched page must not make
            # the loader read this machine's files).
            if not str(link).startswith("https://"):
                raise PriceSourceError(f"NextPageLink {str(link)[:100]!r} is not an https URL")
            doc = _read(str(link))
        elif doc.get("nextPageToken") and location.startswith("https://"):
            sep = "&" if "?" in location else "?"
            doc = _read(f"{location}{sep}pageToken={doc['nextPageToken']}")
        else:
            return
        pages += 1
        yield doc


@click.group()
def prices() -> None:
    """Manage the price catalog."""


@prices.command("load")
@click.option("--provider", type=click.Choice(["aws", "azure", "gcp"]), required=True)
@click.argument("locations", nargs=-1, required=True)
def load(provider: str, locations: tuple[str, ...]) -> None:
    """Load price files or https URLs (AWS offer files, Azure Retail Prices pages, GCP Cloud
    Billing Catalog SKU pages) into the catalog."""
    total = rejected = 0
    with psycopg.connect(pg_dsn()) as conn:
        for location in locations:
            try:
                rows, rejects = parse(provider, documents(location), location)
            except (PriceSourceError, OSError, ValueError) as exc:
                raise click.ClickException(f"{location}: {exc}") from exc
            total += upsert_prices(conn, rows, datetime.now(UTC))
            rejected += rejects.total
            log.info(
                "prices loaded",
                extra={"source": location, "rows": len(rows), "rejected": rejects.total},
            )
            _report(location, rejects)
    tail = f", rejected {rejected}" if rejected else ""
    click.echo(f"loaded {total} prices for {provider}{tail}")


def _report(location: str, rejects: Rejects) -> None:
    """The rest of a file is loaded; what was not is said on stderr, by reason."""
    if not rejects.total:
        return
    click.echo(f"{location}: rejected {rejects.total}:", err=True)
    for reason, n in rejects.counts.most_common():
        where = "; ".join(rejects.examples[reason])
        click.echo(f"  {n} x {reason} (e.g. {where})", err=True)
