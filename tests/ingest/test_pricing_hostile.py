"""Hostile price files: an item that cannot be read or a price that is not a sane amount is
rejected with its reason and place; the rest of the file is loaded, and nothing non-finite,
negative or oversized reaches the catalog (where every run-rate that uses it would read it)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas.cli import cli
from lambdas.pricing.cli import documents
from lambdas.pricing.sources import MAX_USD_PER_UNIT, PriceSourceError, parse, row_problem
from tests.ingest.conftest import FIXTURES, PRICE_FILES


def _docs(provider: str) -> list[Any]:
    return [doc for f in PRICE_FILES[provider] for doc in documents(str(FIXTURES / "prices" / f))]


# The items of each source, and how to reach them in a document (AWS: products by SKU id).
ITEMS = {"azure": "Items", "gcp": "skus", "aws": "products"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


# Values that broke or nearly broke a reader: no float, not finite, not a number, not text.
NASTY: tuple[Any, ...] = (
    10**400,
    -(10**400),
    float("nan"),
    float("inf"),
    "1e400",
    "NaN",
    "-1",
    True,
    None,
    [],
    {},
    "us\x00east",
    "\ud800",
    "x" * 300,
)


def _mutated(item: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(item)
    node: Any = out
    for key in path[:-1]:
        node = node[key] if isinstance(node, dict) else node[int(key)]
    if isinstance(node, dict):
        node[path[-1]] = value
    return out


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every field of an item, nested ones too (list positions as strings)."""
    out: list[list[str]] = []
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in children:
        here = (*prefix, str(key))
        if isinstance(node, dict):
            out.append(list(here))
        out += _paths(child, here)
    return out


@pytest.mark.parametrize("provider", ["azure", "gcp", "aws"])
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_mangled_item_is_rejected_and_the_rest_of_the_page_loads(
    provider: str, data: st.DataObject
) -> None:
    docs = _docs(provider)
    page = data.draw(st.sampled_from([d for d in docs if d[ITEMS[provider]]]), label="page")
    items = page[ITEMS[provider]]
    ids = list(items) if isinstance(items, dict) else list(range(len(items)))
    victim = data.draw(st.sampled_from(ids), label="item")
    path = data.draw(st.sampled_from(_paths(items[victim])), label="field")
    value = data.draw(st.sampled_from(NASTY) | json_values, label="value")
    foreign = data.draw(st.lists(json_values, max_size=3), label="foreign items")
    others = [d for d in docs if d is not page]

    def with_items(victim_item: Any | None, extra: list[Any]) -> dict[str, Any]:
        if isinstance(items, dict):
            kept = {k: v for k, v in items.items() if k != victim}
            if victim_item is not None:
                kept[victim] = victim_item
            kept.update({f"FOREIGN{n}": x for n, x in enumerate(extra)})
            return {**page, ITEMS[provider]: kept}
        kept_list = [v for k, v in enumerate(items) if k != victim]
        if victim_item is not None:
            kept_list.insert(victim, victim_item)
        return {**page, ITEMS[provider]: [*kept_list, *extra]}

    mangled = _mutated(items[victim], path, value)
    parsed = parse(provider, [with_items(mangled, foreign), *others], "hostile")
    untouched = parse(provider, [with_items(None, []), *others], "x")
    own = parse(provider, [{**page, ITEMS[provider]: _only(items, victim, mangled)}], "x")

    assert all(row_problem(r) is None for r in parsed.rows)
    assert all(0 <= r.usd_per_unit <= MAX_USD_PER_UNIT for r in parsed.rows)
    for r in parsed.rows:  # what PostgreSQL's text takes
        text = "".join(r.key)
        assert "\x00" not in text and text.encode()
    # Every other item's rows are still there, at their own price (a key the mangled item
    # still yields may be overridden by it: the later duplicate wins).
    got = {r.key: r.usd_per_unit for r in parsed.rows}
    mangled_keys = {r.key for r in own.rows}
    for row in untouched.rows:
        assert row.key in got
        if row.key not in mangled_keys:
            assert got[row.key] == row.usd_per_unit, row.key


def _only(items: Any, victim: Any, item: Any) -> Any:
    return {victim: item} if isinstance(items, dict) else [item]


REGION_TEXT = "region_id is not a printable text of 1 to 256 characters"
SKU_TEXT = "sku is not a printable text of 1 to 256 characters"
AZ_VM = {
    "type": "Consumption",
    "currencyCode": "USD",
    "serviceName": "Virtual Machines",
    "unitOfMeasure": "1 Hour",
    "armRegionName": "eastus",
    "productName": "Virtual Machines DSv3 Series",
    "skuName": "D4s v3",
    "armSkuName": "Standard_D4s_v3",
    "retailPrice": 0.192,
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"retailPrice": "NaN"}, "price is not a finite number"),
        ({"retailPrice": "inf"}, "price is not a finite number"),
        ({"retailPrice": -0.5}, "price outside 0 to 1e+06 USD per unit"),
        ({"retailPrice": 1e30}, "price outside 0 to 1e+06 USD per unit"),
        (
            {"retailPrice": "cheap"},
            "unreadable item (ValueError: could not convert string to float: 'cheap')",
        ),
        (
            {"armSkuName": None},
            "unreadable item (TypeError: unsupported operand type(s) for +: 'NoneType' and 'str')",
        ),
        ({"armRegionName": 7}, REGION_TEXT),
        ({"armRegionName": ""}, REGION_TEXT),
        ({"armSkuName": "x" * 300}, SKU_TEXT),
        (
            {"armRegionName": "east\x00us"},
            REGION_TEXT,
        ),
        ({"armSkuName": "\ud800"}, SKU_TEXT),
        ({"retailPrice": None}, "unreadable item (TypeError: NoneType where a number belongs)"),
        ({"retailPrice": True}, "unreadable item (TypeError: bool where a number belongs)"),
        (
            {"retailPrice": 10**400},
            "unreadable item (OverflowError: int too large to convert to float)",
        ),
    ],
)
def test_each_bad_azure_item_has_its_reason(change: dict[str, Any], reason: str) -> None:
    bad = {**AZ_VM, **change}
    parsed = parse(
        "azure",
        [{"Items": [AZ_VM, bad, "not an object", {**AZ_VM, "armSkuName": "Standard_D8s_v3"}]}],
        "f",
    )
    assert sorted(r.key.sku for r in parsed.rows) == ["Standard_D4s_v3", "Standard_D8s_v3"]
    assert parsed.rejects.counts[reason] == 1, parsed.rejects.counts
    assert parsed.rejects.examples[reason] == ["Items[1]"]
    assert parsed.rejects.examples == {
        reason: ["Items[1]"],
        "unreadable item (AttributeError: 'str' object has no attribute 'get')": ["Items[2]"],
    }


def test_a_bad_aws_product_is_named_by_its_sku_and_the_rest_loads() -> None:
    doc = copy.deepcopy(_docs("aws")[0])
    victim = next(
        k for k, p in doc["products"].items() if p.get("productFamily") == "Compute Instance"
    )
    doc["products"][victim]["attributes"]["instanceType"] = 5
    dims = next(iter(doc["terms"]["OnDemand"][victim].values()))["priceDimensions"]
    next(iter(dims.values()))["pricePerUnit"]["USD"] = "1e400"  # inf once read
    doc["products"]["JUNK"] = ["not", "a", "product"]
    parsed = parse("aws", [doc], "f")
    assert parsed.rejects.total == 2, parsed.rejects
    places = [where for shown in parsed.rejects.examples.values() for where in shown]
    assert sorted(places) == sorted([f"products[{victim!r}]", "products['JUNK']"])
    rest = copy.deepcopy(doc)
    del rest["products"][victim], rest["products"]["JUNK"]
    assert {r.key for r in parsed.rows} == {r.key for r in parse("aws", [rest], "f").rows}
    assert all(math.isfinite(r.usd_per_unit) for r in parsed.rows)


def test_cct_prices_load_loads_the_rest_and_says_what_it_rejected(
    fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = {
        "Items": [
            AZ_VM,
            {**AZ_VM, "armSkuName": "Standard_D8s_v3", "retailPrice": "NaN"},
            {**AZ_VM, "armSkuName": "Standard_D16s_v3", "retailPrice": 1e30},
            None,
        ],
        "NextPageLink": None,
    }
    path = tmp_path / "page.json"
    path.write_text(json.dumps(page))
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    result = CliRunner().invoke(cli, ["prices", "load", "--provider", "azure", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "loaded 1 prices for azure, rejected 3"
    assert result.stderr.splitlines() == [
        f"{path}: rejected 3:",
        "  1 x price is not a finite number (e.g. Items[1])",
        "  1 x price outside 0 to 1e+06 USD per unit (e.g. Items[2])",
        "  1 x unreadable item (AttributeError: 'NoneType' object has no attribute 'get')"
        " (e.g. Items[3])",
    ]
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("select sku, usd_per_unit::float8 from price_catalog").fetchall()
    assert rows == [("Standard_D4s_v3", 0.192)]


def test_an_api_key_in_a_price_url_is_never_shown_or_stored(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Cloud Billing Catalog needs an API key; the CLI takes it from
    CCT_PRICES_GCP_API_KEY, and one written into a URL stays out of logs, errors and rows."""
    from lambdas.pricing.cli import _with_key, public_location

    skus = "https://cloudbilling.googleapis.com/v1/services/6F81-5844-456A/skus"
    assert public_location(f"{skus}?key=SECRET&currencyCode=USD") == f"{skus}?currencyCode=USD"
    assert public_location("/tmp/page.json?key=x") == "/tmp/page.json?key=x"  # a file name
    assert _with_key(skus, "K") == f"{skus}?key=K"
    assert _with_key(f"{skus}?key=MINE", "K") == f"{skus}?key=MINE"
    assert _with_key("https://prices.azure.com/api/retail/prices", "K").endswith("/prices")
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    refused = "https://127.0.0.1:9/v1/services/x/skus?key=SECRET-123"  # nothing listens
    result = CliRunner().invoke(cli, ["prices", "load", "--provider", "gcp", refused])
    assert result.exit_code == 1
    assert "SECRET-123" not in result.output
    assert "https://127.0.0.1:9/v1/services/x/skus:" in result.output


@pytest.mark.parametrize("sku_name", ["0 vCore", "-2 vCore", "99999 vCore", "2.5 vCore"])
def test_an_impossible_vcore_count_is_no_price_and_the_rest_loads(sku_name: str) -> None:
    """Review finding: a licence meter of "0 vCore" divided its price by zero, which no
    item check caught: the whole Azure load stopped without a reason."""
    licence = {
        **AZ_VM,
        "serviceName": "SQL Database",
        "productName": "SQL Database Single/Elastic Pool General Purpose - SQL License",
        "meterName": "vCore",
        "skuName": sku_name,
        "retailPrice": 0.2,
    }
    parsed = parse("azure", [{"Items": [licence, AZ_VM]}], "f")
    assert [r.key.sku for r in parsed.rows] == ["Standard_D4s_v3"]


def test_a_missing_azure_price_is_no_price_of_zero() -> None:
    item = {k: v for k, v in AZ_VM.items() if k != "retailPrice"}
    parsed = parse("azure", [{"Items": [item]}], "f")
    assert parsed.rows == []
    assert dict(parsed.rejects.counts) == {"unreadable item (KeyError: 'retailPrice')": 1}


def test_a_gcp_region_list_given_as_text_is_not_read_letter_by_letter() -> None:
    skus = [sku for doc in _docs("gcp") for sku in doc["skus"]]
    sku = next(s for s in skus if s["description"] == "SSD backed PD Capacity")
    parsed = parse("gcp", [{"skus": [{**sku, "serviceRegions": "us-central1"}]}], "f")
    assert parsed.rows == []
    assert dict(parsed.rejects.counts) == {
        "unreadable item (TypeError: serviceRegions is a str, not a list)": 1
    }


@pytest.mark.parametrize("terms", [[1], "OnDemand", None, {"OnDemand": []}])
def test_an_aws_file_whose_terms_are_not_an_object_is_not_an_offer_file(terms: Any) -> None:
    with pytest.raises(PriceSourceError, match="not an AWS offer file"):
        parse("aws", [{"products": {}, "terms": terms}], "f")


def test_a_next_page_link_to_a_local_path_is_refused(
    fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "elsewhere.json"
    secret.write_text(json.dumps({"Items": [AZ_VM], "NextPageLink": None}))
    page = tmp_path / "page.json"
    page.write_text(json.dumps({"Items": [], "NextPageLink": str(secret)}))
    monkeypatch.setenv("CCT_PG_DSN", fresh_db)
    result = CliRunner().invoke(cli, ["prices", "load", "--provider", "azure", str(page)])
    assert result.exit_code == 1
    assert f"NextPageLink '{secret}' is not an https URL" in result.stderr
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("select count(*) from price_catalog").fetchone() == (0,)


@pytest.mark.parametrize("price", ["NaN", "-0.01"])
def test_the_catalog_itself_refuses_a_price_no_loader_may_write(fresh_db: str, price: str) -> None:
    """Migration 0103: a writer other than `cct prices load` cannot store a NaN (numeric
    admits it, and sorts it above every number) or negative price either."""
    with psycopg.connect(fresh_db) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            """insert into price_catalog (provider, service_name, region_id, sku, unit,
                   usd_per_unit, source, effective_from)
               values ('azure', 'Virtual Machines', 'eastus', 'X', 'hour', %s::numeric, 't',
                       now())""",
            (price,),
        )
