"""The pure core and the contract: size ladders, target choice, schedules, savings,
applicability, approval, input parsing, the Argo environment input, redaction."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from lambdas.steps.cli import input_from_env
from lambdas.steps.contract import parse_input, parse_parameters
from lambdas.steps.errors import InvalidInput
from lambdas.steps.planning import approval_need, assess, make_plan, verified_saving
from lambdas.steps.playbooks import PLAYBOOKS, RetryPolicy
from lambdas.steps.redact import Redactor
from lambdas.steps.settings import StepSettings
from lambdas.steps.sizing import choose_smaller_size, parse_schedule, smaller_sizes

SETTINGS = StepSettings.from_env()


def _params(**extra: Any) -> Any:
    return parse_parameters({"provider": "aws", "resource-id": "i-0abc", **extra})


@pytest.mark.parametrize(
    ("provider", "sku", "vcpu", "smaller"),
    [
        ("aws", "m5.4xlarge", 16, ["m5.2xlarge", "m5.xlarge", "m5.large", "m5.medium"]),
        ("aws", "db.r6g.xlarge", 4, ["db.r6g.large", "db.r6g.medium"]),
        ("azure", "Standard_D8s_v3", 8, ["Standard_D4s_v3", "Standard_D2s_v3"]),
        ("azure", "GP_Gen5_8", 8, ["GP_Gen5_4", "GP_Gen5_2"]),
        ("gcp", "e2-standard-8", 8, ["e2-standard-4", "e2-standard-2"]),
        ("gcp", "db-custom-4-16384", 4, ["db-custom-2-8192"]),
        ("gcp", "db-n1-standard-8", 8, ["db-n1-standard-4", "db-n1-standard-2"]),
    ],
)
def test_size_ladders(provider: str, sku: str, vcpu: int, smaller: list[str]) -> None:
    got_vcpu, candidates = smaller_sizes(provider, sku)
    assert got_vcpu == vcpu
    assert [c for c, _ in candidates] == smaller


def test_unknown_size_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"t2\.nano"):
        smaller_sizes("aws", "t2.nano")


@pytest.mark.parametrize(
    ("peak", "priced", "target"),
    [
        (10.0, {"m5.2xlarge", "m5.xlarge", "m5.large"}, "m5.xlarge"),  # 40%; large: 80%
        (20.0, {"m5.2xlarge", "m5.xlarge", "m5.large"}, "m5.2xlarge"),  # 40%; xlarge: 80%
        (5.0, {"m5.2xlarge", "m5.large"}, "m5.large"),  # 40%, skipping the unpriced xlarge
        (10.0, {"m5.2xlarge"}, "m5.2xlarge"),  # only priced sizes are candidates
        (45.0, {"m5.2xlarge", "m5.xlarge"}, None),  # 90% on the next size down
    ],
)
def test_choose_smaller_size(peak: float, priced: set[str], target: str | None) -> None:
    choice = choose_smaller_size("aws", "m5.4xlarge", peak, 60.0, frozenset(priced))
    assert choice.target_sku == target
    assert choice.reason


@pytest.mark.parametrize(
    ("text", "hours"),
    [
        ("mon-fri 08:00-18:00", 50.0),
        ("sat 10:00-12:30", 2.5),
        ("none", 0.0),
        ("MON-SUN 00:00-24:00", 168.0),
    ],
)
def test_schedules(text: str, hours: float) -> None:
    assert parse_schedule(text).running_hours_per_week == hours


@pytest.mark.parametrize(
    "text", ["weekdays", "fri-mon 08:00-18:00", "mon 18:00-08:00", "mon 25:00-26:00"]
)
def test_bad_schedules(text: str) -> None:
    with pytest.raises(InvalidInput, match="restart-schedule"):
        parse_schedule(text)


def test_assess_tables() -> None:
    enough = {"datapoints": 24, "peak_hourly_avg_cpu_percent": 10.0, "max_cpu_percent": 3.0}
    running = {"status": "running", "tags": {}}
    ok = assess("stop-idle-compute", _params(environment="dev"), running, enough, SETTINGS)
    assert ok.applicable
    prod = assess(
        "stop-idle-compute",
        _params(environment="dev"),
        {"status": "running", "tags": {"env": "production"}},
        enough,
        SETTINGS,
    )
    assert not prod.applicable and "production" in prod.reason
    busy = assess(
        "stop-idle-compute", _params(), running, {**enough, "max_cpu_percent": 40.0}, SETTINGS
    )
    assert not busy.applicable and "idle limit" in busy.reason
    thin = assess("rightsize-compute", _params(), running, {**enough, "datapoints": 3}, SETTINGS)
    assert not thin.applicable and "need 24" in thin.reason
    gone = assess("delete-unattached-volume", _params(), {"exists": False}, {}, SETTINGS)
    assert not gone.applicable


def test_plans_refuse_to_guess_prices() -> None:
    state = {"sku": "m5.xlarge", "region": "us-east-1"}
    metrics = {"peak_hourly_avg_cpu_percent": 10.0}
    base = {"resource_id": "i-0abc", "region": "us-east-1"}
    no_price = make_plan(
        "rightsize-compute",
        params=_params(),
        base=base,
        state=state,
        metrics=metrics,
        prices={},
        settings=SETTINGS,
    )
    assert no_price.noop and "no list price" in no_price.reason
    vol = make_plan(
        "delete-unattached-volume",
        params=_params(),
        base=base,
        state={"sku": "gp3", "size_gib": 10},
        metrics={},
        prices={"gp3": Decimal("0.08")},
        settings=SETTINGS,
    )
    assert vol.noop and "snapshots" in vol.reason
    pinned = make_plan(
        "rightsize-compute",
        params=_params(**{"target-sku": "m5.large"}),
        base=base,
        state=state,
        metrics=metrics,
        prices={"m5.xlarge": Decimal("0.2"), "m5.large": Decimal("0.1")},
        settings=SETTINGS,
    )
    assert pinned.action_params["target_sku"] == "m5.large"
    assert pinned.estimated_monthly_saving_usd == Decimal("73.00")


@pytest.mark.parametrize(
    ("provider", "bucket_class"),
    [
        ("gcp", "NEARLINE"),
        ("gcp", "COLDLINE"),
        ("gcp", "ARCHIVE"),
        ("azure", "Cool"),
        ("azure", "Cold"),  # an account whose default tier is Cold would get a tierToCool rule
    ],
)
def test_a_tiering_plan_to_a_class_no_cheaper_is_a_noop(provider: str, bucket_class: str) -> None:
    """Review finding: with the colder classes in the catalog, a bucket already Nearline or
    colder (an account whose default tier is Cool) was planned a rule saving $0 or less
    (a Coldline bucket "saved" -$6.00 by moving to Nearline)."""
    from lambdas.pricing.sources import parse
    from lambdas.steps.steps import catalog_skus
    from tests.ingest.conftest import FIXTURES

    name = {"gcp": "gcp_storage_skus.json", "azure": "azure_retail_blob.json"}[provider]
    region = {"gcp": "us-central1", "azure": "eastus"}[provider]
    doc = json.loads((FIXTURES / "prices" / name).read_text())
    rows = {
        r.key.sku: Decimal(str(r.usd_per_unit))
        for r in parse(provider, [doc], "fixture").rows
        if r.key.region_id == region and r.key.unit == "gib_month"
    }
    state = {"sku": bucket_class, "redundancy": "LRS"}
    plan = make_plan(
        "storage-tiering",
        params=_params(provider=provider),
        base={"resource_id": "b"},
        state=state,
        metrics={"size_gib": 1000.0},
        prices=catalog_skus(rows, state, provider),
        settings=SETTINGS,
    )
    assert plan.noop and "nothing to save" in plan.reason


def test_approval_precedence() -> None:
    db_pb, compute_pb = PLAYBOOKS["rightsize-database"], PLAYBOOKS["rightsize-compute"]
    assert approval_need(compute_pb, _params(), None).required is False
    judged = approval_need(compute_pb, _params(), None, verdict_expected=True)
    assert (judged.required, judged.policy_ids) == (True, ("cct/verdict-missing",))
    assert approval_need(compute_pb, _params(), "require-approval").required is True
    assert approval_need(compute_pb, _params(**{"require-approval": "true"}), "allow").required
    assert approval_need(db_pb, _params(), "allow").required is True
    deny = approval_need(db_pb, _params(), "deny", ("p1",), ("no",))
    assert deny.denied and not deny.required and deny.reasons == ("no",)


def test_verified_saving_reads_the_size_back() -> None:
    prices = {"m5.xlarge": Decimal("0.192"), "m5.large": Decimal("0.096")}
    assert verified_saving(
        "rightsize-compute", Decimal("70.08"), {"sku": "m5.xlarge"}, {"sku": "m5.large"}, prices
    ) == Decimal("70.08")
    assert verified_saving(
        "rightsize-compute", Decimal("70.08"), {"sku": "m5.xlarge"}, {"sku": "m5.xlarge"}, prices
    ) == Decimal("0.00")


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ([], "one JSON object"),
        ({"playbook": "rightsize-compute", "parameters": {}}, "run_id"),
        ({"run_id": "r", "playbook": "nope", "parameters": {}}, "input.playbook"),
        (
            {
                "run_id": "r",
                "playbook": "storage-tiering",
                "parameters": {"provider": "ibm", "resource-id": "x"},
            },
            "provider",
        ),
        (
            {
                "run_id": "r",
                "playbook": "storage-tiering",
                "parameters": {"provider": "aws", "resource-id": "b", "dry-run": "maybe"},
            },
            "dry-run",
        ),
        (
            {
                "run_id": "r",
                "playbook": "storage-tiering",
                "parameters": {"provider": "aws", "resource-id": "b", "tags": "{oops"},
            },
            "tags",
        ),
        (
            {
                "run_id": "r",
                "playbook": "storage-tiering",
                "parameters": {"provider": "aws", "resource-id": "b"},
                "previous": {"plan": 1},
            },
            "previous",
        ),
        (
            {
                "run_id": "r",
                "playbook": "storage-tiering",
                "parameters": {"provider": "aws", "resource-id": "b", "tags": "[" * 3000},
            },
            "nested too deeply",
        ),
    ],
)
def test_bad_input_names_the_problem(doc: Any, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        parse_input(doc)


def test_parameters_accept_argo_strings_and_json_types() -> None:
    a = parse_parameters(
        {
            "provider": "aws",
            "resource-id": "i-1",
            "dry-run": "true",
            "tags": '{"team": "x"}',
            "estimated-monthly-impact-usd": "12.5",
        }
    )
    b = parse_parameters(
        {
            "provider": "aws",
            "resource-id": "i-1",
            "dry-run": True,
            "tags": {"team": "x"},
            "estimated-monthly-impact-usd": 12.5,
        }
    )
    assert (a.dry_run, a.tags, a.estimated_impact_usd) == (
        b.dry_run,
        b.tags,
        b.estimated_impact_usd,
    )


def test_input_from_argo_environment() -> None:
    env = {
        "CCT_RUN_ID": "cct-storage-tiering-abc",
        "CCT_PLAYBOOK": "storage-tiering",
        "CCT_PARAM_PROVIDER": "aws",
        "CCT_PARAM_RESOURCE_ID": "bucket-1",
        "CCT_PARAM_ESTIMATED_MONTHLY_IMPACT_USD": "3",
        "CCT_PREVIOUS_PLAN": json.dumps({"noop": True}),
        "CCT_PREVIOUS_EXECUTE": "",
        "UNRELATED": "x",
    }
    doc = input_from_env(env)
    assert doc["parameters"] == {
        "provider": "aws",
        "resource-id": "bucket-1",
        "estimated-monthly-impact-usd": "3",
    }
    assert doc["previous"] == {"plan": {"noop": True}}
    assert "failure" not in doc and "workflow_uid" not in doc
    uid = "6f1c0b5e-8a3d-4c1e-9e51-3f0a2b7c9d10"
    assert parse_input(input_from_env({**env, "CCT_WORKFLOW_UID": uid})).workflow_uid == uid
    failed = input_from_env(
        {
            **env,
            "CCT_WORKFLOW_STATUS": "Failed",
            "CCT_WORKFLOW_FAILURES": '[{"displayName": "execute"}]',
        }
    )
    assert failed["failure"]["message"].startswith("workflow Failed: ")
    with pytest.raises(InvalidInput, match="CCT_PREVIOUS"):
        input_from_env({**env, "CCT_PREVIOUS_PLAN": "{not json"})


def test_redactor_hides_registered_secrets_only() -> None:
    r = Redactor()
    r.add("s3cr3t-value-123")
    r.add("short")  # too short to redact safely
    assert r("key=s3cr3t-value-123 short") == "key=*** short"


def test_retry_delay_is_exponential_and_capped() -> None:
    policy = RetryPolicy(limit=4, backoff_s=5, factor=2, max_backoff_s=30)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 30]


def test_rds_resources_named_by_arn_are_called_by_identifier() -> None:
    from lambdas.steps.steps import api_resource_id

    # The collector names a database by the ARN CloudTrail reports; RDS's API wants the id.
    arn = "arn:aws:rds:us-east-1:111122223333:db:orders-db"
    assert api_resource_id("aws", arn) == "orders-db"
    assert api_resource_id("aws", "i-0123456789abcdef0") == "i-0123456789abcdef0"
    assert api_resource_id("azure", arn) == arn


def test_rds_catalog_prices_are_found_by_the_class_rds_reports() -> None:
    from decimal import Decimal

    from lambdas.steps.steps import catalog_skus

    rows = {
        "db.m5.large/postgres/Single-AZ": Decimal("0.171"),
        "db.m5.large/postgres/Multi-AZ": Decimal("0.342"),
        "db.m5.large/mysql/Single-AZ": Decimal("0.171"),
    }
    state = {"engine": "postgres", "deployment": "Multi-AZ"}
    assert catalog_skus(rows, state)["db.m5.large"] == Decimal("0.342")
    assert "db.m5.large" not in catalog_skus(rows, {})


@pytest.mark.parametrize(
    ("kind", "account_sku", "hot", "cool"),
    [
        ("StorageV2", "Standard_LRS", "0.0184", "0.01"),
        ("StorageV2", "Standard_GRS", "0.0368", "0.02"),
        ("StorageV2", "Standard_RAGRS", "0.046", None),  # no Cool RA-GRS meter: no price
        ("BlockBlobStorage", "Premium_LRS", None, None),  # no access tiers
        ("StorageV2", "", None, None),
        # Review finding: a v1 account (no tiers) and a legacy BlobStorage one (meters of
        # its own) were priced as general-purpose v2.
        ("Storage", "Standard_LRS", None, None),
        ("BlobStorage", "Standard_LRS", None, None),
    ],
)
def test_an_azure_account_s_tiers_are_priced_at_its_own_redundancy(
    kind: str, account_sku: str, hot: str | None, cool: str | None
) -> None:
    """`cct prices load` keeps blob capacity per tier and redundancy (`Cool/LRS`); the
    tiering plan reads the account's tier (`Hot`) and its sku's redundancy."""
    from lambdas.pricing.sources import parse
    from lambdas.steps.providers.azure import blob_redundancy
    from lambdas.steps.steps import catalog_skus
    from tests.ingest.conftest import FIXTURES

    doc = json.loads((FIXTURES / "prices" / "azure_retail_blob.json").read_text())
    rows = {r.key.sku: Decimal(str(r.usd_per_unit)) for r in parse("azure", [doc], "fixture").rows}
    account = {"kind": kind, "sku": {"name": account_sku}}
    state = {"sku": "Hot", "redundancy": blob_redundancy(account)}
    prices = catalog_skus(rows, state, "azure")
    assert (prices.get("Hot"), prices.get("Cool")) == (
        hot and Decimal(hot),
        cool and Decimal(cool),
    )


@pytest.mark.parametrize(
    ("version", "availability", "tier", "prices"),
    [
        # 4 x $0.0413 + 16 GiB x $0.007; the smaller sizes a rightsize may choose too.
        (
            "POSTGRES_15",
            "ZONAL",
            "db-custom-4-16384",
            {"db-custom-4-16384": "0.2772", "db-custom-2-8192": "0.1386"},
        ),
        (
            "POSTGRES_15",
            "REGIONAL",
            "db-custom-4-16384",
            {"db-custom-4-16384": "0.5544", "db-custom-2-8192": "0.2772"},
        ),
        # A shared-core tier is priced by name; no smaller size is chosen from it.
        ("MYSQL_8_0", "ZONAL", "db-g1-small", {"db-g1-small": "0.035"}),
        ("MYSQL_8_0", "ZONAL", "db-f1-micro", {"db-f1-micro": "0.0105"}),
        ("SQLSERVER_2019_STANDARD", "ZONAL", "db-custom-4-16384", {}),  # licence not priced
        ("POSTGRES_15", "REGIONAL", "db-g1-small", {}),  # no regional shared-core price
    ],
)
def test_a_cloud_sql_tier_is_priced_from_its_engine_and_availability(
    version: str, availability: str, tier: str, prices: dict[str, str]
) -> None:
    """`cct prices load` keeps Cloud SQL per vCPU and GiB of each engine and availability
    (`postgres/zonal/core`); the rightsize plan reads the instance's tier, engine and
    availability, as `gcp.sql.set_tier` reads them from the Admin API."""
    from lambdas.pricing.catalog import cloud_sql_engine as sql_engine
    from lambdas.pricing.sources import parse
    from lambdas.steps.steps import catalog_skus
    from tests.ingest.conftest import FIXTURES

    doc = json.loads((FIXTURES / "prices" / "gcp_sql_skus.json").read_text())
    rows = {
        r.key.sku: Decimal(str(r.usd_per_unit))
        for r in parse("gcp", [doc], "fixture").rows
        if r.key.region_id == "us-central1"
    }
    state = {
        "sku": tier,
        "engine": sql_engine(version),
        "availability": availability.lower(),
    }
    found = catalog_skus(rows, state, "gcp")
    assert {
        k: str(v.quantize(Decimal("0.0001"))) for k, v in found.items() if k.startswith("db-")
    } == ({k: str(Decimal(v).quantize(Decimal("0.0001"))) for k, v in prices.items()})


@pytest.mark.parametrize(
    ("sku", "license_type", "zone_redundant", "prices"),
    [
        # compute + 0.1 a vCore-hour of licence; the smaller size a rightsize may choose too
        ("GP_Gen5_4", "LicenseIncluded", False, {"GP_Gen5_4": "1.0088", "GP_Gen5_2": "0.5044"}),
        ("GP_Gen5_4", "BasePrice", False, {"GP_Gen5_4": "0.6088", "GP_Gen5_2": "0.3044"}),
        ("BC_Gen5_2", "LicenseIncluded", False, {}),  # no Business Critical licence price
        ("BC_Gen5_2", "BasePrice", False, {"BC_Gen5_2": "0.8166"}),
        ("GP_Gen5_4", "BasePrice", True, {}),  # its zone-redundancy meter is not read
        ("BC_Gen5_2", "BasePrice", True, {"BC_Gen5_2": "0.8166"}),  # none extra for BC
    ],
)
def test_an_azure_sql_database_is_priced_from_its_compute_and_licence(
    sku: str, license_type: str, zone_redundant: bool, prices: dict[str, str]
) -> None:
    from lambdas.pricing.sources import parse
    from lambdas.steps.steps import catalog_skus
    from tests.ingest.conftest import FIXTURES

    doc = json.loads((FIXTURES / "prices" / "azure_retail_sql.json").read_text())
    rows = {r.key.sku: Decimal(str(r.usd_per_unit)) for r in parse("azure", [doc], "fixture").rows}
    state = {"sku": sku, "license": license_type, "zone_redundant": zone_redundant}
    found = catalog_skus(rows, state, "azure")
    assert {k: v for k, v in found.items() if "/" not in k} == {
        k: Decimal(v) for k, v in prices.items()
    }


@pytest.mark.parametrize(
    ("sku", "properties", "size", "busy"),
    [
        # Public `az sql db show` outputs: a vCore sku is its family's name and vCore count.
        (
            {"name": "GP_Gen5", "tier": "GeneralPurpose", "family": "Gen5", "capacity": 2},
            {
                "currentServiceObjectiveName": "GP_Gen5_2",
                "requestedServiceObjectiveName": "GP_Gen5_2",
            },
            "GP_Gen5_2",
            False,
        ),
        # A DTU database: sku `Standard` of 10 DTUs, service objective S0.
        (
            {"name": "Standard", "tier": "Standard", "capacity": 10},
            {"currentServiceObjectiveName": "S0", "requestedServiceObjectiveName": "S0"},
            "S0",
            False,
        ),
        # A resize under way: requested differs from current.
        (
            {"name": "GP_Gen5", "family": "Gen5", "capacity": 4},
            {
                "currentServiceObjectiveName": "GP_Gen5_4",
                "requestedServiceObjectiveName": "GP_Gen5_2",
            },
            "GP_Gen5_4",
            True,
        ),
        # Neither name given: the sku's family and capacity.
        ({"name": "HS_PRMS", "family": "PRMS", "capacity": 2}, {}, "HS_PRMS_2", False),
    ],
)
def test_an_azure_database_s_size_and_whether_it_is_busy(
    sku: dict[str, Any], properties: dict[str, Any], size: str, busy: bool
) -> None:
    """Review findings: ARM reports a vCore database's sku as `{"name": "GP_Gen5",
    "capacity": 2}`; the size was read as `GP_Gen5`, which no price or resize names and which
    never equalled `currentServiceObjectiveName`, so the database looked busy for good and a
    resize never done (and a DTU database, `Standard` of capacity 10, likewise)."""
    from lambdas.steps.providers.azure import _read_sql

    class Rest:
        def json(self, method: str, path: str, *, params: Any, needs: Any) -> Any:
            return {
                "sku": sku,
                "location": "eastus",
                "properties": {"status": "Online", **properties},
            }

    class Session:
        rest = Rest()

    state = _read_sql(Session(), {"resource_id": "db"})  # type: ignore[arg-type]
    assert (state["sku"], state["busy"]) == (size, busy)


def test_an_azure_disk_is_priced_per_gib_month_at_its_tier_s_price() -> None:
    """What `cct prices load` keeps for Azure disks (a tier's price per hour) becomes the
    per-GiB-month price the delete-unattached-volume plan multiplies by the disk's size."""
    from decimal import Decimal

    from lambdas.pricing.sources import parse
    from lambdas.steps.sizing import HOURS_PER_MONTH
    from lambdas.steps.steps import azure_disk_per_gib
    from tests.ingest.conftest import FIXTURES

    docs = [
        json.loads((FIXTURES / "prices" / f"azure_retail_page{n}.json").read_text()) for n in (1, 2)
    ]
    # As the catalog's numeric(18, 8) column holds them.
    hourly = {
        r.key.sku: Decimal(str(round(r.usd_per_unit, 8)))
        for r in parse("azure", docs, "fixture").rows
        if r.key.unit == "hour"
    }
    p15 = azure_disk_per_gib(hourly, {"sku": "Premium_LRS", "size_gib": 256})
    assert (p15["Premium_LRS"] * 256).quantize(Decimal("0.01")) == Decimal("38.01")
    # A disk below a tier's top pays the whole tier: 100 GiB is a P10 ($19.71).
    p10 = azure_disk_per_gib(hourly, {"sku": "Premium_LRS", "size_gib": 100})
    assert (p10["Premium_LRS"] * 100).quantize(Decimal("0.01")) == Decimal("19.71")
    assert p10["Premium_LRS"] == (hourly["Premium_LRS/P10"] * HOURS_PER_MONTH / 100).quantize(
        Decimal("0.00000001")
    )
    # A raised performance tier is what Azure bills; one without a price falls back to size.
    raised = azure_disk_per_gib(hourly, {"sku": "Premium_LRS", "size_gib": 100, "tier": "P15"})
    assert (raised["Premium_LRS"] * 100).quantize(Decimal("0.01")) == Decimal("38.01")
    unpriced = {"sku": "Premium_LRS", "size_gib": 100, "tier": "P80"}
    assert azure_disk_per_gib(hourly, unpriced) == p10
    # No price for its tier, a sku not priced per tier, no or a nonsense size: nothing.
    for state in (
        {"sku": "Premium_LRS", "size_gib": 1024},
        {"sku": "PremiumV2_LRS", "size_gib": 100},
        {"sku": "Premium_LRS", "size_gib": 0},
        {"sku": "Premium_LRS", "size_gib": float("nan")},
        {"sku": "Premium_LRS"},
        {"size_gib": 100},
    ):
        assert azure_disk_per_gib(hourly, state) == {}, state


@pytest.mark.parametrize(
    ("fixture", "provider", "action"),
    [
        ("azure_vm_write.json", "azure", "azure.compute.deallocate_vm"),
        ("azure_disk_write.json", "azure", "azure.compute.delete_disk"),
        ("gcp_instances_insert.json", "gcp", "gcp.compute.stop_instance"),
        ("gcp_disks_insert.json", "gcp", "gcp.compute.delete_disk"),
        ("gcp_cloudsql_create.json", "gcp", "gcp.sql.set_tier"),
        ("azure_sql_database_write.json", "azure", "azure.sql.update_database_sku"),
    ],
)
def test_collector_resource_ids_reach_the_actions_as_api_ids(
    fixture: str, provider: str, action: str
) -> None:
    """The id the collector stores (from the provider's recorded event, through the real
    normalizer) becomes an id the action's schema accepts: ARM's spelling for Azure's
    lower-cased ids, the relative name for GCP's asset names."""
    import json

    import jsonschema

    from lambdas.collector.normalize import normalize
    from lambdas.steps.registry import ACTIONS
    from lambdas.steps.steps import api_resource_id
    from tests.ingest.conftest import FIXTURES

    event = json.loads((FIXTURES / "events" / fixture).read_text())
    [change] = normalize({"provider": provider, "event": event})
    params = {"resource_id": api_resource_id(provider, change.resource_id)}
    schema = ACTIONS[action].schema
    samples = {"target_sku": {"gcp": "db-custom-2-8192", "azure": "GP_Gen5_2"}[provider]}
    extra = {
        k: samples.get(k, "Mon-Fri 08:00-18:00") for k in schema["required"] if k != "resource_id"
    }
    jsonschema.validate({**params, **extra}, schema)


def test_gcp_machine_prices_are_composed_from_vcpu_and_memory_rows() -> None:
    from decimal import Decimal

    from lambdas.steps.steps import catalog_skus

    rows = {"e2/core": Decimal("0.02181159"), "e2/ram": Decimal("0.00292353")}
    prices = catalog_skus(rows, {"sku": "e2-standard-8"}, "gcp")
    # 8 vCPUs and 32 GiB, as the collector prices the machine.
    assert prices["e2-standard-8"] == Decimal("0.02181159") * 8 + Decimal("0.00292353") * 32
    assert prices["e2-standard-4"] < prices["e2-standard-8"]  # a rightsize can find a target
    assert "n2-standard-8" not in catalog_skus(rows, {"sku": "n2-standard-8"}, "gcp")
    assert catalog_skus(rows, {"sku": "f1-micro"}, "gcp") == rows


GCP_ASSET = "//compute.googleapis.com/projects/cct-prod-1/zones/us-east1-b/instances/web-1"
AZURE_VM = (
    "/subscriptions/d3b7c1a2-4e5f-4a6b-9c8d-7e6f5a4b3c2d/resourceGroups/rg-web"
    "/providers/Microsoft.Compute/virtualMachines/vm-web-1"
)


def _io_without_clouds() -> Any:
    """A StepIO whose clouds and database fail the test if a step opens them."""
    from contextlib import contextmanager

    from lambdas.steps.steps import StepIO

    @contextmanager
    def never(*_: Any) -> Any:
        raise AssertionError("a credential was fetched for a resource the action refuses")
        yield

    return StepIO(settings=SETTINGS, cloud=never, db=never)


@pytest.mark.parametrize(
    ("provider", "resource_id", "error"),
    [
        ("azure", "https://attacker.example/steal", "does not match"),
        ("azure", "//attacker.example/steal", "does not match"),
        ("azure", AZURE_VM.replace("virtualMachines", "disks"), "does not match"),
        ("gcp", "https://attacker.example/projects/p/zones/z/instances/i", "does not match"),
        ("aws", "i-0abc/../../attacker", "does not match"),
    ],
)
def test_an_id_the_action_does_not_accept_never_reaches_a_cloud(
    provider: str, resource_id: str, error: str
) -> None:
    """analyze checks the resource against the action's schema before it asks Vault for a
    credential: an absolute URL as the Azure id once sent the ARM token to its host."""
    from lambdas.steps.steps import analyze

    inp = parse_input(
        {
            "run_id": "r1",
            "playbook": "rightsize-compute",
            "parameters": {"provider": provider, "resource-id": resource_id, "region": "r"},
        }
    )
    with pytest.raises(InvalidInput, match=error):
        analyze(inp, _io_without_clouds())


@pytest.mark.parametrize(
    ("provider", "resource_id", "account", "refused"),
    [
        ("azure", AZURE_VM, "d3b7c1a2-4e5f-4a6b-9c8d-7e6f5a4b3c2d", False),
        ("azure", AZURE_VM.lower(), "D3B7C1A2-4E5F-4A6B-9C8D-7E6F5A4B3C2D", False),
        ("azure", AZURE_VM, "00000000-0000-0000-0000-000000000000", True),
        ("gcp", "projects/cct-prod-1/zones/us-east1-b/instances/web-1", "cct-prod-1", False),
        ("gcp", "projects/cct-prod-1/zones/us-east1-b/instances/web-1", "cct-dev-1", True),
        ("gcp", GCP_ASSET, "p", True),
        ("aws", "arn:aws:rds:us-east-1:111122223333:db:orders", "111122223333", False),
        ("aws", "arn:aws:rds:us-east-1:111122223333:db:orders", "444455556666", True),
        ("aws", "i-0abc12345678", "444455556666", False),  # an EC2 id names no account
        ("azure", AZURE_VM, "", False),  # no account given: nothing to compare
    ],
)
def test_a_resource_outside_the_run_s_account_is_refused(
    provider: str, resource_id: str, account: str, refused: bool
) -> None:
    """The policies judged, and the run records, the account in `account-id`: a resource id
    naming another subscription, project or account is refused before any cloud call."""
    from lambdas.steps.steps import _action, _base, check_resource

    playbook = "rightsize-database" if resource_id.startswith("arn:") else "rightsize-compute"
    params = {"provider": provider, "resource-id": resource_id, "account-id": account}
    inp = parse_input({"run_id": "r1", "playbook": playbook, "parameters": params})
    base = {k: v for k, v in _base(inp).items() if k != "region"}
    if refused:
        with pytest.raises(InvalidInput, match=r"not in parameters\.account-id"):
            check_resource(inp, _action(inp), base)
    else:
        check_resource(inp, _action(inp), base)


def test_the_api_client_sends_its_token_only_to_its_own_host() -> None:
    from lambdas.steps.errors import Permanent
    from lambdas.steps.rest import RestClient

    rest = RestClient("https://management.azure.com", "token", 5.0)
    assert rest.url("/subscriptions/s") == "https://management.azure.com/subscriptions/s"
    operation = "https://management.azure.com/subscriptions/s/operations/1?api-version=1"
    assert rest.url(operation) == operation  # a long-running operation's header
    explicit = "https://management.azure.com:443/subscriptions/s/operationsStatus/1"
    assert rest.url(explicit) == explicit  # ARM names the default port in some of them
    assert RestClient("https://management.azure.com:443", "t", 5.0).url(operation) == operation
    for elsewhere in (
        "https://attacker.example/x",
        "http://management.azure.com/x",  # plain HTTP
        "https://management.azure.com.attacker.example/x",
        "//attacker.example/x",
        "@attacker.example/x",
        "subscriptions/s",
    ):
        with pytest.raises(Permanent, match="refusing to send the API credential"):
            rest.url(elsewhere)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (403, {"error": {"code": 403, "errors": [{"reason": "rateLimitExceeded"}]}}, "Retryable"),
        (403, {"error": {"errors": [{"reason": "userRateLimitExceeded"}]}}, "Retryable"),
        (409, {"error": {"errors": [{"reason": "operationInProgress"}]}}, "Retryable"),
        (403, {"error": {"errors": [{"reason": "forbidden"}]}}, "AccessDenied"),
        (403, {"error": {"code": "AuthorizationFailed"}}, "AccessDenied"),
        (409, {"error": {"errors": [{"reason": "alreadyExists"}]}}, "Permanent"),
    ],
)
def test_rate_limits_reported_as_403_are_retried_and_denials_are_not(
    status: int, body: dict[str, Any], error: str
) -> None:
    """Google reports rate limits as HTTP 403 with their reason, and a Cloud SQL instance
    busy with another operation as 409 `operationInProgress`: both clear up on their own."""
    from http.server import BaseHTTPRequestHandler

    from lambdas.steps.errors import StepError
    from lambdas.steps.rest import RestClient
    from tests.support.http import serving_http

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with serving_http(Handler) as url, pytest.raises(StepError) as caught:
        RestClient(url, "token", 5.0).call("GET", "/x", needs=("compute.instances.get",))
    assert type(caught.value).__name__ == error


@pytest.mark.parametrize(
    ("environment", "tags", "production"),
    [
        ("", {"Environment": "production"}, True),
        ("", {"Environment": "Production"}, True),
        ("", {"ENV": "prod"}, True),
        ("", {" env ": " PRD "}, True),
        ("prod-eu", {}, True),
        ("prod ", {}, True),
        ("", {"environment": "production_2"}, True),
        ("", {"env": "preprod"}, False),
        ("dev", {"Environment": "staging"}, False),
        ("", {"Name": "prod"}, False),
        ("", {}, False),
    ],
)
def test_production_is_recognised_in_any_tag_spelling(
    environment: str, tags: dict[str, str], production: bool
) -> None:
    """stop-idle-compute never stops production: AWS's usual tag is `Environment`, and Azure's
    tag names are case-insensitive."""
    enough = {"datapoints": 24, "peak_hourly_avg_cpu_percent": 1.0, "max_cpu_percent": 2.0}
    state = {"status": "running", "tags": tags}
    verdict = assess("stop-idle-compute", _params(environment=environment), state, enough, SETTINGS)
    assert verdict.applicable is not production


@pytest.mark.parametrize("code", ["ExpiredToken", "RequestExpired", "ExpiredTokenException"])
def test_an_expired_aws_credential_is_retryable(code: str) -> None:
    """A wait longer than the Vault-issued credential's TTL: the retried step logs in again."""
    import botocore.exceptions

    from lambdas.steps.errors import Retryable
    from lambdas.steps.providers.aws import aws_errors

    error = {"Error": {"Code": code, "Message": "expired"}, "ResponseMetadata": {}}
    denied = botocore.exceptions.ClientError(error, "StartInstances")  # type: ignore[arg-type]
    with pytest.raises(Retryable, match=code), aws_errors("ec2:StartInstances i-1", ()):
        raise denied


@pytest.mark.parametrize(
    ("backend", "playbook", "required", "ids"),
    [
        ("argo", "rightsize-compute", True, ("cct/verdict-missing",)),
        ("argo", "rightsize-database", True, ("playbook:rightsize-database",)),
        ("local", "rightsize-compute", False, ()),
    ],
)
def test_a_run_in_the_cluster_without_a_recorded_verdict_asks_a_person(
    backend: str, playbook: str, required: bool, ids: tuple[str, ...]
) -> None:
    """The admission webhook writes its verdicts on the side; a lost one must not let a
    require-approval change run unapproved (fail closed). The local backend has no webhook."""
    import dataclasses

    from lambdas.steps.steps import _approval_need

    inp = parse_input({"run_id": "r", "playbook": playbook, "parameters": _params().raw})
    need = _approval_need(inp, None, dataclasses.replace(SETTINGS, backend=backend))
    assert (need.required, need.denied, need.policy_ids) == (required, False, ids)


@pytest.mark.parametrize(
    ("bucket", "region"),
    [
        ({"location": "US-CENTRAL1", "locationType": "region"}, "us-central1"),
        ({"location": "US", "locationType": "multi-region"}, "us"),
        # Review finding: a configurable dual-region bucket reports a multi-region's name
        # and was priced as the `us` multi-region.
        (
            {
                "location": "US",
                "locationType": "dual-region",
                "customPlacementConfig": {"dataLocations": ["US-EAST1", "US-WEST1"]},
            },
            "",
        ),
    ],
)
def test_a_gcs_bucket_is_priced_where_its_storage_is(bucket: dict[str, Any], region: str) -> None:
    from lambdas.steps.providers.gcp import _read_bucket

    class Storage:
        def json(self, method: str, path: str, *, needs: tuple[str, ...]) -> Any:
            return {"name": "b", "storageClass": "STANDARD", **bucket}

    class Session:
        def api(self, service: str) -> Storage:
            return Storage()

    state = _read_bucket(Session(), {"resource_id": "b"})  # type: ignore[arg-type]
    assert (state["sku"], state["region"]) == ("STANDARD", region)


def test_gcs_tiering_keeps_every_rule_the_bucket_had() -> None:
    """A user's own STANDARD -> ARCHIVE rule looked like CCT's (GCS rules have no ids) and was
    replaced; every rule is kept now and CCT's added."""
    from lambdas.steps.providers.gcp import _gcs_apply

    sent: list[Any] = []

    class Storage:
        def json(self, method: str, path: str, *, body: Any, needs: tuple[str, ...]) -> Any:
            sent.append((method, path, body))
            return {}

    class Session:
        def api(self, service: str) -> Storage:
            assert service == "storage"
            return Storage()

    theirs = {
        "action": {"type": "SetStorageClass", "storageClass": "ARCHIVE"},
        "condition": {"age": 365, "matchesStorageClass": ["STANDARD"]},
    }
    params = {"resource_id": "b", "storage_class": "NEARLINE", "transition_days": 30}
    _gcs_apply(Session(), params, {"rules": [theirs]})  # type: ignore[arg-type]
    [(method, _, body)] = sent
    ours = {
        "action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
        "condition": {"age": 30, "matchesStorageClass": ["STANDARD"]},
    }
    assert (method, body) == ("PATCH", {"lifecycle": {"rule": [theirs, ours]}})


def test_an_rds_resize_with_other_changes_queued_is_refused() -> None:
    """ApplyImmediately applies every change queued for the maintenance window (an engine
    upgrade...) with the resize; only the class was approved."""
    from lambdas.steps.errors import Permanent
    from lambdas.steps.providers.aws import _rds_apply

    class Never:
        def client(self, service: str) -> Any:
            raise AssertionError("the database was modified")

    before = {"status": "available", "pending_other": ["EngineVersion"]}
    params = {"resource_id": "orders", "target_sku": "db.m5.large"}
    with pytest.raises(Permanent, match=r"queued for its maintenance window \(EngineVersion\)"):
        _rds_apply(Never(), params, before)  # type: ignore[arg-type]


def test_a_resize_that_fails_in_any_way_starts_the_instance_again() -> None:
    """Not only the providers' mapped errors: a connection reset while setting the type must
    not leave the instance stopped."""
    from lambdas.steps.action import resize_or_restore

    calls: list[str] = []

    def set_type(sku: str) -> None:
        calls.append(f"set {sku}")
        if sku == "small":
            raise ConnectionResetError("reset by peer")

    def start() -> None:
        calls.append("start")

    with pytest.raises(ConnectionResetError):
        resize_or_restore({"sku": "big"}, "small", set_type, start, "instance i-1")
    assert calls == ["set small", "start"]  # the type never changed: started as it was


def test_gcp_zones_with_two_digit_numbers_are_gcp_zones() -> None:
    from lambdas.steps.registry import ACTIONS

    for zone in ("europe-west10-a", "us-central1-b"):
        rid = f"projects/cct-payments-dev/zones/{zone}/instances/web-1"
        ACTIONS["gcp.compute.resize_instance"].validate_resource({"resource_id": rid})


def test_a_domain_scoped_project_s_cloud_sql_instance_reaches_its_action() -> None:
    """Review finding: the collector prices instances of legacy domain-scoped projects
    (`example.com:shop`), whose rightsize run then failed the action's schema."""
    import jsonschema

    from lambdas.steps.registry import ACTIONS
    from lambdas.steps.steps import api_resource_id

    asset = "//cloudsql.googleapis.com/projects/example.com:shop-prod/instances/orders-db"
    params = {"resource_id": api_resource_id("gcp", asset), "target_sku": "db-custom-2-8192"}
    assert params["resource_id"] == "projects/example.com:shop-prod/instances/orders-db"
    jsonschema.validate(params, ACTIONS["gcp.sql.set_tier"].schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**params, "resource_id": "projects/x/instances/../y"},
            ACTIONS["gcp.sql.set_tier"].schema,
        )
