"""`cct billing load`: FOCUS (or native) exports -> hourly billed cost in PostgreSQL and
VictoriaMetrics, then reconciliation against the run-rate estimate.

Idempotency. One invocation is one delivery (all its files). Its `load_id` is a hash of the
files' contents, and the unit of replacement is the partition (provider, billing account,
billing period):
- the same delivery again: the partition's current load_id matches, nothing is written;
- a new delivery for a partition: under a per-partition advisory lock, PostgreSQL's hours
  are replaced and, in VictoriaMetrics, every series of that partition is deleted before
  the new ones are written. VictoriaMetrics keeps every sample written for a
  (series, timestamp) pair (measured: three writes of one point are three samples and
  sum_over_time adds them), so overwriting in place would double count.
  PostgreSQL commits last, so a crash in between leaves the partition "not loaded" and the
  next run deletes and rewrites it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from lambdas.billing.adapters import adapt
from lambdas.billing.aggregate import BillingLimits, HourlyTotals, add_file, add_table
from lambdas.billing.focus import BillingFileError
from lambdas.common.settings import (
    SettingsError,
    env_float,
    env_int,
    env_str,
    pg_dsn,
    vm_read_url,
    vm_write_url,
)
from lambdas.common.vm import Sample, VictoriaMetrics, VMError
from lambdas.store import billing as store
from lambdas.store.db import CONNECTION_LIVENESS

log = logging.getLogger(__name__)

BILLED = "cct_billed_cost_usd"
EFFECTIVE = "cct_effective_cost_usd"
FACTOR = "cct_cost_reconciliation_factor"
ERROR = "cct_cost_estimate_error_ratio"
ROLLUP = "cct_cost_rate_rollup_usd_per_hour"
CSV_CHUNK_ROWS = 50_000  # rows per COPY write / import request (a few MiB)


@dataclass(frozen=True)
class BillingSettings:
    pg_dsn: str
    # VictoriaMetrics base URL of the imports (CCT_VM_WRITE_URL, else CCT_VM_URL).
    vm_url: str
    # Base URL of the reconciliation queries and the series deletions (CCT_VM_READ_URL, else
    # CCT_VM_URL); None: vm_url, one single node.
    vm_read_url: str | None = None
    # Trailing window of billed hours compared with the estimate. A week smooths daily
    # patterns and is short enough to follow price changes.
    reconcile_window_h: int = 168
    # Row limits (BillingLimits): CCT_BILLING_MAX_ABS_COST (1e9 per row and cost column),
    # CCT_BILLING_MAX_CHARGE_PERIOD_H (9600, 400 days: a longer charge is not spread over
    # hours), CCT_BILLING_MAX_VALUE_CHARS (1024 per text value).
    max_abs_cost: float = 1e9
    max_charge_period_h: int = 24 * 400
    max_value_chars: int = 1024
    # The currency of the cost series (CCT_BILLING_CURRENCY, USD) and the operator's rates
    # for other BillingCurrency values (CCT_BILLING_CURRENCY_RATES, `EUR=1.08,GBP=1.27`: units
    # of the series currency per unit; the source is the operator's, e.g. the finance team's
    # month-end rate). A row in a currency with no rate is rejected, never summed as USD.
    currency: str = "USD"
    currency_rates: Mapping[str, float] = field(default_factory=dict)

    @property
    def limits(self) -> BillingLimits:
        return BillingLimits(
            self.max_abs_cost,
            self.max_charge_period_h,
            self.max_value_chars,
            self.currency,
            self.currency_rates,
        )

    @classmethod
    def from_env(cls) -> BillingSettings:
        return cls(
            pg_dsn=pg_dsn(),
            vm_url=vm_write_url(),
            vm_read_url=vm_read_url(),
            reconcile_window_h=env_int("CCT_BILLING_RECONCILE_WINDOW_H", 168),
            max_abs_cost=env_float("CCT_BILLING_MAX_ABS_COST", 1e9),
            max_charge_period_h=env_int("CCT_BILLING_MAX_CHARGE_PERIOD_H", 24 * 400),
            max_value_chars=env_int("CCT_BILLING_MAX_VALUE_CHARS", 1024),
            currency=env_str("CCT_BILLING_CURRENCY", "USD").strip().upper(),
            currency_rates=currency_rates(os.environ.get("CCT_BILLING_CURRENCY_RATES", "")),
        )


def currency_rates(raw: str) -> dict[str, float]:
    """`EUR=1.08,GBP=1.27` -> {"EUR": 1.08, "GBP": 1.27}; SettingsError naming the key."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        code, _, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if not code.strip() or not math.isfinite(rate) or rate <= 0:
            raise SettingsError(f"CCT_BILLING_CURRENCY_RATES: {item!r} is not CODE=positive number")
        rates[code.strip().upper()] = rate
    return rates


@dataclass
class LoadReport:
    load_id: str
    files: list[str]
    rows_read: int = 0
    rows_rejected: int = 0
    rejections: dict[str, int] = field(default_factory=dict)  # reason -> rows
    rejection_examples: dict[str, list[str]] = field(default_factory=dict)  # first few
    # Hours holding a rejected row: their loaded totals miss that row's cost.
    incomplete_hours: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # partitions written
    unchanged: list[str] = field(default_factory=list)  # partitions already at this load_id
    samples: int = 0
    seconds: float = 0.0  # the load itself, without process start
    reconciled: list[dict[str, object]] = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _s3_files(uri: str, into: Path) -> Iterator[Path]:
    """s3://bucket/key or s3://bucket/prefix/ (every object under it), downloaded to `into`."""
    import boto3  # only S3 deliveries pay for importing it

    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    s3 = boto3.client("s3")
    if key.endswith("/") or not key:
        keys = [
            obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith(("/", "manifest.json"))
        ]
    else:
        keys = [key]
    if not keys:
        raise BillingFileError(f"{uri}: no objects")
    for k in sorted(keys):
        target = into / hashlib.sha256(k.encode()).hexdigest()[:16] / Path(k).name
        target.parent.mkdir(parents=True)
        s3.download_file(bucket, k, str(target))
        yield target


def resolve(locations: Sequence[str], into: Path) -> list[tuple[str, Path]]:
    """(name, local path) of every file of the delivery."""
    out: list[tuple[str, Path]] = []
    for loc in locations:
        if loc.startswith("s3://"):
            out += [
                (f"s3://{urllib.parse.urlparse(loc).netloc}/{p.name}", p)
                for p in _s3_files(loc, into)
            ]
        else:
            path = Path(loc)
            if path.is_dir():
                out += [(str(p), p) for p in sorted(path.iterdir()) if p.is_file()]
            elif path.is_file():
                out.append((loc, path))
            else:
                raise BillingFileError(f"{loc}: no such file")
    return out


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _delete_series(vm: VictoriaMetrics, part: store.Partition) -> None:
    provider, account, period = part
    vm.delete_series(
        f'{{__name__=~"{BILLED}|{EFFECTIVE}",provider={_q(provider)},'
        f"billing_account_id={_q(account)},billing_period={_q(period)}}}"
    )


def _with_constants(table: pa.Table, part: store.Partition, load_id: str) -> pa.Table:
    n = table.num_rows
    constants = {
        "provider": part[0],
        "billing_account_id": part[1],
        "billing_period": part[2],
        "load_id": load_id,
    }
    for i, (name, value) in enumerate(constants.items()):
        table = table.add_column(i, name, pa.array([value] * n, pa.string()))
    return table


def _csv_chunks(table: pa.Table, columns: Sequence[str]) -> Iterator[bytes]:
    """CSV (no header) of `columns`, CSV_CHUNK_ROWS rows at a time: Arrow formats the values,
    so neither PostgreSQL's COPY nor VictoriaMetrics' import costs a Python call per row."""
    selected = table.select(list(columns))
    options = pacsv.WriteOptions(include_header=False)
    for offset in range(0, selected.num_rows, CSV_CHUNK_ROWS):
        sink = io.BytesIO()
        pacsv.write_csv(selected.slice(offset, CSV_CHUNK_ROWS), sink, options)
        yield sink.getvalue()


def _for_postgres(table: pa.Table) -> pa.Table:
    """billing_hourly's column names, with the hour as a UTC timestamp."""
    hour = pc.cast(table.column("hour"), pa.timestamp("s", "UTC"))
    table = table.set_column(table.schema.get_field_index("hour"), "hour", hour)
    names = {"billed": "billed_cost", "effective": "effective_cost", "list": "list_cost"}
    return table.rename_columns([names.get(c, c) for c in table.column_names])


# VictoriaMetrics' CSV import: column number -> time, metric or label.
_VM_COLUMNS = (
    ("hour", "time:unix_s"),
    ("billed", f"metric:{BILLED}"),
    ("effective", f"metric:{EFFECTIVE}"),
    *(
        (name, f"label:{name}")
        for name in (
            "provider",
            "billing_account_id",
            "billing_period",
            "load_id",
            "sub_account_id",
            "region_id",
            "service_name",
            "team",
            "env",
        )
    ),
)


def _import_csv(vm: VictoriaMetrics, table: pa.Table) -> int:
    """Write billed and effective cost of every hourly row; returns the number of samples."""
    spec = ",".join(f"{i}:{kind}" for i, (_, kind) in enumerate(_VM_COLUMNS, 1))
    for chunk in _csv_chunks(table, [c for c, _ in _VM_COLUMNS]):
        vm.import_csv(chunk, spec)
    return 2 * table.num_rows


def load(
    settings: BillingSettings,
    locations: Sequence[str],
    fmt: str = "focus",
    now: datetime | None = None,
    reconcile_after: bool = True,
) -> LoadReport:
    """Load one delivery. Raises BillingFileError (bad input: dead-lettered, nothing written)
    or VMError / psycopg.Error (retry the same command)."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cct-billing-")))
        conn = stack.enter_context(
            psycopg.connect(settings.pg_dsn, autocommit=True, **CONNECTION_LIVENESS)
        )
        try:
            files = resolve(locations, tmp)
            digests = sorted(_sha256(p) for _, p in files)
            load_id = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]
            totals = HourlyTotals(limits=settings.limits)
            for name, path in files:
                if fmt == "focus":
                    add_file(totals, path, name)
                else:
                    add_table(totals, adapt(path, fmt), name)
            totals.finish()
        except BillingFileError as exc:
            store.dead_letter(conn, "broken_file", str(exc), json.dumps(list(locations)))
            raise
        rejected = totals.errors.total
        report = LoadReport(load_id, [n for n, _ in files], totals.rows_used + rejected, rejected)
        report.rejections = dict(totals.errors.counts)
        report.rejection_examples = dict(totals.errors.examples)
        report.incomplete_hours = [
            datetime.fromtimestamp(h, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for h in sorted(totals.incomplete_hours)
        ]
        if rejected:
            detail = "; ".join(totals.errors.lines())
            store.dead_letter(
                conn, "rejected_rows", f"{report.files}: {detail}", json.dumps(report.files)
            )
        _write_partitions(conn, settings, totals, report)
        report.seconds = round(time.perf_counter() - started, 3)
        if reconcile_after:
            accounts = {
                (p.split("/")[0], p.split("/")[1]) for p in report.loaded + report.unchanged
            }
            report.reconciled = reconcile(conn, settings, accounts, now)
    return report


def _write_partitions(
    conn: psycopg.Connection, settings: BillingSettings, totals: HourlyTotals, report: LoadReport
) -> None:
    vm = VictoriaMetrics(settings.vm_url, settings.vm_read_url, timeout=60)
    for part in totals.partitions():
        try:
            _write_partition(conn, vm, totals, report, part)
        except VMError:
            # VictoriaMetrics may have lost the partition's series already (they are deleted
            # before the import), so no delivery may count as loaded any more: the next run,
            # even of the same files, writes the partition again.
            store.forget_partition(conn, part)
            raise


def _write_partition(
    conn: psycopg.Connection,
    vm: VictoriaMetrics,
    totals: HourlyTotals,
    report: LoadReport,
    part: store.Partition,
) -> None:
    name = "/".join(part)
    with conn.transaction():
        if store.lock_partition(conn, part) == report.load_id:
            report.unchanged.append(name)
            return
        table = _with_constants(totals.partition_table(part), part, report.load_id)
        _delete_series(vm, part)
        # VictoriaMetrics imports while PostgreSQL copies; the transaction commits only after
        # both succeeded.
        with ThreadPoolExecutor(max_workers=1) as pool:
            imported = pool.submit(_import_csv, vm, table)
            store.replace_partition(
                conn,
                part,
                load_id=report.load_id,
                sources=report.files,
                rows_read=report.rows_read,
                csv_chunks=_csv_chunks(_for_postgres(table), store.HOURLY_CSV_COLUMNS),
            )
            report.samples += imported.result()
        report.loaded.append(name)
    log.info("billing partition written", extra={"partition": name, "load_id": report.load_id})


def reconciliation_factors(
    billed: Mapping[str, float], estimated: Mapping[str, float]
) -> dict[str, tuple[float, float]]:
    """service -> (factor = billed / estimated, error = factor - 1). Services without an
    estimate are left out: a ratio against nothing says nothing."""
    out = {}
    for service, cost in billed.items():
        est = estimated.get(service, 0.0)
        if est > 0:
            out[service] = (cost / est, cost / est - 1.0)
    return out


def reconcile(
    conn: psycopg.Connection,
    settings: BillingSettings,
    accounts: set[tuple[str, str]],
    now: datetime,
) -> list[dict[str, object]]:
    vm = VictoriaMetrics(settings.vm_url, settings.vm_read_url, timeout=60)
    window_h = settings.reconcile_window_h
    results: list[dict[str, object]] = []
    samples: list[Sample] = []
    for provider, account in sorted(accounts):
        end, billed = store.billed_by_service(conn, provider, account, window_h)
        if end is None:
            continue
        expr = (
            f'sum by (service_name) (integrate({ROLLUP}{{basis="list",provider={_q(provider)},'
            f"billing_account_id={_q(account)}}}[{window_h}h])) / 3600"
        )
        estimated = {
            r["metric"].get("service_name", ""): float(r["value"][1])
            for r in vm.query(expr, time_s=end.timestamp())
        }
        start = end - timedelta(hours=window_h)
        for service, (factor, error) in reconciliation_factors(billed, estimated).items():
            store.save_reconciliation(
                conn,
                provider=provider,
                account=account,
                service=service,
                window=(start, end),
                billed=billed[service],
                estimated=estimated[service],
                factor=factor,
            )
            labels = {"provider": provider, "billing_account_id": account, "service_name": service}
            ts = int(now.timestamp() * 1000)
            samples += [Sample(FACTOR, labels, factor, ts), Sample(ERROR, labels, error, ts)]
            results.append(
                {
                    **labels,
                    "billed_usd": billed[service],
                    "estimated_usd": estimated[service],
                    "factor": factor,
                }
            )
    vm.import_samples(samples)
    return results
