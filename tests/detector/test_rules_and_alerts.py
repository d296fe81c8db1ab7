"""Budget rules for vmalert (checked by the real `vmalert -dryRun`) and the alert shape."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lambdas.common.settings import SettingsError
from lambdas.detector.alerts import alert_labels, build_alert, fingerprint
from lambdas.detector.attribution import Contributor
from lambdas.detector.config import SeriesKey
from lambdas.detector.rules import (
    Budget,
    RulesSettings,
    load_budgets,
    parse_budgets,
    render_vmalert_rules,
)

BUDGETS = (
    Budget("payments-hourly", "team", {"team": "payments"}, 120.0),
    Budget(
        "aws-main",
        "account",
        {"provider": "aws", "billing_account_id": "111122223333"},
        900.0,
        severity="critical",
        for_="5m",
    ),
    Budget(
        "odd-quotes",
        "service",
        {"service_name": 'Weird "name" \\ with slash', "region_id": "us-east-1"},
        5.5,
    ),
)


def dry_run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["vmalert", "-dryRun", f"-rule={path}"], capture_output=True, text=True)


@pytest.mark.parametrize("budgets", [BUDGETS, ()], ids=["budgets", "none"])
def test_rendered_rules_pass_vmalert_dry_run(tmp_path: Path, budgets: tuple[Budget, ...]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(render_vmalert_rules(RulesSettings(budgets=budgets)))
    result = dry_run(path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_rules_follow_the_alert_contract() -> None:
    doc = yaml.safe_load(render_vmalert_rules(RulesSettings(budgets=BUDGETS, basis="reconciled")))
    [group] = doc["groups"]
    assert group["interval"] == "3s"
    rules = {r["labels"]["budget"]: r for r in group["rules"]}
    team = rules["payments-hourly"]
    assert team["alert"] == "CostAnomaly"
    assert team["expr"] == (
        'sum by (team) (cct_cost_rate_rollup_usd_per_hour{basis="reconciled",team="payments"})'
        " > 120.0"
    )
    assert team["labels"] == {
        "severity": "warning",
        "level": "team",
        "rule": "budget",
        "source": "vmalert",
        "budget": "payments-hourly",
    }
    assert set(team["annotations"]) >= {
        "expected_usd_per_hour",
        "observed_usd_per_hour",
        "delta_usd_per_hour",
        "deviation",
        "contributors",
        "change_events",
        "summary",
    }
    assert rules["aws-main"]["for"] == "5m"
    assert rules["aws-main"]["labels"]["severity"] == "critical"
    assert 'service_name="Weird \\"name\\" \\\\ with slash"' in rules["odd-quotes"]["expr"]


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"name": "x"}, "expected a list"),
        ([{"name": "x", "level": "team", "match": {"team": "a"}}], "missing key 'usd_per_hour'"),
        (
            [{"name": "x", "level": "resource", "match": {"resource_id": "a"}, "usd_per_hour": 1}],
            "level must be one of",
        ),
        (
            [{"name": "x", "level": "team", "match": {"region_id": "a"}, "usd_per_hour": 1}],
            "match needs labels of level team",
        ),
        ([{"name": "x", "level": "team", "match": {"team": "a"}, "usd_per_hour": 0}], "> 0"),
        (
            [
                {
                    "name": "x",
                    "level": "team",
                    "match": {"team": "a"},
                    "usd_per_hour": 1,
                    "severity": "page",
                }
            ],
            "severity must be one of",
        ),
        (
            [{"name": "bad name", "level": "team", "match": {"team": "a"}, "usd_per_hour": 1}],
            "name must match",
        ),
        (
            [{"name": "x", "level": "team", "match": {"team": "a"}, "usd_per_hour": 1, "x": 1}],
            "unknown key",
        ),
        (
            [
                {"name": "x", "level": "team", "match": {"team": "a"}, "usd_per_hour": 1},
                {"name": "x", "level": "team", "match": {"team": "b"}, "usd_per_hour": 1},
            ],
            "unique",
        ),
    ],
)
def test_bad_budget_configuration_names_the_problem(doc: object, error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        parse_budgets(doc)


def test_budgets_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(
        "- name: web\n  level: team\n  match: {team: web}\n  usd_per_hour: 40\n  for: 1m\n"
    )
    monkeypatch.setenv("CCT_DETECTOR_BUDGETS_FILE", str(path))
    settings = RulesSettings.from_env()
    assert settings.budgets == load_budgets(path)
    assert settings.budgets[0].for_ == "1m"
    path.write_text("- [unclosed\n")
    with pytest.raises(SettingsError, match="CCT_DETECTOR_BUDGETS_FILE"):
        RulesSettings.from_env()


def test_alert_has_the_contract_labels_and_annotations() -> None:
    key = SeriesKey.of(
        "service",
        {"provider": "aws", "billing_account_id": "111", "region_id": "", "service_name": "EC2"},
    )
    labels = alert_labels(key, "day0_step", "critical")
    assert labels == {
        "alertname": "CostAnomaly",
        "severity": "critical",
        "level": "service",
        "rule": "day0_step",
        "source": "detector",
        "provider": "aws",
        "billing_account_id": "111",
        "service_name": "EC2",
    }
    contributor = Contributor("resource", {"resource_id": "i-1"}, 0.0, 40.0, 40.0, 1.0)
    alert = build_alert(
        labels,
        started_at=1_780_000_000.0,
        ends_at=1_780_000_120.0,
        expected=60.0,
        observed=100.0,
        deviation=0.6667,
        baseline="day0_reference",
        contributors=[contributor.as_json()],
        change_events=[],
    )
    ann = alert["annotations"]
    assert ann["expected_usd_per_hour"] == "60.0000"
    assert ann["observed_usd_per_hour"] == "100.0000"
    assert ann["delta_usd_per_hour"] == "40.0000"
    assert ann["deviation"] == "0.6667"
    assert json.loads(ann["contributors"])[0]["labels"] == {"resource_id": "i-1"}
    assert json.loads(ann["change_events"]) == []
    assert "i-1 (100%)" in ann["summary"]
    assert alert["startsAt"].startswith("2026-05-28T")
    assert alert["startsAt"] < alert["endsAt"]


def test_fingerprint_is_alertmanagers_fnv64a_of_sorted_labels() -> None:
    # The empty set is FNV-64a's offset basis, as in Prometheus' model.LabelSet.Fingerprint;
    # test_live.py compares non-trivial sets with the real Alertmanager's fingerprints.
    assert fingerprint({}) == "cbf29ce484222325"
    a = fingerprint({"alertname": "CostAnomaly", "team": "web"})
    assert a == fingerprint({"team": "web", "alertname": "CostAnomaly"})
    assert a != fingerprint({"alertname": "CostAnomaly", "team": "web2"})
    assert len(a) == 16


def test_instant_query_rows_become_keys_and_untagged_groups_are_skipped() -> None:
    from lambdas.detector.service import KEY_SEP, KeyCache, Vector, group_query, parse_vector

    assert group_query("team", 'm{basis="list"}') == (
        'sum by (cct_key) (label_join(m{basis="list"}, "cct_key", "\\x1f", "team"))'
    )
    rows = [
        {"metric": {"cct_key": "web"}, "value": [1.0, "12.5"]},
        {"metric": {}, "value": [1.0, "99"]},  # resources without a team tag
    ]
    cache: KeyCache = {}
    out = Vector()
    parse_vector("team", rows, cache, out)
    assert (out.keys, out.values, out.rejected) == (
        [SeriesKey.of("team", {"team": "web"})],
        [12.5],
        0,
    )
    again = Vector()
    parse_vector("team", rows, cache, again)
    assert again.keys[0] is out.keys[0]  # served from the cache

    account = [
        {"metric": {"cct_key": KEY_SEP.join(["aws", "111"])}, "value": [1.0, "3"]},
        {"metric": {"cct_key": KEY_SEP.join(["aws", "1", "1"])}, "value": [1.0, "4"]},
    ]
    out = Vector()
    parse_vector("account", account, {}, out)
    assert out.keys == [SeriesKey.of("account", {"provider": "aws", "billing_account_id": "111"})]
    assert out.rejected == 1  # a label value that held the separator is counted, not guessed


def test_ranked_lists_are_cut_to_what_the_bridge_accepts() -> None:
    import json

    from lambdas.detector.alerts import json_within
    from lambdas.events.cloudevents import EventLimits

    # A diffuse increase over many resources: 200 contributors, ranked by share.
    items = [{"resource_id": f"vol-{i:017x}", "share": (200 - i) / 1000} for i in range(200)]
    text = json_within(items)
    kept = json.loads(text)
    assert len(text) <= EventLimits().max_value_chars
    assert kept == items[: len(kept)] and len(kept) > 10  # the largest ones, in order
    assert json_within(items[:3]) == json.dumps(items[:3], sort_keys=True)
    assert json_within(items, limit=2) == "[]"
