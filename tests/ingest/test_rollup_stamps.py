"""Rollup totals written by several writer shards within one millisecond: the real
VictoriaMetrics must serve the complete sum, never a partial one."""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest

from lambdas.collector.core import Labels, Rollups, apply_changes
from lambdas.common.vm import VictoriaMetrics
from lambdas.ingest.exposition import body
from tests.ingest.test_core import BOOK, ch


def test_stamps_are_strictly_increasing_even_within_one_millisecond() -> None:
    roll = Rollups(Labels(("team", "env")))
    assert [roll.stamp(1000) for _ in range(3)] == [1000, 1001, 1002]
    assert roll.stamp(5000) == 5000  # the clock moved on
    assert roll.stamp(10) == 5001  # a clock step back never goes back in time


def test_the_later_total_wins_in_victoriametrics_whatever_the_write_order(
    vm: VictoriaMetrics, vm_url: str
) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    roll = Rollups(Labels(("team", "env")))
    now_ms = int(time.time() * 1000)
    rows, _ = apply_changes(
        {},
        [
            ch("a", 0, rid="i-1", state="running", sku="m5.large", billing_account_id=account),
            ch("b", 0, rid="i-2", state="running", sku="m5.xlarge", billing_account_id=account),
        ],
        BOOK,
    )
    first, second = rows.values()
    # Shard 1 commits i-1 and writes its total; shard 2 commits i-2 in the same millisecond.
    group, _ = roll.update(first)
    partial = roll.rollup_lines([group], {}, now_ms)
    roll.update(second)
    complete = roll.rollup_lines([group], {}, now_ms)
    # The writer sends the complete total first (the worst order).
    for lines in (complete, partial):
        req = urllib.request.Request(f"{vm_url}/api/v1/import/prometheus", data=body(lines))
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
    query = f'cct_cost_rate_rollup_usd_per_hour{{billing_account_id="{account}",basis="list"}}'
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = vm.query(query, now_ms / 1000 + 1)
        if got:
            break
        time.sleep(0.25)
    [row] = got
    assert float(row["value"][1]) == pytest.approx(roll.totals[group])
    assert roll.totals[group] == pytest.approx(0.096 + 0.192)
