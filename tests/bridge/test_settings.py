"""Bridge settings: secrets come from files, are named when wrong, never shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lambdas.bridge.settings import BridgeSettings
from lambdas.common.settings import SettingsError


@pytest.fixture(autouse=True)
def kafka_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kafka.password").write_text("pw\n")
    monkeypatch.setenv("CCT_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    monkeypatch.setenv("CCT_KAFKA_CA_FILE", str(tmp_path / "kafka-ca.crt"))
    monkeypatch.setenv("CCT_KAFKA_USERNAME", "bridge")
    monkeypatch.setenv("CCT_KAFKA_PASSWORD_FILE", str(tmp_path / "kafka.password"))


def test_secrets_are_read_from_files_and_kept_out_of_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("tok-123\n")
    (tmp_path / "zd").write_text("https://events.zenduty.test/integration/KEY-456/\n")
    monkeypatch.setenv("CCT_BRIDGE_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("CCT_BRIDGE_ZENDUTY_URL_FILE", str(tmp_path / "zd"))
    s = BridgeSettings.from_env()
    assert s.token == "tok-123"
    assert s.zenduty_url == "https://events.zenduty.test/integration/KEY-456/"
    assert "tok-123" not in repr(s) and "KEY-456" not in repr(s)


@pytest.mark.parametrize(
    ("token", "zenduty", "message"),
    [
        (None, None, "CCT_BRIDGE_TOKEN_FILE is required but not set"),
        ("missing", None, "cannot be read: No such file or directory"),
        ("", None, "is empty"),
        ("tok", "ftp://x", "CCT_BRIDGE_ZENDUTY_URL_FILE must hold an http(s) URL"),
    ],
)
def test_bad_secret_files_are_named(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    zenduty: str | None,
    message: str,
) -> None:
    monkeypatch.delenv("CCT_BRIDGE_TOKEN_FILE", raising=False)
    monkeypatch.delenv("CCT_BRIDGE_ZENDUTY_URL_FILE", raising=False)
    if token is not None:
        path = tmp_path / "token"
        if token != "missing":
            path.write_text(token)
        monkeypatch.setenv("CCT_BRIDGE_TOKEN_FILE", str(path))
    if zenduty is not None:
        (tmp_path / "zd").write_text(zenduty)
        monkeypatch.setenv("CCT_BRIDGE_ZENDUTY_URL_FILE", str(tmp_path / "zd"))
    with pytest.raises(SettingsError, match=re.escape(message)):
        BridgeSettings.from_env()
