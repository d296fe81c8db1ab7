"""Hostile records at the collector's edge, on the real PostgreSQL and VictoriaMetrics: each is
dead-lettered with its reason and counted, the good records of the same batch are written and
reach VictoriaMetrics, and the collector goes on."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.collector.model import EventIgnored, EventRejected
from lambdas.collector.normalize import ChangeLimits, check_change, normalize
from lambdas.common.vm import VictoriaMetrics
from tests.ingest.conftest import Collector, collector_settings, record, running_collector
from tests.ingest.test_collector import RATE, ROLLUP, rows, wait_for
from tests.support.hostile import json_values, mutate

Event = Callable[[str], dict[str, Any]]
INSTANCE = "i-0aaa1111bbbb2222c"


def run_of(event: Event, n: int, **tags: str) -> dict[str, Any]:
    """A RunInstances event for instance number `n` with these tags."""
    ev = event("aws_run_instances")
    detail = ev["detail"]
    detail["eventID"] = f"e1a2b3c4-0001-4000-8000-{n:012d}"
    item = detail["responseElements"]["instancesSet"]["items"][0]
    item["instanceId"] = f"i-{n:017x}"
    item["tagSet"]["items"] = [{"key": k, "value": v} for k, v in tags.items()]
    return ev


DEEP_MARK = "<nested 1000 deep>"


def body_of(batch: list[dict[str, Any]]) -> bytes:
    """The batch as JSON, with a list nested 1000 deep (holding a NUL) for DEEP_MARK."""
    deep = "[" * 1000 + '"x\\u0000"' + "]" * 1000
    return json.dumps(batch).replace(json.dumps(DEEP_MARK), deep).encode()


def hostile(event: Event) -> list[tuple[dict[str, Any], str, str]]:
    """(provider event, reason, detail fragment): what the issue saw get through."""
    huge_tag = run_of(event, 1, team="t" * 1_000_000, env="dev")
    volume = event("aws_create_volume")
    volume["detail"]["eventID"] = "e1a2b3c4-0006-4000-8000-0000000000ff"
    volume["detail"]["responseElements"]["size"] = "1e308"
    volume["detail"]["requestParameters"]["size"] = "1e308"
    future = run_of(event, 2, team="payments", env="dev")
    future["detail"]["eventTime"] = future["time"] = "9999-01-01T00:00:00Z"
    future["detail"]["responseElements"]["instancesSet"]["items"][0]["instanceId"] = INSTANCE
    long_id = run_of(event, 3, team="payments", env="dev")
    long_id["detail"]["responseElements"]["instancesSet"]["items"][0]["instanceId"] = "i-" + (
        "f" * 5000
    )
    many_tags = run_of(event, 4, **{f"k{i}": "v" for i in range(100)})
    # Year 1 an hour east of UTC is before the calendar starts once converted to UTC.
    year_one = run_of(event, 5, team="payments", env="dev")
    year_one["detail"]["eventTime"] = year_one["time"] = "0001-01-01T00:00:00+01:00"
    # Deeper than Python's recursion limit, and rejected (NUL), so its dead letter is written
    # (`body_of` puts the nesting in: no encoder in the test writes it either).
    nested = run_of(event, 6, team="payments", env="dev")
    nested["detail"]["requestParameters"]["deep"] = DEEP_MARK
    return [
        (huge_tag, "value_too_long", "tag 'team' has 1000004 characters"),
        (volume, "out_of_range", "attribute 'gib'=1e+308 is outside"),
        (future, "future_time", "in the future"),
        (long_id, "value_too_long", "resource_id has 5002 characters"),
        (many_tags, "too_many_tags", "100 tags exceed the limit of 64"),
        (year_one, "bad_time", "is outside the calendar"),
        (nested, "nul_character", "a string holds a NUL character"),
    ]


@pytest.fixture
async def big_bodies(priced_db: str, vm_url: str) -> AsyncIterator[Collector]:
    async with running_collector(collector_settings(priced_db, vm_url)) as running:
        yield running


async def test_hostile_records_are_dead_lettered_and_the_good_ones_reach_vm(
    big_bodies: Collector, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    collector = big_bodies
    acct = f"acct-{uid}"
    bad = hostile(event)
    batch = [record("aws", event("aws_run_instances"), acct)]
    batch += [record("aws", ev, acct) for ev, _, _ in bad]
    status, body = await collector.post(None, raw=body_of(batch))
    assert status == 200, body
    assert body["accepted"] == 1, body["rejected"]
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
        (i + 1, reason) for i, (_, reason, _) in enumerate(bad)
    ]
    for r, (_, _, detail) in zip(body["rejected"], bad, strict=True):
        assert detail in r["detail"], r["detail"]
    dsn = collector.dsn
    assert rows(dsn, "select resource_id from resource_inventory") == [(INSTANCE,)]
    dead = rows(dsn, "select reason from ingest_dead_letters order by id")
    assert [d[0] for d in dead] == [reason for _, reason, _ in bad]

    # The good record's series reached VictoriaMetrics: no refused import took it along.
    sel = f'billing_account_id="{acct}",basis="list"'
    await wait_for(vm, f'{RATE}{{{sel},resource_id="{INSTANCE}"}}', 0.096)
    # The year-9999 event was refused, so a real terminate afterwards is not stale.
    status, body = await collector.post([record("aws", event("aws_terminate_instances"), acct)])
    assert (status, body["accepted"], body["stale"]) == (200, 1, 0)
    assert rows(dsn, "select state from resource_inventory") == [("deleted",)]
    metrics = await (await collector.client.get("/metrics")).text()
    for reason, n in (("value_too_long", 2), ("out_of_range", 1), ("future_time", 1)):
        assert f'cct_collector_rejected_total{{reason="{reason}"}} {float(n)}' in metrics


async def test_distinct_tag_values_beyond_the_cap_share_one_overflow_series(
    priced_db: str, vm_url: str, event: Event, vm: VictoriaMetrics, uid: str
) -> None:
    acct = f"acct-{uid}"
    cap, teams = 5, 40
    settings_ = collector_settings(priced_db, vm_url, max_values_per_label=cap)
    async with running_collector(settings_) as collector:
        batch = [
            record("aws", run_of(event, n, team=f"team-{n}", env="dev"), acct) for n in range(teams)
        ]
        status, body = await collector.post(batch)
        assert (status, body["accepted"]) == (200, teams)
        sel = f'billing_account_id="{acct}",basis="list"'
        # Every resource's cost still counts: the rollups over all teams hold all of it.
        await wait_for(vm, f"sum({ROLLUP}{{{sel}}})", round(teams * 0.096, 6))
        await wait_for(vm, f'{ROLLUP}{{{sel},team="__overflow__"}}', (teams - cap) * 0.096)
        await wait_for(vm, f"count(count by (team) ({RATE}{{{sel}}}))", cap + 1)
        metrics = await (await collector.client.get("/metrics")).text()
        assert f'cct_collector_label_overflow_total{{label="team"}} {float(teams - cap)}' in metrics
        # The inventory keeps the real tags; only the series labels are capped.
        assert len(
            rows(collector.dsn, "select distinct tags->>'team' from resource_inventory")
        ) == (teams)


FIXTURES = [
    ("aws", "aws_run_instances"),
    ("aws", "aws_create_volume"),
    ("aws", "aws_ec2_state_change"),
    ("aws", "aws_create_tags"),
    ("aws", "aws_delete_tags"),
    ("aws", "aws_remove_tags_from_resource"),
    ("azure", "azure_vm_write"),
    ("azure", "azure_sql_database_write"),
    ("gcp", "gcp_instances_insert"),
    ("gcp", "gcp_instances_set_labels"),
    ("gcp", "gcp_cloudsql_create"),
    ("gcp", "gcp_cloudsql_update"),
]
# The ARM resource the Azure forwarder reads back for each Azure event.
ARM_READ_BACK = {"azure_vm_write": "arm_vm", "azure_sql_database_write": "arm_sql_database"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.data(), json_values)
def test_any_value_anywhere_in_an_event_is_normalised_or_refused(
    fixture: tuple[str, str], data: st.DataObject, value: Any
) -> None:
    from tests.ingest.conftest import load_event

    provider, name = fixture
    rec = {"provider": provider, "billing_account_id": "1", "event": load_event(name)}
    if provider == "azure":
        rec["resource"] = json.loads(json.dumps(load_event(ARM_READ_BACK[name])))
    mutate(data, rec, value)
    # A clear refusal is a pass; anything else raised is the failure this test looks for.
    with contextlib.suppress(EventRejected, EventIgnored):
        for change in normalize(rec):
            check_change(change, ChangeLimits(), change.event_time)


def test_tags_set_and_removed_by_one_event_count_together(event: Event) -> None:
    """Review finding: the tags a DeleteTags removes whatever their value and the ones it
    removes only at a value were each held to the limit: 64 + 64 passed."""
    ev = event("aws_delete_tags")
    ev["detail"]["requestParameters"]["tagSet"]["items"] = [
        *({"key": f"k{i}"} for i in range(40)),
        *({"key": f"v{i}", "value": "x"} for i in range(40)),
    ]
    [change] = normalize({"provider": "aws", "event": ev})
    with pytest.raises(EventRejected, match="80 tags exceed the limit of 64"):
        check_change(change, ChangeLimits(), change.event_time)


@pytest.mark.parametrize(
    ("tag_set", "reason", "detail"),
    [
        ([{"key": f"k{i}", "value": "v"} for i in range(100)], "too_many_tags", "100 tags exceed"),
        ([{"key": "team", "value": "t" * 1_000_000}], "value_too_long", "tag 'team' has 1000004"),
        ([{"key": "t" * 2000}], "value_too_long", "has 2000 characters"),
    ],
)
@pytest.mark.parametrize("fixture", ["aws_create_tags", "aws_delete_tags"])
def test_a_re_tag_beyond_the_limits_is_refused(
    event: Event, fixture: str, tag_set: list[dict[str, str]], reason: str, detail: str
) -> None:
    """The tags a re-tag sets (or removes, also only where they have a value) are held to the
    limits of a creation's tags."""
    ev = event(fixture)
    ev["detail"]["requestParameters"]["tagSet"]["items"] = tag_set
    for change in normalize({"provider": "aws", "event": ev}):
        with pytest.raises(EventRejected, match=detail) as info:
            check_change(change, ChangeLimits(), change.event_time)
        assert info.value.reason == reason


async def test_re_tags_cannot_grow_a_resource_s_tags_past_the_limit(
    big_bodies: Collector, event: Event, uid: str
) -> None:
    """Each CreateTags is within the limit of 64 tags, but they added up: three of 40 new
    tags each made a row of 120 (no provider allows more than 64). Past the limit a re-tag
    keeps the tags the resource had and is counted; the event is accepted and recorded."""
    collector = big_bodies
    acct = f"acct-{uid}"
    status, body = await collector.post([record("aws", event("aws_run_instances"), acct)])
    assert status == 200 and body["accepted"] == 1, body
    for n in range(3):
        ev = event("aws_create_tags")
        ev["id"] = ev["detail"]["eventID"] = f"tags-{uid}-{n}"
        ev["time"] = ev["detail"]["eventTime"] = f"2026-11-27T09:3{n}:00Z"
        items = [{"key": f"k{n}-{i}", "value": "v"} for i in range(40)]
        ev["detail"]["requestParameters"]["tagSet"]["items"] = items
        ev["detail"]["requestParameters"]["resourcesSet"]["items"] = [{"resourceId": INSTANCE}]
        status, body = await collector.post([record("aws", ev, acct)])
        assert status == 200 and body["accepted"] == 1 and body["rejected"] == [], body
    ((tags,),) = rows(
        collector.dsn,
        "select tags from resource_inventory where resource_id = %s and billing_account_id = %s",
        INSTANCE,
        acct,
    )
    assert len(tags) <= 64 and {f"k0-{i}" for i in range(40)} <= set(tags)
    metrics = await (await collector.client.get("/metrics")).text()
    assert 'cct_collector_tags_refused_total{provider="aws"} 2.0' in metrics
    events = rows(
        collector.dsn,
        "select count(*) from resource_events where event_id like %s",
        f"%tags-{uid}-%",
    )
    assert events == [(3,)]
