"""Checks that need no database: the committed files match the code, every datasource uid
exists in the provisioning files, every variable a query uses is defined, every link lands
on a dashboard and variables that exist."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
import yaml

from dashboards import build
from dashboards import interpolate as grafana
from dashboards.model import Dashboard, PromQuery, QueryVariable, SqlQuery

BY_UID = {d.uid: d for d in build.DASHBOARDS}
LINK_VAR = re.compile(r"var-(\w+)=")


def _provisioned() -> tuple[dict[str, str], dict[str, object]]:
    ds = yaml.safe_load((build.HERE / "provisioning/datasources/cct.yaml").read_text())
    providers = yaml.safe_load((build.HERE / "provisioning/dashboards/cct.yaml").read_text())
    return {d["uid"]: d["type"] for d in ds["datasources"]}, providers


def _datasource_refs(node: object) -> list[dict[str, str]]:
    """Every {"type", "uid"} datasource reference anywhere in a dashboard's JSON."""
    found = []
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict) and ref.get("type") != "grafana":
            found.append(ref)
        for value in node.values():
            found.extend(_datasource_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_datasource_refs(value))
    return found


def test_committed_files_are_what_the_code_renders() -> None:
    assert build.main(["--check"]) == 0


def test_uids_are_stable_and_unique() -> None:
    committed = sorted(p.stem for p in build.HERE.glob("*.json"))
    assert (
        committed
        == sorted(BY_UID)
        == sorted(["cct-anomalies", "cct-cost-overview", "cct-optimizations", "cct-pipeline"])
    )
    for uid in committed:
        assert json.loads((build.HERE / f"{uid}.json").read_text())["uid"] == uid


@pytest.mark.parametrize("uid", sorted(BY_UID))
def test_every_datasource_is_provisioned_with_its_type(uid: str) -> None:
    provisioned, _ = _provisioned()
    doc = json.loads((build.HERE / f"{uid}.json").read_text())
    refs = _datasource_refs(doc)
    assert refs
    for ref in refs:
        assert provisioned.get(ref["uid"]) == ref["type"], ref


def test_provisioning_points_grafana_at_the_dashboards_and_holds_no_secret() -> None:
    _, providers = _provisioned()
    assert providers["providers"][0]["options"]["path"] == build.DASHBOARDS_PATH  # type: ignore[index]
    text = (build.HERE / "provisioning/datasources/cct.yaml").read_text()
    # Addresses and credentials come from Grafana's environment, set by the Pulumi component.
    for value in re.findall(r"(?:url|user|password|database): (.*)", text):
        assert re.fullmatch(r"\$\{CCT_GRAFANA_[A-Z_]+\}", value), value


def _queries(d: Dashboard) -> list[PromQuery | SqlQuery]:
    return [q for p in d.panels() for q in p.queries] + [a.query for a in d.annotations]


@pytest.mark.parametrize("uid", sorted(BY_UID))
def test_every_variable_a_query_uses_is_defined(uid: str) -> None:
    d = BY_UID[uid]
    names = [v.name for v in d.variables]
    ctx = grafana.Context(
        values={n: [grafana.ALL] for n in names},
        all_values={n: ".*" for n in names},
        start=datetime(2026, 11, 1, tzinfo=UTC),
        end=datetime(2026, 11, 2, tzinfo=UTC),
    )
    texts = [
        grafana.promql(q.expr, ctx) if isinstance(q, PromQuery) else grafana.sql(q.sql, ctx)
        for q in _queries(d)
    ]
    texts += [grafana.promql(v.query, ctx) for v in d.variables if isinstance(v, QueryVariable)]
    texts += [grafana.promql(p.title, ctx) for p in d.panels()]
    for text in texts:
        # Interpolation raised on any unknown name; nothing variable-like may survive it.
        assert not re.search(r"\$\{?[A-Za-z_]", text), text


@pytest.mark.parametrize("uid", sorted(BY_UID))
def test_links_land_on_existing_dashboards_and_variables(uid: str) -> None:
    d = BY_UID[uid]
    links = [(p.title, link) for p in d.panels() for link in p.links]
    for var in d.carried_vars:
        assert var in {v.name for v in d.variables}
    for title, link in links:
        target = BY_UID.get(link.dashboard_uid)
        assert target is not None, f"{title}: no dashboard {link.dashboard_uid}"
        target_vars = {v.name for v in target.variables}
        url = link.url(d.carried_vars)
        for name in LINK_VAR.findall(url):
            assert name in target_vars, f"{title}: {target.uid} has no variable {name}"
            # Set once: either carried (${name:queryparam}) or set by the link, never both.
            assert f"${{{name}:queryparam}}" not in url, f"{title}: {name} set twice"
    # Every dashboard links onwards somewhere (drill-down), and the header links all CCT
    # dashboards by tag.
    assert links
    assert json.loads((build.HERE / f"{uid}.json").read_text())["links"][0]["tags"] == ["cct"]


@pytest.mark.parametrize("uid", sorted(BY_UID))
def test_sql_reads_only_the_reporting_views(uid: str) -> None:
    for q in _queries(BY_UID[uid]):
        if isinstance(q, SqlQuery):
            # `extract(epoch from ...)` is not a relation.
            relations = re.findall(
                r"(?<!epoch )\b(?:from|join)\s+([\w.]+)", q.sql, flags=re.IGNORECASE
            )
            assert relations and all(r.startswith("reporting.") for r in relations), q.sql


def test_panels_do_not_overlap() -> None:
    for d in build.DASHBOARDS:
        cells: set[tuple[int, int]] = set()
        for panel in d.to_json()["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24
            area = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not area & cells, f"{d.uid}: {panel['title']} overlaps"
            cells |= area


@pytest.mark.parametrize("uid", sorted(BY_UID))
def test_panels_are_well_formed(uid: str) -> None:
    doc = json.loads((build.HERE / f"{uid}.json").read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in doc["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles must be unique within a dashboard"
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
