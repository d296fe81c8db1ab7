"""Fixtures shared by the whole suite: the real local services, one fresh database per test
session, and unique ids so tests that share VictoriaMetrics, Alertmanager or Kafka never see
each other's data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdas.common.vm import VictoriaMetrics
from tests.support.databases import own_database
from tests.support.services import ROOT, load_settings, require


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that asks for a real service is marked, so `make unit` can leave it out.
    service_fixtures = {
        "services",
        "pg_dsn",
        "pg_admin_dsn",
        "vm_url",
        "vm",
        "alertmanager_url",
        "kafka_bootstrap",
        "moto_url",
        "aws_env",
    }
    for item in items:
        if service_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
        # The cluster tests deploy the whole local stack (minutes on 2 cores) in one fixture.
        if "tests/cluster/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def services() -> dict[str, dict[str, Any]]:
    return load_settings()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def local_dir() -> Path:
    return ROOT / ".local"


@pytest.fixture(scope="session")
def pg_admin_dsn(services: dict[str, dict[str, Any]]) -> str:
    return str(require(services, "postgres")["dsn"])


@pytest.fixture(scope="session")
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test session, dropped afterwards."""
    with own_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def vm_url(services: dict[str, dict[str, Any]]) -> str:
    return str(require(services, "victoriametrics")["url"])


@pytest.fixture(scope="session")
def vm(vm_url: str) -> VictoriaMetrics:
    return VictoriaMetrics(vm_url)


@pytest.fixture(scope="session")
def alertmanager_url(services: dict[str, dict[str, Any]]) -> str:
    return str(require(services, "alertmanager")["url"])


@pytest.fixture(scope="session")
def kafka_bootstrap(services: dict[str, dict[str, Any]]) -> str:
    return str(require(services, "kafka")["bootstrap"])


@pytest.fixture(scope="session")
def moto_url(services: dict[str, dict[str, Any]]) -> str:
    return str(require(services, "moto")["url"])


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the moto server with throwaway credentials; returns the endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_url


@pytest.fixture
def uid() -> str:
    """A short unique id for labels, topics, buckets and group ids."""
    return uuid.uuid4().hex[:10]
