"""Credentials for the local Kafka, which encrypts and authenticates every client (SASL/SCRAM
over TLS, the broker's certificate signed by a local CA) and authorises each handler
principal by ACL (scripts/services, from lambdas.common.kafka).

- `client_kwargs(bootstrap)`: aiokafka keyword arguments for the test's own clients, as the
  `admin` super user (creating, reading and producing to any topic).
- `handler_env(bootstrap, handler)`: the CCT_KAFKA_* variables a handler process gets, with
  that handler's own identity (bridge, trigger or steps) and so only its ACLs: the handler
  may use its production topics and the `cct.test.` sandbox (test topics and consumer groups
  must start with `cct.test.`; the trigger's groups may also start with `cct-trigger`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lambdas.common import kafka
from lambdas.common.settings import SettingsError
from tests.support.services import load_settings


def _kafka(bootstrap: str) -> dict[str, Any]:
    return {**(load_settings().get("kafka") or {}), "bootstrap": bootstrap}


def _users() -> dict[str, str]:
    files = (load_settings().get("kafka") or {}).get("password_files") or {}
    return {u: Path(f).read_text().strip() for u, f in files.items()}


def tls_dir() -> Path:
    """The shared broker's certificate and CA (a private broker serves the same)."""
    ca = (load_settings().get("kafka") or {}).get("ca_file")
    if not ca:
        pytest.fail("no Kafka CA in .local/services.json: restart Kafka", pytrace=False)
    return Path(ca).parent


def sasl_broker_properties() -> str:
    """server.properties lines of a broker that authenticates and encrypts as the shared one
    does (scripts/services): SCRAM-SHA-512 over TLS for clients, PLAIN for the controller."""
    return kafka.broker_security_properties(_users()["admin"], tls_dir())


def scram_users() -> list[str]:
    """StorageTool `format` arguments that create the shared broker's users."""
    return [
        arg
        for user, password in sorted(_users().items())
        for arg in ("--add-scram", f"{kafka.MECHANISM}=[name={user},password={password}]")
    ]


def auth(bootstrap: str, user: str = "admin") -> kafka.KafkaAuth:
    try:
        return kafka.local_auth(_kafka(bootstrap), user)
    except SettingsError as exc:
        pytest.fail(str(exc), pytrace=False)


def client_kwargs(bootstrap: str, user: str = "admin") -> dict[str, Any]:
    return auth(bootstrap, user).client_kwargs()


def handler_env(bootstrap: str, handler: str) -> dict[str, str]:
    auth(bootstrap, handler)  # a clear failure when the credentials are missing
    return kafka.local_client_env(_kafka(bootstrap), handler)
