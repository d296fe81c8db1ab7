"""The billing loader on real PostgreSQL and VictoriaMetrics (S3 on moto): FOCUS CSV and
Parquet, compressed or not; idempotent reloads; superseding deliveries; broken input; native
adapters checked by the FinOps focus-validator; reconciliation."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lambdas.billing.adapters import adapt
from lambdas.billing.focus import BillingFileError
from lambdas.billing.loader import BillingSettings, load, reconciliation_factors
from lambdas.cli import cli
from lambdas.common.vm import Sample, VictoriaMetrics
from tests.ingest.conftest import FIXTURES
from tests.support.services import ROOT

EC2 = "Amazon Elastic Compute Cloud"
HOUR0 = 1725148800  # 2024-09-01T00:00:00Z
# The validator's 1.0 rules that still use 1.0-preview column names: a correct FOCUS 1.0 file
# fails exactly these (see shared/notes/focus-validator.md). Nothing else is allowed to fail.
STALE_RULES = {
    "InvoiceIssuer_Required",
    "Provider_Required",
    "Publisher_Required",
    "ResourceID_Required",
    "SkuPriceId_Nullable",
}
FOCUS_VENV = ROOT / ".local" / "focus-venv"


def focus_rows(
    account: str, hours: int = 4, cost: float = 1.0, **over: Any
) -> list[dict[str, Any]]:
    rows = []
    for h in range(hours):
        for service, team in ((EC2, "payments"), ("Amazon Relational Database Service", "orders")):
            start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(HOUR0 + h * 3600))
            end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(HOUR0 + (h + 1) * 3600))
            rows.append(
                {
                    "ProviderName": "AWS",
                    "BillingAccountId": account,
                    "SubAccountId": "444455556666",
                    "BillingPeriodStart": "2024-09-01T00:00:00Z",
                    "BillingPeriodEnd": "2024-10-01T00:00:00Z",
                    "ChargePeriodStart": start,
                    "ChargePeriodEnd": end,
                    "RegionId": "us-east-1",
                    "ServiceName": service,
                    "BilledCost": cost,
                    "EffectiveCost": cost * 0.8,
                    "ListCost": cost * 1.1,
                    "Tags": json.dumps({"team": team, "env": "prod"}),
                    **over,
                }
            )
    return rows


def write(rows: list[dict[str, Any]], path: Path) -> Path:
    table = pa.Table.from_pylist(rows)
    if path.name.endswith(".parquet"):
        pq.write_table(table, path)
    elif path.name.endswith(".csv.gz"):
        raw = path.with_suffix("")
        pacsv.write_csv(table, raw)
        path.write_bytes(gzip.compress(raw.read_bytes()))
        raw.unlink()
    else:
        pacsv.write_csv(table, path)
    return path


def settings(dsn: str, vm_url: str) -> BillingSettings:
    return BillingSettings(pg_dsn=dsn, vm_url=vm_url, reconcile_window_h=4)


def vm_value(vm: VictoriaMetrics, expr: str, expected: float, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        res = vm.query(expr, time_s=HOUR0 + 4 * 3600)
        last = float(res[0]["value"][1]) if res else None
        if last is not None and abs(last - expected) < 1e-6:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{expr}: expected {expected}, last {last}")


def billed(dsn: str, account: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select coalesce(sum(billed_cost), 0) from billing_hourly"
            " where billing_account_id = %s",
            (account,),
        ).fetchone()
    return float(row[0]) if row else 0.0


def test_focus_load_is_idempotent_and_a_redelivery_supersedes(
    fresh_db: str, vm_url: str, vm: VictoriaMetrics, uid: str, tmp_path: Path
) -> None:
    acct = f"acct-{uid}"
    first = write(focus_rows(acct), tmp_path / "part-1.csv.gz")
    report = load(settings(fresh_db, vm_url), [str(first)], reconcile_after=False)
    assert report.rows_read == 8 and report.loaded == [f"aws/{acct}/2024-09"]
    assert billed(fresh_db, acct) == 8.0
    total = f'sum(sum_over_time(cct_billed_cost_usd{{billing_account_id="{acct}"}}[6h]))'
    vm_value(vm, total, 8.0)
    vm_value(
        vm,
        f'sum(sum_over_time(cct_effective_cost_usd{{billing_account_id="{acct}",team="payments"}}[6h]))',
        3.2,
    )
    # The same file again: nothing is written, nothing doubles.
    again = load(settings(fresh_db, vm_url), [str(first)], reconcile_after=False)
    assert (again.load_id, again.loaded, again.unchanged) == (
        report.load_id,
        [],
        [f"aws/{acct}/2024-09"],
    )
    assert billed(fresh_db, acct) == 8.0
    vm_value(vm, total, 8.0)
    # A corrected re-delivery (Parquet this time) replaces the period's data.
    second = write(focus_rows(acct, cost=2.0), tmp_path / "part-1.parquet")
    third = load(settings(fresh_db, vm_url), [str(second)], reconcile_after=False)
    assert third.loaded == [f"aws/{acct}/2024-09"] and third.load_id != report.load_id
    assert billed(fresh_db, acct) == 16.0
    vm_value(vm, total, 16.0)
    vm_value(
        vm, f'sum(count_over_time(cct_billed_cost_usd{{billing_account_id="{acct}"}}[6h]))', 8.0
    )
    with psycopg.connect(fresh_db) as conn:
        states = conn.execute(
            "select load_id, status from billing_loads order by loaded_at"
        ).fetchall()
    assert states == [(report.load_id, "superseded"), (third.load_id, "current")]


def test_a_delivery_from_s3_with_several_parts(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path, aws_env: str
) -> None:
    acct = f"acct-{uid}"
    rows = focus_rows(acct)
    s3 = boto3.client("s3")
    bucket = f"cct-billing-{uid}"
    s3.create_bucket(Bucket=bucket)
    for i, part in enumerate((rows[:4], rows[4:])):
        path = write(part, tmp_path / f"part-{i}.parquet")
        s3.upload_file(str(path), bucket, f"focus/2024-09/part-{i}.parquet")
    s3.put_object(Bucket=bucket, Key="focus/2024-09/manifest.json", Body=b"{}")
    report = load(
        settings(fresh_db, vm_url), [f"s3://{bucket}/focus/2024-09/"], reconcile_after=False
    )
    assert len(report.files) == 2 and report.rows_read == 8
    assert billed(fresh_db, acct) == 8.0


def test_broken_files_are_refused_and_leave_good_data_alone(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = f"acct-{uid}"
    good = write(focus_rows(acct), tmp_path / "good.parquet")
    load(settings(fresh_db, vm_url), [str(good)], reconcile_after=False)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BillingFileError, match=r"broken\.parquet: cannot read parquet"):
        load(settings(fresh_db, vm_url), [str(good), str(broken)], reconcile_after=False)
    not_focus = write([{"a": 1}], tmp_path / "other.csv")
    with pytest.raises(BillingFileError, match=r"missing columns \['BilledCost'"):
        load(settings(fresh_db, vm_url), [str(not_focus)], reconcile_after=False)
    # The CLI reports the same with exit code 65 (invalid input, do not retry).
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    monkeypatch.setenv("CCT_VM_URL", vm_url)
    result = CliRunner().invoke(cli, ["billing", "load", str(tmp_path / "missing.csv")])
    assert result.exit_code == 65 and "no such file" in result.output
    assert billed(fresh_db, acct) == 8.0
    with psycopg.connect(fresh_db) as conn:
        reasons = [r[0] for r in conn.execute("select reason from ingest_dead_letters order by id")]
    assert reasons == ["broken_file", "broken_file", "broken_file"]


def test_rows_that_cannot_be_placed_are_counted_and_the_rest_loaded(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path
) -> None:
    acct = f"acct-{uid}"
    rows = focus_rows(acct)
    rows[0]["ChargePeriodStart"] = None
    rows[1]["BilledCost"] = None
    path = write(rows, tmp_path / "rows.parquet")
    report = load(settings(fresh_db, vm_url), [str(path)], reconcile_after=False)
    assert report.rows_rejected == 2
    assert report.rejections == {"ChargePeriodStart: missing": 1, "BilledCost: missing": 1}
    assert report.incomplete_hours == ["2024-09-01T00:00:00Z"]
    assert billed(fresh_db, acct) == 6.0
    with psycopg.connect(fresh_db) as conn:
        [(reason, detail)] = conn.execute(
            "select reason, detail from ingest_dead_letters"
        ).fetchall()
    assert reason == "rejected_rows" and "1 rows: ChargePeriodStart: missing" in detail


def test_the_finops_focus_sample_loads_through_the_cli(
    fresh_db: str, vm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Naive timestamps and NULL literals (FOCUS 1.0 sample, see fixtures/SOURCES): this file
    # was refused whole (exit 65) before the loader and the backtest shared one reader.
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    monkeypatch.setenv("CCT_VM_URL", vm_url)
    path = FIXTURES / "focus_sample.csv.gz"
    result = CliRunner().invoke(cli, ["billing", "load", "--no-reconcile", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rows_read"] == 1000 and report["rows_rejected"] == 0
    with gzip.open(path, "rt") as fh:
        import csv

        expected = sum(float(r["BilledCost"]) for r in csv.DictReader(fh))
    with psycopg.connect(fresh_db) as conn:
        (total,) = conn.execute("select sum(billed_cost) from billing_hourly").fetchone()  # type: ignore[misc]
    assert float(total) == pytest.approx(expected, abs=1e-6)


def validate_focus(table: pa.Table, tmp_path: Path) -> list[str]:
    """Rules the FinOps focus-validator (1.0 rules) fails on `table`."""
    exe = FOCUS_VENV / "bin" / "focus-validator"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: run scripts/focus-venv (make test does)", pytrace=False)
    data, out = tmp_path / "focus.parquet", tmp_path / "report.xml"
    pq.write_table(table, data)
    site = next((FOCUS_VENV / "lib").glob("python3*/site-packages"))
    # It opens its currency list by a relative path, so it runs from its own package folder.
    proc = subprocess.run(
        [
            str(exe),
            "--data-file",
            str(data),
            "--validate-version",
            "1.0",
            "--output-type",
            "unittest",
            "--output-destination",
            str(out),
        ],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), proc.stdout + proc.stderr
    root = ET.parse(out).getroot()  # noqa: S314 - written just now by the validator
    cases = list(root.iter("testcase"))
    assert len(cases) > 100  # the whole 1.0 rule set ran
    return sorted(
        str(tc.get("name")).split(" :: ")[0]
        for tc in cases
        if tc.find("failure") is not None or tc.find("error") is not None
    )


ADAPTED = [
    # fixture, format, rows, billed, effective (per the providers' semantics)
    ("aws_cur2.csv", "aws-cur2", 10, 0.05 + 3 * 0.096, 0.05 + 3 * (0.096 + 0.130)),
    ("azure_actual.csv", "azure-actual", 4, 2 * (2.304 + 0.656), 2 * (2.304 + 0.656)),
    ("gcp_bigquery.jsonl", "gcp-bigquery", 2, 2 * 0.0772, 2 * 0.0772),
]


def test_native_exports_adapt_to_valid_focus(tmp_path: Path) -> None:
    tables = []
    for fixture, fmt, rows, billed_usd, effective_usd in ADAPTED:
        table = adapt(FIXTURES / "billing" / fixture, fmt)
        assert table.num_rows == rows, fmt
        assert sum(table.column("BilledCost").to_pylist()) == pytest.approx(billed_usd), fmt
        assert sum(table.column("EffectiveCost").to_pylist()) == pytest.approx(effective_usd), fmt
        tables.append(table)
    # One validator run over the three adapters' rows (its rules are per column and row).
    assert validate_focus(pa.concat_tables(tables), tmp_path) == sorted(STALE_RULES)


def test_the_validator_catches_a_bad_file(tmp_path: Path) -> None:
    table = adapt(FIXTURES / "billing" / "gcp_bigquery.jsonl", "gcp-bigquery")
    bad = table.set_column(
        table.schema.get_field_index("ChargeCategory"),
        "ChargeCategory",
        pa.array([None, None], pa.string()),
    )
    assert set(validate_focus(bad, tmp_path)) - STALE_RULES == {"ChargeCategory_NotNull"}


def test_native_export_loads_through_the_cli(
    fresh_db: str, vm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    monkeypatch.setenv("CCT_VM_URL", vm_url)
    path = FIXTURES / "billing" / "azure_actual.csv"
    result = CliRunner().invoke(
        cli, ["billing", "load", "--format", "azure-actual", "--no-reconcile", str(path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["loaded"] == ["azure/8611537/2024-09"]
    with psycopg.connect(fresh_db) as conn:
        # Azure bills by day: each day's cost is spread over its 24 hours.
        hours, total = conn.execute(
            "select count(distinct hour), sum(billed_cost) from billing_hourly"
        ).fetchone()  # type: ignore[misc]
    assert hours == 48 and total == pytest.approx(2 * (2.304 + 0.656))


def test_reconciliation_factors_are_pure() -> None:
    assert reconciliation_factors({"a": 80.0, "b": 5.0, "c": 1.0}, {"a": 100.0, "b": 0.0}) == {
        "a": (0.8, pytest.approx(-0.2))
    }


def test_reconciliation_against_the_estimate(
    fresh_db: str, vm_url: str, vm: VictoriaMetrics, uid: str, tmp_path: Path
) -> None:
    acct = f"acct-{uid}"
    # The collector's estimate for the billed hours: EC2 at $1.25/h (a rollup sample a minute).
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
        Sample("cct_cost_rate_rollup_usd_per_hour", labels, 1.25, (HOUR0 + m * 60) * 1000)
        for m in range(0, 4 * 60 + 1)
    )
    path = write(focus_rows(acct), tmp_path / "bill.parquet")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        report = load(settings(fresh_db, vm_url), [str(path)])
        if report.reconciled:
            break
        time.sleep(1)  # the estimate's new series becomes queryable after a few seconds
    [rec] = report.reconciled
    # billed EffectiveCost 4 h x $0.8 = 3.2 ; estimated 4 h x $1.25 = 5.0
    assert rec["service_name"] == EC2
    assert rec["estimated_usd"] == pytest.approx(5.0, rel=1e-3)
    assert rec["factor"] == pytest.approx(0.64, rel=1e-3)
    with psycopg.connect(fresh_db) as conn:
        [(factor,)] = conn.execute(
            "select factor from cost_reconciliation where billing_account_id = %s", (acct,)
        ).fetchall()
    assert factor == pytest.approx(0.64, rel=1e-3)
    res = vm.query(f'cct_cost_estimate_error_ratio{{billing_account_id="{acct}"}}')
    deadline = time.monotonic() + 20
    while not res and time.monotonic() < deadline:
        time.sleep(0.3)
        res = vm.query(f'cct_cost_estimate_error_ratio{{billing_account_id="{acct}"}}')
    assert float(res[0]["value"][1]) == pytest.approx(-0.36, rel=1e-3)


def test_cct_billing_reconcile_command(
    fresh_db: str, vm_url: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    monkeypatch.setenv("CCT_VM_URL", vm_url)
    monkeypatch.setenv("CCT_BILLING_RECONCILE_WINDOW_H", "4")
    # An account without billed hours has nothing to reconcile; the command says so.
    args = ["billing", "reconcile", "--provider", "aws", "--billing-account-id", f"none-{uid}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and json.loads(result.output) == []


def test_a_victoriametrics_failure_leaves_the_partition_to_be_rewritten(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path
) -> None:
    from lambdas.common.vm import VMError
    from tests.support.procs import free_port

    acct = f"acct-{uid}"
    first = write(focus_rows(acct), tmp_path / "a.parquet")
    load(settings(fresh_db, vm_url), [str(first)], reconcile_after=False)
    second = write(focus_rows(acct, cost=3.0), tmp_path / "b.parquet")
    unreachable = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VMError):
        load(settings(fresh_db, unreachable), [str(second)], reconcile_after=False)
    assert billed(fresh_db, acct) == 8.0  # PostgreSQL rolled back to the first delivery
    # VictoriaMetrics may have lost the series, so even the first delivery is written again.
    again = load(settings(fresh_db, vm_url), [str(first)], reconcile_after=False)
    assert again.loaded == [f"aws/{acct}/2024-09"] and again.unchanged == []


def test_a_month_to_date_delivery_reconciles_on_past_hours_not_its_spread_fees(
    fresh_db: str, vm_url: str, uid: str, tmp_path: Path
) -> None:
    """Mid-month, a delivery spreads its monthly tax to the month's end: the window compared
    with the estimate ends at the current hour, over the hours that were used, not in the
    future where only the spread tax is."""
    from datetime import UTC, datetime, timedelta

    from lambdas.store.billing import billed_by_service

    acct = f"acct-{uid}"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    month = (now - timedelta(hours=5)).replace(day=1, hour=0)  # the usage hours' month
    next_month = (month + timedelta(days=32)).replace(day=1)

    def iso(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    period = {"BillingPeriodStart": iso(month), "BillingPeriodEnd": iso(next_month)}
    rows = [
        {
            **row,
            **period,
            "ChargePeriodStart": iso(now - timedelta(hours=4 - h)),
            "ChargePeriodEnd": iso(now - timedelta(hours=3 - h)),
        }
        for h, row in enumerate(focus_rows(acct, hours=4)[::2])  # EC2 only, 4 past hours
    ]
    tax = {**rows[0], "ServiceName": "Tax", "ChargePeriodStart": iso(month)}
    rows.append({**tax, "ChargePeriodEnd": iso(next_month), "Tags": None})
    load(settings(fresh_db, vm_url), [str(write(rows, tmp_path / "mtd.parquet"))])
    with psycopg.connect(fresh_db) as conn:
        end, billed = billed_by_service(conn, "aws", acct, 4)
    assert end == now  # not the month's end
    assert billed[EC2] == pytest.approx(4 * 0.8)
