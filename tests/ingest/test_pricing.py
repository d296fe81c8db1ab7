"""Price sources (real formats, small fixtures) -> catalog rows -> a resource's run-rate."""

from __future__ import annotations

import pytest

from lambdas.collector.normalize import AWS_EC2, AWS_RDS, AZURE_DISK, AZURE_VM, GCP_COMPUTE
from lambdas.pricing.catalog import (
    PriceKey,
    Shape,
    azure_disk_tier,
    gcp_machine_shape,
    usd_per_hour,
)
from lambdas.pricing.cli import documents
from lambdas.pricing.sources import PriceSourceError, parse
from tests.ingest.conftest import FIXTURES, PRICE_FILES


def book() -> dict[PriceKey, float]:
    out = {}
    for provider, files in PRICE_FILES.items():
        for f in files:
            path = str(FIXTURES / "prices" / f)
            out.update({r.key: r.usd_per_unit for r in parse(provider, documents(path), path)})
    return out


def test_sources_keep_only_on_demand_linux_list_prices() -> None:
    b = book()
    assert (
        b[PriceKey("aws", AWS_EC2, "us-east-1", "m5.large", "hour")] == 0.096
    )  # not Windows/reserved
    assert b[PriceKey("aws", AWS_EC2, "us-east-1", "gp3", "gib_month")] == 0.08
    assert (
        b[PriceKey("aws", AWS_RDS, "us-east-1", "db.m5.large/postgres/Multi-AZ", "hour")] == 0.356
    )
    assert (
        b[PriceKey("azure", AZURE_VM, "eastus", "Standard_D2s_v3", "hour")] == 0.096
    )  # not Spot/Windows
    assert b[PriceKey("azure", AZURE_DISK, "eastus", "Premium_LRS/P10", "hour")] == pytest.approx(
        19.71 / 730
    )
    assert b[PriceKey("gcp", GCP_COMPUTE, "us-central1", "e2/core", "hour")] == pytest.approx(
        0.02181159
    )
    assert b[PriceKey("gcp", GCP_COMPUTE, "us-central1", "pd-ssd", "gib_month")] == pytest.approx(
        0.17
    )
    assert len(b) == 12


def test_wrong_documents_are_named() -> None:
    with pytest.raises(PriceSourceError, match="not an AWS offer file"):
        parse("aws", [{"Items": []}], "x.json")
    with pytest.raises(PriceSourceError, match="unknown provider"):
        parse("oci", [{}], "x.json")


@pytest.mark.parametrize(
    ("machine", "shape"),
    [
        ("e2-standard-4", ("e2", 4.0, 16.0)),
        ("n1-highmem-2", ("n1", 2.0, 13.0)),
        ("n2-custom-6-24576", ("n2", 6.0, 24.0)),
        ("e2-micro", None),
    ],
)
def test_gcp_machine_shapes(machine: str, shape: tuple[str, float, float] | None) -> None:
    assert gcp_machine_shape(machine) == shape


@pytest.mark.parametrize(
    ("sku", "gib", "tier"),
    [
        ("Premium_LRS", 100, "P10"),
        ("Premium_LRS", 128, "P10"),
        ("Premium_LRS", 129, "P15"),
        ("StandardSSD_LRS", 4, "E1"),
        ("UltraSSD_LRS", 10, None),
    ],
)
def test_azure_disk_tiers(sku: str, gib: float, tier: str | None) -> None:
    assert azure_disk_tier(sku, gib) == tier


@pytest.mark.parametrize(
    ("args", "rate"),
    [
        (("aws", AWS_EC2, "Instance", "us-east-1", "m5.large", {}, "running"), 0.096),
        (("aws", AWS_EC2, "Instance", "us-east-1", "m5.large", {}, "stopped"), 0.0),
        (("aws", AWS_EC2, "Instance", "us-east-1", "m5.large", {}, "deleted"), 0.0),
        (
            ("aws", AWS_EC2, "Instance", "eu-west-1", "m5.large", {}, "running"),
            None,
        ),  # no price: unpriced
        (("aws", AWS_EC2, "Instance", "us-east-1", None, {}, "running"), None),  # SKU unknown
        (
            ("aws", AWS_EC2, "Volume", "us-east-1", "gp3", {"gib": 100}, "available"),
            100 * 0.08 / 730,
        ),
        (
            (
                "aws",
                AWS_RDS,
                "DBInstance",
                "us-east-1",
                "db.m5.large",
                {"engine": "postgres"},
                "running",
            ),
            0.178,
        ),
        (
            ("aws", AWS_RDS, "DBInstance", "us-east-1", "db.m5.large", {}, "running"),
            None,
        ),  # engine unknown
        (
            (
                "azure",
                AZURE_VM,
                "Microsoft.Compute/virtualMachines",
                "eastus",
                "Standard_D2s_v3",
                {},
                "stopped",
            ),
            0.096,
        ),  # powered off, still billed
        (
            (
                "azure",
                AZURE_VM,
                "Microsoft.Compute/virtualMachines",
                "eastus",
                "Standard_D2s_v3",
                {},
                "deallocated",
            ),
            0.0,
        ),
        (
            (
                "azure",
                AZURE_DISK,
                "Microsoft.Compute/disks",
                "eastus",
                "Premium_LRS",
                {"gib": 100},
                "available",
            ),
            19.71 / 730,
        ),
        (
            (
                "gcp",
                GCP_COMPUTE,
                "compute.googleapis.com/Instance",
                "us-central1",
                "e2-standard-4",
                {},
                "running",
            ),
            4 * 0.02181159 + 16 * 0.00292353,
        ),
        (
            (
                "gcp",
                GCP_COMPUTE,
                "compute.googleapis.com/Disk",
                "us-central1",
                "pd-ssd",
                {"gib": 500},
                "available",
            ),
            500 * 0.17 / 730,
        ),
    ],
)
def test_run_rate(args: tuple[object, ...], rate: float | None) -> None:
    result = usd_per_hour(book(), Shape(*args))  # type: ignore[arg-type]
    assert result == (pytest.approx(rate) if rate is not None else None)


def test_cct_prices_load_fills_the_catalog(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg
    from click.testing import CliRunner

    from lambdas.cli import cli

    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    files = [str(FIXTURES / "prices" / f) for f in PRICE_FILES["azure"]]
    result = CliRunner().invoke(cli, ["prices", "load", "--provider", "azure", *files])
    assert result.exit_code == 0, result.output
    assert "loaded 2 prices for azure" in result.output
    bad = CliRunner().invoke(cli, ["prices", "load", "--provider", "aws", files[0]])
    assert bad.exit_code == 1 and "not an AWS offer file" in bad.output
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("select sku, unit, source from price_catalog order by sku").fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("Premium_LRS/P10", "hour"),
        ("Standard_D2s_v3", "hour"),
    ]
