"""`cct serve collector` as a real process, fed by the real forwarder code over HTTP."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from lambdas.common.vm import VictoriaMetrics
from lambdas.forwarders import aws, gcp
from lambdas.forwarders.common import Forwarder, ForwarderSettings
from tests.ingest.conftest import TOKEN
from tests.support.procs import free_port, http_ready, running

Event = Callable[[str], dict[str, Any]]


def test_forwarders_to_the_collector_process(
    priced_db: str, vm_url: str, vm: VictoriaMetrics, uid: str, tmp_path: Path, *, event: Event
) -> None:
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {
        "CCT_PG_DSN": priced_db,
        "CCT_VM_URL": vm_url,
        "CCT_COLLECTOR_TOKEN_FILE": str(token_file),
        "CCT_COLLECTOR_HOST": "127.0.0.1",
        "CCT_COLLECTOR_PORT": str(port),
        "CCT_COLLECTOR_HEARTBEAT_S": "1",
    }
    cct = str(Path(sys.executable).parent / "cct")
    base = f"http://127.0.0.1:{port}"
    with running(
        [cct, "serve", "collector"],
        http_ready(f"{base}/healthz"),
        tmp_path / "collector.log",
        env=env,
    ):
        settings = ForwarderSettings(
            endpoint=f"{base}/ingest", token=TOKEN, billing_account_id=f"payer-{uid}"
        )
        assert aws.handle(event("aws_run_instances"), Forwarder(settings, "aws")).sent == 1
        import base64

        data = base64.b64encode(json.dumps(event("gcp_instances_insert")).encode()).decode()
        assert gcp.handle({"message": {"data": data}}, Forwarder(settings, "gcp")).sent == 1
        with psycopg.connect(priced_db) as conn:
            assert conn.execute("select count(*) from resource_events").fetchone() == (2,)
        deadline = time.monotonic() + 20
        sel = f'billing_account_id="payer-{uid}",basis="list"'
        expr = f"count(cct_cost_rate_rollup_usd_per_hour{{{sel}}})"
        while not vm.query(expr) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert float(vm.query(expr)[0]["value"][1]) == 2
        with urllib.request.urlopen(f"{base}/metrics") as resp:
            text = resp.read().decode()
        assert 'cct_collector_events_total{outcome="accepted",provider="aws"} 1.0' in text
    log = (tmp_path / "collector.log").read_text()
    assert TOKEN not in log
    assert os.environ.get("CCT_COLLECTOR_TOKEN") is None
