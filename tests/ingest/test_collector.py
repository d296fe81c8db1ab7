"""The collector on the real PostgreSQL and VictoriaMetrics: inventory, events, series, and
every kind of bad input."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from lambdas.common.vm import VictoriaMetrics
from lambdas.store.db import StoreError
from tests.ingest.conftest import Collector, record
from tests.support.http import raw_status

Event = Callable[[str], dict[str, Any]]
RATE = "cct_cost_rate_usd_per_hour"
ROLLUP = "cct_cost_rate_rollup_usd_per_hour"


async def wait_for(vm: VictoriaMetrics, expr: str, expected: float, timeout: float = 20.0) -> float:
    """Poll until the instant query returns `expected` (new series take seconds to appear)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(vm.query, expr)
        if result:
            last = float(result[0]["value"][1])
            if abs(last - expected) <= 1e-9 * max(1.0, abs(expected)):
                return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"{expr}: expected {expected}, last saw {last}")


# Short names of the AWS event fixtures one instance (and a volume) goes through.
AWS_FIXTURES = {
    "run": "aws_run_instances",
    "stop": "aws_stop_instances",
    "modify": "aws_modify_instance_attribute",
    "start": "aws_start_instances",
    "volume": "aws_create_volume",
}


def aws_records(event: Event, acct: str, *names: str) -> list[dict[str, Any]]:
    return [record("aws", event(AWS_FIXTURES[n]), acct) for n in names]


def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


async def test_lifecycle_events_become_inventory_events_and_series(
    collector: Collector, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    acct = f"acct-{uid}"
    status, body = await collector.post(
        [
            record("aws", event("aws_run_instances"), acct),
            record("aws", event("aws_create_volume"), acct),
        ]
    )
    assert status == 200 and body["accepted"] == 2 and body["rejected"] == []
    status, body = await collector.post(
        [record("aws", event("aws_modify_instance_attribute"), acct)]
    )
    assert body["accepted"] == 1
    dsn = collector.dsn
    inv = rows(
        dsn,
        "select resource_id, sku, state, usd_per_hour::float8, priced"
        " from resource_inventory order by 1",
    )
    assert inv == [
        ("i-0aaa1111bbbb2222c", "m5.xlarge", "running", 0.192, True),
        (
            "vol-0123456789abcdef0",
            "gp3",
            "available",
            pytest.approx(100 * 0.08 / 730, abs=1e-6),
            True,
        ),
    ]
    ev = rows(
        dsn,
        "select action, actor, usd_per_hour_before::float8, usd_per_hour_after::float8, tags"
        " from resource_events where resource_id = 'i-0aaa1111bbbb2222c' order by event_time",
    )
    assert ev == [
        (
            "RunInstances",
            "arn:aws:sts::111122223333:assumed-role/Admin/alice",
            0.0,
            0.096,
            {"team": "payments", "env": "prod"},
        ),
        (
            "ModifyInstanceAttribute",
            "arn:aws:sts::111122223333:assumed-role/Admin/alice",
            0.096,
            0.192,
            {"team": "payments", "env": "prod"},
        ),
    ]
    sel = f'billing_account_id="{acct}",basis="list"'
    await wait_for(vm, f'{ROLLUP}{{{sel},team="payments"}}', 0.192)
    await wait_for(vm, f'{RATE}{{{sel},resource_id="i-0aaa1111bbbb2222c"}}', 0.192)
    # The per-resource series is timestamped at the event time.
    series = await asyncio.to_thread(
        vm.query_range,
        f'{RATE}{{{sel},resource_id="i-0aaa1111bbbb2222c"}}',
        1795770000 - 60,
        1795770000 + 3600,
        "60s",
    )
    assert series and series[0]["metric"]["team"] == "payments"


async def test_duplicates_and_out_of_order_delivery(
    collector: Collector, event: Event, uid: str
) -> None:
    acct = f"acct-{uid}"
    stop = record("aws", event("aws_stop_instances"), acct)  # 09:10
    run = record("aws", event("aws_run_instances"), acct)  # 09:00, arrives later
    assert (await collector.post([stop]))[1]["accepted"] == 1
    status, body = await collector.post([run, run, stop])
    assert status == 200
    assert (body["accepted"], body["duplicates"], body["stale"]) == (1, 2, 1)
    dsn = collector.dsn
    assert rows(
        dsn, "select state, sku, last_event_id, usd_per_hour::float8 from resource_inventory"
    ) == [
        ("stopped", "m5.large", "aws:e1a2b3c4-0002-4000-8000-000000000002/i-0aaa1111bbbb2222c", 0.0)
    ]
    assert rows(dsn, "select count(*) from resource_events") == [(2,)]
    assert (
        collector.processor.rollups.totals[
            ("aws", acct, "Amazon Elastic Compute Cloud", "us-east-1", "payments", "prod")
        ]
        == 0.0
    )


async def test_a_known_event_met_by_a_blind_write_is_found_and_the_rest_written_once(
    collector: Collector, event: Event, uid: str
) -> None:
    """A batch whose rows are all cached is written without looking for known event ids; the
    events' primary key refuses a known one and the batch is redone with a look."""
    acct = f"acct-{uid}"
    processor = collector.processor

    def rechecks() -> float | None:
        return processor.metrics.registry.get_sample_value("cct_collector_batch_rechecks_total")

    run, stop, modify, start = aws_records(event, acct, "run", "stop", "modify", "start")
    assert (await collector.post([run]))[1]["accepted"] == 1  # not cached yet: looked up
    assert (await collector.post([stop]))[1]["accepted"] == 1  # cached: written blind
    assert rechecks() == 0
    status, body = await collector.post([stop, modify])  # a Fluent Bit retry plus a new event
    assert status == 200
    assert (body["accepted"], body["duplicates"]) == (1, 1)
    assert rechecks() == 1
    assert processor._careful  # the next batch looks first ...
    assert (await collector.post([start]))[1]["accepted"] == 1
    assert rechecks() == 1
    assert not processor._careful  # ... and, finding nothing known, writing blind resumes
    dsn = collector.dsn
    assert rows(dsn, "select action, count(*) from resource_events group by 1 order by 1") == [
        ("ModifyInstanceAttribute", 1),
        ("RunInstances", 1),
        ("StartInstances", 1),
        ("StopInstances", 1),
    ]
    assert rows(dsn, "select state, sku, usd_per_hour::float8 from resource_inventory") == [
        ("running", "m5.xlarge", 0.192)
    ]


async def test_a_batch_committed_but_not_acknowledged_leaves_no_stale_state(
    collector: Collector, event: Event, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is lost after PostgreSQL committed a batch: the request fails, Fluent
    Bit's retry finds the events known, and the collector's cache and rollups take what
    PostgreSQL holds, so the next event merges onto the committed state."""
    from lambdas.store import inventory

    acct = f"acct-{uid}"
    group = ("aws", acct, "Amazon Elastic Compute Cloud", "us-east-1", "payments", "prod")
    run, stop, modify = aws_records(event, acct, "run", "stop", "modify")
    assert (await collector.post([run]))[1]["accepted"] == 1
    assert collector.processor.rollups.totals[group] == pytest.approx(0.096)
    real_write = inventory.write_batch

    async def committed_then_lost(*args: Any, **kwargs: Any) -> None:
        await real_write(*args, **kwargs)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(inventory, "write_batch", committed_then_lost)
    status, body = await collector.post([stop])
    assert (status, body["error"]) == (503, "store_unavailable")
    monkeypatch.setattr(inventory, "write_batch", real_write)
    status, body = await collector.post([stop])  # Fluent Bit's retry
    assert (status, body["accepted"], body["duplicates"]) == (200, 0, 1)
    assert collector.processor.rollups.totals[group] == 0.0  # stopped: no run-rate
    assert (await collector.post([modify]))[1]["accepted"] == 1
    assert rows(
        collector.dsn, "select state, sku, usd_per_hour::float8 from resource_inventory"
    ) == [("stopped", "m5.xlarge", 0.0)]
    assert collector.processor.rollups.totals[group] == 0.0
    assert rows(collector.dsn, "select count(*) from resource_events") == [(3,)]


@pytest.mark.parametrize("waiting_in", ["look-up", "refused blind write"])
async def test_a_row_evicted_from_the_cache_while_a_batch_waits_is_still_merged_onto(
    one_shard: Collector, event: Event, uid: str, monkeypatch: pytest.MonkeyPatch, waiting_in: str
) -> None:
    """While a batch waits for PostgreSQL (its look-up, or a blind write the events' key then
    refuses), another shard's commit can evict one of its cached rows (LRU): the batch still
    merges onto that row instead of taking it for a new resource."""
    from lambdas.store import inventory

    collector, processor = one_shard, one_shard.processor
    acct = f"acct-{uid}"
    instance = ("aws", "i-0aaa1111bbbb2222c")
    run, stop, modify, volume = aws_records(event, acct, "run", "stop", "modify", "volume")
    assert (await collector.post([run, stop]))[1]["accepted"] == 2
    assert instance in processor._rows
    name = "read_batch" if waiting_in == "look-up" else "write_batch"
    real = getattr(inventory, name)
    evicted = False

    async def evicting(*args: Any, **kwargs: Any) -> Any:
        nonlocal evicted
        if not evicted:  # as another shard's commit would, while this call waits
            processor._rows.pop(instance)
            evicted = True
        return await real(*args, **kwargs)

    monkeypatch.setattr(inventory, name, evicting)
    if waiting_in == "look-up":
        # The new volume is not cached, so the batch looks first.
        batch, expected = [modify, volume], (2, 0)
    else:
        # All cached: written blind, refused for the known stop, redone with a look.
        batch, expected = [stop, modify], (1, 1)
    status, body = await collector.post(batch)
    assert (status, body["accepted"], body["duplicates"]) == (200, *expected)
    assert evicted
    assert rows(
        collector.dsn,
        "select state, sku, tags, usd_per_hour::float8 from resource_inventory"
        " where resource_id = %s",
        instance[1],
    ) == [("stopped", "m5.xlarge", {"team": "payments", "env": "prod"}, 0.0)]
    assert processor._rows[instance].state == "stopped"


async def test_the_rollups_catch_up_on_a_lost_acknowledgement_without_a_retry(
    one_shard: Collector, event: Event, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fluent Bit gives up on a request whose batch committed although its write failed: the
    shard reads those resources back before its next batch, so the rollups still follow."""
    from lambdas.store import inventory

    collector, processor = one_shard, one_shard.processor
    acct = f"acct-{uid}"
    group = ("aws", acct, "Amazon Elastic Compute Cloud", "us-east-1", "payments", "prod")
    run, stop, volume = aws_records(event, acct, "run", "stop", "volume")
    assert (await collector.post([run]))[1]["accepted"] == 1
    real_write = inventory.write_batch

    async def committed_then_lost(*args: Any, **kwargs: Any) -> None:
        await real_write(*args, **kwargs)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(inventory, "write_batch", committed_then_lost)
    assert (await collector.post([stop]))[0] == 503
    assert processor.rollups.totals[group] == pytest.approx(0.096)  # not known yet
    monkeypatch.setattr(inventory, "write_batch", real_write)
    assert (await collector.post([volume]))[1]["accepted"] == 1  # another resource's event
    assert processor.rollups.totals[group] == 0.0  # stopped: no run-rate
    assert processor._rows[("aws", "i-0aaa1111bbbb2222c")].state == "stopped"
    assert not processor._unsure[0]


async def test_a_nul_character_inside_pubsub_data_rejects_its_record_only(
    collector: Collector, event: Event, uid: str
) -> None:
    """A NUL hidden in a GCP message's base64 data is found once decoded: that record is
    dead-lettered, the rest of the request is written."""
    import base64

    acct = f"acct-{uid}"
    entry = event("gcp_disks_insert")
    entry["protoPayload"]["authenticationInfo"]["principalEmail"] = "carol\x00@example.com"
    data = base64.b64encode(json.dumps(entry).encode()).decode()
    status, body = await collector.post(
        [
            record("aws", event("aws_run_instances"), acct),
            record("gcp", {"message": {"data": data}}, acct),
        ]
    )
    assert status == 200 and body["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [(1, "nul_character")]
    assert rows(collector.dsn, "select provider, count(*) from resource_events group by 1") == [
        ("aws", 1)
    ]


async def test_bad_input_is_refused_with_a_reason_counted_and_dead_lettered(
    collector: Collector, event: Event, uid: str
) -> None:
    acct = f"acct-{uid}"
    good = record("aws", event("aws_run_instances"), acct)
    # wrong token
    status, body = await collector.post([good], token="wrong-token-000000000")
    assert (status, body["error"]) == (401, "unauthorized")
    # bytes that are not UTF-8 in the header: a wrong token too, not a 500
    server = collector.client
    assert server.port is not None
    header = b"Authorization: Bearer \xff\xfe"
    assert await raw_status(server.host, server.port, "/ingest", header, b"[]") == 401
    # malformed JSON
    status, body = await collector.post(None, raw=b'[{"provider": "aws", ')
    assert (
        status == 400 and body["error"] == "malformed_json" and "malformed JSON" in body["detail"]
    )
    # oversized batches: too many records, too many bytes
    status, body = await collector.post([good] * 101)
    assert (status, body["error"]) == (413, "too_many_records")
    status, body = await collector.post(None, raw=b"[" + b" " * 300_000 + b"]")
    assert (status, body["error"]) == (413, "body_too_large")
    # a mixed batch: the good record is written once, each bad one named
    missing = event("aws_run_instances")
    del missing["detail"]["eventID"]
    batch = [
        good,
        {"provider": "oracle", "event": {}},
        record("aws", missing, acct),
        record("aws", {**event("aws_ec2_state_change"), "time": 17}, acct),
        record("aws", event("aws_failed_call"), acct),
        good,
    ]
    status, body = await collector.post(batch)
    assert status == 200
    assert (body["accepted"], body["duplicates"], body["ignored"]) == (1, 1, 1)
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
        (1, "unknown_provider"),
        (2, "missing_field"),
        (3, "wrong_type"),
    ]
    dsn = collector.dsn
    assert rows(dsn, "select count(*) from resource_events") == [(1,)]
    dead = rows(dsn, "select reason, detail from ingest_dead_letters order by id")
    assert [d[0] for d in dead] == [
        "malformed_json",
        "unknown_provider",
        "missing_field",
        "wrong_type",
    ]
    assert "missing field 'eventID'" in dead[2][1]
    metrics = await (await collector.client.get("/metrics")).text()
    for line in (
        'cct_collector_rejected_total{reason="unauthorized"} 2.0',
        'cct_collector_rejected_total{reason="too_many_records"} 1.0',
        'cct_collector_rejected_total{reason="body_too_large"} 1.0',
        'cct_collector_rejected_total{reason="unknown_provider"} 1.0',
        'cct_collector_events_total{outcome="accepted",provider="aws"} 1.0',
        'cct_collector_events_total{outcome="duplicate",provider="aws"} 1.0',
    ):
        assert line in metrics


async def test_unpriced_resources_are_flagged_and_counted_not_zero(
    collector: Collector, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    acct = f"acct-{uid}"
    ev = event("aws_run_instances")
    ev["detail"]["responseElements"]["instancesSet"]["items"][0]["instanceType"] = "x9.mega"
    _, body = await collector.post([record("aws", ev, acct)])
    assert body["accepted"] == 1
    dsn = collector.dsn
    assert rows(dsn, "select usd_per_hour, priced from resource_inventory") == [(None, False)]
    assert rows(dsn, "select usd_per_hour_after from resource_events") == [(None,)]
    await wait_for(vm, f'cct_cost_rate_unpriced_resources{{billing_account_id="{acct}"}}', 1.0)
    assert not await asyncio.to_thread(vm.query, f'{RATE}{{billing_account_id="{acct}"}}')
    metrics = await (await collector.client.get("/metrics")).text()
    assert 'cct_collector_unpriced_events_total{provider="aws"} 1.0' in metrics


async def test_all_three_providers_and_gzip(
    collector: Collector, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    acct = f"acct-{uid}"
    batch = [
        record("azure", event("azure_vm_write"), acct, resource=event("arm_vm")),
        record("azure", event("azure_disk_write"), acct, resource=event("arm_disk")),
        record("gcp", event("gcp_instances_insert"), acct),
        record("gcp", event("gcp_disks_insert"), acct),
    ]
    resp = await collector.client.post(
        "/ingest",
        data=gzip.compress(json.dumps(batch).encode()),
        headers={"Authorization": "Bearer test-token-0123456789abcdef", "Content-Encoding": "gzip"},
    )
    body = await resp.json()
    assert resp.status == 200 and body["accepted"] == 4, body
    dsn = collector.dsn
    priced = rows(
        dsn,
        "select provider, count(*) filter (where priced) from resource_inventory"
        " group by 1 order by 1",
    )
    assert priced == [("azure", 2), ("gcp", 2)]
    e2 = 4 * 0.02181159 + 16 * 0.00292353
    await wait_for(
        vm,
        f'sum({ROLLUP}{{billing_account_id="{acct}",provider="gcp",basis="list"}})',
        round(e2, 6) + round(500 * 0.17 / 730, 6),
    )
    # deallocating the Azure VM drops its rate to zero
    _, body = await collector.post([record("azure", event("azure_vm_deallocate"), acct)])
    assert body["accepted"] == 1
    await wait_for(
        vm,
        f'{ROLLUP}{{billing_account_id="{acct}",provider="azure",'
        'service_name="Virtual Machines",basis="list"}',
        0.0,
    )


@pytest.mark.parametrize("through", ["vm-write", "tags-api"])
async def test_a_re_tag_moves_the_cost_from_one_group_to_the_other_in_one_write(
    collector: Collector, event: Event, vm: VictoriaMetrics, uid: str, through: str
) -> None:
    """Review finding: a re-tag wrote the total of the group the resource joined but not of
    the one it left, which counted it until the next heartbeat (no heartbeat runs here): the
    account and its service read the resource twice, a step up the detector paged. The re-tag
    is a write of the VM, or of its tags resource through the Tags API (the portal's tag
    editor), which used to be ignored."""
    acct = f"acct-{uid}"
    await collector.post([record("azure", event("azure_vm_write"), acct, resource=event("arm_vm"))])
    [(price,)] = rows(collector.dsn, "select usd_per_hour::float8 from resource_inventory")
    sel = f'billing_account_id="{acct}",basis="list"'
    await wait_for(vm, f'{ROLLUP}{{{sel},team="web"}}', price)
    retag, arm = event("azure_vm_write"), event("arm_vm")
    retag.update(id="8a2c6c1b-0001-4a4e-9e5f-000000000099", eventTime="2026-11-27T09:05:00Z")
    if through == "tags-api":
        tags_uri = retag["data"]["resourceUri"] + "/providers/Microsoft.Resources/tags/default"
        retag["data"]["resourceUri"] = retag["subject"] = tags_uri
    arm["tags"] = {"team": "data", "env": "prod"}
    _, body = await collector.post([record("azure", retag, acct, resource=arm)])
    assert body["accepted"] == 1
    await wait_for(vm, f'{ROLLUP}{{{sel},team="data"}}', price)
    await wait_for(vm, f'{ROLLUP}{{{sel},team="web"}}', 0.0)
    await wait_for(vm, f"sum({ROLLUP}{{{sel}}})", price)


async def test_an_aws_re_tag_moves_the_instance_s_cost_to_its_new_team(
    collector: Collector, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    """CreateTags (the EventBridge rule now selects it) moves the instance's cost from the
    team it had to the one it has now; the event is recorded with the run-rate unchanged."""
    acct = f"acct-{uid}"
    await collector.post(aws_records(event, acct, "run"))
    sel = f'billing_account_id="{acct}",basis="list"'
    await wait_for(vm, f'{ROLLUP}{{{sel},team="payments"}}', 0.096)
    _, body = await collector.post([record("aws", event("aws_create_tags"), acct)])
    # The volume in the same call is not in the inventory: it starts as an unpriced row.
    assert body["accepted"] == 2 and body["rejected"] == []
    await wait_for(vm, f'{ROLLUP}{{{sel},team="data"}}', 0.096)
    await wait_for(vm, f'{ROLLUP}{{{sel},team="payments"}}', 0.0)
    await wait_for(vm, f'{RATE}{{{sel},resource_id="i-0aaa1111bbbb2222c",team="data"}}', 0.096)
    assert rows(
        collector.dsn,
        "select tags, usd_per_hour_before::float8, usd_per_hour_after::float8"
        " from resource_events where action = 'CreateTags' and resource_id = 'i-0aaa1111bbbb2222c'",
    ) == [({"team": "data", "env": "prod", "cost-center": "cc-42"}, 0.096, 0.096)]
    # A DeleteTags naming a value removes the tag only where it has that value (AWS's rule).
    for n, value in enumerate(("web", "data")):
        untag = event("aws_delete_tags")
        untag["detail"]["eventID"] += f"-{value}"
        untag["time"] = untag["detail"]["eventTime"] = f"2026-11-27T09:3{5 + n}:00Z"
        untag["detail"]["requestParameters"]["tagSet"]["items"] = [{"key": "team", "value": value}]
        _, body = await collector.post([record("aws", untag, acct)])
        assert body["accepted"] == 1
    await wait_for(vm, f'{ROLLUP}{{{sel},team=""}}', 0.096)
    assert rows(
        collector.dsn,
        "select tags->>'team' from resource_events where action = 'DeleteTags'"
        " and resource_id = 'i-0aaa1111bbbb2222c' and billing_account_id = %s"
        " order by event_time",
        acct,
    ) == [("data",), (None,)]


async def test_heartbeat_reemits_and_reconciled_basis_follows_factors(
    collector: Collector, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    acct = f"acct-{uid}"
    dsn = collector.dsn
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "insert into cost_reconciliation values ('aws', %s, 'Amazon Elastic Compute Cloud',"
            " now() - interval '7 days', now(), 80, 100, 0.8, now())",
            (acct,),
        )
    await collector.processor.refresh()
    await collector.post([record("aws", event("aws_run_instances"), acct)])
    sel = f'billing_account_id="{acct}",resource_id="i-0aaa1111bbbb2222c"'
    await wait_for(vm, f'{RATE}{{{sel},basis="reconciled"}}', 0.096 * 0.8)
    before = time.time()
    await collector.processor.heartbeat()
    result = await asyncio.to_thread(vm.query, f'timestamp({RATE}{{{sel},basis="list"}})')
    deadline = time.monotonic() + 10
    while float(result[0]["value"][1]) < before - 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        result = await asyncio.to_thread(vm.query, f'timestamp({RATE}{{{sel},basis="list"}})')
    assert float(result[0]["value"][1]) >= before - 1  # fresh sample from the heartbeat


async def test_restart_rebuilds_rollups_from_the_inventory(
    collector: Collector, event: Event, uid: str, vm_url: str
) -> None:
    from lambdas.collector.service import Processor
    from tests.ingest.conftest import collector_settings

    acct = f"acct-{uid}"
    await collector.post(
        [
            record("aws", event("aws_run_instances"), acct),
            record("aws", event("aws_create_volume"), acct),
        ]
    )
    again = Processor(collector_settings(collector.dsn, vm_url))
    await again.start(background=False)
    try:
        assert again.rollups.totals == collector.processor.rollups.totals
        assert len(again.rollups.live) == 2
    finally:
        await again.stop()


async def test_healthz(collector: Collector) -> None:
    resp = await collector.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_readyz_names_postgresql_when_a_batch_cannot_be_stored(collector: Collector) -> None:
    """The shared shell's /readyz: ready with its figures, and the reason after PostgreSQL
    failed a batch (cleared by the next success)."""
    resp = await collector.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["ready"] is True and "live_resources" in body
    collector.processor.pg_error = "connection refused"
    resp = await collector.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["reason"] == "PostgreSQL unreachable: connection refused"
    await collector.processor.refresh()  # a successful round trip clears it
    assert (await collector.client.get("/readyz")).status == 200


async def test_a_refresh_without_an_answer_is_abandoned_and_the_next_one_reconnects(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query sent before the database went dark waits for TCP keepalives (about a minute;
    CI saw the collector not ready that long after a partition test): the refresh gives up
    after READER_TIMEOUT_S, says why in /readyz, drops the reader, and the next round works
    on a new connection."""
    from lambdas.collector import service

    proc = collector.processor
    real = service.aload_price_book

    async def stuck(conn: Any) -> Any:
        await conn.execute("select pg_sleep(30)")
        return await real(conn)

    monkeypatch.setattr(service, "READER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(service, "aload_price_book", stuck)
    old_reader = proc._reader
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"no answer from PostgreSQL within 0\.5 s") as info:
        await proc.refresh()
    assert time.monotonic() - started < 20 and info.value.retryable  # not the 30 s query
    assert old_reader is not None and old_reader.closed
    resp = await collector.client.get("/readyz")
    assert resp.status == 503 and "no answer from PostgreSQL" in (await resp.json())["reason"]
    monkeypatch.setattr(service, "aload_price_book", real)
    await proc.refresh()
    assert proc._reader is not None and proc._reader is not old_reader
    assert not proc._reader.closed
    assert (await collector.client.get("/readyz")).status == 200


async def test_text_with_copy_control_characters_is_stored_verbatim(
    collector: Collector, event: Event, uid: str
) -> None:
    """The collector writes COPY text itself: tabs, newlines, carriage returns and
    backslashes in provider-supplied text must reach PostgreSQL unchanged."""
    acct = f"acct-{uid}"
    awkward = 'a\tb\nc\rd\\e"f\\N'
    ev = event("aws_run_instances")
    ev["detail"]["userIdentity"]["arn"] = f"arn:aws:sts::1:assumed-role/{awkward}"
    instance = ev["detail"]["responseElements"]["instancesSet"]["items"][0]
    instance["tagSet"]["items"][0]["value"] = awkward
    status, body = await collector.post([record("aws", ev, acct)])
    assert status == 200 and body["accepted"] == 1
    dsn = collector.dsn
    (inv_tags,) = rows(
        dsn,
        "select tags from resource_inventory where billing_account_id = %s",
        acct,
    )[0]
    (actor, ev_tags) = rows(
        dsn,
        "select actor, tags from resource_events where billing_account_id = %s",
        acct,
    )[0]
    assert inv_tags["team"] == awkward and ev_tags["team"] == awkward
    assert actor == f"arn:aws:sts::1:assumed-role/{awkward}"


async def test_a_nul_character_rejects_its_record_only(
    collector: Collector, event: Event, uid: str
) -> None:
    """PostgreSQL text cannot hold NUL: such a record is dead-lettered (JSON-escaped) while the
    rest of its batch is written, instead of failing the batch on every retry."""
    acct = f"acct-{uid}"
    good = event("aws_run_instances")
    bad = event("aws_ec2_state_change")
    bad["detail"]["instance-id"] = "i-0\x00bad"
    status, body = await collector.post([record("aws", good, acct), record("aws", bad, acct)])
    assert status == 200 and body["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [(1, "nul_character")]
    dsn = collector.dsn
    assert rows(
        dsn, "select count(*) from resource_events where billing_account_id = %s", acct
    ) == [(1,)]
    (payload,) = rows(
        dsn,
        "select payload from ingest_dead_letters where reason = 'nul_character'"
        " and payload like %s",
        f"%{acct}%",
    )[0]
    assert "i-0\\u0000bad" in payload


def test_container_deletions_expand_in_one_pass_over_the_live_resources(event: Event) -> None:
    """No services: the expansion alone. Each container reaches the live resources under it
    (of its provider, priced types only), several containers in one request are expanded in
    one pass (review: a request of many container deletions held the event loop once per
    each), and nothing else is touched."""
    from lambdas.collector.core import Live
    from lambdas.collector.normalize import normalize
    from lambdas.collector.service import Processor
    from tests.ingest.conftest import collector_settings

    proc = Processor(collector_settings("postgresql://unused", "http://unused"))
    sub = "/subscriptions/00000000-1111-2222-3333-444444444444/resourcegroups"
    held = [
        f"{sub}/rg-a/providers/microsoft.compute/virtualmachines/vm-1",
        f"{sub}/rg-a/providers/microsoft.compute/disks/d-1",
        f"{sub}/rg-b/providers/microsoft.sql/servers/s/databases/db",
    ]
    others = [
        f"{sub}/rg-a2/providers/microsoft.compute/virtualmachines/vm-1",  # another group
        f"{sub}/rg-b/providers/microsoft.sql/servers/s2/databases/db",  # another server
    ]
    for rid in [*held, *others]:
        proc.rollups.live[("azure", rid)] = Live((), 1.0, "", {}, ("", "", ""))
    proc.rollups.live[("aws", f"{sub}/rg-a/x")] = Live((), 1.0, "", {}, ("", "", ""))
    deletions = []
    for n, container in enumerate((f"{sub}/rg-a", f"{sub}/rg-b/providers/microsoft.sql/servers/s")):
        ev = event("azure_vm_delete")
        ev["data"]["resourceUri"] = ev["subject"] = container
        ev["id"] = f"c{n}"
        deletions += normalize({"provider": "azure", "event": ev})
    kept = normalize({"provider": "azure", "event": event("azure_vm_delete")})
    out = proc._contents_deleted([*deletions, *kept], deletions)
    assert out[0] == kept[0]
    assert sorted(c.resource_id for c in out[1:]) == sorted(held)
    assert {c.event_id for c in out[1:]} == {
        f"azure:c0/{held[0]}",
        f"azure:c0/{held[1]}",
        f"azure:c1/{held[2]}",
    }
    assert all(c.state == "deleted" and not c.contains for c in out)
    assert {c.resource_type for c in out[1:]} == {
        "Microsoft.Compute/virtualMachines",
        "Microsoft.Compute/disks",
        "Microsoft.Sql/servers/databases",
    }


async def test_a_row_committed_live_under_a_deleted_container_is_deleted_after_it() -> None:
    """No services: a write already past the tombstone check when its group's deletion was
    expanded (in flight in another shard, not yet live) is committed live; once committed it
    is deleted, under the container's event id (a second look finds it a duplicate), at the
    container's deletion time. A row whose last event is newer is left alone."""
    from lambdas.collector.core import Tombstone
    from lambdas.collector.model import Resource
    from lambdas.collector.service import Processor
    from tests.ingest.conftest import collector_settings

    proc = Processor(collector_settings("postgresql://unused", "http://unused"))
    group = "/subscriptions/s/resourcegroups/rg-a"
    deleted_at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    proc.tombstones.add("azure", group, Tombstone(deleted_at, "azure:rg", "rg/delete"))
    submitted: list[list[Any]] = []

    async def submit(changes: list[Any], dead: list[Any]) -> None:
        submitted.append(changes)

    proc.submit = submit  # type: ignore[method-assign,assignment]

    def row(name: str, minutes: int, state: str = "running") -> Resource:
        return Resource(
            "azure",
            f"{group}/providers/microsoft.compute/virtualmachines/{name}",
            "b",
            "s",
            "westeurope",
            "Virtual Machines",
            "Microsoft.Compute/virtualMachines",
            "D2s_v3",
            {},
            state,
            {},
            0.1,
            f"e-{name}",
            deleted_at + timedelta(minutes=minutes),
        )

    proc._delete_buried([row("in-flight", -1), row("newer", 1), row("gone", -2, "deleted")])
    await asyncio.gather(*proc._tasks)
    ((deletion,),) = submitted
    assert (
        deletion.event_id
        == f"azure:rg/{group}/providers/microsoft.compute/virtualmachines/in-flight"
    )
    assert (deletion.state, deletion.event_time, deletion.action) == (
        "deleted",
        deleted_at,
        "rg/delete",
    )
    assert deletion.resource_type == "Microsoft.Compute/virtualMachines"
    assert proc._tasks == []
