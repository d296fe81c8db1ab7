"""Fixtures for the ingestion tests: provider event fixtures, a fresh migrated database per
test (the collector rebuilds its rollups from the whole inventory), the price catalog loaded
from the real-format fixtures, and an in-process collector on the real services."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from lambdas.collector.service import CollectorSettings, Processor, build_app
from lambdas.common.pg import DsnSource
from lambdas.pricing.cli import documents
from lambdas.pricing.sources import parse
from lambdas.store.pricing import upsert_prices
from tests.support.databases import own_database

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "test-token-0123456789abcdef"
PRICE_FILES = {
    "aws": [
        "aws_ec2_offer.json",
        "aws_rds_offer.json",
        "aws_s3_offer.json",
        "aws_s3_deep_archive_offer.json",
    ],
    "azure": [
        "azure_retail_page1.json",
        "azure_retail_page2.json",
        "azure_retail_blob.json",
        "azure_retail_sql.json",
    ],
    "gcp": ["gcp_compute_skus.json", "gcp_storage_skus.json", "gcp_sql_skus.json"],
}


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "events" / f"{name}.json").read_text())
    return data


@pytest.fixture
def event() -> Callable[[str], dict[str, Any]]:
    return lambda name: copy.deepcopy(load_event(name))


@pytest.fixture
def fresh_db(pg_admin_dsn: str) -> Iterator[str]:
    with own_database(pg_admin_dsn, "cct_ingest") as dsn:
        yield dsn


def load_prices(dsn: str) -> None:
    from datetime import UTC, datetime

    with psycopg.connect(dsn) as conn:
        for provider, files in PRICE_FILES.items():
            for f in files:
                path = str(FIXTURES / "prices" / f)
                rows = parse(provider, documents(path), path).rows
                upsert_prices(conn, rows, datetime.now(UTC))


@pytest.fixture
def priced_db(fresh_db: str) -> str:
    load_prices(fresh_db)
    return fresh_db


def collector_settings(dsn: str, vm_url: str, **overrides: Any) -> CollectorSettings:
    return CollectorSettings(pg_dsn=dsn, vm_url=vm_url, token=TOKEN, **overrides)


class Collector:
    """An in-process collector: its Processor and an HTTP client bound to its app."""

    def __init__(self, processor: Processor, client: TestClient[Any, Any]) -> None:
        self.processor = processor
        self.client = client

    @property
    def dsn(self) -> str:
        """The DSN the collector writes to (a fixed one in these tests)."""
        return DsnSource.of(self.processor.settings.pg_dsn).read()

    async def post(
        self, body: Any, token: str = TOKEN, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        resp = await self.client.post(
            "/ingest",
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        payload = await resp.json()
        return resp.status, payload


@contextlib.asynccontextmanager
async def running_collector(settings: CollectorSettings) -> AsyncIterator[Collector]:
    """An in-process collector with these settings, stopped on exit."""
    processor = Processor(settings)
    await processor.start(background=False)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(processor)))
    await client.start_server()
    try:
        yield Collector(processor, client)
    finally:
        await client.close()
        await processor.stop()


@pytest.fixture
async def collector(priced_db: str, vm_url: str) -> AsyncIterator[Collector]:
    settings = collector_settings(priced_db, vm_url, max_body_bytes=256 * 1024, max_records=100)
    async with running_collector(settings) as running:
        yield running


@pytest.fixture
async def one_shard(priced_db: str, vm_url: str) -> AsyncIterator[Collector]:
    """A collector with a single writer shard, so a request's batch stays whole."""
    async with running_collector(collector_settings(priced_db, vm_url, writers=1)) as running:
        yield running


def record(provider: str, event: dict[str, Any], account: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "billing_account_id": account, "event": event, **extra}
