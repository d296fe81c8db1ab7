"""Hostile FOCUS rows through `cct billing load` on the real PostgreSQL and VictoriaMetrics:
each bad row is rejected with its reason, counted, dead-lettered and its hour marked
incomplete; the good rows of the same file load; a file that is not FOCUS (a nested column)
is a dead-lettered broken file with exit 65, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.billing.adapters import adapt
from lambdas.billing.aggregate import BillingLimits, HourlyTotals, add_table
from lambdas.billing.focus import BillingFileError
from lambdas.billing.loader import BillingSettings, currency_rates, load
from lambdas.cli import cli
from lambdas.common.settings import SettingsError
from tests.ingest.test_billing import billed, focus_rows, write


def loader_settings(dsn: str, vm_url: str, **over: Any) -> BillingSettings:
    return BillingSettings(pg_dsn=dsn, vm_url=vm_url, reconcile_window_h=4, **over)


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("cost 1e308", {"BilledCost": 1e308}, "BilledCost: beyond ±1e+09"),
    ("NUL in a name", {"ServiceName": "Amazon\x00EC2"}, "ServiceName: holds a NUL character"),
    ("a 5000-character id", {"SubAccountId": "4" * 5000}, "SubAccountId: longer than 1024"),
    (
        "a charge over 2000-2099 (1.7M hourly samples)",
        {"ChargePeriodStart": "2000-01-01T00:00:00Z", "ChargePeriodEnd": "2099-12-31T00:00:00Z"},
        "ChargePeriod: longer than 9600 hours",
    ),
    (
        "a charge over 1900-2200 (ran out of memory)",
        {"ChargePeriodStart": "1900-01-01T00:00:00Z", "ChargePeriodEnd": "2200-01-01T00:00:00Z"},
        "ChargePeriod: longer than 9600 hours",
    ),
    ("a currency with no rate", {"BillingCurrency": "JPY"}, "BillingCurrency: not USD"),
]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_hostile_rows_are_rejected_and_the_good_ones_load(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path, fmt: str
) -> None:
    acct = f"acct-{uid}"
    rows = focus_rows(acct, hours=4)  # 8 rows of $1, all USD
    for row in rows:
        row["BillingCurrency"] = "USD"
    for i, (_, override, _) in enumerate(HOSTILE):
        rows[i] = {**rows[i], **override}
    path = write(rows, tmp_path / f"hostile.{fmt}")
    report = load(loader_settings(fresh_db, vm_url), [str(path)], reconcile_after=False)
    expected = {reason: 0 for _, _, reason in HOSTILE}
    for _, _, reason in HOSTILE:
        expected[reason] += 1
    got = {
        next(r for r in report.rejections if r.startswith(reason)): n
        for reason, n in expected.items()
    }
    assert sum(got.values()) == len(HOSTILE) == report.rows_rejected
    assert billed(fresh_db, acct) == pytest.approx(len(rows) - len(HOSTILE))
    assert report.incomplete_hours  # the hours of rejected rows are not reported as complete
    with psycopg.connect(fresh_db) as conn:
        [(detail,)] = conn.execute(
            "select detail from ingest_dead_letters where reason = 'rejected_rows'"
        ).fetchall()
    assert "NUL" in detail and "beyond" in detail


def test_currencies_are_converted_with_the_configured_rate_never_summed_as_one(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path
) -> None:
    acct = f"acct-{uid}"
    rows = focus_rows(acct, hours=2)  # 4 rows of 1.0
    for row, currency in zip(rows, ["USD", "EUR", "EUR", "GBP"], strict=True):
        row["BillingCurrency"] = currency
    path = write(rows, tmp_path / "mixed.parquet")
    report = load(
        loader_settings(fresh_db, vm_url, currency_rates={"EUR": 2.0}),
        [str(path)],
        reconcile_after=False,
    )
    # USD 1 + 2 x EUR 1 at 2.0; the GBP row has no rate: rejected, not added as 1 USD.
    assert billed(fresh_db, acct) == pytest.approx(5.0)
    assert report.rows_rejected == 1
    assert list(report.rejections) == [
        "BillingCurrency: not USD and no rate in CCT_BILLING_CURRENCY_RATES"
    ]


def test_a_nested_parquet_column_is_a_broken_file_not_a_traceback(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = f"acct-{uid}"
    rows = focus_rows(acct, hours=1)
    table = pa.Table.from_pylist(rows)
    nested = pa.array([[r["ServiceName"]] for r in rows], pa.list_(pa.string()))
    table = table.set_column(table.schema.get_field_index("ServiceName"), "ServiceName", nested)
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path)
    with pytest.raises(BillingFileError, match="column ServiceName is nested"):
        load(loader_settings(fresh_db, vm_url), [str(path)], reconcile_after=False)
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    monkeypatch.setenv("CCT_VM_URL", vm_url)
    result = CliRunner().invoke(cli, ["billing", "load", "--no-reconcile", str(path)])
    assert result.exit_code == 65, result.output
    with psycopg.connect(fresh_db) as conn:
        reasons = [r for (r,) in conn.execute("select reason from ingest_dead_letters")]
    assert reasons == ["broken_file", "broken_file"]
    assert billed(fresh_db, acct) == 0


def test_currency_rates_setting_names_the_key() -> None:
    assert currency_rates(" eur=1.08, GBP=1.27 ") == {"EUR": 1.08, "GBP": 1.27}
    for bad in ("EUR", "EUR=abc", "EUR=-1", "=2", "EUR=inf"):
        with pytest.raises(SettingsError, match="CCT_BILLING_CURRENCY_RATES"):
            currency_rates(bad)


# Hypothesis: any value in any cell of a FOCUS table is loaded, rejected with a reason, or
# (a nested or mistyped column) refused as a broken file; never another exception.
_cell = st.one_of(
    st.none(),
    st.floats(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=30),
    st.sampled_from(["1e308", "-1e308", "NaN", "2099-12-31T00:00:00Z", "1900-01-01", "\x00"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_cell_value_is_loaded_or_refused_with_a_reason(data: st.DataObject) -> None:
    rows = focus_rows("acct", hours=1)
    for row in rows:
        row["BillingCurrency"] = "USD"
    columns = list(rows[0])
    for _ in range(data.draw(st.integers(1, 4))):
        row = data.draw(st.sampled_from(rows))
        row[data.draw(st.sampled_from(columns))] = data.draw(_cell)
    try:
        table = pa.Table.from_pylist(
            [
                {k: (json.dumps(v) if isinstance(v, float) else v) for k, v in r.items()}
                for r in rows
            ]
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return  # pyarrow cannot build a column from these Python values: not a file
    totals = HourlyTotals(limits=BillingLimits())
    try:
        add_table(totals, table, "hypothesis")
        totals.finish()
    except BillingFileError:
        return
    assert totals.rows_used + totals.errors.total == len(rows)


NATIVE = [
    ("aws_cur2.csv", "aws-cur2"),
    ("azure_actual.csv", "azure-actual"),
    ("azure_actual.csv", "azure-amortized"),
    ("gcp_bigquery.jsonl", "gcp-bigquery"),
]
_text_cell = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "1e308", "-1e308", "NaN", "inf", "2099-12-31", "1900-01-01T00:00:00Z"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NATIVE), st.data())
def test_any_cell_of_a_native_export_is_adapted_or_refused(
    native: tuple[str, str], data: st.DataObject
) -> None:
    """The FOCUS adapters: a real export with any value in any cell is adapted and loaded
    (rows rejected with reasons) or refused as a broken file; never another exception."""
    import tempfile

    from tests.ingest.conftest import FIXTURES
    from tests.support.hostile import json_values, mutate

    fixture, fmt = native
    source = FIXTURES / "billing" / fixture
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / fixture
        if fixture.endswith(".jsonl"):
            docs = [json.loads(line) for line in source.read_text().splitlines() if line]
            mutate(data, docs, data.draw(json_values))
            path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
        else:
            import csv
            import io

            rows = list(csv.reader(io.StringIO(source.read_text())))
            r = data.draw(st.integers(1, len(rows) - 1))
            c = data.draw(st.integers(0, len(rows[0]) - 1))
            rows[r][c] = data.draw(_text_cell)
            out = io.StringIO()
            csv.writer(out).writerows(rows)
            path.write_text(out.getvalue())
        totals = HourlyTotals(limits=BillingLimits())
        try:
            table = adapt(path, fmt)
            add_table(totals, table, fixture)
            totals.finish()
        except BillingFileError:
            return
        assert totals.rows_used + totals.errors.total == table.num_rows
