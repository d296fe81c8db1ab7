"""Fixtures for the cluster-URL tests: the cluster-shaped proxy in front of the shared single
node, and the ingestion fixtures (fresh migrated database, price catalog, provider events)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The collector and billing loader need the same database and events as their own tests.
from tests.ingest.conftest import event, fresh_db, priced_db  # noqa: F401
from tests.vm.cluster_proxy import ClusterProxy, cluster_proxy

# Nothing listens here: a handler that fell back to CCT_VM_URL would fail loudly.
DEAD_VM_URL = "http://127.0.0.1:9"


@pytest.fixture
def proxy(vm_url: str) -> Iterator[ClusterProxy]:
    with cluster_proxy(vm_url) as p:
        yield p


@pytest.fixture
def cluster_env(proxy: ClusterProxy, monkeypatch: pytest.MonkeyPatch) -> ClusterProxy:
    """The environment a handler gets in the highly available stack."""
    monkeypatch.setenv("CCT_VM_URL", DEAD_VM_URL)
    monkeypatch.setenv("CCT_VM_WRITE_URL", proxy.write_url)
    monkeypatch.setenv("CCT_VM_READ_URL", proxy.read_url)
    return proxy
