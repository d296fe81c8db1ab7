"""Attribution on hand-made cases: ranked shares of the increase and linked change events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambdas.detector.attribution import (
    ROOT_MIN_SHARE,
    ChangeEvent,
    Child,
    Contributor,
    link_change_events,
    rank_contributors,
    root_causes,
    share_besides,
    shares_by,
)

T = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def res(rid: str, expected: float, observed: float) -> Child:
    return Child("resource", {"provider": "aws", "resource_id": rid}, expected, observed)


def test_children_are_ranked_by_share_of_the_increase() -> None:
    ranked = rank_contributors(
        [res("a", 10, 12), res("b", 0, 30), res("c", 5, 13), res("flat", 7, 7)]
    )
    assert [c.labels["resource_id"] for c in ranked] == ["b", "c", "a"]
    assert [round(c.share, 2) for c in ranked] == [0.75, 0.2, 0.05]
    assert ranked[0].delta == 30
    assert sum(c.share for c in ranked) == pytest.approx(1.0)


def test_a_shrinking_child_does_not_dilute_the_growers() -> None:
    ranked = rank_contributors([res("up", 10, 30), res("down", 50, 20)])
    assert [(c.labels["resource_id"], c.share) for c in ranked] == [("up", 1.0)]


def test_many_small_children_that_add_up_are_all_listed_up_to_the_limit() -> None:
    children = [res(f"small-{n:02d}", 0, 0.5) for n in range(40)]
    ranked = rank_contributors(children, limit=10)
    assert len(ranked) == 10
    assert all(c.share == pytest.approx(1 / 40) for c in ranked)
    # Equal shares are ordered by labels, so the output is stable.
    assert ranked[0].labels["resource_id"] == "small-00"


def test_noise_below_the_minimum_share_is_left_out_and_nothing_grew_is_empty() -> None:
    ranked = rank_contributors([res("big", 0, 100), res("tiny", 1, 1.5)], min_share=0.01)
    assert [c.labels["resource_id"] for c in ranked] == ["big"]
    assert rank_contributors([res("x", 5, 4), res("y", 3, 3)]) == []


def test_contributor_json_is_rounded_and_complete() -> None:
    [c] = rank_contributors([res("a", 1.123456, 3.3333333)])
    assert c.as_json() == {
        "level": "resource",
        "labels": {"provider": "aws", "resource_id": "a"},
        "expected_usd_per_hour": 1.1235,
        "observed_usd_per_hour": 3.3333,
        "delta_usd_per_hour": 2.2099,
        "share": 1.0,
    }


def event(
    eid: str, rid: str, before: float | None, after: float | None, minutes: int
) -> ChangeEvent:
    return ChangeEvent(
        event_id=eid,
        provider="aws",
        resource_id=rid,
        action="RunInstances",
        actor="arn:aws:iam::111:user/alice",
        event_time=T + timedelta(minutes=minutes),
        tags={"pulumi:project": "shop", "pulumi:stack": "prod", "team": "web"},
        usd_per_hour_before=before,
        usd_per_hour_after=after,
    )


def test_change_events_follow_the_contributor_ranking_then_the_rate_change() -> None:
    contributors = [
        Contributor("resource", {"resource_id": "b"}, 0, 30, 30, 0.75),
        Contributor("resource", {"resource_id": "a"}, 10, 20, 10, 0.25),
    ]
    events = [
        event("e1", "a", 10, 20, 0),
        event("e2", "b", 0, 5, 1),
        event("e3", "b", 5, 30, 2),
        event("e4", "unrelated", 0, 100, 0),
    ]
    linked = link_change_events(contributors, events)
    assert [e.event_id for e in linked] == ["e3", "e2", "e1"]


def test_change_event_json_carries_actor_action_and_pulumi_tags() -> None:
    doc = event("e1", "i-1", None, 3.5, 0).as_json()
    assert doc == {
        "event_id": "e1",
        "resource_id": "i-1",
        "action": "RunInstances",
        "actor": "arn:aws:iam::111:user/alice",
        "event_time": "2026-11-02T09:00:00+00:00",
        "usd_per_hour_before": None,
        "usd_per_hour_after": 3.5,
        "pulumi_project": "shop",
        "pulumi_stack": "prod",
    }
    bare = ChangeEvent("e2", "gcp", "x", "insert", None, T, {}, 1.0, 2.0).as_json()
    assert "pulumi_project" not in bare and bare["actor"] is None


def _contributors(deltas: list[float]) -> list[Contributor]:
    return rank_contributors(
        [Child("resource", {"resource_id": f"r{n}"}, 10.0, 10.0 + d) for n, d in enumerate(deltas)]
    )


def test_root_causes_are_the_resources_that_explain_most_of_an_increase() -> None:
    # One big grower: the cause. Two equal ones: both. Many small ones: diffuse, none.
    assert [c.labels["resource_id"] for c in root_causes(_contributors([50, 1]), 0.5, 2.0)] == [
        "r0"
    ]
    assert len(root_causes(_contributors([30, 30]), 0.5, 2.0)) == 2
    assert root_causes(_contributors([1.0] * 20), 0.5, 0.5) == []  # each 5 %: diffuse
    assert root_causes(_contributors([1.5, 1.5]), 0.5, 2.0) == []  # immaterial
    # Only resources are causes; a child aggregate is not.
    service = rank_contributors([Child("service", {"service_name": "x"}, 0.0, 50.0)])
    assert root_causes(service, 0.5, 2.0) == []


@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), max_size=30),
    st.floats(min_value=0.01, max_value=1.0),
    st.floats(min_value=0.0, max_value=1e3),
)
def test_root_causes_hold_their_invariants_for_any_children(
    deltas: list[float], share: float, floor: float
) -> None:
    roots = root_causes(_contributors(deltas), share, floor)
    assert all(c.level == "resource" and c.delta >= floor for c in roots)
    assert all(c.share >= ROOT_MIN_SHARE for c in roots)
    assert not roots or sum(c.share for c in roots) >= share - 1e-9


def test_the_share_within_a_sibling_counts_every_grower_not_just_the_shown_few() -> None:
    """A team of 40 resources, 30 of them in one service, each +1 $/h: the service holds 75 %
    of the team's increase although no shown contributor (the top 10) says so alone."""
    team = [
        Child(
            "resource",
            {"resource_id": f"i-{n}", "team": "batch", "service_name": "EC2" if n < 30 else "RDS"},
            1.0,
            2.0,
        )
        for n in range(40)
    ]
    # One that shrank and one that stayed count for nothing: shares are of the growth.
    team += [
        Child("resource", {"resource_id": "i-cut", "team": "batch", "service_name": "S3"}, 9, 1),
        Child("resource", {"resource_id": "i-flat", "team": "batch", "service_name": "S3"}, 1, 1),
    ]
    assert len(rank_contributors(team)) == 10
    by_service = shares_by(team, ["service_name"])
    assert by_service == {("EC2",): pytest.approx(0.75), ("RDS",): pytest.approx(0.25)}
    assert shares_by(team, ["service_name", "team"])[("EC2", "batch")] == pytest.approx(0.75)
    assert shares_by(team, ["region_id"]) == {("",): pytest.approx(1.0)}  # none carries it
    assert shares_by([], ["service_name"]) == {}


def test_a_share_besides_others_is_of_the_whole_increase_less_theirs() -> None:
    # Twenty resources: one +15 (left out), one +5, eighteen +0.6 (10.8 in all; only the
    # top ten are shown). Beside the one left out, +5 has 5/15.8 of what grew, not 5/11
    # of the shown, and no longer makes half of it with the one left out.
    grown = [res("i-f", 10, 25), res("i-s", 10, 15)]
    grown += [res(f"i-d{n:02d}", 1, 1.6) for n in range(18)]
    shown = rank_contributors(grown)
    fixed, small = shown[0], shown[1]
    assert [c.labels["resource_id"] for c in root_causes(shown, 0.5, 2.0)] == ["i-f", "i-s"]
    assert share_besides(shown, [small], [fixed]) == pytest.approx(5 / 15.8)
    assert share_besides(shown, [small], []) == pytest.approx(5 / 30.8)
    both = _contributors([10.0, 10.0])
    assert share_besides(both, [both[0]], both) == 0.0  # nothing left that grew
