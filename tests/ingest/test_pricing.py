"""Price sources (real formats, small fixtures) -> catalog rows -> a resource's run-rate."""

from __future__ import annotations

import pytest

from lambdas.collector.normalize import AWS_EC2, AWS_RDS, AZURE_DISK, AZURE_VM, GCP_COMPUTE
from lambdas.pricing.catalog import (
    SNAPSHOT_SKU,
    PriceKey,
    Shape,
    azure_disk_tier,
    gcp_machine_shape,
    usd_per_hour,
)
from lambdas.pricing.cli import documents
from lambdas.pricing.sources import (
    AWS_S3,
    AZURE_SQL,
    GCP_SQL,
    GCP_STORAGE,
    PriceSourceError,
    parse,
)
from tests.ingest.conftest import FIXTURES, PRICE_FILES


def book() -> dict[PriceKey, float]:
    out = {}
    for provider, files in PRICE_FILES.items():
        for f in files:
            path = str(FIXTURES / "prices" / f)
            parsed = parse(provider, documents(path), path)
            assert parsed.rejects.total == 0, parsed.rejects
            out.update({r.key: r.usd_per_unit for r in parsed.rows})
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
    # Both Aurora products of one class: the I/O-Optimized one (last in the file) used to
    # overwrite the Standard price.
    aurora = "db.r6g.large/aurora-postgresql/Single-AZ"
    assert b[PriceKey("aws", AWS_RDS, "us-east-1", aurora, "hour")] == 0.26
    assert b[PriceKey("aws", AWS_RDS, "us-east-1", f"{aurora}/io-optimized", "hour")] == 0.338
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
    # with the Azure P15 tier, the Azure and GCP snapshot storage, Aurora, object storage,
    # and the managed databases' storage (Cloud SQL: 4 SKUs x 3 regions; Azure SQL: 2)
    assert len(b) == 104


def test_sources_keep_licensed_os_storage_and_performance_prices() -> None:
    b = book()
    ec2 = {k.sku: (k.unit, v) for k, v in b.items() if k.service_name == AWS_EC2}
    assert ec2["m5.large/RunInstances:0002"] == ("hour", 0.188)  # Windows, by usage operation
    assert ec2["io1/iops"] == ("iops_month", 0.065)
    assert ec2["io2/iops.tier2"] == ("iops_month", 0.0455)
    assert ec2["gp3/iops"] == ("iops_month", 0.005)  # the $0 first 3,000 is not the rate
    assert ec2["gp3/throughput"] == ("mibps_month", pytest.approx(0.04))  # 40.96 per GiB/s
    # Standard snapshot storage under the sku the delete-unattached-volume plan prices; the
    # archive tier is not it.
    assert ec2[SNAPSHOT_SKU] == ("gib_month", 0.05)
    # Azure: the Standard HDD LRS snapshot meter (the storage the delete-disk action asks
    # for), not ZRS, not the Premium or Standard SSD products' meters; a disk's "Mount"
    # meter is not its tier.
    disks = {k.sku: (k.unit, v) for k, v in b.items() if k.service_name == AZURE_DISK}
    assert disks[SNAPSHOT_SKU] == ("gib_month", 0.05)
    assert disks["Premium_LRS/P15"] == ("hour", pytest.approx(38.012142 / 730))
    assert sorted(k for k in disks if not k.startswith(("Hot/", "Cool/", "Cold/"))) == [
        "Premium_LRS/P10",
        "Premium_LRS/P15",
        SNAPSHOT_SKU,
    ]
    gcp = {(k.sku, k.unit): v for k, v in b.items() if k.provider == "gcp"}
    assert gcp[(SNAPSHOT_SKU, "gib_month")] == pytest.approx(0.05)
    rds = {(k.sku, k.unit): v for k, v in b.items() if k.service_name == AWS_RDS}
    # databaseEngine "Any" applies to every non-Aurora engine; a named engine overrides it
    assert rds[("gp3/postgres/Single-AZ", "gib_month")] == 0.115
    assert rds[("gp3/mysql/Single-AZ", "gib_month")] == 0.12
    assert rds[("gp3/postgres/Multi-AZ", "gib_month")] == 0.23
    assert rds[("io1/postgres/Single-AZ", "iops_month")] == 0.10
    assert rds[("gp3/mariadb/Single-AZ", "iops_month")] == 0.02
    assert rds[("gp3/postgres/Single-AZ", "mibps_month")] == 0.08
    assert not [k for k in rds if "aurora" in k[0] and k[1] != "hour"]  # cluster storage
    assert b[PriceKey("azure", AZURE_VM, "eastus", "Standard_D2s_v3/Windows", "hour")] == 0.188
    gcp = {(k.region_id, k.sku): v for k, v in b.items() if k.provider == "gcp"}
    assert gcp[("us-central1", "f1-micro")] == pytest.approx(0.0076)  # not the Preemptible SKU
    assert gcp[("us-central1", "g1-small")] == pytest.approx(0.0257)
    assert gcp[("global", "license/windows-server")] == pytest.approx(0.046)  # not BYOL


def test_object_storage_classes_as_the_tiering_plans_name_them() -> None:
    """S3 storage classes, Azure blob access tiers at each redundancy and Cloud Storage
    classes per GiB-month, under the names the buckets and accounts report: without them
    every storage-tiering plan on a loaded catalog was a no-op ("no list price")."""
    b = book()
    storage = {
        (k.provider, k.region_id, k.sku): v
        for k, v in b.items()
        if k.service_name in (AWS_S3, AZURE_DISK, GCP_STORAGE) and k.unit == "gib_month"
    }
    # The first volume tier is the list rate (S3's first 50 TB; Azure's from 0 GB; GCS's
    # after its free GiB).
    assert storage[("aws", "us-east-1", "STANDARD")] == 0.023
    assert storage[("aws", "us-east-1", "STANDARD_IA")] == 0.0125
    assert storage[("aws", "eu-central-1", "GLACIER")] == 0.00405  # region prefix EUC1-
    assert storage[("aws", "us-east-1", "DEEP_ARCHIVE")] == 0.00099  # its own offer file
    # Deep Archive staging storage and Intelligent-Tiering's access tiers are not a class.
    assert not [k for k in storage if k[0] == "aws" and k[1] == "us-west-2"]
    assert "INTELLIGENT_TIERING" not in {k[2] for k in storage}
    azure = {k[2]: v for k, v in storage.items() if k[0] == "azure" and "/" in k[2]}
    assert azure == {
        "Hot/LRS": 0.0184,  # not the legacy Blob Storage or Data Lake meters of that name
        "Cool/LRS": 0.01,
        "Cold/LRS": 0.0036,
        "Hot/GRS": 0.0368,
        "Cool/GRS": 0.02,
        "Hot/RA-GRS": 0.046,
    }
    gcs = {(k[1], k[2]): v for k, v in storage.items() if k[0] == "gcp" and k[2].isupper()}
    assert gcs == {
        ("us", "STANDARD"): pytest.approx(0.026),
        ("us-central1", "STANDARD"): pytest.approx(0.02),  # not the Iowa dual-region's
        ("us-central1", "NEARLINE"): pytest.approx(0.01),  # not its early deletion
        ("us-central1", "COLDLINE"): pytest.approx(0.004),
        ("us-central1", "ARCHIVE"): pytest.approx(0.0012),
    }


def test_cloud_sql_per_vcpu_and_gib_of_each_engine_and_availability() -> None:
    """Cloud SQL's vCPU, RAM and shared-core SKUs per engine and availability: without them
    every Cloud SQL rightsize plan on a loaded catalog was a no-op."""
    b = book()
    sql = {
        k.sku: v for k, v in b.items() if k.service_name == GCP_SQL and k.region_id == "us-east1"
    }
    assert sql == {
        "postgres/zonal/core": pytest.approx(0.0413),
        "postgres/zonal/ram": pytest.approx(0.007),  # per GiB-hour
        "postgres/regional/core": pytest.approx(0.0826),
        "postgres/regional/ram": pytest.approx(0.014),
        "mysql/zonal/core": pytest.approx(0.0413),
        "mysql/zonal/ram": pytest.approx(0.007),
        "mysql/zonal/db-f1-micro": pytest.approx(0.0105),
        "mysql/zonal/db-g1-small": pytest.approx(0.035),
        # The data disk per GiB-month: PD_SSD ("Standard storage"), PD_HDD ("Low cost").
        "postgres/zonal/ssd": pytest.approx(0.17),
        "postgres/regional/ssd": pytest.approx(0.34),
        "postgres/zonal/hdd": pytest.approx(0.09),
        "mysql/zonal/ssd": pytest.approx(0.17),
    }  # not SQL Server (its licence is apart), the commitments or Enterprise Plus storage
    units = {k.sku: k.unit for k in b if k.service_name == GCP_SQL}
    assert units["postgres/zonal/ssd"] == "gib_month" and units["postgres/zonal/ram"] == "hour"


def test_azure_sql_compute_per_vcore_count_and_the_licence_per_vcore() -> None:
    """A provisioned vCore database's compute meter (per database of its vCore count) and
    the SQL Server licence per vCore; serverless, reservations and DTU tiers are not it."""
    sql = {k.sku: v for k, v in book().items() if k.service_name == AZURE_SQL}
    assert sql == {
        "GP_Gen5_2/compute": 0.3044,
        "GP_Gen5_4/compute": 0.6088,
        "BC_Gen5_2/compute": 0.8166,
        "GP/license": 0.1,
        # Data storage per GB-month of the maximum size; not the zone-redundant meter or
        # Hyperscale's (billed as used).
        "GP/storage": 0.115,
        "BC/storage": 0.25,
    }


def test_unknown_throughput_unit_is_left_unpriced() -> None:
    path = str(FIXTURES / "prices" / "aws_ec2_offer.json")
    [doc] = list(documents(path))
    dims = doc["terms"]["OnDemand"]["SKUGP3THRU"]["SKUGP3THRU.JRTCKXETXF"]["priceDimensions"]
    next(iter(dims.values()))["unit"] = "Furlongs-Fortnight"
    keys = {r.key.sku for r in parse("aws", [doc], path).rows}
    assert "gp3/throughput" not in keys and "gp3/iops" in keys


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
        ("e2-micro", ("e2", 0.25, 1.0)),  # shared core: a fraction of the E2 vCPU SKU
        ("e2-medium", ("e2", 1.0, 4.0)),
        ("f1-micro", None),  # priced per instance, not per vCPU
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
        # Standard HDD starts at S4 (32 GiB): there is no S1 to S3 to price a small disk by.
        ("Standard_LRS", 10, "S4"),
        ("Standard_LRS", 32, "S4"),
        ("Standard_LRS", 33, "S6"),
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
            None,
        ),  # storage unknown: unpriced, not the instance alone
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
    files = [str(FIXTURES / "prices" / f"azure_retail_page{n}.json") for n in (1, 2)]
    result = CliRunner().invoke(cli, ["prices", "load", "--provider", "azure", *files])
    assert result.exit_code == 0, result.output
    assert "loaded 5 prices for azure" in result.output
    bad = CliRunner().invoke(cli, ["prices", "load", "--provider", "aws", files[0]])
    assert bad.exit_code == 1 and "not an AWS offer file" in bad.output
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute(
            'select sku, unit, source from price_catalog order by sku collate "C"'
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("Premium_LRS/P10", "hour"),
        ("Premium_LRS/P15", "hour"),
        ("Standard_D2s_v3", "hour"),
        ("Standard_D2s_v3/Windows", "hour"),
        ("snapshot", "gib_month"),
    ]


EC2, VOL, RDS_DB = (
    ("aws", AWS_EC2, "Instance", "us-east-1"),
    ("aws", AWS_EC2, "Volume", "us-east-1"),
    ("aws", AWS_RDS, "DBInstance", "us-east-1"),
)
PG = {"engine": "postgres", "multi_az": False}
AZ_VM = ("azure", AZURE_VM, "Microsoft.Compute/virtualMachines", "eastus")
GCE = ("gcp", GCP_COMPUTE, "compute.googleapis.com/Instance", "us-central1")
E2_CORE, E2_RAM, WIN = 0.02181159, 0.00292353, 0.046
CLOUD_SQL = ("gcp", "Cloud SQL", "sqladmin.googleapis.com/Instance", "us-central1")
AZ_SQL = ("azure", "SQL Database", "Microsoft.Sql/servers/databases", "eastus")
PG_SSD_100 = {"engine": "postgres", "availability": "zonal", "gib": 100.0, "disk_type": "PD_SSD"}
PG_4_16 = (4 * 0.0413 + 16 * 0.007) * 730  # per month; 100 GiB of SSD is $17.00 a month


@pytest.mark.parametrize(
    ("shape", "monthly_or_hourly"),
    [
        # EBS: gp3 includes 3,000 IOPS and 125 MiB/s; above that per IOPS- / MiBps-month
        ((*VOL, "gp3", {"gib": 100, "iops": 3000, "throughput": 125}, "available"), 100 * 0.08),
        (
            (*VOL, "gp3", {"gib": 100, "iops": 6000, "throughput": 250}, "available"),
            100 * 0.08 + 3000 * 0.005 + 125 * 0.04,
        ),
        ((*VOL, "gp2", {"gib": 100, "iops": 300}, "available"), 100 * 0.10),  # IOPS included
        ((*VOL, "io1", {"gib": 200, "iops": 5000}, "available"), 200 * 0.125 + 5000 * 0.065),
        ((*VOL, "io1", {"gib": 200}, "available"), None),  # IOPS unknown: unpriced
        ((*VOL, "io2", {"gib": 500, "iops": 20000}, "available"), 500 * 0.125 + 20000 * 0.065),
        (
            (*VOL, "io2", {"gib": 500, "iops": 70000}, "available"),
            500 * 0.125 + 32000 * 0.065 + 32000 * 0.0455 + 6000 * 0.032,
        ),
        # RDS: instance + allocated storage (+ IOPS / throughput) by engine and deployment
        (
            (*RDS_DB, "db.m5.large", {**PG, "gib": 20, "storage_type": "gp3"}, "running"),
            0.178 * 730 + 20 * 0.115,
        ),
        (
            (
                *RDS_DB,
                "db.m5.large",
                {**PG, "gib": 500, "storage_type": "gp3", "iops": 15000, "throughput": 600},
                "running",
            ),
            0.178 * 730 + 500 * 0.115 + (15000 - 12000) * 0.02 + (600 - 500) * 0.08,
        ),  # from 400 GiB the gp3 baseline is 12,000 IOPS and 500 MiB/s
        (
            (
                *RDS_DB,
                "db.m5.large",
                {**PG, "multi_az": True, "gib": 100, "storage_type": "gp3"},
                "running",
            ),
            0.356 * 730 + 100 * 0.23,
        ),
        (
            (
                *RDS_DB,
                "db.m5.large",
                {**PG, "gib": 100, "storage_type": "io1", "iops": 3000},
                "running",
            ),
            0.178 * 730 + 100 * 0.125 + 3000 * 0.10,
        ),
        ((*RDS_DB, "db.m5.large", {**PG, "gib": 100, "storage_type": "io1"}, "running"), None),
        ((*RDS_DB, "db.m5.large", {**PG, "gib": 100}, "running"), None),  # type unknown
        # a stopped RDS instance still pays for its storage
        ((*RDS_DB, "db.m5.large", {**PG, "gib": 100, "storage_type": "gp3"}, "stopped"), 11.5),
        ((*RDS_DB, "db.m5.large", {**PG, "gib": 100, "storage_type": "io1"}, "stopped"), None),
        ((*RDS_DB, "db.r5.large", {"engine": "aurora-postgresql"}, "stopped"), 0.0),
        # Aurora Standard and I/O-Optimized: one class, engine and deployment, two prices
        ((*RDS_DB, "db.r6g.large", {"engine": "aurora-postgresql"}, "running"), 0.26 * 730),
        (
            (
                *RDS_DB,
                "db.r6g.large",
                {"engine": "aurora-postgresql", "storage_type": "aurora"},
                "running",
            ),
            0.26 * 730,
        ),
        (
            (
                *RDS_DB,
                "db.r6g.large",
                {"engine": "aurora-postgresql", "storage_type": "aurora-iopt1"},
                "running",
            ),
            0.338 * 730,
        ),
        # licensed operating systems
        ((*EC2, "m5.large", {"platform_details": "Windows"}, "running"), 0.188 * 730),
        ((*EC2, "m5.large", {"platform_details": "Linux/UNIX"}, "running"), 0.096 * 730),
        ((*EC2, "m5.large", {"platform_details": "SUSE Linux"}, "running"), None),  # no price
        ((*EC2, "m5.large", {"platform_details": "Plan 9"}, "running"), None),
        ((*AZ_VM, "Standard_D2s_v3", {"os_type": "Windows"}, "running"), 0.188 * 730),
        (
            (
                *AZ_VM,
                "Standard_D2s_v3",
                {"os_type": "Windows", "license_type": "Windows_Server"},
                "running",
            ),
            0.096 * 730,
        ),  # Azure Hybrid Benefit pays the base rate
        # GCP shared core and licences
        ((*GCE, "f1-micro", {}, "running"), 0.0076 * 730),
        ((*GCE, "g1-small", {}, "running"), 0.0257 * 730),
        ((*GCE, "e2-micro", {}, "running"), (0.25 * E2_CORE + 1 * E2_RAM) * 730),
        ((*GCE, "e2-small", {}, "running"), (0.5 * E2_CORE + 2 * E2_RAM) * 730),
        (
            (*GCE, "e2-standard-4", {"image_project": "windows-cloud"}, "running"),
            (4 * E2_CORE + 16 * E2_RAM + 4 * WIN) * 730,
        ),
        (
            (*GCE, "e2-standard-4", {"image_project": "shop-prod-123"}, "running"),
            (4 * E2_CORE + 16 * E2_RAM) * 730,
        ),  # an image of the project's own: no public licence known
        ((*GCE, "e2-micro", {"image_project": "windows-cloud"}, "running"), None),
        ((*GCE, "f1-micro", {"image_project": "windows-cloud"}, "running"), None),
        ((*GCE, "e2-standard-4", {"image_project": "rhel-cloud"}, "running"), None),
        # managed databases: Cloud SQL (us-east1, PostgreSQL, 100 GiB SSD), Azure SQL (eastus)
        ((*CLOUD_SQL, "db-custom-4-16384", PG_SSD_100, "running"), PG_4_16 + 17.0),
        ((*CLOUD_SQL, "db-custom-4-16384", PG_SSD_100, "stopped"), 17.0),  # its disk only
        ((*CLOUD_SQL, "db-custom-4-16384", PG_SSD_100, "deleted"), 0.0),
        (
            (
                *CLOUD_SQL,
                "db-custom-4-16384",
                {**PG_SSD_100, "availability": "regional"},
                "running",
            ),
            2 * PG_4_16 + 34.0,
        ),
        (
            (*CLOUD_SQL, "db-custom-4-16384", {**PG_SSD_100, "disk_type": "PD_HDD"}, "running"),
            PG_4_16 + 9.0,
        ),
        (
            (*CLOUD_SQL, "db-f1-micro", {**PG_SSD_100, "engine": "mysql"}, "running"),
            0.0105 * 730 + 17.0,
        ),
        ((*CLOUD_SQL, "db-custom-4-16384", {**PG_SSD_100, "engine": "sqlserver"}, "running"), None),
        ((*CLOUD_SQL, "db-n1-standard-2", PG_SSD_100, "running"), None),
        ((*CLOUD_SQL, "db-custom-4-16384", {**PG_SSD_100, "gib": None}, "running"), None),
        (
            (*CLOUD_SQL, "db-custom-4-16384", {**PG_SSD_100, "disk_type": "HYPERDISK"}, "running"),
            None,
        ),
        ((*AZ_SQL, "GP_Gen5_4", {"gib": 32.0}, "available"), (0.6088 + 0.4) * 730 + 32 * 0.115),
        (
            (*AZ_SQL, "GP_Gen5_4", {"gib": 32.0, "license_type": "BasePrice"}, "available"),
            0.6088 * 730 + 32 * 0.115,
        ),
        (  # Business Critical's zone redundancy costs nothing extra
            (
                *AZ_SQL,
                "BC_Gen5_2",
                {"gib": 32.0, "zone_redundant": True, "license_type": "BasePrice"},
                "available",
            ),
            0.8166 * 730 + 32 * 0.25,
        ),
        ((*AZ_SQL, "BC_Gen5_2", {"gib": 32.0}, "available"), None),  # no BC licence price
        ((*AZ_SQL, "GP_Gen5_4", {"gib": 32.0, "zone_redundant": True}, "available"), None),
        ((*AZ_SQL, "GP_Gen5_4", {}, "available"), None),  # size unknown
        ((*AZ_SQL, "HS_Gen5_2", {"gib": 32.0}, "available"), None),
        ((*AZ_SQL, "GP_S_Gen5_2", {"gib": 32.0}, "available"), None),
        ((*AZ_SQL, "S0", {"gib": 32.0}, "available"), None),
        ((*AZ_SQL, "GP_Gen5_4", {"gib": 32.0}, "deleted"), 0.0),
    ],
)
def test_run_rate_of_storage_performance_shared_core_and_licences(
    shape: tuple[object, ...], monthly_or_hourly: float | None
) -> None:
    """Expected values are USD per month (730 h, the providers' convention)."""
    result = usd_per_hour(book(), Shape(*shape))  # type: ignore[arg-type]
    if monthly_or_hourly is None:
        assert result is None
    else:
        assert result == pytest.approx(monthly_or_hourly / 730)
