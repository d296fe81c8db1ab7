"""`cct sample-data` and `cct backtest` end to end, the FOCUS reader's handling of bad input,
and the backtest engine's attribution on a hand-made export."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdas.backtest import focus
from lambdas.backtest.run import backtest
from lambdas.backtest.sample import KINDS, SampleSpec, read_labels, write
from lambdas.cli import cli
from lambdas.detector.attribution import Contributor
from lambdas.detector.config import DetectionConfig, SeriesKey
from lambdas.detector.core import Engine
from lambdas.detector.reports import Attribution, ReportBook, Streak

FIELDS = [
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ProviderName",
    "BillingAccountId",
    "RegionId",
    "ServiceName",
    "ResourceId",
    "EffectiveCost",
    "Tags",
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    result = CliRunner().invoke(
        cli, ["sample-data", "--out", str(out), "--weeks", "4", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_sample_is_multi_cloud_focus_with_labeled_anomalies_of_every_kind(sample: Path) -> None:
    table = pq.read_table(sample / "focus.parquet")
    cols = set(table.column_names)
    assert {"BilledCost", "EffectiveCost", "ChargePeriodStart", "ChargePeriodEnd"} <= cols
    assert {"ProviderName", "BillingAccountId", "SubAccountId", "RegionId", "ServiceName"} <= cols
    assert {"ResourceId", "ResourceType", "ServiceCategory", "Tags", "BillingCurrency"} <= cols
    assert set(table.column("ProviderName").to_pylist()) == {"AWS", "Microsoft", "Google Cloud"}
    assert len(set(table.column("BillingAccountId").to_pylist())) >= 4
    teams = {json.loads(t)["team"] for t in set(table.column("Tags").to_pylist())}
    assert len(teams) >= 5
    starts = table.column("ChargePeriodStart").to_pylist()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", starts[0])
    labels = read_labels(sample / "labels.json")
    assert {lb.kind for lb in labels} == set(KINDS)
    many = next(lb for lb in labels if lb.kind == "many_small_resources")
    assert len(many.resource_ids) >= 30
    # Labels live in their own file, never in the data.
    assert not any("anomal" in c.lower() for c in cols)


def test_sample_generation_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = write(SampleSpec(seed=5, weeks=2), tmp_path / "a")
    b = write(SampleSpec(seed=5, weeks=2), tmp_path / "b")
    assert pq.read_table(a[0]).equals(pq.read_table(b[0]))
    assert a[1].read_text() == b[1].read_text()


def test_backtest_finds_the_labeled_anomalies_and_writes_a_self_contained_report(
    sample: Path, tmp_path: Path
) -> None:
    report = tmp_path / "out" / "report.html"
    incidents = tmp_path / "incidents.json"
    result = CliRunner().invoke(
        cli,
        [
            "backtest",
            str(sample / "focus.parquet"),
            "--labels",
            str(sample / "labels.json"),
            "--report",
            str(report),
            "--json",
            str(incidents),
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    # Each anomaly: time, size and ranked contributors.
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d +(critical|warning|info) +seasonal", out)
    assert re.search(r"\(\+[\d,.]+ \$/h\)", out)
    assert re.search(r"^ +\d+\.\d% +\+[\d,.]+ \$/h +resource ", out, re.M)
    summary = re.search(r"detected (\d+)/(\d+) labeled anomalies, (\d+) false alerts", out)
    assert summary, out[-2000:]
    detected, total, false_alerts = map(int, summary.groups())
    assert detected == total == len(KINDS) * 2
    assert false_alerts <= 2
    # Progress went to stderr, not into the listing.
    assert "backtest:" in result.stderr and "backtest:" not in out

    html = report.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html
    assert not re.search(r"<script|<link|src=|https?://", html)
    assert "Against the labels" in html
    # Charts a person can read: a $/h axis, dated ticks, the expected line, a legend, and
    # contributors named (a service by its name, not just "service").
    assert ">$/h</text>" in html and "stroke-dasharray" in html and "class=legend" in html
    assert re.search(r">(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d\d-\d\d</text>", html)
    assert "Share of the increase, by resource" in html and "Explains: " in html
    assert not re.search(r"<td>(service|resource|team) \(\d+%\)</td>", html)
    doc = json.loads(incidents.read_text())
    assert doc and {"level", "rule", "contributors", "started_at", "ancestors"} <= set(doc[0])
    # One incident per cause: each labeled anomaly is one incident, not one per level.
    assert len(doc) == detected + false_alerts


def test_csv_and_parquet_give_the_same_incidents(sample: Path, tmp_path: Path) -> None:
    import pyarrow.csv as pacsv

    csv_path = tmp_path / "focus.csv"
    pacsv.write_csv(pq.read_table(sample / "focus.parquet"), csv_path)
    cfg = DetectionConfig()
    a, _ = backtest(focus.load([sample / "focus.parquet"]), cfg)
    b, _ = backtest(focus.load([csv_path]), cfg)
    assert [(i.key, i.started_at, i.rule) for i in a] == [(i.key, i.started_at, i.rule) for i in b]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def row(hour: int, rid: str, cost: float | str, team: str = "web") -> dict[str, str]:
    return {
        "ChargePeriodStart": f"2026-10-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z",
        "ChargePeriodEnd": f"2026-10-{1 + (hour + 1) // 24:02d}T{(hour + 1) % 24:02d}:00:00Z",
        "ProviderName": "AWS",
        "BillingAccountId": "111",
        "RegionId": "us-east-1",
        "ServiceName": "Amazon EC2",
        "ResourceId": rid,
        "EffectiveCost": str(cost),
        "Tags": json.dumps({"team": team}),
    }


def test_bad_rows_are_counted_and_the_good_rows_still_used(tmp_path: Path) -> None:
    rows = [row(h, "i-a", 10.0) for h in range(12)]
    rows[3]["EffectiveCost"] = "ten dollars"
    rows[5]["ChargePeriodStart"] = "yesterday"
    # Beyond the billing loader's limit: rejected too, as `cct billing load` does.
    rows[7]["EffectiveCost"] = "1e40"
    path = write_csv(tmp_path / "bad.csv", rows)
    matrix = focus.load([path])
    assert matrix.rows_read == 12 and matrix.rows_used == 9
    assert matrix.rejected == {
        "EffectiveCost: not a finite number": 1,
        "ChargePeriodStart: not a timestamp": 1,
        "EffectiveCost: beyond ±1e+09": 1,
    }
    assert np.isnan(matrix.rates[0, 7])
    # The hour with an uncosted row is unknown (NaN), not $0; the others are 10 $/h.
    assert np.isnan(matrix.rates[0, 3]) and matrix.rates[0, 4] == 10.0
    result = CliRunner().invoke(cli, ["backtest", str(path), "--quiet"])
    assert result.exit_code == 0
    assert (
        "rejected 1 rows: EffectiveCost: not a finite number (e.g. bad.csv row 4: 'ten dollars')"
        in result.stderr
    )


def test_a_restarted_backtest_is_warm_from_its_history_and_finds_the_same(
    tmp_path: Path,
) -> None:
    # Two weeks of a daily pattern, three times the rate for 6 hours on day 12, restarted
    # every two days (at hour 288, five hours before the rise) as the live detector starts.
    rise = 12 * 24 + 5
    rows = [
        row(
            h,
            "i-a",
            round(100 * (1 + 0.5 * np.sin(h / 24 * 2 * np.pi)), 4)
            * (3 if rise <= h < rise + 6 else 1),
        )
        for h in range(14 * 24)
    ]
    matrix = focus.load([write_csv(tmp_path / "daily.csv", rows)])
    cfg = DetectionConfig()
    plain, plain_series = backtest(matrix, cfg)
    again, again_series = backtest(matrix, cfg, restart_every_s=2 * 86400.0)
    starts = [(i.key.level, i.rule, i.started_at) for i in plain]
    assert starts == [("resource", "seasonal", float(matrix.times[rise]))]
    assert [(i.key.level, i.rule, i.started_at) for i in again] == starts
    # Loaded with the hourly means it keeps, the new engine expects what the running one
    # does from its first evaluation on (without them it would know nothing of the day).
    for col in range(12 * 24, 12 * 24 + 5):
        np.testing.assert_allclose(again_series.expected[:, col], plain_series.expected[:, col])
    # Restarted two hours into the rise: the new engine opens on the same series at once,
    # which continues the incident it adopted (one alert, as live), not a second one.
    mid, _ = backtest(matrix, cfg, restart_every_s=(rise + 2) * 3600.0)
    assert [(i.started_at, i.resolved_at) for i in mid] == [
        (i.started_at, i.resolved_at) for i in plain
    ]
    with pytest.raises(ValueError, match="restart_every_s"):
        backtest(matrix, cfg, restart_every_s=-1.0)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("ChargePeriodStart,ProviderName\n", "missing FOCUS column(s) BillingAccountId"),
        (None, "no such file"),
    ],
)
def test_unusable_input_is_a_clear_error(tmp_path: Path, content: str | None, error: str) -> None:
    path = tmp_path / "x.csv"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(cli, ["backtest", str(path), "--quiet"])
    assert result.exit_code != 0
    assert error in result.output


def test_two_new_resources_are_two_incidents_each_explaining_their_aggregates(
    tmp_path: Path,
) -> None:
    # Three steady resources, then at hour 30 two new ones in team web: 30 $/h and 10 $/h.
    rows: list[dict[str, str]] = []
    for h in range(48):
        rows += [row(h, "i-a", 20.0), row(h, "i-b", 5.0, "data"), row(h, "i-c", 3.0)]
        if h >= 30:
            rows += [row(h, "i-big", 30.0), row(h, "i-mid", 10.0)]
    matrix = focus.load([write_csv(tmp_path / "x.csv", rows)])
    assert matrix.interval_s == 3600
    incidents, _ = backtest(matrix, DetectionConfig())
    # One incident per cause, at the resource: the service, team and account that rose with
    # it are its context, not incidents of their own.
    assert [(i.key.as_dict()["resource_id"], round(i.delta, 2)) for i in incidents] == [
        ("i-big", 30.0),
        ("i-mid", 10.0),
    ]
    for inc in incidents:
        assert inc.key.level == "resource" and inc.rule == "day0_step"
        assert inc.started_at == matrix.start_s + 30 * 3600
        assert [(a.level, a.describe()) for a in inc.ancestors] == [
            ("service", "Amazon EC2 in us-east-1 (aws 111)"),
            ("team", "team web"),
            ("account", "account aws 111"),
        ]
        assert inc.as_json()["ancestors"][1] == {"level": "team", "labels": {"team": "web"}}


RISE_H = 14 * 24  # two weeks of steady history first, so the engine is warm


def diffuse_rows(
    hours: int, cut_at: int | None = None, recede_at: int | None = None
) -> list[dict[str, str]]:
    """Team web's twelve small resources in one service each grow by 1.5 $/h at RISE_H
    (none material alone); from `cut_at`, team data's resource in the same service falls by
    20 $/h, so the service is back to normal while team web still grows; from `recede_at`,
    team web's resources fall back to 1.3 $/h (most of the rise is over)."""
    rows = []
    for h in range(hours):
        cut = cut_at is not None and h >= cut_at
        small = 1.0 if h < RISE_H else 1.3 if recede_at is not None and h >= recede_at else 2.5
        rows += [row(h, "i-a", 20.0), row(h, "i-b", 5.0 if cut else 25.0, "data")]
        rows += [row(h, f"i-s{n:02d}", small) for n in range(12)]
    return rows


def test_a_diffuse_rise_of_one_team_in_one_service_is_one_incident(tmp_path: Path) -> None:
    matrix = focus.load([write_csv(tmp_path / "x.csv", diffuse_rows(RISE_H + 24))])
    incidents, _ = backtest(matrix, DetectionConfig())
    # The engine takes the lasting step as the service's new normal hours before the team's
    # (a smaller relative rise): nothing fell back, so the team is not reported then.
    [inc] = incidents
    assert inc.key.level == "service" and inc.delta == pytest.approx(18.0)
    assert [a.level for a in inc.ancestors] == ["team", "account"]
    shown = [c for c in inc.contributors if c.level == "resource"]
    assert len(shown) == 10 and all(c.delta == pytest.approx(1.5) for c in shown)


def test_a_team_still_growing_after_its_service_falls_back_is_reported_then(
    tmp_path: Path,
) -> None:
    # The service's incident explained the team's rise; another team's cut ends it. The
    # team's rise goes on: it is reported on its own, not left open without an alert.
    rows = diffuse_rows(RISE_H + 24, cut_at=RISE_H + 3)
    matrix = focus.load([write_csv(tmp_path / "x.csv", rows)])
    incidents, _ = backtest(matrix, DetectionConfig())
    service, team = incidents
    assert service.key.level == "service" and service.resolved_at is not None
    assert service.resolved_at == matrix.start_s + (RISE_H + 4) * 3600
    assert team.key.as_dict() == {"team": "web"} and team.started_at == service.started_at
    assert team.resolved_at is not None and team.resolved_at > service.resolved_at
    assert team.ancestors == []


def test_a_team_on_its_way_down_after_its_service_resolves_is_not_reported_again(
    tmp_path: Path,
) -> None:
    # Most of the rise is over an hour later: the service resolves, and the team (a larger
    # relative rise) stays open a little longer on its way down. That is no news: one
    # incident, not a second page for the same receding cause.
    rows = diffuse_rows(RISE_H + 24, recede_at=RISE_H + 1)
    matrix = focus.load([write_csv(tmp_path / "x.csv", rows)])
    incidents, _ = backtest(matrix, DetectionConfig())
    assert [i.key.level for i in incidents] == ["service"]


def root_then_rows(
    hours: int, big: tuple[int, int], rise_at: int | None = None, batch: bool = False
) -> list[dict[str, str]]:
    """Team web: i-a (20 $/h) and forty small resources (1 $/h); team data: i-b (25 $/h);
    all in one service. i-big (30 $/h, team web) runs in the hours [big[0], big[1]) and is
    then deleted (no more rows). From `rise_at` the small ones grow to 2.5 $/h each (+60 $/h
    in all, none material alone). With `batch`, they run at 2.5 $/h every day from 10:00 to
    13:59 instead (a routine daily batch)."""
    rows = []
    for h in range(hours):
        grown = (rise_at is not None and h >= rise_at) or (batch and 10 <= h % 24 < 14)
        rows += [row(h, "i-a", 20.0), row(h, "i-b", 25.0, "data")]
        rows += [row(h, f"i-s{n:02d}", 2.5 if grown else 1.0) for n in range(40)]
        if big[0] <= h < big[1]:
            rows.append(row(h, "i-big", 30.0))
    return rows


def test_a_diffuse_rise_that_outlasts_a_deleted_root_cause_is_reported_then(
    tmp_path: Path,
) -> None:
    # i-big explains the service, team and account. While it runs, team web's small
    # resources grow. Once i-big is deleted, the aggregates still rise by 60 $/h: a second
    # cause, reported when the rule fires on it alone (not left open without an alert).
    deleted = RISE_H + 5
    rows = root_then_rows(RISE_H + 20, (RISE_H, deleted), rise_at=RISE_H + 2)
    matrix = focus.load([write_csv(tmp_path / "x.csv", rows)])
    incidents, _ = backtest(matrix, DetectionConfig())
    big, rise = incidents
    assert big.key.as_dict()["resource_id"] == "i-big" and big.resolved_at is not None
    assert big.resolved_at > matrix.start_s + deleted * 3600
    assert rise.key.level in {"service", "team"} and rise.delta == pytest.approx(60.0)
    assert rise.peak_at is not None and rise.peak_at > big.resolved_at
    shown = [c for c in rise.contributors if c.level == "resource"]
    assert shown and all(c.delta == pytest.approx(1.5) for c in shown)


def test_a_deleted_root_cause_leaves_its_aggregates_silent_when_nothing_else_rose(
    tmp_path: Path,
) -> None:
    # The same, without the second rise; and with a routine daily batch running when i-big
    # is deleted (from 12:00, inside the batch's 10:00-13:59): what the aggregates still
    # carry is their normal, so i-big's incident is the only one.
    for rows in (
        root_then_rows(RISE_H + 20, (RISE_H, RISE_H + 5)),
        root_then_rows(RISE_H + 20, (RISE_H + 8, RISE_H + 12), batch=True),
    ):
        matrix = focus.load([write_csv(tmp_path / "x.csv", rows)])
        incidents, _ = backtest(matrix, DetectionConfig())
        # (The batch's first run, two weeks earlier, is a step from nothing: an incident.)
        later = [i for i in incidents if i.started_at >= matrix.start_s + RISE_H * 3600]
        assert [i.key.as_dict().get("resource_id") for i in later] == ["i-big"]


def _watched(
    level: str, shown: list[Contributor], fixed: tuple[str, ...] = ("i-big",)
) -> tuple[ReportBook, SeriesKey]:
    """A book watching one firing aggregate of `level` (i-big's fix left it silent) whose
    attribution shows `shown`, stepped for five evaluations."""
    labels = {"provider": "aws", "billing_account_id": "111", "region_id": "us-east-1"}
    key = SeriesKey.of(level, {**labels, "service_name": "Amazon EC2", "team": "web"})
    engine = Engine(DetectionConfig(day0_window_s=1e9))
    idx = engine.index_of([key])
    t0 = 1_780_000_000.0
    for n, value in enumerate([100.0, 100.0, 130.0, 130.0]):
        engine.observe(t0 + 3 * n, idx, [value])
    open_now = {inc.key: inc for inc in engine.open_incidents()}
    assert open_now[key].firing
    book = ReportBook(DetectionConfig(), lambda k, started, now: Attribution(shown, [], []))
    book.silent[key] = Streak(0, t0)
    book.fixed_roots[key] = set(fixed)
    for n in range(5):
        book.step([], open_now, lambda keys: {}, t0 + 12 + 3 * n)
    return book, key


@pytest.mark.parametrize("team", ["", "web"])
def test_a_fixed_root_read_again_is_not_a_second_cause(team: str) -> None:
    # i-big is back (or a rollup still carries it): it is the first cause, not a new one;
    # also when it is known only from its change event, with the inventory's labels (here a
    # team its series did not have).
    labels = {"provider": "aws", "billing_account_id": "111", "region_id": "us-east-1"}
    big = {**labels, "service_name": "Amazon EC2", "resource_id": "i-big", "team": team}
    book, key = _watched("service", [Contributor("resource", big, 0.0, 30.0, 30.0, 1.0)])
    assert book.reports == {} and key in book.silent


def test_typed_parquet_timestamps_and_daily_exports(tmp_path: Path) -> None:
    from decimal import Decimal

    import pyarrow as pa

    days = 10
    start = [1_790_000_000 // 86400 * 86400 + d * 86400 for d in range(days)]
    table = pa.table(
        {
            "ChargePeriodStart": pa.array([s * 1000 for s in start], pa.timestamp("ms", tz="UTC")),
            "ChargePeriodEnd": pa.array(
                [(s + 86400) * 1000 for s in start], pa.timestamp("ms", tz="UTC")
            ),
            "ProviderName": ["Google Cloud"] * days,
            "BillingAccountId": ["b-1"] * days,
            "ServiceName": ["Compute Engine"] * days,
            "ResourceId": [None] * days,
            "BilledCost": pa.array([Decimal("48.0")] * days, pa.decimal128(12, 4)),
        }
    )
    path = tmp_path / "daily.parquet"
    pq.write_table(table, path)
    matrix = focus.load([path])
    assert (matrix.interval_s, matrix.start_s, matrix.rates.shape) == (86400, start[0], (1, days))
    assert matrix.resources == [
        {
            "provider": "gcp",
            "billing_account_id": "b-1",
            "region_id": "global",
            "service_name": "Compute Engine",
            "team": "",
            "resource_id": "Compute Engine/unattributed",
        }
    ]
    assert matrix.rates[0].tolist() == [2.0] * days  # 48 $ a day = 2 $/h


def _reference_keys(table: pa.Table) -> list[tuple[str, ...]]:
    """Resource keys row by row, as the reader first built them: the oracle for the
    dictionary-encoded path."""

    def strings(name: str, default: str) -> list[str]:
        if name not in table.column_names:
            return [default] * table.num_rows
        return [default if v in (None, "") else str(v) for v in table.column(name).to_pylist()]

    def team(raw: object) -> str:
        tags = json.loads(str(raw)) if raw else {}
        return str(tags.get("team", "")) if isinstance(tags, dict) else ""

    teams = [team(v) for v in strings("Tags", "")]
    return [
        (focus.PROVIDER_LABELS.get(p.lower(), p.lower()), a, r, s, t, res or f"{s}/unattributed")
        for p, a, r, s, t, res in zip(
            strings("ProviderName", ""),
            strings("BillingAccountId", ""),
            strings("RegionId", "global"),
            strings("ServiceName", ""),
            teams,
            strings("ResourceId", ""),
            strict=True,
        )
    ]


_label = st.sampled_from(["", "AWS", "aws", "Microsoft", "x", "S3", "S3/unattributed", None])
_tags = st.sampled_from(['{"team": "a"}', '{"team": "b", "env": "p"}', "[1]", "", "{}", None])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_label, _label, _label, _label, _tags, _label), min_size=1, max_size=40),
    st.sets(st.sampled_from(["RegionId", "ResourceId", "Tags"])),
)
def test_resource_keys_match_the_row_by_row_reference(
    rows: list[tuple[str | None, ...]], dropped: set[str]
) -> None:
    """Mixed case, nulls, empty strings, missing optional columns and a real ResourceId
    equal to a pseudo-resource name give the same keys, in first-appearance order."""
    names = ["ProviderName", "BillingAccountId", "RegionId", "ServiceName", "Tags", "ResourceId"]
    table = pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})
    table = table.drop_columns(sorted(dropped))
    keys, codes = focus._keys(table)
    assert [keys[c] for c in codes.tolist()] == _reference_keys(table)
    assert len(set(keys)) == len(keys)
    firsts = [codes.tolist().index(k) for k in range(len(keys))]
    assert firsts == sorted(firsts)
    # Columns as a Parquet file hands them over (dictionary-encoded) give the same keys.
    encoded = pa.table({n: pc.dictionary_encode(table.column(n)) for n in table.column_names})
    keys_encoded, codes_encoded = focus._keys(encoded)
    assert (keys_encoded, codes_encoded.tolist()) == (keys, codes.tolist())


_stamp = st.sampled_from(["2026-10-01T00:00:00Z", "2026-10-01 01:00:00", "yesterday", "", None])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),
            _label,
            _label,
            st.sampled_from(["1.5", "ten", "", None, "1e3", "-2"]),
            _tags,
            _stamp,
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 7),
    st.integers(1, 20),
    st.booleans(),
)
def test_parquet_text_read_dictionary_encoded_gives_the_same_matrix(
    rows: list[tuple[int, str | None, str | None, str | None, str | None, str | None]],
    group_rows: int,
    batch_rows: int,
    stored_encoded: bool,
) -> None:
    """Parquet text columns are read as the file stores them (dictionary pages, several row
    groups, or columns written as dictionaries), without a string per row: the matrix, keys
    (in the same order: batches are cut alike) and rejected rows are the ones the plain text
    read gives."""
    import tempfile

    from lambdas.billing import focus as reader
    from lambdas.billing.focus import read_focus

    def stamp(h: int) -> str:
        return f"2026-10-{1 + h // 24:02d}T{h % 24:02d}:00:00Z"

    columns: dict[str, list[str | None]] = {
        "ChargePeriodStart": [stamp(r[0]) if i % 5 else r[5] for i, r in enumerate(rows)],
        "ChargePeriodEnd": [stamp(r[0] + 1) for r in rows],
        "ProviderName": [r[1] for r in rows],
        "BillingAccountId": ["111"] * len(rows),
        "ServiceName": [r[2] for r in rows],
        "ResourceId": [r[2] if i % 3 else r[1] for i, r in enumerate(rows)],
        "EffectiveCost": [r[3] for r in rows],
        "Tags": [r[4] for r in rows],
    }
    table = pa.table({n: pa.array(v, pa.string()) for n, v in columns.items()})
    encoded = pa.table({n: pc.dictionary_encode(table.column(n)) for n in table.column_names})
    with tempfile.TemporaryDirectory() as tmp:
        plain, subject = Path(tmp) / "plain.parquet", Path(tmp) / "x.parquet"
        pq.write_table(table, plain, row_group_size=group_rows)
        pq.write_table(encoded if stored_encoded else table, subject, row_group_size=group_rows)

        def load(path: Path) -> focus.CostMatrix | str:
            try:
                return focus.load([path])
            except focus.FocusError as exc:
                return str(exc).replace(path.name, "?")

        def plain_read(*args: Any, dictionary: object = (), **kwargs: Any) -> Any:
            return read_focus(*args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(reader, "BATCH_ROWS", batch_rows)
            got = load(subject)
            # The reference: every text column decoded to one string per row.
            mp.setattr(focus, "read_focus", plain_read)
            want = load(plain)
    if isinstance(want, str) or isinstance(got, str):
        assert got == want
        return
    assert got.resources == want.resources
    np.testing.assert_array_equal(got.rates, want.rates)
    assert (got.start_s, got.interval_s) == (want.start_s, want.interval_s)
    assert (got.rows_read, got.rows_used, got.rejected) == (
        want.rows_read,
        want.rows_used,
        want.rejected,
    )
