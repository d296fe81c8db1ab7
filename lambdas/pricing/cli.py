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
from lambdas.pricing.sources import PriceSourceError, parse
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
        if doc.get("NextPageLink"):
            doc = _read(str(doc["NextPageLink"]))
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
    total = 0
    with psycopg.connect(pg_dsn()) as conn:
        for location in locations:
            try:
                rows = parse(provider, documents(location), location)
            except (PriceSourceError, OSError, ValueError) as exc:
                raise click.ClickException(f"{location}: {exc}") from exc
            total += upsert_prices(conn, rows, datetime.now(UTC))
            log.info("prices loaded", extra={"source": location, "rows": len(rows)})
    click.echo(f"loaded {total} prices for {provider}")
