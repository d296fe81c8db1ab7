"""`cct prices load`: fill the price catalog from the providers' public price sources."""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
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


# Query parameters that carry a credential (Cloud Billing Catalog's API key): they are sent,
# never logged, echoed or stored as a catalog row's source.
_SECRET_PARAMS = frozenset({"key", "access_token", "sig", "signature"})


@dataclass(frozen=True)
class PriceLoadSettings:
    """Settings of `cct prices load`.

    gcp_api_key: CCT_PRICES_GCP_API_KEY, the Cloud Billing Catalog API key, added to
        cloudbilling.googleapis.com URLs when they carry none; never logged, echoed or stored.
    """

    gcp_api_key: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> PriceLoadSettings:
        return cls(gcp_api_key=os.environ.get("CCT_PRICES_GCP_API_KEY", ""))


def public_location(location: str) -> str:
    """The location as it may be shown and stored: without credential query parameters."""
    if not location.startswith("https://"):
        return location
    parts = urllib.parse.urlsplit(location)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in _SECRET_PARAMS
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _with_key(url: str, key: str) -> str:
    """A Cloud Billing Catalog URL with the API key, so the key never needs to be written on
    a command line."""
    parts = urllib.parse.urlsplit(url)
    given = any(k == "key" for k, _ in urllib.parse.parse_qsl(parts.query))
    if not key or given or parts.netloc != "cloudbilling.googleapis.com":
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{urllib.parse.urlencode({'key': key})}"


def _read(location: str, key: str = "") -> Any:
    if location.startswith("https://"):
        url = _with_key(location, key)
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - https only
            return json.load(resp)
    return json.loads(Path(location).read_text())


def documents(location: str, key: str = "") -> Iterator[Any]:
    """A file or an https URL; Azure's paged API is followed through NextPageLink and GCP's
    through nextPageToken."""
    doc = _read(location, key)
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
            doc = _read(f"{location}{sep}pageToken={doc['nextPageToken']}", key)
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
    Billing Catalog SKU pages) into the catalog. The Cloud Billing Catalog's API key is read
    from CCT_PRICES_GCP_API_KEY (a `key=` in a URL works too); it is never logged or stored."""
    total = rejected = 0
    key = PriceLoadSettings.from_env().gcp_api_key
    with psycopg.connect(pg_dsn()) as conn:
        for location in locations:
            shown = public_location(location)
            try:
                rows, rejects = parse(provider, documents(location, key), shown)
            except (PriceSourceError, OSError, ValueError) as exc:
                # (urllib's errors name the URL they failed on: never with its key.)
                message = str(exc).replace(location, shown)
                raise click.ClickException(f"{shown}: {message}") from None
            total += upsert_prices(conn, rows, datetime.now(UTC))
            rejected += rejects.total
            log.info(
                "prices loaded",
                extra={"source": shown, "rows": len(rows), "rejected": rejects.total},
            )
            _report(shown, rejects)
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
