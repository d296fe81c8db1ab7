"""Hot reload of a mounted policy directory (keeping the last good set), the failure mode,
and admission staying fast while PostgreSQL is unreachable."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import socket
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.admission.conftest import wait_for
from tests.admission.support import (
    SHIPPED,
    Tls,
    Webhook,
    make_tls,
    params,
    review,
    serve_admission,
    workflow,
)

TEAM_FREEZE = """\
apiVersion: cct.io/v1
kind: OptimizationPolicy
metadata: {name: team-freeze, description: The web team froze its changes.}
spec:
  rules:
    - id: web
      description: web is frozen
      match: {teams: [web]}
      effect: deny
      reason: "team {team} froze its changes"
"""


class ConfigMapDir:
    """A directory laid out like a mounted ConfigMap: files are symlinks through `..data`,
    which the kubelet swaps atomically to publish a new version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()

    def publish(self, files: dict[str, str]) -> None:
        version = self.root / f"..{uuid.uuid4().hex}"
        version.mkdir()
        for name, text in files.items():
            (version / name).write_text(text)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(version.name)
        os.replace(tmp_link, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        for stale in self.root.iterdir():
            if stale.is_symlink() and stale.name not in files and not stale.name.startswith(".."):
                stale.unlink()


def shipped_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in SHIPPED.glob("*.yaml") if p.name != "change-freeze.yaml"}


def verdict(hook: Webhook, team: str = "web") -> dict[str, Any]:
    return hook.response(review(workflow(f"wf-{uuid.uuid4().hex[:8]}", params(team=team))))


def test_reload_applies_new_policies_and_keeps_the_last_good_set(
    tmp_path: Path, pg_dsn: str, tls: Tls
) -> None:
    mount = ConfigMapDir(tmp_path / "policies")
    files = shipped_files()
    del files["critical-services.yaml"]  # business hours depend on the clock; not needed here
    mount.publish(files)
    with serve_admission(tmp_path, pg_dsn, mount.root, tls) as hook:
        assert verdict(hook)["allowed"] is True

        mount.publish({**files, "team-freeze.yaml": TEAM_FREEZE})
        denied = wait_for(lambda: not verdict(hook)["allowed"], what="the new policy to apply")
        assert denied
        response = verdict(hook)
        assert response["status"]["message"] == (
            "denied by CCT policy: team-freeze/web: team web froze its changes"
        )
        assert hook.metric("cct_admission_policy_reloads_total", result="success") == 2

        broken = TEAM_FREEZE.replace("effect: deny", "effect: block")
        mount.publish({**files, "team-freeze.yaml": broken})
        wait_for(lambda: hook.metric("cct_admission_policy_set_valid") == 0, what="the failure")
        assert hook.metric("cct_admission_policy_reloads_total", result="failure") == 1
        # Still the last good set (the freeze applies), and the answer says so.
        response = verdict(hook)
        assert response["allowed"] is False
        assert response["warnings"][0].startswith(
            "the newest CCT policy files are invalid; deciding with the last good set "
        )
        status, body = hook.get("/healthz")
        assert status == 200
        assert json.loads(body)["files_valid"] is False
        log = hook.log.read_text()
        assert "policy files invalid; keeping the last good set" in log
        assert (
            "team-freeze.yaml: document 1: spec.rules[0].effect: 'block' is not one of "
            "['deny', 'require-approval']"
        ) in log
        # The failure is reported once, not on every poll.
        time.sleep(0.6)
        assert hook.metric("cct_admission_policy_reloads_total", result="failure") == 1

        mount.publish(files)
        wait_for(lambda: verdict(hook)["allowed"], what="the fixed set to apply")
        assert hook.metric("cct_admission_policy_set_valid") == 1
        assert "warnings" not in verdict(hook)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_without_a_valid_policy_set_the_failure_mode_decides(
    tmp_path: Path, pg_dsn: str, tls: Tls, mode: str
) -> None:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "bad.yaml").write_text("apiVersion: cct.io/v1\nkind: Nope\n")
    env = {"CCT_ADMISSION_FAILURE_MODE": mode} if mode == "open" else {}
    with serve_admission(tmp_path, pg_dsn, policy_dir, tls, **env) as hook:
        assert hook.get("/healthz")[0] == 200  # alive: a restart would not fix the files
        status, body = hook.get("/readyz")
        assert status == 503
        assert json.loads(body)["reason"].startswith("no valid policy set is loaded")
        response = verdict(hook)
        if mode == "closed":
            assert response["allowed"] is False
            assert response["status"] == {
                "code": 500,
                "reason": "InternalError",
                "message": "CCT admission failed closed: no valid policy set is loaded",
            }
        else:
            assert response["allowed"] is True
            assert response["warnings"] == [
                "CCT admission failed open: no valid policy set is loaded"
            ]
        assert (
            hook.metric("cct_admission_failure_mode_total", reason="no_policy_set", mode=mode) == 1
        )
        # Invalid input is refused whatever the mode: it is not an evaluation failure.
        bad = workflow("wf-bad", {k: v for k, v in params().items() if k != "provider"})
        assert hook.response(review(bad))["allowed"] is False
        # Once valid files appear, the server recovers without a restart.
        shutil.copy(SHIPPED / "protected-resources.yaml", policy_dir / "bad.yaml")
        wait_for(lambda: hook.get("/readyz")[0] == 200, what="recovery")
        recovered = verdict(hook)
        assert recovered["allowed"] is True
        assert "warnings" not in recovered


def test_admission_does_not_wait_for_an_unresponsive_database(tmp_path: Path, tls: Tls) -> None:
    # A listener that completes the TCP handshake (backlog) but never answers: every
    # connection attempt hangs until psycopg's 5 s connect timeout.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    dead = f"postgresql://cct:x@127.0.0.1:{blackhole.getsockname()[1]}/cct"
    files = tmp_path / "policies"
    files.mkdir()
    shutil.copy(SHIPPED / "protected-resources.yaml", files)
    try:
        with serve_admission(tmp_path, dead, files, tls) as hook:
            for _ in range(20):
                assert verdict(hook)["allowed"] is True
            # Every answer came well inside the first second, none waited for the database.
            fast = hook.metric("cct_admission_request_duration_seconds_bucket", le="1.0")
            assert fast == hook.metric("cct_admission_request_duration_seconds_count") == 20
            wait_for(
                lambda: hook.metric("cct_admission_decision_queue_depth") >= 19,
                what="the decisions to wait in the queue",
            )
            assert hook.metric("cct_admission_decisions_recorded_total") == 0
    finally:
        blackhole.close()


def one_policy_file(tmp_path: Path) -> Path:
    files = tmp_path / "policies"
    files.mkdir()
    shutil.copy(SHIPPED / "protected-resources.yaml", files)
    return files


def test_a_rotated_certificate_is_served_without_a_restart(
    tmp_path: Path, pg_dsn: str, tls: Tls
) -> None:
    served, files = make_tls(tmp_path / "served"), one_policy_file(tmp_path)
    with serve_admission(tmp_path, pg_dsn, files, served) as hook:
        assert verdict(hook)["allowed"] is True
        rotated = make_tls(tmp_path / "rotated")  # a new CA too, as after a CA rotation
        # Half a rotation (new certificate, old key) is refused; the old pair keeps serving.
        shutil.copy(rotated.cert, served.cert)
        wait_for(lambda: "cannot load the rotated certificate" in hook.log.read_text())
        assert verdict(hook)["allowed"] is True
        shutil.copy(rotated.key, served.key)
        # The API server's client certificate is unchanged: only the serving pair rotated.
        trusting_rotated = dataclasses.replace(served, ca=rotated.ca)
        new_client = Webhook(hook.port, hook.metrics_port, trusting_rotated, files, hook.log)

        def handshake_with_new_ca() -> bool:
            try:
                return bool(verdict(new_client)["allowed"])
            except ssl.SSLError:
                return False

        wait_for(handshake_with_new_ca, what="the rotated certificate to be served")


def test_a_rotated_client_ca_is_trusted_without_a_restart(tmp_path: Path, pg_dsn: str) -> None:
    """When the API server's client CA is rotated (the mounted `client-ca.crt` changes), new
    connections are verified against the new CA: its client certificate is heard, the old
    one no longer completes the handshake."""
    served, files = make_tls(tmp_path / "served"), one_policy_file(tmp_path)
    with serve_admission(tmp_path, pg_dsn, files, served) as hook:
        assert verdict(hook)["allowed"] is True
        rotated = make_tls(tmp_path / "rotated")
        shutil.copy(rotated.client_ca, served.client_ca)
        new_apiserver = dataclasses.replace(served, apiserver=rotated.apiserver)
        new_client = Webhook(hook.port, hook.metrics_port, new_apiserver, files, hook.log)

        def heard(client: Webhook) -> bool:
            try:
                return bool(verdict(client)["allowed"])
            except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
                return False

        wait_for(lambda: heard(new_client), what="the rotated client CA to be trusted")
        assert not heard(hook)
