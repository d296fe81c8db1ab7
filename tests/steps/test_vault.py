"""Vault through hvac: the exact HTTP calls (Kubernetes auth login, AWS/Azure/GCP credentials,
lease revoke, token revoke-self) against recorded exchanges served on loopback; no Vault
server runs here. Credentials never reach logs or outputs."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import requests

from lambdas.common.settings import SettingsError
from lambdas.steps.credentials import _vault_error, vault_credentials
from lambdas.steps.errors import AccessDenied, Permanent, Retryable
from lambdas.steps.settings import StepSettings
from tests.admission.support import Tls, make_tls
from tests.steps.conftest import JWT, SECRETS
from tests.steps.replay import Replay, load, serving_exchanges
from tests.steps.runner import call_step

TOKEN = "hvs.CAESIVAULT-CLIENT-TOKEN-SECRET-0123456789"
Serve = Callable[..., AbstractContextManager[Replay]]


def _settings(url: str, jwt_file: Path) -> StepSettings:
    return dataclasses.replace(
        StepSettings.from_env(), vault_addr=url, vault_jwt_path=str(jwt_file)
    )


@pytest.mark.parametrize(
    ("provider", "read", "lease", "keys"),
    [
        (
            "aws",
            ("POST", "/v1/aws/sts/cct-remediation"),
            "aws/sts/cct-remediation/h6Tn0rMZzfXkPqzRHu3Q4T3v",
            {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"},
        ),
        (
            "azure",
            ("GET", "/v1/azure/creds/cct-remediation"),
            "azure/creds/cct-remediation/Qx7mTn2eBz3wLh9kVp4sRc1d",
            {"client_id", "client_secret"},
        ),
        ("gcp", ("GET", "/v1/gcp/token/cct-remediation"), None, {"token"}),
    ],
)
def test_login_read_and_revoke(
    *,
    provider: str,
    read: tuple[str, str],
    lease: str | None,
    keys: set[str],
    replay: Serve,
    jwt_file: Path,
) -> None:
    with replay("vault.json") as r:
        with vault_credentials(provider, _settings(r.base_url, jwt_file)) as creds:
            assert set(creds.values) == keys
            assert creds.lease_id == lease
            assert all(s not in repr(creds) for s in SECRETS)
        calls = [(x.method, x.path) for x in r.requests]
    expected = [("POST", "/v1/auth/kubernetes/login"), read]
    if lease:
        expected.append(("PUT", "/v1/sys/leases/revoke"))
    expected.append(("POST", "/v1/auth/token/revoke-self"))
    assert calls == expected
    login = r.requests[0]
    assert login.body == {"role": "cct-remediation", "jwt": JWT}
    assert all(x.headers.get("x-vault-token") == TOKEN for x in r.requests[1:])
    if provider == "aws":
        assert r.requests[1].body == {"ttl": "15m"}
    if lease:
        assert r.requests[2].body == {"lease_id": lease}
    assert r.unmatched == []


def test_lease_and_token_are_revoked_when_the_step_fails(replay: Serve, jwt_file: Path) -> None:
    with replay("vault.json") as r:
        with (
            pytest.raises(Permanent, match="boom"),
            vault_credentials("aws", _settings(r.base_url, jwt_file)),
        ):
            raise Permanent("boom")
        assert [x.path for x in r.requests][-2:] == [
            "/v1/sys/leases/revoke",
            "/v1/auth/token/revoke-self",
        ]


def test_login_refused_is_access_denied(replay: Serve, jwt_file: Path) -> None:
    with (
        replay("vault_forbidden.json") as r,
        pytest.raises(AccessDenied, match="Vault refused"),
        vault_credentials("aws", _settings(r.base_url, jwt_file)),
    ):
        pass


def test_sealed_vault_is_retryable(replay: Serve, jwt_file: Path) -> None:
    with (
        replay("vault_sealed.json") as r,
        pytest.raises(Retryable, match="Vault"),
        vault_credentials("gcp", _settings(r.base_url, jwt_file)),
    ):
        pass


def test_missing_service_account_token_is_permanent(tmp_path: Path) -> None:
    settings = _settings("http://127.0.0.1:9", tmp_path / "absent")
    with (
        pytest.raises(Permanent, match="service-account token"),
        vault_credentials("aws", settings),
    ):
        pass


def test_step_exit_codes_and_no_leak_through_the_cli(
    replay: Serve, step_env: Callable[..., dict[str, str]], uid: str
) -> None:
    """A step whose cloud call fails still prints no credential, in its output or its logs."""
    params = {
        "provider": "gcp",
        "resource-id": "projects/cct-payments-dev/zones/us-central1-a/instances/missing-1",
        "region": "us-central1",
    }
    with replay("vault.json") as r:
        run = call_step(
            "analyze",
            {
                "run_id": f"cct-x-{uid}",
                "playbook": "rightsize-compute",
                "parameters": params,
                "previous": {},
            },
            step_env(r.base_url),
            inprocess=True,
        )
    # The replay has no recording for the instance: HTTP 501 is a permanent failure.
    assert run.exit_code == 1
    assert run.output["error"]["retryable"] is False
    text = str(run.output) + run.stderr
    assert all(secret not in text for secret in SECRETS)
    assert "vault credentials issued" in run.stderr


def _server_context(tls: Tls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    return context


def test_vault_over_tls_is_verified_against_vault_cacert(tmp_path: Path, jwt_file: Path) -> None:
    """In the cluster Vault serves TLS only and the steps get its CA (VAULT_CACERT, the
    ConfigMap vault-ca): with it the exchange goes through; with the system's trust store or
    another CA the handshake fails before a byte of the service-account token is sent, as a
    permanent error that names the setting (a retry would fail the same way)."""
    tls = make_tls(tmp_path / "vault")
    other = make_tls(tmp_path / "other")
    with serving_exchanges(load("vault.json"), _server_context(tls)) as r:
        assert r.base_url.startswith("https://")
        settings = dataclasses.replace(_settings(r.base_url, jwt_file), vault_ca_file=str(tls.ca))
        with vault_credentials("aws", settings) as creds:
            assert creds.lease_id
        served = len(r.requests)
        for ca in ("", str(other.ca)):
            untrusting = dataclasses.replace(settings, vault_ca_file=ca)
            with (
                pytest.raises(Permanent) as raised,
                vault_credentials("aws", untrusting),
            ):
                pytest.fail("credentials issued over an unverified connection")
            assert str(raised.value) == (
                "Vault's TLS certificate was not accepted during Kubernetes auth login (is"
                " VAULT_CACERT the CA of Vault's certificate?)"
            )
        assert len(r.requests) == served
        assert r.unmatched == []


def test_a_vault_cacert_that_is_not_there_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_CACERT", "/no/such/vault-ca.crt")
    with pytest.raises(SettingsError) as raised:
        StepSettings.from_env()
    assert str(raised.value) == "VAULT_CACERT='/no/such/vault-ca.crt' is not a readable file"


def test_only_a_refused_certificate_is_permanent_other_tls_failures_are_retried() -> None:
    """A handshake cut short (a Vault pod restarting, a reset) fails the same request class as
    a refused certificate; only the latter would fail the same way on every retry."""
    refused = requests.exceptions.SSLError("handshake")
    refused.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cut = requests.exceptions.SSLError("handshake")
    cut.__context__ = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert isinstance(_vault_error(refused, "login"), Permanent)
    assert isinstance(_vault_error(cut, "login"), Retryable)
