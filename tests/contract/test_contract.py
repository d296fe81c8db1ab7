"""The anomaly contract, checked against the real detector's output.

- The recording the consumers' tests use is still what the detector emits (the capture runs
  the real detector on the real services again and compares).
- Every recorded alert conforms to `lambdas.contract`, passes the real bridge, and decodes in
  the trigger.
- Every playbook rule matches something the detector emits, except the rules the inventory
  cannot feed yet (named here, so a change either way fails)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lambdas import contract
from lambdas.alerting.config import DEFAULT_DIMENSIONS
from lambdas.bridge.core import convert
from lambdas.detector.alerts import build_alert
from lambdas.events.cloudevents import decode
from lambdas.trigger.core import plan_run
from lambdas.trigger.mapping import load_mapping
from tests.contract.capture import capture
from tests.contract.recorded import KINDS, recorded_alert, recorded_alerts
from tests.support.services import ROOT

PLAYBOOKS = ROOT / "policies" / "playbooks.yaml"
# Rules no resource the collector knows can match: it prices no object-storage buckets and
# no Azure SQL or Cloud SQL databases yet (lambdas/collector/normalize.py), so the inventory
# never holds their resource types. Remove a rule from here when the collector learns it.
NOT_FED_BY_THE_COLLECTOR = {"storage-tiering"}


def test_the_recording_is_what_the_detector_emits(
    pg_dsn: str, vm_url: str, alertmanager_url: str
) -> None:
    def shape(alerts: list[dict[str, Any]]) -> list[tuple[str, list[str], str]]:
        # Contributors, ancestors and the summary depend on which series VictoriaMetrics
        # already serves in a cycle (timing); labels, annotation names and figures do not.
        return [
            (
                json.dumps(a["labels"], sort_keys=True),
                sorted(a["annotations"]),
                a["annotations"][contract.A_DELTA],
            )
            for a in alerts
        ]

    fresh = capture(pg_dsn, vm_url, alertmanager_url)
    assert shape(fresh) == shape(recorded_alerts()), (
        "the detector's alerts changed: regenerate tests/contract/detector_alerts.json with "
        "`python -m tests.contract.capture` and check the consumers still accept them"
    )


def test_every_recorded_alert_conforms_to_the_contract() -> None:
    alerts = recorded_alerts()
    assert {k for k in KINDS if recorded_alert(k)} == set(KINDS)
    for alert in alerts:
        assert contract.alert_problems(alert["labels"], alert["annotations"]) == []
        dims = set(alert["labels"]) - set(contract.CORE_LABELS)
        assert dims <= set(DEFAULT_DIMENSIONS)  # Alertmanager groups by all of them
    # One incident per cause: no aggregate that a reported resource explains is reported too.
    explained = {
        json.dumps(a["labels"], sort_keys=True)
        for alert in alerts
        for a in json.loads(alert["annotations"][contract.A_ANCESTORS])
    }
    reported = {
        json.dumps(contract.dimensions(x["labels"]["level"], x["labels"]), sort_keys=True)
        for x in alerts
    }
    assert not explained & reported


def test_every_rule_the_detector_can_name_is_in_the_contract() -> None:
    from lambdas.detector.core import RULE_NAMES

    assert set(RULE_NAMES.values()) | {contract.RULE_BUDGET} == set(contract.RULES)
    problems = contract.alert_problems({"rule": "spike"}, {})
    assert f"rule 'spike' is not one of {contract.RULES}" in problems


def test_every_playbook_rule_matches_something_the_detector_emits() -> None:
    mapping = load_mapping(PLAYBOOKS)
    matched = {r.id for r in mapping.rules for a in recorded_alerts() if r.accepts(a["labels"])}
    never = {r.id for r in mapping.rules} - matched
    assert never == NOT_FED_BY_THE_COLLECTOR, f"rules that can never match: {sorted(never)}"
    for rule in mapping.rules:
        assert set(rule.match) <= contract.ALL_LABELS, f"{rule.id} matches unknown labels"


def _webhook(alerts: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    **a,
                    "status": "firing",
                    "startsAt": "2026-12-04T00:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": f"{n:016x}",
                }
                for n, a in enumerate(alerts)
            ],
        }
    ).encode()


def test_recorded_alerts_pass_the_bridge_and_plan_in_the_trigger() -> None:
    mapping = load_mapping(PLAYBOOKS)
    result = convert(_webhook(recorded_alerts()), "2026-12-04T00:00:01Z")
    assert result.ignored == 0
    planned, unmapped = [], []
    for out in result.events:
        event = decode(out.value)
        assert out.type == contract.DETECTED
        rule = mapping.select(event.labels)
        if rule is None:
            unmapped.append(event.labels["level"])
        else:
            planned.append(plan_run(event, rule).playbook)
    assert sorted(planned) == [
        "delete-unattached-volume",
        "rightsize-compute",
        "rightsize-database",
        "stop-idle-compute",
        "stop-idle-compute",
    ]
    assert unmapped == ["service"]


def test_a_list_cut_to_the_value_limit_still_passes_the_bridge() -> None:
    # A diffuse increase: more contributors than fit. The detector cuts each ranked list to
    # the per-value limit; wherever the cut falls, the bridge must take the alert. It used to
    # count the annotation's name too, so a list ending within a dozen characters of the
    # limit dropped the alert whole; and the summary, naming every ancestor, had no limit.
    labels = recorded_alert("diffuse-service")["labels"]
    alerts = []
    for pad in range(120):
        items = [
            {"level": "resource", "labels": {"resource_id": f"i-{n:08d}{'x' * pad}"}, "share": 0.01}
            for n in range(80)
        ]
        alerts.append(
            build_alert(
                labels,
                started_at=0.0,
                ends_at=0.0,
                expected=1.0,
                observed=9.0,
                deviation=8.0,
                baseline="seasonal",
                contributors=items,
                change_events=items,
                ancestors=items,
            )
        )
    result = convert(_webhook(alerts), "2026-12-04T00:00:01Z")
    assert result.invalid == []
    assert len(result.events) == len(alerts)


def test_the_recording_file_is_the_one_the_capture_writes() -> None:
    assert Path(__file__).with_name("detector_alerts.json").is_file()
