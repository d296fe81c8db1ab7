"""The bridge's app in process, producing to the real Kafka broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lambdas.bridge.server import Bridge
from tests.bridge.test_server import bridge_settings


@pytest.fixture
async def client(kafka_bootstrap: str, uid: str) -> AsyncIterator[TestClient[Any, Any]]:
    app = Bridge(bridge_settings(kafka_bootstrap, f"cct.test.bridge.{uid}")).app()
    async with TestClient(TestServer(app)) as c:
        yield c
