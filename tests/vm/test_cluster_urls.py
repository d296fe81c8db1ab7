"""The handlers against VictoriaMetrics cluster-shaped URLs, on the real single node behind
the cluster-layout proxy (`cluster_proxy`): writes reach `/insert/0/prometheus`, queries
`/select/0/prometheus`, deletions `/delete/0/prometheus`, and nothing falls back to
CCT_VM_URL (it points at a closed port)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lambdas.cli import cli
from lambdas.common import settings as env
from lambdas.common.vm import Sample, VictoriaMetrics, VMError, delete_url
from lambdas.detector.service import Detector, DetectorSettings
from lambdas.forwarders import aws
from lambdas.forwarders.common import Forwarder, ForwarderSettings
from tests.dashboards.seed_vm import label_values
from tests.ingest.conftest import TOKEN
from tests.ingest.test_billing import EC2, HOUR0, focus_rows, write
from tests.support.procs import free_port, http_ready, running
from tests.vm.cluster_proxy import ClusterProxy
from tests.vm.conftest import DEAD_VM_URL

ROLLUP = "cct_cost_rate_rollup_usd_per_hour"


def eventually(read: Callable[[], list[dict[str, Any]]], timeout: float = 20.0) -> Any:
    """New series become queryable a few seconds after import: poll, bounded."""
    deadline = time.monotonic() + timeout
    while not (result := read()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert result, "nothing became visible"
    return result


def scalar(vm: VictoriaMetrics, expr: str, at: float) -> float | None:
    result = vm.query(expr, at)
    return float(result[0]["value"][1]) if result else None


def test_settings_default_both_urls_to_the_single_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCT_VM_URL", "http://vm:8428/")
    monkeypatch.delenv("CCT_VM_WRITE_URL", raising=False)
    monkeypatch.setenv("CCT_VM_READ_URL", "")
    assert env.vm_write_url() == env.vm_read_url() == "http://vm:8428"
    monkeypatch.setenv("CCT_VM_WRITE_URL", "http://vminsert:8480/insert/0/prometheus/")
    monkeypatch.setenv("CCT_VM_READ_URL", "http://vmselect:8481/select/0/prometheus")
    assert env.vm_write_url() == "http://vminsert:8480/insert/0/prometheus"
    assert env.vm_read_url() == "http://vmselect:8481/select/0/prometheus"
    assert delete_url(env.vm_read_url()) == "http://vmselect:8481/delete/0/prometheus"
    assert delete_url("http://vm:8428") == "http://vm:8428"


def test_the_client_writes_queries_and_deletes_on_the_right_side(
    proxy: ClusterProxy, uid: str
) -> None:
    vm = VictoriaMetrics(proxy.write_url, proxy.read_url)
    now = time.time()
    sel = f'{{billing_account_id="acct-{uid}"}}'
    vm.import_samples(
        Sample(ROLLUP, {"billing_account_id": f"acct-{uid}", "team": t}, 2.0, int(now * 1000))
        for t in ("a", "b")
    )
    vm.import_csv(
        f"acct-{uid},3.5,{int(now * 1000)}\n".encode(),
        "1:label:billing_account_id,2:metric:cct_csv_probe,3:time:unix_ms",
    )
    assert len(eventually(lambda: vm.query(f"{ROLLUP}{sel}", now))) == 2
    assert eventually(lambda: vm.query(f"cct_csv_probe{sel}", now))[0]["value"][1] == "3.5"
    assert vm.query_range(f"sum({ROLLUP}{sel})", now - 60, now, "15s")
    # Grafana-style metadata reads through the same read URL.
    assert label_values(vm, "team", f"{ROLLUP}{sel}", now - 60, now + 60) == ["a", "b"]
    vm.delete_series(f"{ROLLUP}{sel}")
    assert vm.query(f"{ROLLUP}{sel}", now) == []
    assert proxy.paths("insert") == {"/api/v1/import/prometheus", "/api/v1/import/csv"}
    assert proxy.paths("select") == {
        "/api/v1/query",
        "/api/v1/query_range",
        "/api/v1/label/team/values",
    }
    assert proxy.paths("delete") == {"/api/v1/admin/tsdb/delete_series"}
    assert all(s.side and s.status < 300 for s in proxy.seen), proxy.seen
    # The proxy is as strict as the cluster: a client given only the write URL cannot query.
    with pytest.raises(VMError, match="HTTP 404") as refused:
        VictoriaMetrics(proxy.write_url).query("up")
    assert not refused.value.retryable


def test_the_collector_process_writes_through_vminsert(
    cluster_env: ClusterProxy,
    priced_db: str,
    uid: str,
    tmp_path: Path,
    event: Callable[[str], dict[str, Any]],
) -> None:
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    base = f"http://127.0.0.1:{port}"
    with running(
        [str(Path(sys.executable).parent / "cct"), "serve", "collector"],
        http_ready(f"{base}/healthz"),
        tmp_path / "collector.log",
        env={
            "CCT_PG_DSN": priced_db,
            "CCT_COLLECTOR_TOKEN_FILE": str(token_file),
            "CCT_COLLECTOR_HOST": "127.0.0.1",
            "CCT_COLLECTOR_PORT": str(port),
        },
    ):
        forwarder = Forwarder(
            ForwarderSettings(
                endpoint=f"{base}/ingest", token=TOKEN, billing_account_id=f"payer-{uid}"
            ),
            "aws",
        )
        assert aws.handle(event("aws_run_instances"), forwarder).sent == 1
        vm = VictoriaMetrics(cluster_env.write_url, cluster_env.read_url)
        expr = f'count({ROLLUP}{{billing_account_id="payer-{uid}",basis="list"}})'
        assert float(eventually(lambda: vm.query(expr))[0]["value"][1]) == 1
    assert cluster_env.paths("insert") == {"/api/v1/import/prometheus"}
    assert all(s.side and s.status < 300 for s in cluster_env.seen), cluster_env.seen
    assert DEAD_VM_URL not in (tmp_path / "collector.log").read_text()


def test_the_billing_loader_writes_deletes_and_reconciles_on_the_right_sides(
    cluster_env: ClusterProxy, fresh_db: str, uid: str, tmp_path: Path
) -> None:
    acct = f"acct-{uid}"
    vm = VictoriaMetrics(cluster_env.write_url, cluster_env.read_url)
    # The collector's estimate for the billed hours: EC2 at $1.25/h.
    labels = {"provider": "aws", "billing_account_id": acct, "service_name": EC2, "basis": "list"}
    vm.import_samples(
        Sample(ROLLUP, labels, 1.25, (HOUR0 + m * 60) * 1000) for m in range(0, 4 * 60 + 1)
    )
    eventually(lambda: vm.query(f'{ROLLUP}{{billing_account_id="{acct}"}}', HOUR0 + 3600))
    cluster_env.seen.clear()
    bill = write(focus_rows(acct), tmp_path / "bill.parquet")
    result = CliRunner().invoke(cli, ["billing", "load", str(bill)], env={"CCT_PG_DSN": fresh_db})
    assert result.exit_code == 0, result.output
    factor = f'cct_cost_reconciliation_factor{{billing_account_id="{acct}"}}'
    assert float(eventually(lambda: vm.query(factor))[0]["value"][1]) == pytest.approx(0.64)
    billed = f'sum(sum_over_time(cct_billed_cost_usd{{billing_account_id="{acct}"}}[6h]))'
    at = HOUR0 + 4 * 3600
    assert float(eventually(lambda: vm.query(billed, at))[0]["value"][1]) == 8.0
    # A superseding delivery replaces the old generation's series: deleted through vmselect's
    # delete prefix, or the total would be 8 + 16.
    again = write(focus_rows(acct, cost=2.0), tmp_path / "bill-2.parquet")
    result = CliRunner().invoke(
        cli, ["billing", "load", "--no-reconcile", str(again)], env={"CCT_PG_DSN": fresh_db}
    )
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 20
    while scalar(vm, billed, at) != 16.0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert scalar(vm, billed, at) == 16.0
    assert {"/api/v1/import/csv", "/api/v1/import/prometheus"} <= cluster_env.paths("insert")
    assert "/api/v1/query" in cluster_env.paths("select")
    assert cluster_env.paths("delete") == {"/api/v1/admin/tsdb/delete_series"}
    assert all(s.side and s.status < 300 for s in cluster_env.seen), cluster_env.seen


def test_the_detector_reads_through_vmselect(
    cluster_env: ClusterProxy,
    pg_dsn: str,
    alertmanager_url: str,
    uid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acct = f"acct-{uid}"
    vm = VictoriaMetrics(cluster_env.write_url, cluster_env.read_url)
    now = time.time()
    labels = {
        "provider": "aws",
        "billing_account_id": acct,
        "service_name": EC2,
        "region_id": "us-east-1",
        "team": "payments",
        "env": "prod",
        "basis": "list",
    }
    vm.import_samples(
        Sample(ROLLUP, labels, 3.0, int((now - s) * 1000)) for s in range(0, 7200, 60)
    )
    eventually(lambda: vm.query(f'{ROLLUP}{{billing_account_id="{acct}"}}', now))
    cluster_env.seen.clear()
    for name, value in {
        "CCT_PG_DSN": pg_dsn,
        "CCT_ALERTMANAGER_URL": alertmanager_url,
        "CCT_DETECTOR_SELECTOR": f'billing_account_id="{acct}"',
        "CCT_DETECTOR_BOOTSTRAP_HOURS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    detector = Detector(DetectorSettings.from_env())
    try:
        # A failed read would raise VMError out of either call.
        assert detector.bootstrap(datetime.now(UTC).timestamp()) > 0
        detector.cycle(datetime.now(UTC).timestamp())
        vector = detector.read(datetime.now(UTC).timestamp())
    finally:
        detector.close()
    assert {key.level for key in vector.keys} == {"account", "service", "team"}
    assert cluster_env.paths("select") == {"/api/v1/query", "/api/v1/query_range"}
    assert all(s.side == "select" and s.status < 300 for s in cluster_env.seen), cluster_env.seen
