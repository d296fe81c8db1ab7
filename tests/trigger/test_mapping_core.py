"""The playbook mapping (file, schema, selection) and the pure planning of a run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lambdas import contract
from lambdas.detector.alerts import fingerprint
from lambdas.events.cloudevents import (
    AnomalyEvent,
    InvalidEvent,
    anomaly_event,
    decode,
    encode,
    incident_id,
    unmapped_event,
)
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.trigger.core import plan_run, tags_parameter, workflow_name
from lambdas.trigger.mapping import MappingError, load_mapping, parse_mapping
from tests.support.services import ROOT
from tests.trigger.events import EC2, RDS, event_bytes, labels, recorded_annotations

MAPPING = ROOT / "policies" / "playbooks.yaml"
SCHEMA = json.loads((ROOT / "policies" / "playbooks.schema.json").read_text())


def test_shipped_mapping_is_valid_and_names_only_known_playbooks() -> None:
    mapping = load_mapping(MAPPING)
    assert {r.playbook for r in mapping.rules} == set(PLAYBOOKS)
    assert set(SCHEMA["$defs"]["rule"]["properties"]["playbook"]["enum"]) == set(PLAYBOOKS)


@pytest.mark.parametrize(
    ("overrides", "playbook"),
    [
        ({"env": "dev"}, "stop-idle-compute"),
        ({"env": "prod"}, "rightsize-compute"),
        ({"resource_type": "DBInstance", "service_name": RDS}, "rightsize-database"),
        ({"resource_type": "compute.googleapis.com/Disk"}, "delete-unattached-volume"),
        ({"resource_type": "Microsoft.Storage/storageAccounts"}, "storage-tiering"),
        ({"level": "service"}, None),
        ({"resource_type": "LoadBalancer"}, None),
    ],
)
def test_first_matching_rule_wins(overrides: dict[str, str], playbook: str | None) -> None:
    rule = load_mapping(MAPPING).select(labels("x", **overrides))
    assert (rule.playbook if rule else None) == playbook


def base_doc() -> dict[str, Any]:
    return {
        "version": 1,
        "rules": [{"id": "r", "playbook": "rightsize-compute", "match": {"level": ["resource"]}}],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"extra": 1},
            "m.yaml: (top): Additional properties are not allowed ('extra' was unexpected)",
        ),
        ({"version": 2}, "m.yaml: version: 1 was expected"),
        ({"rules": []}, "m.yaml: rules: [] should be non-empty"),
        (
            {"rules": [{"id": "r", "playbook": "reboot", "match": {"level": ["resource"]}}]},
            "m.yaml: rules/0/playbook: 'reboot' is not one of",
        ),
        (
            {"rules": [{"id": "r", "playbook": "storage-tiering", "match": {}}]},
            "m.yaml: rules/0/match: {} should be non-empty",
        ),
        (
            {"rules": [{"id": "r", "playbook": "storage-tiering", "match": {"env": []}}]},
            "m.yaml: rules/0/match/env: [] should be non-empty",
        ),
        (
            {
                "rules": [
                    {"id": "r", "playbook": "storage-tiering", "match": {"env": ["a"]}},
                    {"id": "r", "playbook": "storage-tiering", "match": {"env": ["b"]}},
                ]
            },
            "m.yaml: rules/1/id: duplicate rule id 'r'",
        ),
        (
            {"rules": [{"id": "r", "playbook": "storage-tiering", "match": {"e": ["a"]}, "x": 1}]},
            "m.yaml: rules/0: Additional properties are not allowed ('x' was unexpected)",
        ),
    ],
)
def test_invalid_mappings_are_refused_naming_the_problem(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(MappingError) as err:
        parse_mapping({**base_doc(), **change}, SCHEMA, "m.yaml")
    assert str(err.value).startswith(message)


def test_unreadable_or_non_yaml_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="No such file"):
        load_mapping(tmp_path / "missing.yaml", ROOT / "policies" / "playbooks.schema.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [")
    with pytest.raises(MappingError, match="not YAML"):
        load_mapping(bad, ROOT / "policies" / "playbooks.schema.json")
    bad.write_text(yaml.safe_dump({"version": 1}))
    with pytest.raises(MappingError, match="'rules' is a required property"):
        load_mapping(bad, ROOT / "policies" / "playbooks.schema.json")


def test_workflow_name_is_the_documented_hash() -> None:
    digest = hashlib.sha256(b"abc/rightsize-compute").hexdigest()[:12]
    assert workflow_name("abc", "rightsize-compute") == f"cct-rightsize-compute-{digest}"
    assert workflow_name("abc", "rightsize-compute") != workflow_name("abd", "rightsize-compute")


def _firing(starts_at: str, **overrides: str) -> AnomalyEvent:
    """A firing event of the recorded dev instance, its fingerprint Alertmanager's."""
    alert_labels = labels("u1", **overrides)
    alert = {
        "status": "firing",
        "labels": alert_labels,
        "annotations": recorded_annotations("u1"),
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint(alert_labels),
    }
    return decode(encode(anomaly_event(alert, "2026-11-27T09:00:01Z")))


def test_one_incident_names_one_run_per_playbook_whatever_its_severity() -> None:
    """An escalation changes the severity label, so the fingerprint and the event id; the
    run's name must not change with it (tests/trigger/test_escalation.py has the real
    chain)."""
    warning = _firing("2026-11-27T09:00:00.5Z", severity="warning")
    critical = _firing("2026-11-27T09:00:00.5Z", severity="critical")
    assert warning.id != critical.id and warning.incident == critical.incident
    assert warning.incident == incident_id(
        {k: v for k, v in warning.labels.items() if k not in contract.ESCALATING_LABELS},
        warning.starts_at,
    )
    rule = load_mapping(MAPPING).select(warning.labels)
    assert rule is not None
    assert plan_run(warning, rule).run_id == plan_run(critical, rule).run_id
    assert plan_run(critical, rule).event_id == critical.id
    # Another playbook for the same incident is another run.
    other = replace(rule, playbook="rightsize-compute")
    assert plan_run(warning, other).run_id != plan_run(warning, rule).run_id
    # A later incident of the same series, or another resource, is another incident.
    assert _firing("2026-11-27T10:00:00Z", severity="warning").incident != warning.incident
    assert _firing(warning.starts_at, resource_id="i-other").incident != warning.incident


def test_plan_run_builds_the_section_6_parameters() -> None:
    event = decode(event_bytes("u1", 3))
    rule = load_mapping(MAPPING).select(event.labels)
    assert rule is not None
    run = plan_run(event, rule)
    assert run.run_id == workflow_name(event.incident, "stop-idle-compute")
    assert dict(run.parameters) == {
        "provider": "aws",
        "service": EC2,
        "resource-id": "i-u10003-dev",
        "resource-type": "Instance",
        "action": "stop-idle-compute",
        "environment": "dev",
        "team": "web",
        "account-id": "acct-u10003-sub",
        "region": "us-east-1",
        "tags": '{"env":"dev","team":"web"}',
        "estimated-monthly-impact-usd": "29200.00",
        "dry-run": "true",
        "event-id": event.id,
    }


def test_plan_run_refuses_anomalies_without_a_resource() -> None:
    event = decode(event_bytes("u1", region_id=""))
    rule = load_mapping(MAPPING).select(event.labels)
    assert rule is not None
    with pytest.raises(
        InvalidEvent, match=r"lacks labels needed by rule idle-nonprod-compute: \['region_id'\]"
    ):
        plan_run(event, rule)


def test_an_unmapped_anomaly_says_why_and_becomes_a_documented_event() -> None:
    mapping = load_mapping(MAPPING)
    raw = event_bytes("u1", 0, "firing", level="service", resource_type="")
    event = decode(raw)
    assert mapping.select(event.labels) is None
    reason = mapping.why_unmapped(event.labels)
    assert reason.startswith("no playbook rule matches (")
    for rule in mapping.rules:
        assert f"{rule.id}: level='service'" in reason
    out = unmapped_event(raw, reason, "2026-12-04T00:00:00Z")
    assert out == unmapped_event(raw, reason, "2026-12-04T00:00:00Z")  # stable id
    assert (out["type"], out["source"], out["subject"]) == (
        contract.UNMAPPED,
        contract.EVENT_SOURCE_TRIGGER,
        event.fingerprint,
    )
    assert out["data"]["labels"] == dict(event.labels)
    assert (out["data"]["reason"], out["data"]["original_id"]) == (reason, event.id)
    assert out["id"] != event.id


@given(
    tags=st.dictionaries(st.text(min_size=1, max_size=40), st.text(max_size=300), max_size=64),
    limit=st.integers(min_value=200, max_value=5000),
)
def test_the_tags_parameter_fits_and_keeps_the_keys_policies_read(
    tags: dict[str, str], limit: int
) -> None:
    keep = frozenset(list(tags)[-2:])  # the last keys: the ones a naive cut would lose
    text, left_out = tags_parameter(tags, keep, limit)
    sent = json.loads(text)
    assert set(sent) <= set(tags) and all(sent[k] == tags[k] for k in sent)
    assert keep <= set(sent)
    assert left_out == len(tags) - len(sent)
    kept_text = json.dumps({k: tags[k] for k in keep}, sort_keys=True, separators=(",", ":"))
    if len(kept_text) <= limit:
        assert len(text) <= limit
    if left_out == 0:
        assert text == json.dumps(tags, sort_keys=True, separators=(",", ":"))
