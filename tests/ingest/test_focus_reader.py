"""The one FOCUS reader shared by `cct billing load` and `cct backtest` (no services needed):
the timestamp shapes and null literals real exports contain, case-insensitive columns, bad
rows counted with examples while the rest is kept, and the FinOps Foundation's FOCUS 1.0
sample reconciled to the cent through both consumers."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.backtest import focus as backtest_focus
from lambdas.billing.adapters import adapt
from lambdas.billing.aggregate import BillingLimits, HourlyTotals, add_file, add_table
from lambdas.billing.focus import (
    BillingFileError,
    RowErrors,
    parse_numbers,
    parse_timestamps,
    read_focus,
)
from tests.ingest.conftest import FIXTURES

# FinOps Foundation FOCUS-Sample-Data, FOCUS-1.0/focus_sample.csv (CC BY 4.0; see
# tests/ingest/fixtures/SOURCES): anonymized real AWS, Microsoft and Oracle rows.
SAMPLE = FIXTURES / "focus_sample.csv.gz"
T0 = 1726444800  # 2024-09-16T00:00:00Z

ACCEPTED = [
    ("2024-09-16 00:00:00", T0),
    ("2024-09-16T00:00:00", T0),
    ("2024-09-16T00:00:00Z", T0),
    ("2024-09-16T00:00:00.000Z", T0),
    ("2024-09-16T00:00:00.123456Z", T0),
    ("2024-09-16T02:00:00+02:00", T0),
    ("2024-09-16T02:00:00+0200", T0),
    ("2024-09-15T19:00:00-05:00", T0),
    ("2024-09-16 00:00:00 UTC", T0),
    ("2024-09-16 00:00:00.000 UTC", T0),
    ("2024-09-16 00:00:00 +00:00", T0),
    ("2024-09-16t00:00:00z", T0),
    ("  2024-09-16T00:00Z ", T0),
    ("2024-09-16", T0),
]
REFUSED = ["garbage", "2024-02-30 00:00:00", "2024-13-01T00:00:00Z", "16/09/2024", "1726444800"]


@pytest.mark.parametrize(("text", "epoch"), ACCEPTED)
def test_every_timestamp_shape_real_exports_use_is_read(text: str, epoch: int) -> None:
    assert parse_timestamps(pa.array([text])).to_pylist() == [epoch]


@pytest.mark.parametrize("text", REFUSED)
def test_what_is_not_a_timestamp_is_null_not_a_guess(text: str) -> None:
    assert parse_timestamps(pa.array([text])).to_pylist() == [None]


def test_typed_timestamps_naive_ones_taken_as_utc() -> None:
    naive = pa.array([T0 * 1000], pa.timestamp("ms"))
    aware = pa.array([T0], pa.timestamp("s", tz="America/New_York"))
    assert parse_timestamps(naive).to_pylist() == [T0]
    assert parse_timestamps(aware).to_pylist() == [T0]


def test_numbers() -> None:
    out = parse_numbers(pa.array(["1.5", " 2 ", "1e3", "-0.25", "abc", "inf", "nan", None]))
    assert out.to_pylist() == [1.5, 2.0, 1000.0, -0.25, None, None, None, None]


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())
    return path


HEADER = [
    "providername",
    "BILLINGACCOUNTID",
    "BillingPeriodStart",
    "chargePeriodStart",
    "ChargePeriodEnd",
    "ServiceName",
    "BilledCost",
    "EffectiveCost",
]


def _row(start: str, end: str, cost: str = "1.0") -> list[str]:
    return ["AWS", "0123", "2024-09-01 00:00:00", start, end, "EC2", cost, cost]


def test_bad_rows_are_counted_with_examples_and_their_hour_is_incomplete(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "mixed.csv",
        HEADER,
        [
            _row("2024-09-16 00:00:00", "2024-09-16 01:00:00"),
            _row("2024-09-16T01:00:00.000Z", "2024-09-16 02:00:00 UTC", "n/a"),
            _row("yesterday", "2024-09-16 02:00:00"),
            _row("NULL", "2024-09-16 02:00:00"),
            _row("2024-09-16 02:00:00", "2024-09-16 01:00:00"),
            _row("2024-09-16 02:00:00+00:00", "2024-09-16 03:00:00", "NULL"),
        ],
    )
    totals = HourlyTotals()
    add_file(totals, path, "mixed.csv")
    totals.finish()
    assert totals.rows_used == 1
    assert totals.errors.counts == {
        "BilledCost: not a finite number": 1,
        "ChargePeriodStart: not a timestamp": 1,
        "ChargePeriodStart: missing": 1,
        "ChargePeriodEnd: not after ChargePeriodStart": 1,
        "BilledCost: missing": 1,
    }
    assert totals.errors.examples["ChargePeriodStart: not a timestamp"] == [
        "mixed.csv row 3: 'yesterday'"
    ]
    assert any("n/a" in line for line in totals.errors.lines())
    # The hours of rows that could be placed in time but not costed are incomplete.
    assert totals.incomplete_hours == {T0 + 3600, T0 + 7200}
    # The account id keeps its leading zero; the column names matched in any case.
    assert totals.partitions() == [("aws", "0123", "2024-09")]

    # The backtest reads the same file the same way, and an unknown interval is NaN, not $0.
    matrix = backtest_focus.load([path])
    # (it costs rows by EffectiveCost, the loader by BilledCost first: same rows, same count)
    assert sum(matrix.rejected.values()) == totals.errors.total
    assert matrix.rates.shape == (1, 3)
    assert matrix.rates[0, 0] == 1.0 and np.isnan(matrix.rates[0, 1:]).all()


def test_a_cost_beyond_the_limit_is_refused_by_the_reader_for_both_consumers(
    tmp_path: Path,
) -> None:
    # 1e40 overflowed the detector's float32 history, 1e308 the loader's sums: the reader
    # refuses them once, so `cct billing load` and `cct backtest` drop the same rows.
    path = _csv(
        tmp_path / "huge.csv",
        HEADER,
        [
            _row("2024-09-16 00:00:00", "2024-09-16 01:00:00", "1e40"),
            _row("2024-09-16 01:00:00", "2024-09-16 02:00:00", "-2e9"),
            _row("2024-09-16 02:00:00", "2024-09-16 03:00:00", "1e9"),  # at the limit: used
            _row("2024-09-16 03:00:00", "2024-09-16 04:00:00", "500"),
        ],
    )
    totals = HourlyTotals()
    add_file(totals, path, "huge.csv")
    totals.finish()
    assert totals.errors.counts == {"BilledCost: beyond ±1e+09": 2}
    assert totals.errors.examples["BilledCost: beyond ±1e+09"] == [
        "huge.csv row 1: '1e40'",
        "huge.csv row 2: '-2e9'",
    ]
    assert totals.incomplete_hours == {T0, T0 + 3600}
    matrix = backtest_focus.load([path])
    assert matrix.rejected == {"EffectiveCost: beyond ±1e+09": 2}
    assert np.isnan(matrix.rates[0, :2]).all()
    assert matrix.rates[0, 2:].tolist() == [1e9, 500.0]

    # The loader's configured limit (CCT_BILLING_MAX_ABS_COST) is the one the reader applies.
    strict = HourlyTotals(limits=BillingLimits(max_abs_cost=100.0))
    add_file(strict, path, "huge.csv")
    strict.finish()
    assert strict.errors.counts == {"BilledCost: beyond ±100": 4}
    assert strict.rows_used == 0


def test_a_charge_longer_than_the_loader_accepts_is_rejected_by_the_backtest_too(
    tmp_path: Path,
) -> None:
    """A typo in one row's end year (2124) once made the backtest's matrix a century wide:
    its reader rejects the row as the loader does, and its interval is incomplete."""
    rows = [_row(f"2024-09-16 {h:02d}:00:00", f"2024-09-16 {h + 1:02d}:00:00") for h in range(4)]
    rows.append(_row("2024-09-16 02:00:00", "2124-09-16 03:00:00", "9.0"))
    path = _csv(tmp_path / "typo.csv", HEADER, rows)
    matrix = backtest_focus.load([path])
    assert matrix.rates.shape == (1, 4) and matrix.interval_s == 3600
    assert matrix.rejected == {"ChargePeriod: longer than 9600 hours": 1}
    assert matrix.examples["ChargePeriod: longer than 9600 hours"] == ["typo.csv: 876,577 hours"]
    assert np.isnan(matrix.rates[0, 2]) and matrix.rates[0, [0, 1, 3]].tolist() == [1.0] * 3
    totals = HourlyTotals()
    add_file(totals, path, path.name)
    assert totals.errors.counts == {"ChargePeriod: longer than 9600 hours": 1}


def test_a_backtest_whose_rows_span_too_much_is_refused_with_the_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (One resource over 8,000 years is 70 million cells, under the real limit: lowered here.)
    monkeypatch.setattr(backtest_focus, "MAX_MATRIX_CELLS", 1_000_000)
    rows = [_row("2024-09-16 00:00:00", "2024-09-16 01:00:00")]
    rows += [_row("9999-01-01 00:00:00", "9999-01-01 01:00:00")]
    with pytest.raises(backtest_focus.FocusError, match="rows span 2024-09-16 00:00 to 9999"):
        backtest_focus.load([_csv(tmp_path / "stray.csv", HEADER, rows)])


def test_missing_columns_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BillingFileError, match=r"missing columns \['BilledCost'"):
        list(read_focus(_csv(tmp_path / "x.csv", ["a"], [["1"]]), [], ["BilledCost"], RowErrors()))
    with pytest.raises(BillingFileError, match="no such file"):
        list(read_focus(tmp_path / "nope.csv", [], [], RowErrors()))
    with pytest.raises(backtest_focus.FocusError, match="missing FOCUS column"):
        backtest_focus.load([_csv(tmp_path / "y.csv", ["a"], [["1"]])])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    garbage=st.lists(
        st.one_of(st.text(max_size=30), st.sampled_from(["NULL", "", "1e308", "-1", "∞"])),
        min_size=1,
        max_size=8,
    )
)
def test_hostile_values_reject_only_their_rows(tmp_path: Path, garbage: list[str]) -> None:
    good = [_row("2024-09-16 00:00:00", "2024-09-16 01:00:00", "2.5")] * 3
    bad = [
        _row(g.replace("\x00", ""), "2024-09-16 01:00:00", g.replace("\x00", "")) for g in garbage
    ]
    path = tmp_path / "hostile.parquet"
    pq.write_table(pa.table(dict(zip(HEADER, zip(*(good + bad), strict=True), strict=True))), path)
    totals = HourlyTotals()
    add_file(totals, path, "hostile.parquet")
    totals.finish()
    # Every row is either used or counted under exactly one reason.
    assert totals.rows_used + totals.errors.total == len(good) + len(bad)
    assert totals.rows_used >= len(good)
    assert totals.result is not None
    assert pc.sum(totals.result.column("billed")).as_py() >= 7.5


def _sample_rows() -> list[dict[str, str]]:
    with gzip.open(SAMPLE, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_finops_focus_sample_reconciles_through_both_readers() -> None:
    rows = _sample_rows()
    billed = sum(float(r["BilledCost"]) for r in rows)
    effective = sum(float(r["EffectiveCost"]) for r in rows)
    totals = HourlyTotals()
    add_file(totals, SAMPLE, SAMPLE.name)
    totals.finish()
    assert totals.errors.total == 0 and totals.rows_used == len(rows) == 1000
    result = totals.result
    assert result is not None
    assert pc.sum(result.column("billed")).as_py() == pytest.approx(billed, abs=1e-9)
    assert pc.sum(result.column("effective")).as_py() == pytest.approx(effective, abs=1e-9)
    assert {p[0] for p in totals.partitions()} == {"aws", "azure", "oracle"}

    matrix = backtest_focus.load([SAMPLE])
    assert matrix.rows_used == 1000 and not matrix.rejected
    assert np.nansum(matrix.rates) * matrix.interval_s / 3600 == pytest.approx(effective, abs=1e-9)


def test_the_sample_with_bigquery_timestamps_and_lowercase_columns_reads_the_same(
    tmp_path: Path,
) -> None:
    rows = _sample_rows()
    header = [h.lower() for h in rows[0]]
    stamped = [
        [v + " UTC" if k.endswith(("Start", "End")) and v != "NULL" else v for k, v in r.items()]
        for r in rows
    ]
    path = _csv(tmp_path / "bq.csv", header, stamped)
    a, b = HourlyTotals(), HourlyTotals()
    add_file(a, SAMPLE, "sample")
    add_file(b, path, "bq")
    a.finish()
    b.finish()
    assert a.result is not None and b.result is not None
    assert a.result.sort_by([("hour", "ascending"), ("service_name", "ascending")]).equals(
        b.result.sort_by([("hour", "ascending"), ("service_name", "ascending")])
    ) or pc.sum(a.result.column("billed")).as_py() == pytest.approx(
        pc.sum(b.result.column("billed")).as_py()
    )
    assert b.errors.total == 0


@pytest.mark.parametrize(
    ("fixture", "fmt", "billed_usd"),
    [
        ("aws_cur2.csv", "aws-cur2", 0.05 + 3 * 0.096),
        ("azure_actual.csv", "azure-actual", 2 * (2.304 + 0.656)),
        ("gcp_bigquery.jsonl", "gcp-bigquery", 2 * 0.0772),
    ],
)
def test_native_provider_exports_reconcile_through_the_shared_checks(
    fixture: str, fmt: str, billed_usd: float
) -> None:
    totals = HourlyTotals()
    add_table(totals, adapt(FIXTURES / "billing" / fixture, fmt), fixture)
    totals.finish()
    assert totals.errors.total == 0
    assert totals.result is not None
    assert pc.sum(totals.result.column("billed")).as_py() == pytest.approx(billed_usd)


def test_a_native_export_keeps_the_leading_zeros_of_its_account_ids(tmp_path: Path) -> None:
    """CUR's account columns are not FOCUS columns: read as numbers, 012345678901 became
    12345678901 and matched no series of the collector."""
    text = (FIXTURES / "billing" / "aws_cur2.csv").read_text()
    path = tmp_path / "cur.csv"
    path.write_text(
        text.replace("111122223333", "011122223333").replace("444455556666", "000455556666")
    )
    table = adapt(path, "aws-cur2")
    assert set(table.column("BillingAccountId").to_pylist()) == {"011122223333"}
    assert set(table.column("SubAccountId").to_pylist()) == {"000455556666"}


SP = "arn:aws:savingsplans::111122223333:savingsplan/sp-1"
RI = "arn:aws:ec2:us-east-1:111122223333:reserved-instances/ri-1"


@pytest.mark.parametrize(
    ("rows", "effective"),
    [
        # A $10/h Savings Plan fully used: the covered usage carries all of it, the recurring
        # fee none (it counted twice: $20).
        (
            [
                {
                    "line_item_line_item_type": "SavingsPlanCoveredUsage",
                    "line_item_unblended_cost": "14",
                    "savings_plan_savings_plan_effective_cost": "10",
                },
                {
                    "line_item_line_item_type": "SavingsPlanNegation",
                    "line_item_unblended_cost": "-14",
                },
                {
                    "line_item_line_item_type": "SavingsPlanRecurringFee",
                    "line_item_unblended_cost": "10",
                    "savings_plan_total_commitment_to_date": "10",
                    "savings_plan_used_commitment": "10",
                },
            ],
            10.0,
        ),
        # 60 % used: the unused $4 is the recurring fee's.
        (
            [
                {
                    "line_item_line_item_type": "SavingsPlanCoveredUsage",
                    "line_item_unblended_cost": "8",
                    "savings_plan_savings_plan_effective_cost": "6",
                },
                {
                    "line_item_line_item_type": "SavingsPlanRecurringFee",
                    "line_item_unblended_cost": "10",
                    "savings_plan_total_commitment_to_date": "10",
                    "savings_plan_used_commitment": "6",
                },
            ],
            10.0,
        ),
        # An RI's upfront payment is amortized, not counted in the hour it was paid; the RI
        # fee carries the reserved hours no usage used.
        (
            [
                {
                    "line_item_line_item_type": "Fee",
                    "line_item_unblended_cost": "8760",
                    "reservation_reservation_a_r_n": RI,
                },
                {
                    "line_item_line_item_type": "DiscountedUsage",
                    "line_item_unblended_cost": "0",
                    "reservation_effective_cost": "0.7",
                },
                {
                    "line_item_line_item_type": "RIFee",
                    "line_item_unblended_cost": "0.3",
                    "reservation_unused_amortized_upfront_fee_for_billing_period": "0.2",
                    "reservation_unused_recurring_fee": "0.1",
                },
            ],
            1.0,
        ),
        # A fee that is not an RI's (a support plan) is what it bills.
        ([{"line_item_line_item_type": "Fee", "line_item_unblended_cost": "29"}], 29.0),
    ],
    ids=["sp-fully-used", "sp-partly-used", "ri-upfront-and-unused", "plain-fee"],
)
def test_cur_commitments_are_amortized_as_aws_does(
    rows: list[dict[str, str]], effective: float
) -> None:
    from lambdas.billing.adapters import cur2_rows

    base = {
        "bill_payer_account_id": "111122223333",
        "line_item_usage_account_id": "444455556666",
        "line_item_product_code": "AmazonEC2",
        "line_item_usage_start_date": "2024-09-16T00:00:00Z",
        "line_item_usage_end_date": "2024-09-16T01:00:00Z",
        "savings_plan_savings_plan_a_r_n": SP,
    }
    costs = [cur2_rows({**base, **r})["EffectiveCost"] for r in rows]
    assert sum(costs) == pytest.approx(effective)
