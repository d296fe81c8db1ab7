"""The generated Alertmanager configuration, checked by the real amtool and a real Alertmanager."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from lambdas.alerting.config import (
    AlertingConfigError,
    AlertRoutingSettings,
    render_alertmanager_config,
)
from tests.routing.helpers import (
    RecordingReceiver,
    alertmanager_process,
    anomaly_alert,
    bridge_process,
    events_of,
    post_alerts,
    read_topic,
    wait_until,
)


def settings(tmp_path: Path, bridge: str = "http://127.0.0.1:9") -> AlertRoutingSettings:
    token = tmp_path / "bridge.token"
    if not token.exists():
        token.write_text("t0ken\n")
    return AlertRoutingSettings(
        bridge_url=f"{bridge}/v1/alerts",
        zenduty_relay_url=f"{bridge}/v1/relay/zenduty",
        token_file=str(token),
    )


def test_amtool_accepts_the_generated_config(tmp_path: Path) -> None:
    cfg = tmp_path / "am.yml"
    cfg.write_text(render_alertmanager_config(settings(tmp_path)))
    result = subprocess.run(["amtool", "check-config", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"severity": "critical"}, "zenduty,cct-bridge"),
        ({"severity": "warning"}, "cct-bridge"),
        ({"severity": "info"}, "cct-bridge"),
    ],
)
def test_amtool_routes_critical_to_zenduty_and_every_anomaly_to_the_bridge(
    tmp_path: Path, labels: dict[str, str], receivers: str
) -> None:
    cfg = tmp_path / "am.yml"
    cfg.write_text(render_alertmanager_config(settings(tmp_path)))
    matchers = [f"{k}={v}" for k, v in {"alertname": "CostAnomaly", **labels}.items()]
    result = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={cfg}", *matchers],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == receivers, result.stdout + result.stderr


def test_other_alerts_go_nowhere(tmp_path: Path) -> None:
    cfg = tmp_path / "am.yml"
    cfg.write_text(render_alertmanager_config(settings(tmp_path)))
    result = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={cfg}", "alertname=Watchdog"],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "null"


def test_structure_grouping_inhibition_and_no_inline_secrets(tmp_path: Path) -> None:
    s = settings(tmp_path)
    text = render_alertmanager_config(s)
    doc = yaml.safe_load(text)
    route = doc["route"]
    assert route["group_by"] == ["alertname", *s.dimensions]
    assert (route["group_wait"], route["group_interval"]) == ("0s", "1s")
    [inhibit] = doc["inhibit_rules"]
    assert inhibit["source_matchers"][-1] == 'severity="critical"'
    assert inhibit["target_matchers"][-1] == 'severity="warning"'
    assert inhibit["equal"] == [*s.dimensions, "source"]
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            auth = hook["http_config"]["authorization"]
            assert auth == {"type": "Bearer", "credentials_file": s.token_file}
            assert hook["max_alerts"] == 0 and hook["send_resolved"] is True
    assert "t0ken" not in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bridge_url": "cct-bridge:8080"}, "bridge_url='cct-bridge:8080' must be an http(s) URL"),
        ({"token_file": "token"}, "token_file='token' must be an absolute path"),
        ({"group_wait": "soon"}, "group_wait='soon' is not a duration like 1s or 4h"),
        ({"group_interval": "0s"}, "group_interval must be positive (Alertmanager rejects 0)"),
        (
            {"dimensions": ("level", "bad-label")},
            "dimensions must be label names, got ['bad-label']",
        ),
        ({"zenduty_severities": ("page",)}, "zenduty_severities has unknown values ['page']"),
    ],
)
def test_bad_settings_are_named(change: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "bridge_url": "http://b/v1/alerts",
        "zenduty_relay_url": "http://b/v1/relay/zenduty",
        "token_file": "/run/secrets/token",
    }
    with pytest.raises(AlertingConfigError) as err:
        AlertRoutingSettings(**{**base, **change})  # type: ignore[arg-type]
    assert str(err.value) == message


def test_real_alertmanager_delivers_to_zenduty_and_the_bridge_with_inhibition(
    tmp_path: Path, kafka_bootstrap: str, uid: str
) -> None:
    topic = f"cct.test.routing.{uid}"
    zenduty_key = f"zd-{uid}-secret"
    with (
        RecordingReceiver() as zenduty,
        bridge_process(
            tmp_path / "bridge",
            kafka_bootstrap,
            topic,
            zenduty_url=f"{zenduty.url}/api/integration/prometheus/{zenduty_key}/",
        ) as bridge,
    ):
        token_file = tmp_path / "bridge" / "bridge.token"
        config = render_alertmanager_config(
            AlertRoutingSettings(
                bridge_url=f"{bridge.url}/v1/alerts",
                zenduty_relay_url=f"{bridge.url}/v1/relay/zenduty",
                token_file=str(token_file),
            )
        )
        assert zenduty_key not in config and bridge.token not in config
        with alertmanager_process(tmp_path / "am", config) as am:
            critical = anomaly_alert(uid, "critical", resource_id=f"i-a-{uid}")
            post_alerts(am, [critical])
            wait_until(zenduty.snapshot, 60, "the critical alert at Zenduty")
            # Same dimensions, lower severity: inhibited. Other dimensions: delivered.
            inhibited = anomaly_alert(uid, "warning", resource_id=f"i-a-{uid}")
            other = anomaly_alert(uid, "warning", resource_id=f"i-b-{uid}")
            post_alerts(am, [inhibited, other])
            read_topic(kafka_bootstrap, topic, expected=2, timeout=60)
            # Waiting for a third record for three group_intervals: an inhibited alert that
            # slipped through would have been delivered by then.
            records = read_topic(kafka_bootstrap, topic, expected=3, timeout=3)

    events = events_of(records)
    seen = sorted(
        (e["data"]["labels"]["resource_id"], e["data"]["labels"]["severity"]) for e in events
    )
    assert seen == [(f"i-a-{uid}", "critical"), (f"i-b-{uid}", "warning")]
    assert {r.key for r in records} == {e["subject"].encode() for e in events}
    assert all(e["type"] == "io.cct.anomaly.detected" for e in events)

    [page] = zenduty.snapshot()
    assert page.path == f"/api/integration/prometheus/{zenduty_key}/"
    assert page.body["version"] == "4"
    assert [a["labels"]["severity"] for a in page.body["alerts"]] == ["critical"]
    assert page.body["receiver"] == "zenduty"
