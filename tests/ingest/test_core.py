"""The collector's pure core: event-time ordering, duplicates, pricing, rollups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lambdas.collector.core import Labels, Rollups, Tombstone, Tombstones, apply_changes
from lambdas.collector.model import ResourceChange
from lambdas.collector.normalize import AWS_EC2
from lambdas.pricing.catalog import PriceKey

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
BOOK = {
    PriceKey("aws", AWS_EC2, "us-east-1", "m5.large", "hour"): 0.096,
    PriceKey("aws", AWS_EC2, "us-east-1", "m5.xlarge", "hour"): 0.192,
}


def ch(eid: str, minutes: int, rid: str = "i-1", **kw: object) -> ResourceChange:
    base: dict[str, object] = {
        "provider": "aws",
        "billing_account_id": "a",
        "sub_account_id": "a",
        "region_id": "us-east-1",
        "service_name": AWS_EC2,
        "resource_id": rid,
        "resource_type": "Instance",
        "action": "x",
    }
    fields: dict[str, Any] = {**base, **kw}
    return ResourceChange(event_id=eid, event_time=T0 + timedelta(minutes=minutes), **fields)


def test_in_order_lifecycle_prices_each_step() -> None:
    rows, applied = apply_changes(
        {},
        [
            ch("run", 0, state="running", sku="m5.large", tags={"team": "t"}),
            ch("resize", 5, sku="m5.xlarge"),
            ch("stop", 10, state="stopped"),
        ],
        BOOK,
    )
    assert [(a.usd_before, a.usd_after) for a in applied] == [
        (0.0, 0.096),
        (0.096, 0.192),
        (0.192, 0.0),
    ]
    row = rows[("aws", "i-1")]
    assert (row.state, row.sku, row.last_event_id, row.tags) == (
        "stopped",
        "m5.xlarge",
        "stop",
        {"team": "t"},
    )


def test_rates_are_memoised_per_shape_and_unhashable_attributes_still_price() -> None:
    rows, applied = apply_changes(
        {},
        [
            ch("a", 0, rid="i-1", state="running", sku="m5.large"),
            ch("b", 1, rid="i-2", state="running", sku="m5.large"),
            ch("c", 2, rid="i-3", state="running", sku="m5.large", attributes={"zones": ["a"]}),
        ],
        BOOK,
    )
    assert [a.usd_after for a in applied] == [0.096, 0.096, 0.096]
    assert rows[("aws", "i-3")].size == {"zones": ["a"]}


def test_out_of_order_event_time_wins_and_late_events_fill_unknowns() -> None:
    # The state-change notification (no instance type) arrives before RunInstances.
    rows, _ = apply_changes({}, [ch("notify", 1, state="running")], BOOK)
    assert rows[("aws", "i-1")].usd_per_hour is None  # unpriced, not $0
    rows2, applied = apply_changes(
        rows, [ch("run", 0, state="pending-ignored", sku="m5.large")], BOOK
    )
    row = rows2[("aws", "i-1")]
    assert applied[0].stale
    assert (row.state, row.sku, row.last_event_id, row.usd_per_hour) == (
        "running",
        "m5.large",
        "notify",
        0.096,
    )


def test_a_batch_is_applied_in_event_time_order_whatever_the_arrival_order() -> None:
    changes = [ch("stop", 10, state="stopped"), ch("run", 0, state="running", sku="m5.large")]
    rows, applied = apply_changes({}, changes, BOOK)
    assert rows[("aws", "i-1")].state == "stopped"
    assert [a.change.event_id for a in applied] == ["run", "stop"]
    assert not any(a.stale for a in applied)


def test_tag_changes_set_and_remove_tags_and_an_older_one_only_fills_in() -> None:
    run = ch("run", 0, state="running", sku="m5.large", tags={"team": "web", "env": "prod"})
    rows, _ = apply_changes({}, [run], BOOK)
    rows, applied = apply_changes(rows, [ch("tag", 5, tag_changes={"team": "data"})], BOOK)
    assert rows[("aws", "i-1")].tags == {"team": "data", "env": "prod"}
    assert (applied[0].usd_before, applied[0].usd_after) == (0.096, 0.096)
    rows, _ = apply_changes(rows, [ch("untag", 10, tag_changes={"env": None})], BOOK)
    assert rows[("aws", "i-1")].tags == {"team": "data"}
    # Delivered late (CloudTrail is minutes behind, and other events overtake it): it does
    # not undo the newer tag, it adds the one the resource does not have.
    late = ch("late", 3, tag_changes={"team": "old", "owner": "bob"})
    rows, _ = apply_changes(rows, [late], BOOK)
    assert rows[("aws", "i-1")].tags == {"team": "data", "owner": "bob"}
    # The resource's first event may be a re-tag (created before the collector ran).
    rows, _ = apply_changes(
        {}, [ch("first", 0, rid="i-2", tag_changes={"team": "x", "y": None})], BOOK
    )
    assert rows[("aws", "i-2")].tags == {"team": "x"}


def test_a_removal_naming_a_value_removes_only_that_value() -> None:
    run = ch("run", 0, state="running", sku="m5.large", tags={"team": "data", "owner": ""})
    rows, _ = apply_changes({}, [run], BOOK)
    web = frozenset({"web"})
    rows, _ = apply_changes(rows, [ch("a", 5, tag_removals_if={"team": web})], BOOK)
    assert rows[("aws", "i-1")].tags == {"team": "data", "owner": ""}
    gone = ch(
        "b", 6, tag_removals_if={"team": frozenset({"web", "data"}), "owner": frozenset({""})}
    )
    rows, _ = apply_changes(rows, [gone], BOOK)
    assert rows[("aws", "i-1")].tags == {}
    # Delivered late, it removes nothing (a newer event may have set the tag again).
    rows, _ = apply_changes(rows, [ch("c", 7, tag_changes={"team": "ops"})], BOOK)
    late = ch("d", 6, tag_removals_if={"team": frozenset({"ops"})})
    rows, _ = apply_changes(rows, [late], BOOK)
    assert rows[("aws", "i-1")].tags == {"team": "ops"}


def test_a_delete_tags_naming_no_tag_keeps_aws_s_own_tags() -> None:
    """Review finding: `delete-tags` without tags was an empty full tag set: AWS's own
    `aws:` tags were removed too, and in the same second as the last event (CloudTrail's
    whole seconds) nothing was removed at all (a full set of the same second only fills in)."""
    tags = {"team": "web", "aws:autoscaling:groupName": "asg-1"}
    run = ch("run", 0, state="running", sku="m5.large", tags=tags)
    rows, _ = apply_changes({}, [run], BOOK)
    for second in (0, 5):  # the launch's second, a later one
        untag = ch(f"untag-{second}", second, drop_user_tags=True)
        after, _ = apply_changes(rows, [untag], BOOK)
        assert after[("aws", "i-1")].tags == {"aws:autoscaling:groupName": "asg-1"}


def test_an_older_full_tag_set_fills_in_and_replaces_nothing() -> None:
    """Review findings: events that carry the whole tag set (a creation, an ARM read-back,
    a GCP setLabels) arrive out of order too, and CloudTrail's times are whole seconds (a
    launch and its CreateTags often share one, and the launch, ordered second by event id,
    replaced the new team). An older or same-second full set only adds what is missing."""
    run = ch("a", 0, state="running", sku="m5.large", tags={"team": "web", "env": "p"})
    rows, _ = apply_changes({}, [run], BOOK)
    rows, _ = apply_changes(rows, [ch("b", 10, tags={"team": "ops", "env": "p"})], BOOK)
    rows, _ = apply_changes(rows, [ch("c", 5, tags={"team": "data", "owner": "x"})], BOOK)
    assert rows[("aws", "i-1")].tags == {"team": "ops", "env": "p", "owner": "x"}
    tag = ch("t", 0, rid="i-2", tag_changes={"team": "data"})
    launch = ch("l", 0, rid="i-2", state="running", sku="m5.large", tags={"team": "web", "n": "1"})
    rows, _ = apply_changes({}, [tag], BOOK)
    rows, _ = apply_changes(rows, [launch], BOOK)  # the same second, applied second
    assert rows[("aws", "i-2")].tags == {"team": "data", "n": "1"}


def test_a_re_tag_before_the_creation_event_leaves_nothing_unknown() -> None:
    """Review finding: a re-tag that arrives before the resource's creation event made a
    row of unknown state, which the older creation could not fill in: unpriced for good."""
    rows, _ = apply_changes({}, [ch("tag", 5, tag_changes={"team": "data"})], BOOK)
    assert (rows[("aws", "i-1")].state, rows[("aws", "i-1")].usd_per_hour) == ("unknown", None)
    run = ch("run", 0, state="running", sku="m5.large", tags={"team": "web", "env": "p"})
    rows, _ = apply_changes(rows, [run], BOOK)
    row = rows[("aws", "i-1")]
    assert (row.state, row.usd_per_hour) == ("running", 0.096)
    assert row.tags == {"team": "data", "env": "p"}  # the creation's other tags are kept


def test_a_re_tagged_resource_s_old_group_is_written_with_the_new_one() -> None:
    """Review finding: only the group a re-tagged resource joined was written, so the group it
    left kept counting it until the next heartbeat (15 s) and its account and service read
    it twice: a step up the detector paged as `day0_step`."""
    roll = Rollups(Labels(("team", "env")))
    run = ch("a", 0, state="running", sku="m5.xlarge", tags={"team": "web"})
    rows, _ = apply_changes({}, [run, ch("b", 0, rid="i-2", state="running", sku="m5.large")], BOOK)
    roll.apply(rows.values())
    moved, _ = apply_changes(rows, [ch("c", 5, tags={"team": "data"})], BOOK)
    placed, touched = roll.apply(moved.values())
    web, data = (("aws", "a", AWS_EC2, "us-east-1", team, "") for team in ("web", "data"))
    assert placed[("aws", "i-1")][0] == data
    assert touched == {web, data}
    totals = {
        ln.split('team="')[1].split('"')[0]: float(ln.split()[-2])
        for ln in roll.rollup_lines(touched, {}, 1000)
        if 'basis="list"' in ln
    }
    assert totals == {"web": 0.0, "data": 0.192}
    # The account's sum over its groups is unchanged by the re-tag.
    assert sum(roll.totals.values()) == pytest.approx(0.192 + 0.096)
    # An update within the same group touches that group alone.
    again, _ = apply_changes(moved, [ch("d", 10, sku="m5.large")], BOOK)
    assert roll.apply(again.values())[1] == {data}


def test_rollups_follow_changes_and_count_unpriced() -> None:
    roll = Rollups(Labels(("team", "env")))
    rows, _ = apply_changes(
        {},
        [
            ch("a", 0, rid="i-1", state="running", sku="m5.large", tags={"Team": "t"}),
            ch("b", 0, rid="i-2", state="running", sku="m5.xlarge", tags={"team": "t"}),
            ch("c", 0, rid="i-3", state="running", sku="x9.huge", tags={"team": "t"}),
        ],
        BOOK,
    )
    for r in rows.values():
        group, text = roll.update(r)
    assert group == ("aws", "a", AWS_EC2, "us-east-1", "t", "")
    assert 'resource_id="i-3"' in text and 'team="t"' in text and 'env=""' in text
    assert roll.totals[group] == pytest.approx(0.288)
    assert roll.unpriced[group] == 1
    rows2, _ = apply_changes(
        rows, [ch("d", 5, rid="i-2", state="deleted"), ch("e", 5, rid="i-3", state="deleted")], BOOK
    )
    for r in rows2.values():
        roll.update(r)
    assert roll.totals[group] == pytest.approx(0.096)
    assert roll.unpriced[group] == 0
    lines = roll.rollup_lines([group], {("aws", "a", AWS_EC2): 0.5}, 1000)
    assert lines == [
        'cct_cost_rate_rollup_usd_per_hour{billing_account_id="a",env="",provider="aws",'
        'region_id="us-east-1",service_name="Amazon Elastic Compute Cloud",team="t",'
        'basis="list"} 0.096 1000',
        'cct_cost_rate_rollup_usd_per_hour{billing_account_id="a",env="",provider="aws",'
        'region_id="us-east-1",service_name="Amazon Elastic Compute Cloud",team="t",'
        'basis="reconciled"} 0.048 1000',
        'cct_cost_rate_unpriced_resources{billing_account_id="a",env="",provider="aws",'
        'region_id="us-east-1",service_name="Amazon Elastic Compute Cloud",team="t"} 0.0 1000',
    ]
    assert {ln.split("{")[0] for ln in roll.heartbeat_lines({}, 2000)} == {
        "cct_cost_rate_usd_per_hour",
        "cct_cost_rate_rollup_usd_per_hour",
        "cct_cost_rate_unpriced_resources",
    }


def test_label_values_are_escaped() -> None:
    from lambdas.ingest.exposition import render_labels

    assert render_labels({"b": 'x"y', "a": "c\\d\n"}) == 'a="c\\\\d\\n",b="x\\"y"'


# 1e12 $/h: what a GCP machine type naming 10^14 vCPUs priced at (it overflowed the
# inventory's numeric(18, 6) and failed every batch it was in).
@pytest.mark.parametrize("price", [float("nan"), float("inf"), 1e12, -1e12])
def test_a_non_finite_or_impossible_price_leaves_the_resource_unpriced(price: float) -> None:
    book = {**BOOK, PriceKey("aws", AWS_EC2, "us-east-1", "m5.large", "hour"): price}
    rows, [applied] = apply_changes({}, [ch("run", 0, state="running", sku="m5.large")], book)
    assert applied.usd_after is None and rows[("aws", "i-1")].usd_per_hour is None


def test_a_resource_created_under_a_deleted_one_s_name_starts_afresh() -> None:
    """Azure and GCP ids are names: a VM created as `web-1` after the Windows `web-1` was
    deleted is not a Windows VM unless its own event says so."""
    changes = [
        ch("run", 0, state="running", sku="m5.large", attributes={"license": "w"}, tags={"a": "1"}),
        ch("delete", 5, state="deleted"),
        ch("again", 10, state="running", sku="m5.large"),
    ]
    rows, _ = apply_changes({}, changes, BOOK)
    row = rows[("aws", "i-1")]
    assert (row.state, dict(row.size), dict(row.tags), row.usd_per_hour) == (
        "running",
        {},
        {},
        0.096,
    )


def test_a_change_under_a_container_deleted_after_it_is_the_resource_s_deletion() -> None:
    """A container's deletion names only the container and arrives in no order with its
    resources' writes: a change dated at or before it is applied as a deletion (the resource
    went with its group), one dated after it is a resource of a group created again. Only a
    whole segment is a container: `rg-a` does not hold `rg-a2`'s resources."""
    group = "/subscriptions/s/resourcegroups/rg-a"
    vm = f"{group}/providers/microsoft.compute/virtualmachines/vm"
    twin = "/subscriptions/s/resourcegroups/rg-a2/providers/microsoft.compute/virtualmachines/vm"
    tombstones = Tombstones()
    tombstones.add("aws", group, Tombstone(T0 + timedelta(minutes=10), "rg-del", "delete"))
    tombstones.add("aws", group, Tombstone(T0, "older", "delete"))  # the newest is kept
    assert tombstones.added == 1
    assert tombstones.covering("aws", vm, T0 + timedelta(minutes=10)) == Tombstone(
        T0 + timedelta(minutes=10), "rg-del", "delete"
    )
    assert tombstones.covering("aws", vm, T0 + timedelta(minutes=11)) is None
    assert tombstones.covering("aws", twin, T0) is None
    assert tombstones.covering("azure", vm, T0) is None  # another provider's names
    rows, applied = apply_changes(
        {},
        [
            ch("late", 5, vm, state="running", sku="m5.large"),
            ch("twin", 5, twin, state="running", sku="m5.large"),
        ],
        BOOK,
        tombstones,
    )
    assert rows[("aws", vm)].state == "deleted" and rows[("aws", twin)].state == "running"
    assert [(a.change.event_id, a.usd_after) for a in applied] == [("late", 0.0), ("twin", 0.096)]
    rows, applied = apply_changes(
        rows, [ch("again", 15, vm, state="running", sku="m5.large")], BOOK, tombstones
    )
    assert rows[("aws", vm)].state == "running" and applied[0].usd_after == 0.096
    tombstones.forget_before(T0 + timedelta(minutes=11))
    assert len(tombstones) == 0 and tombstones.covering("aws", vm, T0) is None


def test_merged_tags_are_bounded_and_the_rest_of_the_change_stands() -> None:
    """Each event's tags are checked at the edge, but re-tags add up: events each setting
    other tags grew a row without end (no provider allows it). Past `max_tags` a change keeps
    the tags the resource had and is flagged; its state and size apply; a change that takes
    some away is applied."""
    full = {f"k{n}": "v" for n in range(4)}
    rows, _ = apply_changes({}, [ch("run", 0, state="running", sku="m5.large", tags=full)], BOOK)
    more = {f"x{n}": "v" for n in range(2)}
    rows, applied = apply_changes(
        rows,
        [ch("grow", 1, state="stopped", tag_changes=more)],
        BOOK,
        max_tags=5,
    )
    row = rows[("aws", "i-1")]
    assert row.tags == full and row.state == "stopped" and applied[0].tags_refused
    assert applied[0].usd_after == 0.0
    rows, applied = apply_changes(rows, [ch("fits", 2, tag_changes={"x0": "v"})], BOOK, max_tags=5)
    assert len(rows[("aws", "i-1")].tags) == 5 and not applied[0].tags_refused
    rows, applied = apply_changes(
        rows, [ch("less", 3, tag_changes={"k0": None, "k1": None})], BOOK, max_tags=2
    )
    assert set(rows[("aws", "i-1")].tags) == {"k2", "k3", "x0"} and not applied[0].tags_refused


def test_a_refused_tag_edit_of_a_deleted_resource_keeps_its_tags() -> None:
    """Review: the bound took any deleted row for a new resource, so a re-tag of a deleted
    row past the limit wiped its tags, and an older full set replaced its newer ones. Only
    a change that starts a resource afresh starts from its own tags."""
    full = {f"k{n}": "v" for n in range(4)}
    rows, _ = apply_changes(
        {},
        [ch("run", 0, state="running", tags=full), ch("gone", 5, state="deleted")],
        BOOK,
    )
    more = {f"x{n}": "v" for n in range(2)}
    retag = ch("retag", 6, tag_changes=more)
    older = ch("older", 1, tags={"team": "a"}, tag_changes=more)
    for change in (retag, older):
        after, applied = apply_changes(rows, [change], BOOK, max_tags=5)
        assert after[("aws", "i-1")].tags == full and applied[0].tags_refused
    again = ch("again", 7, state="running", tags={"team": "b"}, tag_changes=more)
    after, applied = apply_changes(rows, [again], BOOK, max_tags=5)
    assert after[("aws", "i-1")].tags == {"team": "b", **more} and not applied[0].tags_refused
