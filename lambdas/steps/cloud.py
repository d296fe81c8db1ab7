"""Open a provider session from Vault-issued credentials, for the length of one step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

from lambdas.steps.contract import Parameters
from lambdas.steps.credentials import CloudCredentials, vault_credentials
from lambdas.steps.errors import AccessDenied, Permanent, Retryable
from lambdas.steps.providers.aws import AwsSession
from lambdas.steps.providers.azure import AzureSession
from lambdas.steps.providers.gcp import GcpSession
from lambdas.steps.redact import REDACTOR
from lambdas.steps.rest import RestClient
from lambdas.steps.settings import StepSettings

ARM_SCOPE = "https://management.azure.com/.default"


def azure_token(creds: CloudCredentials, settings: StepSettings) -> str:
    """Exchange the Vault-issued service principal for an ARM access token (client
    credentials grant)."""
    url = f"{settings.azure_login_url}/{settings.azure_tenant_id}/oauth2/v2.0/token"
    try:
        resp = requests.post(
            url,
            data={
                "grant_type": "client_credentials",
                "client_id": creds.values["client_id"],
                "client_secret": creds.values["client_secret"],
                "scope": ARM_SCOPE,
            },
            timeout=settings.http_timeout_s,
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise Retryable(f"Azure token request: {type(exc).__name__}") from None
    if resp.status_code == 200:
        token = str(resp.json()["access_token"])
        REDACTOR.add(token)
        return token
    try:
        error = str(resp.json().get("error", ""))
    except ValueError:
        error = ""
    if error == "invalid_client":
        # Vault creates a fresh service principal per lease; Entra ID takes a little while
        # to accept its secret everywhere, so the first token requests may fail.
        raise Retryable("Azure token request: invalid_client (new service principal not yet live)")
    if resp.status_code in (401, 403):
        raise AccessDenied(f"Azure token request refused: HTTP {resp.status_code} {error}")
    if resp.status_code >= 500 or resp.status_code == 429:
        raise Retryable(f"Azure token request: HTTP {resp.status_code}")
    raise Permanent(f"Azure token request failed: HTTP {resp.status_code} {error}")


@contextmanager
def cloud_session(params: Parameters, settings: StepSettings, run_id: str) -> Iterator[Any]:
    """`run_id` names the snapshots an Azure or GCP delete takes (AWS finds its by tag)."""
    with vault_credentials(params.provider, settings) as creds:
        if params.provider == "aws":
            yield AwsSession(
                region=params.region or "us-east-1",
                credentials=creds.values,
                endpoint_url=settings.aws_endpoint_url,
                timeout_s=settings.operation_timeout_s,
                poll_initial_s=settings.poll_initial_s,
                poll_max_s=settings.poll_max_s,
            )
        elif params.provider == "azure":
            rest = RestClient(
                settings.azure_management_url,
                azure_token(creds, settings),
                timeout_s=settings.http_timeout_s,
            )
            yield AzureSession(
                rest,
                settings.operation_timeout_s,
                poll_initial_s=settings.poll_initial_s,
                poll_max_s=settings.poll_max_s,
                run_id=run_id,
            )
        else:
            yield GcpSession(
                creds.values["token"],
                settings.gcp_api_url,
                settings.http_timeout_s,
                settings.operation_timeout_s,
                poll_initial_s=settings.poll_initial_s,
                poll_max_s=settings.poll_max_s,
                run_id=run_id,
            )
