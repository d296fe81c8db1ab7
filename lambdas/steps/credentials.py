"""Short-lived cloud credentials from Vault (hvac, Kubernetes auth).

A step logs in with its pod's service-account token, reads one credential from the
provider's secrets engine, and revokes the lease and its own Vault token when it is done,
even when the step failed. Credential objects never print their secrets: their repr is
redacted, and every secret value is registered with the log redactor before use.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from lambdas.steps.errors import AccessDenied, Permanent, Retryable, StepError
from lambdas.steps.redact import REDACTOR
from lambdas.steps.settings import StepSettings

log = logging.getLogger("cct.steps.credentials")


@dataclass(frozen=True)
class CloudCredentials:
    provider: str
    lease_id: str | None
    values: dict[str, str] = field(repr=False)

    def __repr__(self) -> str:
        return f"CloudCredentials(provider={self.provider!r}, lease_id={self.lease_id!r})"


def _certificate_refused(exc: BaseException) -> bool:
    """Whether the TLS failure is the server's certificate failing verification, anywhere in
    the chain of causes (requests wraps urllib3's error, which wraps ssl's)."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain of causes can loop
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or (
            "CERTIFICATE_VERIFY_FAILED" in str(seen)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _vault_error(exc: Exception, what: str) -> StepError:
    # Before RequestException (its parent): a certificate that fails verification fails the
    # same way on every retry (a handshake cut short, by a restarting pod, is retryable).
    if isinstance(exc, requests.exceptions.SSLError) and _certificate_refused(exc):
        return Permanent(
            f"Vault's TLS certificate was not accepted during {what} (is VAULT_CACERT the CA"
            " of Vault's certificate?)"
        )
    if isinstance(exc, hvac.exceptions.Forbidden):
        return AccessDenied(f"Vault refused {what}: check the Kubernetes auth role's policies")
    if isinstance(exc, hvac.exceptions.RateLimitExceeded | hvac.exceptions.VaultDown):
        return Retryable(f"Vault unavailable during {what}: {type(exc).__name__}")
    if isinstance(exc, hvac.exceptions.InternalServerError | requests.RequestException):
        return Retryable(f"Vault error during {what}: {type(exc).__name__}")
    if isinstance(exc, hvac.exceptions.VaultError):
        return Permanent(f"Vault rejected {what}: {type(exc).__name__}: {exc.errors}")
    return Permanent(f"{what}: {type(exc).__name__}")


def _read(client: hvac.Client, provider: str, s: StepSettings) -> CloudCredentials:
    if provider == "aws":
        # POST <mount>/sts/<role>: an assumed-role credential with its own short TTL.
        resp = client.secrets.aws.generate_credentials(
            name=s.vault_aws_role,
            endpoint="sts",
            ttl=s.vault_aws_ttl,
            mount_point=s.vault_aws_mount,
        )
        data = resp["data"]
        token = data.get("session_token") or data.get("security_token")
        values = {
            "aws_access_key_id": data["access_key"],
            "aws_secret_access_key": data["secret_key"],
        }
        if token:
            values["aws_session_token"] = token
        return CloudCredentials("aws", resp.get("lease_id") or None, values)
    if provider == "azure":
        resp = client.adapter.get(f"/v1/{s.vault_azure_mount}/creds/{s.vault_azure_role}")
        data = resp["data"]
        return CloudCredentials(
            "azure",
            resp.get("lease_id") or None,
            {"client_id": data["client_id"], "client_secret": data["client_secret"]},
        )
    # GCP access tokens from a roleset are not leased (Vault cannot revoke them); they
    # expire on their own after the roleset's token TTL (one hour at most).
    resp = client.secrets.gcp.generate_oauth2_access_token(
        roleset=s.vault_gcp_roleset, mount_point=s.vault_gcp_mount
    )
    return CloudCredentials("gcp", resp.get("lease_id") or None, {"token": resp["data"]["token"]})


@contextmanager
def vault_credentials(provider: str, settings: StepSettings) -> Iterator[CloudCredentials]:
    try:
        jwt = Path(settings.vault_jwt_path).read_text().strip()
    except OSError as exc:
        raise Permanent(
            f"cannot read the service-account token at {settings.vault_jwt_path}: {exc.strerror}"
        ) from None
    REDACTOR.add(jwt)
    client = hvac.Client(
        url=settings.vault_addr,
        timeout=settings.http_timeout_s,
        verify=settings.vault_ca_file or True,
    )
    try:
        login: Any = client.auth.kubernetes.login(
            role=settings.vault_k8s_role, jwt=jwt, mount_point=settings.vault_k8s_mount
        )
    except Exception as exc:
        raise _vault_error(exc, "Kubernetes auth login") from None
    REDACTOR.add(str(login["auth"]["client_token"]))
    try:
        try:
            creds = _read(client, provider, settings)
        except (KeyError, TypeError):
            raise Permanent(
                f"Vault's {provider} credential response lacks expected fields"
            ) from None
        except Exception as exc:
            raise _vault_error(exc, f"reading {provider} credentials") from None
        for value in creds.values.values():
            REDACTOR.add(value)
        log.info(
            "vault credentials issued", extra={"provider": provider, "lease_id": creds.lease_id}
        )
        try:
            yield creds
        finally:
            if creds.lease_id:
                try:
                    client.sys.revoke_lease(lease_id=creds.lease_id)
                    log.info("vault lease revoked", extra={"lease_id": creds.lease_id})
                except Exception as exc:
                    # The lease still expires at its TTL; a failed revoke must not turn a
                    # finished change into a failed step.
                    log.warning(
                        "vault lease revoke failed",
                        extra={"lease_id": creds.lease_id, "error": type(exc).__name__},
                    )
    finally:
        try:
            client.auth.token.revoke_self()
        except Exception as exc:
            log.warning("vault token revoke failed", extra={"error": type(exc).__name__})
